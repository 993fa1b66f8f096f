"""What one call of a regularized model does besides its solve: how often it reads ``y0``'s
values, and how it names a setting it refuses in the model's own spelling."""

from __future__ import annotations

import re
from typing import cast
from unittest import mock

import pytest
import torch

import local_reg._validate
from local_reg import (
    BacksolveAdjoint,
    GloballyRegularized,
    LocallyRegularized,
    PIController,
    Regularized,
    RNODERegularized,
    SteerRegularized,
    TayNODERegularized,
)


class Linear(torch.nn.Module):
    """``dy/dt = A y``: a field with trainable parameters (the default weight's)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 3)

    def forward(self, t, y):
        return self.linear(y)


class ScaledNoise(torch.nn.Module):
    """A diagonal Ito SDE, ``dy = a y dt + 0.1 y dW``."""

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(-1.0))

    def f(self, t, y):
        return self.a * y

    def g(self, t, y):
        return 0.1 * y


NON_FINITE_Y0 = r"^y0 must be finite, got 1 non-finite entries \(the first at index \(0, 1\): nan\)$"
MODELS = {
    "plain": lambda: Regularized(Linear()),
    "kinetic": lambda: LocallyRegularized(Linear(), weight=1.0),
    "probe": lambda: LocallyRegularized(Linear(), weight=1.0, penalty="error-dt"),
    "biased": lambda: LocallyRegularized(Linear(), weight=1.0, sampling="biased", penalty="error-dt"),
    "global": lambda: GloballyRegularized(Linear(), weight=1.0),
    "rnode": lambda: RNODERegularized(Linear()),
    "steer": lambda: SteerRegularized(Linear(), b=0.1),
    "taynode": lambda: TayNODERegularized(Linear(), order=2),
}


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("kind", list(MODELS))
def test_a_call_checks_y0_finite_once(kind, training):
    model = MODELS[kind]().train(training)
    y0 = torch.randn(4, 3)
    checks = mock.patch.object(
        local_reg._validate, "check_finite_state", wraps=local_reg._validate.check_finite_state
    )
    with checks as check:
        model(y0, [0.0, 1.0])
    assert check.call_count == 1


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("kind", ["kinetic", "probe", "biased", "rnode", "steer"])
def test_a_non_finite_y0_is_refused_by_name_with_the_draws_undone(kind, training):
    model = MODELS[kind]().train(training)
    model.generator = torch.Generator().manual_seed(1)
    before = model.generator.get_state()
    y0 = torch.tensor([[0.0, float("nan"), 1.0]])
    with pytest.raises(ValueError, match=NON_FINITE_Y0):
        model(y0, [0.0, 1.0])
    # The solve refuses y0 after t_reg was drawn: the draw is undone with the failed call.
    assert torch.equal(model.generator.get_state(), before)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("kind", ["plain", "global", "rnode", "steer", "taynode"])
def test_a_non_finite_y0_is_refused_by_name(kind, training):
    model = MODELS[kind]().train(training)
    # Refused before func is evaluated, by y0's own index (an augmented solve's state is flat).
    unevaluated = mock.patch.object(Linear, "forward", side_effect=AssertionError("func evaluated"))
    with unevaluated, pytest.raises(ValueError, match=NON_FINITE_Y0):
        model(torch.tensor([[0.0, float("nan"), 1.0]]), [0.0, 1.0])


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        ([[1.0, 2.0, 3.0]], TypeError, "y0 must be a torch.Tensor, got list"),
        (torch.zeros(4, 3, dtype=torch.int64), TypeError, "y0 must have a floating dtype"),
        (torch.zeros(4, 3, device="meta"), ValueError, "y0 is on the meta device"),
        (torch.zeros(4, 3).to_sparse(), TypeError, "y0 must be a dense tensor"),
    ],
)
@pytest.mark.parametrize("kind", ["probe", "global"])
def test_a_y0_of_another_kind_is_refused_by_name(kind, bad, error, message):
    with pytest.raises(error, match=f"^{message}"):
        MODELS[kind]()(bad, [0.0, 1.0])


@pytest.mark.parametrize(
    "make",
    [
        lambda options: LocallyRegularized(Linear(), weight=1.0, method="rk4", options=options),
        lambda options: LocallyRegularized(ScaledNoise(), weight=1.0, options=options),
        lambda options: SteerRegularized(Linear(), method="rk4", options=options),
    ],
    ids=["ode", "sde", "steer"],
)
@pytest.mark.parametrize("training", [True, False])
def test_too_many_fixed_steps_names_the_models_option(make, training):
    """The count named is this call's: a training call draws times (STEER's end time anywhere in
    [t1 - b, t1 + b], a regularization time added to the output times) that may need more steps,
    so the advice says it is a lower bound, not a count every call fits in."""
    model = make({"step_size": 1e-3, "max_steps": 10}).train(training)
    model_spelling = (
        r"more than max_steps=10: pass options=\{'max_steps': (\d+)\} or a longer step_size "
        r"\((\d+) is this call's count: a training call's drawn times, a regularization time added "
        r"to the output times or STEER's end time, may need more\)$"
    )
    with pytest.raises(ValueError, match=model_spelling) as info:
        model(torch.randn(4, 3), [0.0, 1.0])
    advised = cast(re.Match, re.search(model_spelling, str(info.value)))
    needed = int(advised.group(1))
    assert int(advised.group(2)) == needed
    # The count it names is enough for this call's times: the model built with it solves them.
    make({"step_size": 1e-3, "max_steps": needed}).train(training)(torch.randn(4, 3), [0.0, 1.0])


def test_an_adjoints_backward_solve_names_its_own_max_steps():
    model = LocallyRegularized(
        Linear(),
        weight=1.0,
        gradient=BacksolveAdjoint(method="rk4", step_size=1e-3, max_steps=10),
    )
    ys = model(torch.randn(4, 3), [0.0, 1.0])
    with pytest.raises(ValueError, match=r"pass BacksolveAdjoint\(max_steps=\d+\) or a longer step_size$"):
        (ys[-1].square().sum() + model.reg_loss).backward()


@pytest.mark.parametrize("penalty", [{}, {"penalty": "error-dt"}], ids=["default", "probe"])
def test_jump_times_beside_a_models_fixed_steps_are_refused_not_dropped(penalty):
    """local_reg.odeint lands fixed steps on jumps at their grid's points; a model's fixed-step main
    solve does not read its controller, and with a probe penalty (which reads the controller) it
    solved across the jump without a word, as if it were not there."""
    options = {"step_size": 0.1, "controller": PIController(jump_ts=[0.5])}
    with pytest.raises(ValueError, match=r"options\['controller'\]\.jump_ts cannot be read beside"):
        LocallyRegularized(Linear(), sampling="random", method="rk4", options=options, **penalty)
    # Where the main solve reads the controller (a backsolve's adaptive backward steps), it solved in
    # eval mode and failed in training, where the drawn time moves the grid, blaming the jump.
    with pytest.raises(ValueError, match=r"options\['controller'\]\.jump_ts cannot be read beside"):
        LocallyRegularized(
            Linear(),
            sampling="random",
            method="rk4",
            options=options,
            gradient=BacksolveAdjoint(method="dopri5"),
        )
    # An adaptive main solve reads them: the model is made, and solves.
    adaptive = {"controller": PIController(jump_ts=[0.5])}
    model = LocallyRegularized(Linear(), sampling="random", options=adaptive)
    assert torch.isfinite(model.eval()(torch.ones(2, 3), torch.tensor([0.0, 1.0]))).all()
