"""The explanation a failed solve gives: which cause it names (a field turning non-finite before
an rtol float32 cannot resolve, a fixed step, a pair without a stiffness estimate) and the stiffness
ratio it reads, by hand."""

from __future__ import annotations

import dataclasses
import re
from types import SimpleNamespace

import pytest
import torch

from local_reg import (
    TABLEAUS,
    BacksolveAdjoint,
    LocallyRegularized,
    PIController,
    SolverError,
    odeint,
    odeint_event,
    sdeint,
)
from local_reg._diagnose import stiffness_ratio
from tests.problems import DecaySDE, rotation

DTYPE = torch.float64


def test_a_field_turning_non_finite_is_named_even_with_an_rtol_below_eps() -> None:
    # The atol keeps the steps long until t = 0.5, where the field turns NaN: the underflow is the
    # overflow's, not the rtol's, even though that rtol is below float32's epsilon.
    def nan_past_half(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y * float("nan") if float(t) > 0.5 else -y

    with pytest.raises(SolverError, match=r"^non-finite state or derivative: the trial steps kept turning"):
        odeint(nan_past_half, torch.ones(1), [0.0, 1.0], rtol=5e-8, atol=1e-2)


@pytest.mark.parametrize(
    ("dtype", "rtol", "atol"),
    [(torch.float32, 1e-7, 1e-9), (torch.float32, 1e-3, 1e-6), (torch.float64, 1e-7, 1e-9)],
)
def test_a_finite_time_blow_up_is_named_rather_than_the_tolerance(dtype, rtol, atol) -> None:
    # y' = y**2 from 1 is 1 / (1 - t): the steps shrink towards t = 1 whatever the tolerance. At
    # torchdiffeq's defaults in float32 the failure blamed the rtol (1e-7 is below float32's eps),
    # though a looser one fails alike; elsewhere it said only "step size underflow".
    with pytest.raises(
        SolverError, match=r"^step size underflow .* the solution or the field is likely singular"
    ) as info:
        odeint(lambda t, y: y**2, torch.ones(1, dtype=dtype), [0.0, 0.5, 2.0], rtol=rtol, atol=atol)
    assert "below what" not in str(info.value) and 0.99 < info.value.t < 1.01


def test_a_field_singular_where_the_state_is_large_but_finite_is_not_called_a_blow_up() -> None:
    # y(1) = 5002 from 0, but y' is unbounded at t = 1: the hint said "the solution likely blows up".
    def singular(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 5000.0 + 0 * y + 1 / torch.sqrt(torch.clamp(1 - t, min=0) + 1e-300)

    with pytest.raises(
        SolverError, match=r"^step size underflow .* the solution or the field is likely singular"
    ):
        odeint(singular, torch.zeros(1, dtype=DTYPE), [0.0, 2.0])


def test_a_fixed_step_float32_solve_past_max_steps_has_no_rtol_to_blame() -> None:
    # A fixed-step solve uses no tolerance: an rtol passed to it, below float32's eps, goes unused
    # and cannot be the cause of the failure.
    def decay(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -y

    with pytest.raises(
        SolverError, match=r"max_steps=50 exceeded \(raise max_steps .*, or a longer step_size\)"
    ):
        odeint_event(
            decay,
            torch.ones(1),
            0.0,
            event_fn=lambda t, y: y[0] + 0.5,
            method="rk4",
            step_size=0.1,
            rtol=1e-9,
            max_steps=50,
        )


def test_max_steps_with_a_stability_size_but_no_stiffness_estimate_gives_the_settings_hint() -> None:
    # A custom pair with a stability size but no stiffness stages records no stiffness estimate: the
    # failure falls back to the settings hint instead of failing on the missing estimates.
    mine = dataclasses.replace(TABLEAUS["heun_euler"], name="mine", stability_size=2.0)
    assert mine.stiffness_stages is None
    with pytest.raises(
        SolverError, match=r"max_steps=10 exceeded \(raise max_steps .*, or loosen rtol/atol\)"
    ):
        odeint(rotation, torch.tensor([1.0, 0.0], dtype=DTYPE), [0.0, 100.0], method=mine, max_steps=10)


def test_the_stiffness_ratio_is_the_median_over_the_last_twenty_steps() -> None:
    # |dt| rho / stability_size with dt = 0.5 and stability_size = 2.5 is rho / 5, by hand: ten old
    # steps at 0.9 (outside the window), nineteen at 0.1 and a last outlier at 5.0. The median over
    # the last twenty is 0.1: one outlier step does not make a problem look stiff.
    rho = [4.5] * 10 + [0.5] * 19 + [25.0]
    log = SimpleNamespace(dt=[0.5] * len(rho), stiffness_estimate=[torch.tensor(r) for r in rho])
    assert stiffness_ratio(log, 2.5) == pytest.approx(0.1, abs=1e-12)
    assert stiffness_ratio(log, None) is None
    assert stiffness_ratio(SimpleNamespace(dt=[0.5], stiffness_estimate=[]), 2.5) is None


def test_a_regularized_models_step_limit_names_the_setting_it_takes() -> None:
    # A model refuses max_steps= (it is a keyword of the solve), yet its failure said only
    # "raise max_steps".
    model = LocallyRegularized(rotation, weight=1.0, options={"max_steps": 3})
    with pytest.raises(SolverError, match=re.escape("options={'max_steps': ...}")):
        model(torch.tensor([1.0, 0.0], dtype=DTYPE), torch.tensor([0.0, 100.0], dtype=DTYPE))


def test_a_regularized_sde_models_step_limit_names_the_setting_it_takes() -> None:
    model = LocallyRegularized(DecaySDE(), weight=1.0, options={"max_steps": 3})
    with pytest.raises(SolverError, match=re.escape("options={'max_steps': ...}")):
        model(torch.ones(2, 1, dtype=DTYPE), torch.tensor([0.0, 1.0], dtype=DTYPE))


def test_a_backsolve_held_at_max_step_names_its_own_step_limit() -> None:
    # The hint of steps held at max_step pointed at the forward solve's limit (a regularized
    # model's options), which the backward solve does not read.
    y0 = torch.tensor([1.0, 0.0], dtype=DTYPE, requires_grad=True)
    solution = odeint(
        rotation,
        y0,
        [0.0, 1.0],
        controller=PIController(max_step=0.01),
        gradient=BacksolveAdjoint(max_steps=50),
        adjoint_params=(),
    )
    with pytest.raises(SolverError, match=re.escape("raise BacksolveAdjoint(max_steps=...)")) as info:
        solution.ys[-1].sum().backward()
    assert "a regularized model's" not in str(info.value)


def test_an_sde_held_at_max_step_names_no_setting_of_compats() -> None:
    # compat.sdeint refuses options['max_num_steps'] (it sets no step limit), which the advice named.
    with pytest.raises(SolverError, match=re.escape("held at controller.max_step")) as info:
        sdeint(
            DecaySDE(),
            torch.ones(2, 1, dtype=DTYPE),
            [0.0, 10.0],
            max_steps=10,
            controller=PIController(max_step=0.01),
        )
    assert "max_num_steps" not in str(info.value) and "options={'max_steps': ...}" in str(info.value)


def test_a_step_limit_a_method_cannot_judge_names_every_tableau_that_can(monkeypatch) -> None:
    """The hint listed tsit5, dopri5 and dopri8 by hand: a pair added with a stiffness estimate and
    a stability size was left out of it."""
    twin = dataclasses.replace(TABLEAUS["tsit5"], name="tsit5_twin")
    monkeypatch.setitem(TABLEAUS, twin.name, twin)
    judging = [
        name for name, tableau in TABLEAUS.items() if tableau.stiffness_stages and tableau.stability_size
    ]
    assert twin.name in judging
    with pytest.raises(SolverError, match="bosh3 has no stiffness estimate") as info:
        odeint(rotation, torch.tensor([1.0, 0.0], dtype=DTYPE), [0.0, 100.0], method="bosh3", max_steps=10)
    assert all(name in str(info.value) for name in judging), str(info.value)
