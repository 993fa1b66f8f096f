"""``PIController(step_ts=..., jump_ts=...)``: times every adaptive solve lands a step on, and at a
jump time a field that is discontinuous there, each step seeing one side of it only (diffrax's
``PIDController(step_ts, jump_ts)``, torchdiffeq's ``options["step_t"]`` and ``["jump_t"]``)."""

from __future__ import annotations

import bisect
import itertools
import math
import re

import numpy as np
import pytest
import torch
import torchsde
from hypothesis import given, settings
from hypothesis import strategies as st

from local_reg import (
    TABLEAUS,
    BacksolveAdjoint,
    Checkpoint,
    InterpolatingAdjoint,
    LocallyRegularized,
    PIController,
    Symplectic,
    odeint,
    odeint_event,
    sdeint,
    step,
)

DTYPE = torch.float64
ADAPTIVE = [name for name, tableau in TABLEAUS.items() if tableau.adaptive]
JUMP = 0.5


def forcing(t: torch.Tensor, at_jump: float = 100.0) -> torch.Tensor:
    """1 before the jump and -2 after it; at the jump itself ``at_jump``, neither side's value, so
    that a stage evaluated exactly there spoils a solve (the field may take any value there)."""
    return torch.where(t < JUMP, 1.0, torch.where(t > JUMP, -2.0, at_jump)).to(t.dtype)


def switched(t, y):
    return forcing(t).to(y.dtype) * torch.ones_like(y)


class Forced(torch.nn.Module):
    """``y' = -rate * y + amplitude * forcing(t)``; ``at_start`` replaces the forcing at ``t <= 0``
    (a field that jumps at the start of a solve from 0)."""

    def __init__(self, at_start: float | None = None) -> None:
        super().__init__()
        self.rate = torch.nn.Parameter(torch.tensor(1.3, dtype=DTYPE))
        self.amplitude = torch.nn.Parameter(torch.tensor(0.7, dtype=DTYPE))
        self.at_start = at_start

    def forward(self, t, y):
        level = forcing(t)
        if self.at_start is not None:
            level = torch.where(t <= 0.0, self.at_start, level)
        return -self.rate * y + self.amplitude * level.to(y.dtype)


def exact(model: Forced, y0: torch.Tensor, t0: float, t1: float) -> torch.Tensor:
    """The solution of :class:`Forced` at ``t1``, piece by piece (differentiable in the parameters)."""

    def piece(y, start, end, level):
        rest = model.amplitude * level / model.rate
        return rest + (y - rest) * torch.exp(-model.rate * (end - start))

    if (t0 - JUMP) * (t1 - JUMP) >= 0:
        return piece(y0, t0, t1, 1.0 if min(t0, t1) < JUMP else -2.0)
    first, second = (1.0, -2.0) if t0 < t1 else (-2.0, 1.0)
    return piece(piece(y0, t0, JUMP, first), JUMP, t1, second)


@pytest.mark.parametrize("method", ADAPTIVE)
@pytest.mark.parametrize("span", [(0.0, 1.0), (1.0, 0.0)], ids=["forward", "backward"])
def test_each_step_sees_one_side_of_the_jump(method, span):
    # y' = forcing(t) is piecewise constant: every method integrates it exactly, with no rejection,
    # as long as no step evaluates the field on the other side of the jump.
    y0 = torch.zeros(2, dtype=DTYPE)
    expected = exact_switched(0.0, *span)
    jumped = odeint(switched, y0, list(span), method=method, controller=PIController(jump_ts=[JUMP]))
    torch.testing.assert_close(jumped.ys[-1], torch.full((2,), expected, dtype=DTYPE), rtol=0, atol=1e-12)
    assert jumped.stats.n_rejected == 0
    ends = (jumped.steps.t + jumped.steps.dt).tolist()
    assert JUMP in jumped.steps.t.tolist() and JUMP in ends
    # Landing there alone (step_ts) is not enough: the step that ends at the jump evaluates its last
    # stages at it, on the other side, and the error estimate rejects it over and over.
    landed = odeint(switched, y0, list(span), method=method, controller=PIController(step_ts=[JUMP]))
    assert JUMP in landed.steps.t.tolist()
    assert landed.stats.n_rejected > 0
    assert jumped.stats.nfe < odeint(switched, y0, list(span), method=method).stats.nfe


def exact_switched(y0: float, t0: float, t1: float) -> float:
    """The solution of ``y' = forcing(t)`` at ``t1``."""

    def integral(t):  # of forcing from 0
        return t if t < JUMP else JUMP - 2.0 * (t - JUMP)

    return y0 + integral(t1) - integral(t0)


def test_a_step_that_lands_on_a_jump_up_to_rounding_ends_there():
    # From t0 the step to the jump has dt = jump - t0, and t0 + dt rounds to one ulp past the jump:
    # that step's last stages must still be taken before the jump, not at t0 + dt.
    t0, jump = -7.981575176220668, 9.764702974450021
    assert t0 + (jump - t0) > jump

    def field(t, y):
        level = torch.where(t < jump, 1.0, torch.where(t > jump, -2.0, 100.0))
        return level.to(y.dtype) * torch.ones_like(y)

    y0 = torch.zeros(1, dtype=DTYPE)
    solution = odeint(field, y0, [t0, jump + 1.0], first_step=20.0, controller=PIController(jump_ts=[jump]))
    assert solution.steps.t[1].item() == jump  # the first step landed there
    assert solution.stats.n_rejected == 0
    torch.testing.assert_close(
        solution.ys[-1], torch.full((1,), (jump - t0) - 2.0, dtype=DTYPE), rtol=1e-14, atol=0
    )


def test_a_jump_at_t0_starts_the_solve_after_it():
    # The field at t0 itself is 1e3 (at_start); declared as a jump, t0 is never evaluated: the
    # solution and the time gradient (dy(1)/dt0 = -f(t0+, y0)) are those of the field after t0.
    model = Forced(at_start=1e3)
    y0 = torch.tensor([1.0, -0.5], dtype=DTYPE)
    t = torch.tensor([0.0, 1.0], dtype=DTYPE, requires_grad=True)
    solution = odeint(model, y0, t, rtol=1e-10, atol=1e-12, controller=PIController(jump_ts=[0.0, JUMP]))
    solution.ys[-1].sum().backward()
    with torch.no_grad():
        torch.testing.assert_close(solution.ys[-1], exact(Forced(), y0, 0.0, 1.0), rtol=1e-8, atol=1e-10)
        # dL/dt0 = -<lambda(t0), f(t0+, y0)>, lambda(t0) = dy(1)/dy0 = exp(-rate).
        after = -(torch.exp(-model.rate) * (-model.rate * y0 + model.amplitude * 1.0)).sum()
    torch.testing.assert_close(t.grad[0], after, rtol=1e-8, atol=0)
    assert solution.stats.n_rejected == 0


@pytest.mark.parametrize(("times", "level"), [((0.0, JUMP, 0.8), 1.0), ((1.0, JUMP, 0.2), -2.0)])
def test_the_time_gradient_at_an_output_that_is_a_jump_takes_the_side_the_solve_came_from(times, level):
    # dL/dt_i = <v_i, f(t_i, y_i)> with f on the side the solve reached t_i from (the forcing before
    # the jump going forwards, after it going backwards), not the field's own value at it (100).
    model = Forced()
    y0 = torch.tensor([1.0, -0.5], dtype=DTYPE)
    t = torch.tensor(times, dtype=DTYPE, requires_grad=True)
    solution = odeint(model, y0, t, rtol=1e-10, atol=1e-12, controller=PIController(jump_ts=[JUMP]))
    solution.ys[1].sum().backward()
    with torch.no_grad():
        at_jump = exact(Forced(), y0, times[0], JUMP)
        rate = (-model.rate * at_jump + model.amplitude * level).sum()
    torch.testing.assert_close(t.grad[1], rate, rtol=1e-8, atol=0)


def test_a_jump_the_field_cannot_tell_from_t0_is_at_t0():
    # A float32 field sees t0 = 0.1 as 0.100000001, which is also where the jump at 0.1 rounds to:
    # the jump is at t0 (not a landing 1.5e-9 after it), and the first step starts after it.
    def field(t, y):
        return torch.where(t < 0.1, 0.0, torch.where(t > 0.1, 1.0, 1e3)).to(y.dtype) * torch.ones_like(y)

    solution = odeint(field, torch.zeros(1), [0.1, 1.0], controller=PIController(jump_ts=[0.1]))
    assert solution.stats.n_rejected == 0
    rounded_jump = float(torch.tensor(0.1, dtype=torch.float32))
    assert solution.steps.t[0].item() == 0.1 and rounded_jump not in solution.steps.t.tolist()
    assert solution.ys[-1].item() == pytest.approx(0.9, abs=1e-6)


@pytest.mark.parametrize("jump", [0.5, 0.1], ids=["representable", "rounded"])
def test_float32_times_are_moved_in_the_dtype_the_field_sees(jump):
    # A float32 state's field gets float32 times: 0.1 rounds to 0.100000001, and the field's own
    # comparison is in float32. The stage at the jump is moved by one float32 ulp, which a move of
    # one float64 ulp would round back onto the jump.
    def field(t, y):
        return torch.where(t < jump, 1.0, -2.0).to(y.dtype) * torch.ones_like(y)

    y0 = torch.zeros(3, dtype=torch.float32)
    solution = odeint(field, y0, [0.0, 1.0], controller=PIController(jump_ts=[jump]), rtol=1e-5, atol=1e-6)
    assert solution.stats.n_rejected == 0
    expected = jump - 2.0 * (1.0 - jump)
    torch.testing.assert_close(solution.ys[-1], torch.full((3,), expected), rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ADAPTIVE)
def test_interpolated_and_dense_outputs_across_the_jump_match_the_exact_solution(method):
    model = Forced()
    y0 = torch.tensor([1.0, -0.5], dtype=DTYPE)
    t = torch.linspace(0.0, 1.0, 23, dtype=DTYPE)  # 0.5 among them, and outputs inside steps
    controller = PIController(jump_ts=[JUMP])
    tolerance = 1e-9 if TABLEAUS[method].order >= 3 else 1e-6  # the low orders' steps, affordable
    solution = odeint(
        model, y0, t, method=method, rtol=tolerance, atol=tolerance, controller=controller, dense=True
    )
    with torch.no_grad():
        expected = torch.stack([exact(model, y0, 0.0, float(time)) for time in t])
        torch.testing.assert_close(solution.ys, expected, rtol=0, atol=1e3 * tolerance)
        inside = torch.tensor([0.123, 0.4999, JUMP, 0.5001, 0.97], dtype=DTYPE)
        evaluated = solution.evaluate(inside)
        expected = torch.stack([exact(model, y0, 0.0, float(time)) for time in inside])
        torch.testing.assert_close(evaluated, expected, rtol=0, atol=1e3 * tolerance)


def test_step_ts_end_steps_and_times_outside_the_span_do_nothing():
    model = Forced()
    y0 = torch.tensor([1.0], dtype=DTYPE)
    with torch.no_grad():
        plain = odeint(model, y0, [0.0, 2.0], controller=PIController(jump_ts=[JUMP]))
        landed = odeint(
            model,
            y0,
            [0.0, 2.0],
            controller=PIController(jump_ts=[JUMP], step_ts=[-1.0, 0.0, 0.3, 1.7, 2.0, 9.0]),
        )
    assert {0.3, 1.7} <= set(landed.steps.t.tolist())
    assert landed.stats.n_accepted > plain.stats.n_accepted
    torch.testing.assert_close(landed.ys, plain.ys, rtol=1e-5, atol=1e-7)
    # Out of the span only: the same steps as without them.
    outside = odeint(model, y0, [0.0, 2.0], controller=PIController(jump_ts=[JUMP], step_ts=[-1.0, 0.0, 2.0]))
    assert outside.steps.t.tolist() == plain.steps.t.tolist()


@pytest.mark.parametrize(
    "gradient",
    [Checkpoint(), Checkpoint(checkpoints=2), Symplectic(), Symplectic(checkpoints=3)],
    ids=["checkpoint", "checkpoint-2", "symplectic", "symplectic-3"],
)
@pytest.mark.parametrize("method", ADAPTIVE)
@pytest.mark.parametrize("outputs", ["inside", "ends"])
def test_graph_free_gradients_across_a_jump_equal_backpropagation(method, gradient, outputs):
    # "inside": outputs inside the steps that end at the jump (0.49) and start at it (0.51), read
    # from their dense output; "ends": no output inside a step. Jumps declared at t0, where the field
    # jumps too (at_start: the first step starts after it, in the replays too), and at the end.
    times = [0.0, 0.3, 0.49, JUMP, 0.51, 1.2] if outputs == "inside" else [0.0, 1.2]
    t = torch.tensor(times, dtype=DTYPE)
    controller = PIController(jump_ts=[0.0, JUMP, 1.2])
    tolerance = 1e-7 if TABLEAUS[method].order >= 3 else 1e-4

    def gradients(gradient):
        model = Forced(at_start=3.0)
        y0 = torch.tensor([1.0, -0.5], dtype=DTYPE, requires_grad=True)
        solution = odeint(
            model,
            y0,
            t,
            method=method,
            rtol=tolerance,
            atol=tolerance,
            controller=controller,
            gradient=gradient,
        )
        weights = torch.arange(1.0, 2.0 * len(times) + 1, dtype=DTYPE).reshape(len(times), 2)
        loss = (solution.ys * weights).sum()
        return torch.autograd.grad(loss, (y0, model.rate, model.amplitude))

    for own, direct in zip(gradients(gradient), gradients("direct"), strict=True):
        torch.testing.assert_close(own, direct, rtol=1e-10, atol=1e-12)


def test_the_backsolve_adjoint_restarting_at_a_jump_starts_on_its_own_side():
    # The backward solve restarts at every output time with a cotangent; at the jump (where the
    # field's own value, 100, is neither side's) it evaluates the field just before the jump from its
    # first evaluation on. Measured when written: 94 backward evaluations and the rate's gradient to
    # 4e-8 relative; starting from the field's value at the jump, 190 and 4e-5.
    model, reference = Forced(), Forced()
    y0 = torch.tensor([1.0], dtype=DTYPE, requires_grad=True)
    solution = odeint(
        model, y0, [0.0, JUMP, 1.0], controller=PIController(jump_ts=[JUMP]), gradient="adjoint"
    )
    (solution.ys[1] + solution.ys[2]).sum().backward()
    start = y0.detach().clone().requires_grad_(True)
    (exact(reference, start, 0.0, JUMP) + exact(reference, start, 0.0, 1.0)).sum().backward()
    torch.testing.assert_close(model.rate.grad, reference.rate.grad, rtol=1e-6, atol=0)
    torch.testing.assert_close(y0.grad, start.grad, rtol=1e-6, atol=0)


def test_checkpoint_segments_that_start_after_a_jump_equal_backpropagation():
    # With few checkpoints the backward pass re-computes segments of steps; one that starts with the
    # step after a jump evaluates its first stage afresh there, as the forward did. At this
    # tolerance the solve takes four steps, the third from the jump, and two checkpoints keep steps
    # 0 and 2: the segment of steps 2 and 3 starts there (checked when written).
    t = torch.tensor([0.0, 1.2], dtype=DTYPE)
    controller = PIController(jump_ts=[JUMP])

    def gradients(gradient):
        model = Forced()
        y0 = torch.tensor([1.0, -0.5], dtype=DTYPE, requires_grad=True)
        solution = odeint(model, y0, t, rtol=1e-3, atol=1e-3, controller=controller, gradient=gradient)
        return torch.autograd.grad(solution.ys[-1].sum(), (y0, model.rate, model.amplitude))

    direct = gradients("direct")
    for checkpoints in range(2, 6):
        for own, reference in zip(gradients(Checkpoint(checkpoints=checkpoints)), direct, strict=True):
            torch.testing.assert_close(own, reference, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("span", [(0.0, 1.0), (1.0, 0.0)], ids=["forward", "backward"])
def test_gradients_across_the_jump_match_the_exact_solutions(span):
    # Backpropagation through the solve (and the backsolve adjoint, whose backward solve lands on
    # the jump too) against autograd through the exact solution.
    reference_model = Forced()
    y0 = torch.tensor([1.0, -0.5], dtype=DTYPE, requires_grad=True)
    expected = torch.autograd.grad(
        exact(reference_model, y0, *span).sum(), (y0, reference_model.rate, reference_model.amplitude)
    )
    for gradient, tolerance in (("direct", 1e-7), (BacksolveAdjoint(rtol=1e-10, atol=1e-12), 1e-7)):
        model = Forced()
        start = y0.detach().clone().requires_grad_(True)
        solution = odeint(
            model,
            start,
            list(span),
            rtol=1e-10,
            atol=1e-12,
            controller=PIController(jump_ts=[JUMP]),
            gradient=gradient,
        )
        got = torch.autograd.grad(solution.ys[-1].sum(), (start, model.rate, model.amplitude))
        for own, reference in zip(got, expected, strict=True):
            torch.testing.assert_close(own, reference, rtol=tolerance, atol=tolerance)


def test_the_backsolve_adjoint_lands_on_jumps_going_backwards():
    # Without the landing the backward solve steps across the jump, rejected over and over (254
    # evaluations when measured); landing there, and starting the step after it afresh on its own
    # side, it costs about what the forward does (81; 176 if the step after the jump reused the last
    # stage of the step before).
    def backward_calls(controller):
        model = Forced()
        y0 = torch.tensor([1.0], dtype=DTYPE, requires_grad=True)
        solution = odeint(model, y0, [0.0, 1.0], controller=controller, gradient="adjoint")
        solution.ys[-1].sum().backward()
        return solution.stats.nfe_backward

    assert backward_calls(PIController(jump_ts=[JUMP])) < 0.5 * backward_calls(PIController())


def test_an_event_after_a_jump_is_found_exactly():
    # y = 0.1 + t until the jump, then falls at rate 2: zero at t = 0.8.
    y0 = torch.full((1,), 0.1, dtype=DTYPE)
    t0 = torch.tensor(0.0, dtype=DTYPE)
    event_t, solution = odeint_event(
        switched, y0, t0, event_fn=lambda t, y: y[0], controller=PIController(jump_ts=[JUMP])
    )
    assert float(event_t) == pytest.approx(0.8, abs=1e-12)
    assert float(solution.ys[-1, 0]) == pytest.approx(0.0, abs=1e-12)


def test_compiled_steps_beside_a_jump_run_with_the_moved_times():
    y0 = torch.zeros(2, dtype=DTYPE)
    solution = odeint(
        switched, y0, [0.0, 1.0], controller=PIController(jump_ts=[JUMP]), compile={"backend": "eager"}
    )
    assert solution.stats.n_rejected == 0
    torch.testing.assert_close(
        solution.ys[-1], torch.full((2,), exact_switched(0.0, 0.0, 1.0), dtype=DTYPE), rtol=0, atol=1e-12
    )


class SwitchedNoisy(torch.nn.Module):
    """``dy = forcing(t) dt + 0.3 dW`` (diagonal noise): Euler--Maruyama integrates each piece exactly,
    ``y(t) = y0 + int forcing + 0.3 (W(t) - W(0))``, and its error estimate is zero there."""

    noise_type, sde_type = "diagonal", "ito"

    def f(self, t, y):
        return forcing(t).to(y.dtype) * torch.ones_like(y)

    def g(self, t, y):
        return torch.full_like(y, 0.3)


def test_sdeint_lands_on_jumps_and_evaluates_the_drift_on_each_steps_side():
    y0 = torch.zeros(4, 2, dtype=DTYPE)

    def solve(controller):
        bm = torchsde.BrownianInterval(0.0, 1.0, size=(4, 2), dtype=DTYPE, entropy=7)
        return sdeint(SwitchedNoisy(), y0, [0.0, 1.0], bm=bm, controller=controller), bm(0.0, 1.0)

    solved, increment = solve(PIController(jump_ts=[JUMP]))
    assert solved.stats.n_rejected == 0 and JUMP in solved.steps.t.tolist()
    expected = y0 + exact_switched(0.0, 0.0, 1.0) + 0.3 * increment
    torch.testing.assert_close(solved.ys[-1], expected, rtol=0, atol=1e-12)
    across, _ = solve(PIController())
    assert across.stats.n_rejected > 0
    # step_ts lands too, without the side: the step ending at the jump sees the drift after it.
    landed, _ = solve(PIController(step_ts=[0.37, JUMP]))
    assert {0.37, JUMP} <= set(landed.steps.t.tolist()) and landed.stats.n_rejected > 0


def test_sdeint_starts_after_a_jump_at_t0():
    # A diffusion that jumps at t0 (0.6 there, 0.3 after), declared as a jump: the first step's
    # drift and diffusion are taken just after t0, so the path is the one with 0.3 throughout,
    # exactly (with 0.6 for the first step it would not be).
    class StartJump(SwitchedNoisy):
        def g(self, t, y):
            return torch.full_like(y, 0.6 if float(t) <= 0.0 else 0.3)

    bm = torchsde.BrownianInterval(0.0, 1.0, size=(4, 2), dtype=DTYPE, entropy=7)
    y0 = torch.zeros(4, 2, dtype=DTYPE)
    controller = PIController(jump_ts=[0.0, JUMP])
    solved = sdeint(StartJump(), y0, [0.0, 1.0], bm=bm, controller=controller, rtol=1e-4, atol=1e-4)
    assert solved.stats.n_rejected == 0
    expected = y0 + exact_switched(0.0, 0.0, 1.0) + 0.3 * bm(0.0, 1.0)
    torch.testing.assert_close(solved.ys[-1], expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        ([0.1, math.nan], ValueError, "jump_ts must be finite"),
        ("01", TypeError, "jump_ts must be a 1-D tensor"),
        (torch.zeros(2, 2), ValueError, r"jump_ts must be a 1-D tensor of times, got shape \(2, 2\)"),
        ([0.1, "a"], TypeError, "jump_ts must hold real numbers"),
        (np.array([1j]), TypeError, "jump_ts must be a real array"),
    ],
)
def test_bad_landing_times_are_refused_naming_them(value, error, match):
    with pytest.raises(error, match=match):
        PIController(jump_ts=value)
    with pytest.raises(error, match=match.replace("jump_ts", "step_ts")):
        PIController(step_ts=value)


def test_landing_times_are_kept_sorted_once_and_compare_by_value():
    controller = PIController(jump_ts=torch.tensor([0.7, 0.2, 0.7], dtype=DTYPE), step_ts=np.array([3, 1]))
    assert controller.jump_ts == (0.2, 0.7) and controller.step_ts == (1.0, 3.0)
    assert controller == PIController(jump_ts=[0.2, 0.7], step_ts=(1.0, 3.0))
    assert hash(controller) == hash(PIController(jump_ts=[0.7, 0.2], step_ts=[3.0, 1.0]))


def test_fixed_steps_refuse_landing_times():
    y0 = torch.zeros(1, dtype=DTYPE)
    with pytest.raises(ValueError, match=re.escape("controller.jump_ts needs an adaptive solve")):
        # Steps of 1/7: the jump is inside one.
        odeint(
            switched, y0, [0.0, 1.0], method="rk4", step_size=0.15, controller=PIController(jump_ts=[JUMP])
        )
    with pytest.raises(ValueError, match=re.escape("controller.step_ts need an adaptive solve")):
        odeint(switched, y0, [0.0, 1.0], method="rk4", step_size=0.1, controller=PIController(step_ts=[JUMP]))


def test_a_controller_setting_more_than_jump_ts_beside_fixed_steps_is_refused():
    y0 = torch.zeros(1, dtype=DTYPE)
    with pytest.raises(ValueError, match=re.escape("controller would go unread beside a fixed step_size")):
        odeint(
            switched,
            y0,
            [0.0, JUMP, 1.0],
            method="rk4",
            step_size=0.1,
            controller=PIController(safety=0.8, jump_ts=[JUMP]),
        )


FIXED_STEP_METHODS = ["euler", "midpoint", "rk4", "dopri5"]  # dopri5: an embedded pair at a fixed step


@pytest.mark.parametrize("method", FIXED_STEP_METHODS)
@pytest.mark.parametrize(
    "times", [[0.0, JUMP, 1.0], [1.0, JUMP, 0.0], [0.0, 0.25, JUMP], [0.0, 1.0], [1.0, 0.0]]
)
@pytest.mark.parametrize("dense", [False, True])
def test_fixed_steps_read_a_jump_at_a_steps_end_on_each_side(method, times, dense):
    """Without jump_ts the step ending on the jump reads its last stage beyond it (a silently
    different solve, 3e-2 off with rk4); with them each step reads its own side: exact for a
    piecewise-constant field. The jump is an output time, or a point of the fixed grid between two
    (steps of 0.1 from 0 or 1). With dense output too, whose stage at a step's end is read inside
    the step, and so is no first stage for the step after the jump."""
    y0 = torch.zeros(1, dtype=DTYPE)
    expected = torch.full((1,), exact_switched(0.0, times[0], times[-1]), dtype=DTYPE)
    controller = PIController(jump_ts=[JUMP])
    solution = odeint(switched, y0, times, method=method, step_size=0.1, controller=controller, dense=dense)
    torch.testing.assert_close(solution.ys[-1], expected, rtol=0, atol=1e-12)
    if method == "rk4" and times[-1] != JUMP:
        unmarked = odeint(switched, y0, times, method=method, step_size=0.1).ys[-1]
        assert float((unmarked - expected).abs()) > 1e-3
    if dense:
        inside = torch.tensor([0.45, 0.55], dtype=DTYPE)
        inside = inside[(inside - min(times)) * (inside - max(times)) <= 0]
        expected_inside = torch.tensor(
            [[exact_switched(0.0, times[0], float(time))] for time in inside], dtype=DTYPE
        )
        torch.testing.assert_close(solution.evaluate(inside), expected_inside, rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", ["rk4", "dopri5", "tsit5"])
@pytest.mark.parametrize("jump", [0.3, 0.7, 0.2])
@pytest.mark.parametrize("times", [[0.0, 1.0], [1.0, 0.0]], ids=["forward", "backward"])
def test_a_jump_a_few_ulps_from_its_grid_point_is_read_on_each_side(method, jump, times):
    """0 + 3 * 0.1 is 0.30000000000000004, not 0.3 (and 1 - 7 * 0.1 is 0.29999999999999993): the
    stages beside the grid's point must lie beyond the user's jump too. Each step took its side
    from the grid's point alone, so a stage next to it fell on the jump or past it (tsit5: 0.7 off).
    The field's value at the jump itself, a third one, is never read."""

    def switched_at(t, y):
        value = torch.where(t < jump, 1.0, -2.0)
        return torch.where(t == jump, 100.0, value) * torch.ones_like(y)

    start, end = times
    before, after = sorted((start, end))
    expected = (min(jump, after) - before) * 1.0 + (after - max(jump, before)) * -2.0
    expected = expected if end > start else -expected
    solution = odeint(
        switched_at,
        torch.zeros(1, dtype=DTYPE),
        times,
        method=method,
        step_size=0.1,
        controller=PIController(jump_ts=[jump]),
    )
    assert float(solution.ys[-1]) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("adjoint", [BacksolveAdjoint, InterpolatingAdjoint])
@pytest.mark.parametrize("forward_step", [0.25, None], ids=["fixed", "adaptive"])
def test_an_adjoints_fixed_steps_across_a_jump_are_refused(adjoint, forward_step):
    """Backward steps of 0.2 from 1 cross the jump at 0.5 (0.6 to 0.4): the gradient read the
    field on both sides (6% off with rk4) with no error; steps of 0.125 end on it."""
    settings = {"method": "rk4", "step_size": forward_step} if forward_step else {}
    y0 = torch.tensor([1.0, -0.5], dtype=DTYPE)
    with pytest.raises(ValueError, match=r"\(step_size=0\.2\): its fixed backward steps do not end"):
        odeint(
            Forced(),
            y0,
            [0.0, 1.0],
            controller=PIController(jump_ts=[JUMP]),
            gradient=adjoint(step_size=0.2),
            **settings,
        )
    model = Forced()
    solution = odeint(
        model,
        y0,
        [0.0, 1.0],
        controller=PIController(jump_ts=[JUMP]),
        gradient=adjoint(step_size=0.125),
        **settings,
    )
    (gradient,) = torch.autograd.grad(solution.ys[-1].sum(), [model.rate])
    reference_model = Forced()
    reference = odeint(reference_model, y0, [0.0, 1.0], controller=PIController(jump_ts=[JUMP]), **settings)
    (expected,) = torch.autograd.grad(reference.ys[-1].sum(), [reference_model.rate])
    # Within the discretizations' difference (0.4% at a forward step of 0.25); across the jump, 6%.
    torch.testing.assert_close(gradient, expected, rtol=1e-2, atol=0)


def test_an_adjoints_fixed_steps_after_an_event_beside_a_jump_are_refused():
    """After an event the backward steps start at the event's time, known once the solve is done:
    steps of 0.1 from it crossed the jump at 0.3 (the gradient 2-4% off, no error), and are refused
    in the backward pass; a jump beyond the event, which no step reaches, is not in their way."""

    def gradient_of_event_time(jump: float) -> torch.Tensor:
        model = Forced()
        event_time, _ = odeint_event(
            model,
            torch.tensor([1.0, -0.5], dtype=DTYPE),
            0.0,
            event_fn=lambda t, y: t - 0.8 + 0.05 * y[0],
            controller=PIController(jump_ts=[jump]),
            gradient=BacksolveAdjoint(step_size=0.1, method="rk4"),
        )
        return torch.autograd.grad(event_time, [model.rate])[0]

    with pytest.raises(ValueError, match=r"\(step_size=0\.1\): its fixed backward steps do not end"):
        gradient_of_event_time(0.3)
    assert torch.isfinite(gradient_of_event_time(5.0))


@pytest.mark.parametrize(
    "gradient",
    ["direct", BacksolveAdjoint(), Checkpoint(), Symplectic()],
    ids=lambda g: getattr(g, "name", g),
)
def test_gradients_of_fixed_steps_read_each_side_of_a_jump(gradient):
    """The cotangent is at t[-1] only, so the backsolve adjoint's fixed backward steps would run
    from there to t0 in one stretch, across the jump (steps of 0.15 from 1.2 end at 0.45, not at
    0.5); they end on it too, and read each side of it, as the forward steps did."""
    model = Forced()
    y0 = torch.tensor([1.0, -0.5], dtype=DTYPE, requires_grad=True)
    solution = odeint(
        model,
        y0,
        [0.0, JUMP, 1.2],
        method="rk4",
        step_size=0.15,
        controller=PIController(jump_ts=[JUMP]),
        gradient=gradient,
    )
    inputs = (y0, model.rate, model.amplitude)
    ours = torch.autograd.grad(solution.ys[-1].sum(), inputs)
    expected = torch.autograd.grad(exact(model, y0, 0.0, 1.2).sum(), inputs)
    for own, exact_gradient in zip(ours, expected, strict=True):
        torch.testing.assert_close(own, exact_gradient, rtol=0, atol=1e-4)


@pytest.mark.parametrize("gap_ulps", [1, 3, 5, 20])
def test_jumps_a_few_ulps_apart_and_next_to_the_end_are_solved(gap_ulps):
    # Jumps closer than the loop's smallest step (4 ulps) cannot each end a step: the step after
    # the first starts beyond the last of them, and a step ending within 4 ulps of a jump is taken
    # to end at it. Farther apart, a step of a few ulps goes between them.
    second = 1.0 + gap_ulps * math.ulp(1.0)
    last = 2.0 - math.ulp(2.0)

    def two_switches(t, y):
        return ((t >= 1.0).to(y.dtype) + (t >= second).to(y.dtype) - (t >= last).to(y.dtype) * 50).expand_as(
            y
        )

    y0 = torch.zeros(1, dtype=DTYPE)
    controller = PIController(jump_ts=[1.0, second, last], step_ts=[math.nextafter(2.0, 0.0)])
    solved = odeint(two_switches, y0, [0.0, 2.0], controller=controller)
    assert solved.ys[-1].item() == pytest.approx(2.0, abs=1e-12)  # the integral of 1 + 1 over [1, 2]
    assert solved.stats.n_rejected == 0


def test_jump_times_the_field_cannot_tell_apart_are_one():
    # A float32 state's field sees float32 times, 0.0078 apart at 1e5: jumps at 1e5 and 1e5 + 0.001
    # are one time to it (its own comparisons switch both at 1e5), and one landing for the solve.
    jumps = [1e5, 1e5 + 0.001]

    def switches(t, y):
        return sum((t >= jump).to(y.dtype) for jump in jumps).expand_as(y)

    t = torch.tensor([1e5 - 10.0, 1e5 + 10.0], dtype=DTYPE)  # a float64 t would give float64 times
    solved = odeint(switches, torch.zeros(1), t.tolist(), controller=PIController(jump_ts=jumps))
    assert solved.stats.n_rejected == 0
    assert solved.ys[-1].item() == pytest.approx(20.0, rel=1e-6)
    assert 1e5 in solved.steps.t.tolist()


def test_an_output_time_a_few_ulps_past_a_jump_ends_the_step_at_the_jump():
    # With step_to_outputs the step lands on the output time, 2 ulps past the jump: it ends at the
    # jump (its last stages before it), and the next step starts afresh after it.
    t = [0.0, JUMP + 2 * math.ulp(JUMP), 1.0]
    y0 = torch.zeros(1, dtype=DTYPE)
    solved = odeint(switched, y0, t, controller=PIController(jump_ts=[JUMP]), step_to_outputs=True)
    assert solved.stats.n_rejected == 0
    torch.testing.assert_close(
        solved.ys[-1], torch.full((1,), exact_switched(0.0, 0.0, 1.0), dtype=DTYPE), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize(
    "gradient", ["direct", "checkpoint", "symplectic", "adjoint", "interpolating_adjoint"]
)
def test_a_locally_regularized_model_solves_with_jump_ts(gradient):
    # The controller is one of the main solve's options: the main solve lands on the jump with every
    # gradient method, in fewer evaluations, and the model trains through it.
    t = torch.tensor([0.0, 0.4, 1.0], dtype=DTYPE)
    y0 = torch.tensor([[1.0], [-0.5]], dtype=DTYPE)

    def main_solve(**options):
        torch.manual_seed(0)
        model = LocallyRegularized(Forced(), sampling="random", gradient=gradient, **options)
        ys = model(y0, t)
        (ys.square().sum() + model.reg_loss).backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        return ys, model.stats.main

    landed, landed_stats = main_solve(options={"controller": PIController(jump_ts=[JUMP])})
    across, across_stats = main_solve()
    assert landed_stats.nfe < across_stats.nfe
    torch.testing.assert_close(landed, across, rtol=1e-4, atol=1e-6)


@st.composite
def piecewise_problems(draw):
    """A span (either direction), jump times inside it (some a few ulps apart, some at its ends),
    a level per piece, output times (some at jumps) and a method."""
    t0 = draw(st.floats(-2.0, 2.0))
    t1 = t0 + draw(st.sampled_from([-1.0, 1.0])) * draw(st.floats(0.5, 3.0))
    fractions = draw(st.lists(st.floats(0.01, 0.99), max_size=5))
    jumps = [t0 + f * (t1 - t0) for f in fractions]
    if jumps and draw(st.booleans()):  # a cluster: a second jump a few ulps after the first
        jumps.append(jumps[0] + draw(st.integers(1, 6)) * math.ulp(jumps[0]))
    if draw(st.booleans()):  # a jump at an end of the span does nothing
        jumps.append(draw(st.sampled_from([t0, t1])))
    cuts = sorted(set(jumps))
    levels = draw(st.lists(st.floats(-3.0, 3.0), min_size=len(cuts) + 1, max_size=len(cuts) + 1))
    outputs = sorted(draw(st.lists(st.floats(0.05, 0.95), max_size=3)))
    times = [t0, *(t0 + f * (t1 - t0) for f in outputs), t1]
    if fractions and draw(st.booleans()):
        times = sorted({*times, jumps[0]}, reverse=t1 < t0)
    if len(set(times)) != len(times):
        times = [t0, t1]
    return t0, t1, cuts, levels, times, draw(st.sampled_from(ADAPTIVE)), draw(st.booleans())


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(piecewise_problems())
def test_piecewise_constant_fields_are_integrated_exactly_across_any_jumps(problem):
    # y' = the level of the piece t lies in (and 1e3 exactly at a jump): every method integrates it
    # exactly, with no rejected step, when each step sees one piece only.
    t0, t1, cuts, levels, times, method, step_to_outputs = problem

    def level_at(t: float) -> float:
        if t in cuts:
            return 1e3
        return levels[bisect.bisect_right(cuts, t)]

    def field(t, y):
        return torch.full_like(y, level_at(float(t)))

    def exact_at(time: float) -> float:
        low, high = sorted((t0, time))
        points = [low, *(cut for cut in cuts if low < cut < high), high]
        integral = sum(
            (b - a) * levels[bisect.bisect_right(cuts, (a + b) / 2)] for a, b in itertools.pairwise(points)
        )
        return integral if time >= t0 else -integral

    solution = odeint(
        field,
        torch.zeros(1, dtype=DTYPE),
        times,
        method=method,
        controller=PIController(jump_ts=cuts),
        step_to_outputs=step_to_outputs,
    )
    expected = torch.tensor([[exact_at(time)] for time in times], dtype=DTYPE)
    torch.testing.assert_close(solution.ys, expected, rtol=0, atol=1e-9)
    assert solution.stats.n_rejected == 0


def test_an_event_at_a_jump_is_differentiated_on_the_solves_side():
    # A time limit at the jump, t = 0.5, written through the state (0 * y): the event is the jump
    # itself, and its gradient reads dy/dt there, which on the solve's side is 1 (the field is NaN
    # at the jump): dt_e/dy0 = -(dh/dy) / (dh/dt + <dh/dy, f>) = 0, not NaN.
    def field(t, y):
        return forcing(t, at_jump=math.nan).to(y.dtype) * torch.ones_like(y)

    y0 = torch.tensor([-0.5], dtype=DTYPE, requires_grad=True)
    t0 = torch.tensor(0.0, dtype=DTYPE)
    controller = PIController(jump_ts=[JUMP])
    event_t, _ = odeint_event(
        field, y0, t0, event_fn=lambda t, y: (t - JUMP) + 0.0 * y[0], controller=controller
    )
    assert event_t.item() == JUMP
    event_t.backward()
    torch.testing.assert_close(y0.grad, torch.tensor([0.0], dtype=DTYPE))


def test_an_event_solve_from_a_jump_differentiates_t0_on_its_side():
    # From t0 = the jump, y' = -2 after it: the event y = 0 from y0 = 1 is at t0 + 0.5, and
    # dt_e/dt0 = -<dt_e/dy0, f(t0+, y0)> = -(1/2)(-2) = 1 (the field NaN at t0 itself).
    def field(t, y):
        return forcing(t, at_jump=math.nan).to(y.dtype) * torch.ones_like(y)

    y0 = torch.tensor([1.0], dtype=DTYPE)
    t0 = torch.tensor(JUMP, dtype=DTYPE, requires_grad=True)
    controller = PIController(jump_ts=[JUMP])
    event_t, _ = odeint_event(field, y0, t0, event_fn=lambda t, y: y[0], controller=controller)
    assert event_t.item() == pytest.approx(JUMP + 0.5, abs=1e-12)
    event_t.backward()
    torch.testing.assert_close(t0.grad, torch.tensor(1.0, dtype=DTYPE))


@pytest.mark.parametrize("method", ["tsit5", "dopri8", "rk4"])
def test_the_public_step_reads_the_field_on_its_own_side_of_a_jump_at_either_end(method):
    # f = 0 before the jump at 1 and 1 from it on (at it: the left side for `step_in`, the right
    # side for `step_out`): a step that ends at the jump integrates 0 exactly, one that starts there
    # integrates 1 exactly; without jump_ts the stages at the jump read the other side's value.
    y = torch.zeros(1, dtype=torch.float64)

    def step_in(t, state):
        return (t >= 1.0).to(state.dtype).expand_as(state)

    def step_out(t, state):
        return (t > 1.0).to(state.dtype).expand_as(state)

    ending = step(step_in, 0.5, y, 0.5, method, jump_ts=[1.0])
    starting = step(step_out, 1.0, y, 0.5, method, jump_ts=torch.tensor([1.0]))
    assert float(ending.y1) == 0.0
    assert float(starting.y1) == pytest.approx(0.5, abs=1e-15)
    assert float(step(step_in, 0.5, y, 0.5, method).y1) > 1e-3
    assert float(step(step_out, 1.0, y, 0.5, method).y1) < 0.49
    # Going backwards from the jump reads the left side.
    assert float(step(step_in, 1.0, y, -0.5, method, jump_ts=[1.0]).y1) == 0.0


def test_the_public_step_refuses_jump_ts_that_are_no_times():
    y = torch.zeros(1, dtype=torch.float64)
    with pytest.raises(ValueError, match="jump_ts must be finite"):
        step(lambda t, state: state, 0.0, y, 0.1, "tsit5", jump_ts=[math.nan])
    with pytest.raises(TypeError, match="jump_ts"):
        step(lambda t, state: state, 0.0, y, 0.1, "tsit5", jump_ts="1")


def test_a_controllers_landings_within_a_span_are_the_rounded_times_it_holds():
    """``PIController.within`` against the rule written out: every time rounded to the field's
    dtype, one that rounds to an end of the span that end, then the ``jump_ts`` in ``[low, high]``
    and the ``step_ts`` strictly inside that are not jumps. Times just outside the span that round
    into it, onto an end, or stay outside; many times, a short window (only those near it are
    rounded now, and the step times are matched against the jumps as a set)."""
    rng = np.random.default_rng(0)
    spans = ((0.0, 0.01), (1e3, 1e3 + 1))
    for dtype, (low, high) in itertools.product((torch.float32, torch.float64), spans):
        ulp = float(np.spacing(np.float32(high))) if dtype == torch.float32 else float(np.spacing(high))
        near = [low - ulp / 3, low + ulp / 3, high - ulp / 3, high + ulp / 3, high + 3 * ulp, low - 3 * ulp]
        spread = list(rng.uniform(low - 1.0, high + 1.0, 400))
        # Times within rounding of the ends, outside the span in one list and inside in the other.
        jump_ts, step_ts = [*spread[::2], *near[::2]], [*spread[1::2], *spread[:20:2], *near[1::2]]
        got = PIController(jump_ts=jump_ts, step_ts=step_ts).within(high, low, dtype)

        def rounded(times, dtype, low, high):
            ends = {float(torch.tensor(end, dtype=torch.float64).to(dtype)): end for end in (low, high)}
            values = torch.tensor(sorted(times), dtype=torch.float64).to(dtype).double().tolist()
            return sorted({ends.get(value, value) for value in values})

        jumps = [time for time in rounded(jump_ts, dtype, low, high) if low <= time <= high]
        steps = [
            time for time in rounded(step_ts, dtype, low, high) if low < time < high and time not in jumps
        ]
        assert (list(got.jump_ts), list(got.step_ts)) == (jumps, steps)
