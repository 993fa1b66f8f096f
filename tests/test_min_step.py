"""``PIController(min_step=..., force_min_step=...)``: a lower bound on the proposed steps, as diffrax's
``PIDController(dtmin=, force_dtmin=)``: forced through a stretch the tolerance cannot resolve at
that step size, or a :class:`SolverError` naming it."""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from local_reg import Checkpoint, PIController, SolverError, Symplectic, get_tableau, odeint, sdeint
from tests.problems import DecaySDE

DTYPE = torch.float64
RATE = 1e3


class Relaxation(torch.nn.Module):
    """``y' = -rate (y - cos t)``: stiff for a tight tolerance, ``y(1) ~ cos 1 + sin 1 / rate``."""

    def __init__(self) -> None:
        super().__init__()
        self.rate = torch.nn.Parameter(torch.tensor(RATE, dtype=DTYPE))

    def forward(self, t, y):
        return -self.rate * (y - torch.cos(t))


def reference(t1: float) -> float:
    solution = solve_ivp(
        lambda t, y: -RATE * (y - np.cos(t)), (0.0, t1), [0.0], method="Radau", rtol=1e-12, atol=1e-14
    )
    return float(solution.y[0, -1])


def test_a_forced_min_step_goes_through_what_the_tolerance_would_resolve_in_tiny_steps():
    y0 = torch.zeros(1, dtype=DTYPE)
    tight = {"rtol": 1e-8, "atol": 1e-10}
    with torch.no_grad():
        free = odeint(Relaxation(), y0, [0.0, 1.0], **tight)
        forced = odeint(Relaxation(), y0, [0.0, 1.0], controller=PIController(min_step=2e-3), **tight)
    assert free.steps.dt.min() < 1e-4  # the tolerance alone asks for steps far below the bound
    # Every step at least min_step (up to the rounding of the times), the last one landing excepted.
    assert forced.steps.dt[:-1].min().item() >= 2e-3 - 4 * math.ulp(1.0)
    assert forced.steps.error_estimate.max() > 1.0  # the forced steps are recorded as they were
    assert forced.stats.n_accepted <= 1.0 / 2e-3 + 1 and forced.stats.nfe < free.stats.nfe
    assert forced.ys[-1].item() == pytest.approx(reference(1.0), abs=1e-6)  # stable at dt * rate = 2


def test_forced_steps_beyond_the_stability_region_warn():
    # dt * rate = 5 is beyond tsit5's stability boundary (3.5): the forced solution grows (to 1e200
    # when measured) while every step stays finite. At dt * rate = 2 there is nothing to warn of.
    y0 = torch.zeros(1, dtype=DTYPE)
    tight = {"rtol": 1e-8, "atol": 1e-10}
    with torch.no_grad(), pytest.warns(RuntimeWarning, match=r"forced at min_step=0.005 where .* exceeds 1"):
        unstable = odeint(Relaxation(), y0, [0.0, 1.0], controller=PIController(min_step=5e-3), **tight)
    assert unstable.ys[-1].abs().item() > 1e100
    # What the warning points to: forced steps (error above 1) with |dt| * rho / stability_size 1.4.
    steps = unstable.steps
    forced = steps.error_estimate > 1.0
    ratio = steps.dt.abs() * steps.stiffness_estimate / get_tableau("tsit5").stability_size
    assert forced.any() and ratio[forced].max().item() == pytest.approx(1.43, abs=0.01)
    # Its text carries no counts or ratios, which change from solve to solve: a training loop's
    # default filter shows it once, not once per new count.
    texts = set()
    for end in (1.0, 0.7):
        with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            odeint(Relaxation(), y0, [0.0, end], controller=PIController(min_step=5e-3), **tight)
        texts |= {str(w.message) for w in caught}
    assert len(texts) == 1
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        odeint(Relaxation(), y0, [0.0, 1.0], controller=PIController(min_step=2e-3), **tight)


def test_without_force_a_step_below_min_step_is_a_solver_error_naming_it():
    y0 = torch.zeros(1, dtype=DTYPE)
    controller = PIController(min_step=2e-3, force_min_step=False)
    with pytest.raises(SolverError, match=r"the step size fell below min_step=0.002") as caught:
        odeint(Relaxation(), y0, [0.0, 1.0], first_step=0.1, controller=controller, rtol=1e-8, atol=1e-10)
    assert caught.value.t == 0.0
    # At the first rejection that would shrink the step below min_step, not after an attempt at it.
    rejected_dt = float(re.search(r"at dt=(\S+?)[;)]", caught.value.reason)[1])
    assert rejected_dt > 2e-3


def test_a_non_finite_step_at_min_step_is_a_solver_error_not_accepted():
    # y' = y^2 from 1 blows up at t = 1: forced steps carry the solve towards it until one overflows.
    def blow_up(t, y):
        return y * y

    controller = PIController(min_step=1e-3)
    with pytest.raises(SolverError, match=r"fell below min_step=0.001 .*the step was not finite") as caught:
        odeint(blow_up, torch.ones(1, dtype=DTYPE), [0.0, 2.0], controller=controller)
    assert 0.99 < caught.value.t < 1.01  # forced steps may carry it a step past the singularity


def test_the_first_step_and_the_proposals_are_at_least_min_step():
    y0 = torch.ones(2, dtype=DTYPE)
    solution = odeint(
        lambda t, y: -y, y0, [0.0, 10.0], first_step=1e-6, controller=PIController(min_step=1e-2)
    )
    assert solution.steps.dt[0].item() == 1e-2
    torch.testing.assert_close(solution.ys[-1], y0 * math.exp(-10.0), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("gradient", [Checkpoint(), Symplectic()], ids=["checkpoint", "symplectic"])
def test_forced_steps_are_replayed_by_the_graph_free_gradients(gradient):
    def gradients(gradient):
        model = Relaxation()
        y0 = torch.full((1,), 0.3, dtype=DTYPE, requires_grad=True)
        controller = PIController(min_step=2e-3)
        solution = odeint(
            model, y0, [0.0, 0.2, 0.5], controller=controller, rtol=1e-8, atol=1e-10, gradient=gradient
        )
        assert solution.steps.error_estimate.max() > 1.0  # some steps were forced
        return torch.autograd.grad(solution.ys.sum(), (y0, model.rate))

    for own, direct in zip(gradients(gradient), gradients("direct"), strict=True):
        torch.testing.assert_close(own, direct, rtol=1e-10, atol=1e-14)


def test_sdeint_steps_are_at_least_min_step():
    y0 = torch.ones(3, 1, dtype=DTYPE)
    generator = torch.Generator().manual_seed(0)
    controller = PIController(min_step=0.05)
    solution = sdeint(
        DecaySDE(), y0, [0.0, 1.0], controller=controller, rtol=1e-6, atol=1e-6, generator=generator
    )
    assert solution.steps.dt[:-1].min().item() >= 0.05 - 4 * math.ulp(1.0)
    assert solution.steps.error_estimate.max() > 1.0


@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        ({"min_step": 0.0}, ValueError, "min_step must be positive and finite"),
        ({"min_step": -1.0}, ValueError, "min_step must be positive and finite"),
        ({"min_step": math.nan}, ValueError, "min_step must be positive and finite"),
        ({"min_step": math.inf}, ValueError, "min_step must be positive and finite"),
        ({"min_step": "0.1"}, TypeError, "min_step must be a real number"),
        ({"min_step": 0.2, "max_step": 0.1}, ValueError, "min_step=0.2 exceeds max_step=0.1"),
        ({"min_step": 0.1, "force_min_step": 1}, TypeError, "force_min_step must be a bool"),
    ],
)
def test_bad_min_step_settings_are_refused_naming_them(arguments, error, match):
    with pytest.raises(error, match=match):
        PIController(**arguments)
