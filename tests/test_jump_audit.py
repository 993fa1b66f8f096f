"""Jump times where the field itself is not a number: each step, and each first evaluation of a solve
that starts at a jump, must see the field on its own side only (docs/solver.md, "Times to land on,
and fields that jump"), so a NaN exactly at a jump never enters a solve."""

from __future__ import annotations

import math

import pytest
import torch
import torchsde

from local_reg import BacksolveAdjoint, PIController, odeint, sdeint
from tests.test_jump_times import DTYPE, JUMP, SwitchedNoisy, exact_switched, forcing


def level(t: torch.Tensor) -> torch.Tensor:
    """:func:`forcing`, NaN at the jump."""
    return forcing(t, at_jump=math.nan)


class Decay(torch.nn.Module):
    """``y' = -rate * y + level(t)``."""

    def __init__(self) -> None:
        super().__init__()
        self.rate = torch.nn.Parameter(torch.tensor(1.3, dtype=DTYPE))

    def forward(self, t, y):
        return -self.rate * y + level(t).to(y.dtype)


def decay_exact(rate: torch.Tensor, y0: torch.Tensor, t0: float, t1: float) -> torch.Tensor:
    """:class:`Decay`'s solution at ``t1`` from ``y0`` at ``t0``, both on one side of the jump."""
    rest = level(torch.tensor((t0 + t1) / 2, dtype=DTYPE)) / rate
    return rest + (y0 - rest) * torch.exp(-rate * (t1 - t0))


@pytest.mark.parametrize("span", [(0.0, JUMP), (1.0, JUMP)], ids=["forward", "backward"])
def test_the_backsolve_adjoint_starting_at_a_jump_never_evaluates_the_field_there(span):
    # The backward solve starts at t[-1], here the jump: its first evaluation (the heuristic's first
    # step's), as every step's, is taken on the span's side of it.
    model = Decay()
    y0 = torch.tensor([0.3, -1.0], dtype=DTYPE)
    gradient = BacksolveAdjoint(rtol=1e-10, atol=1e-12)
    controller = PIController(jump_ts=[JUMP])
    solution = odeint(model, y0, list(span), rtol=1e-10, atol=1e-12, gradient=gradient, controller=controller)
    solution.ys[-1].sum().backward()
    rate = model.rate.detach().requires_grad_(True)
    (expected,) = torch.autograd.grad(decay_exact(rate, y0, *span).sum(), rate)
    torch.testing.assert_close(model.rate.grad, expected, rtol=1e-7, atol=0)


class JumpAtStart(SwitchedNoisy):
    """:class:`SwitchedNoisy` whose drift is NaN at the jump, here its ``t0``."""

    def f(self, t, y):
        return level(t).to(y.dtype) * torch.ones_like(y)


def test_sdeint_takes_its_first_drift_after_a_jump_at_t0():
    bm = torchsde.BrownianInterval(JUMP, 1.0, size=(3, 2), dtype=DTYPE, entropy=3)
    y0 = torch.zeros(3, 2, dtype=DTYPE)
    solved = sdeint(JumpAtStart(), y0, [JUMP, 1.0], bm=bm, controller=PIController(jump_ts=[JUMP]))
    expected = y0 + exact_switched(0.0, JUMP, 1.0) + 0.3 * bm(JUMP, 1.0)
    torch.testing.assert_close(solved.ys[-1], expected, rtol=0, atol=1e-12)


def float32_ulps_from(time: float, count: int) -> float:
    """The float32 time ``count`` float32 ulps from ``time`` (rounded to float32)."""
    value = torch.tensor(time, dtype=torch.float32)
    for _ in range(abs(count)):
        value = torch.nextafter(value, torch.tensor(math.copysign(math.inf, count)))
    return value.item()


@pytest.mark.parametrize("count", [-2, 2], ids=["before", "after"])
@pytest.mark.parametrize("span", [(0.0, 1.0), (1.0, 0.0)], ids=["forward", "backward"])
def test_a_step_a_few_float32_ulps_long_beside_a_jump_keeps_every_stage_on_its_side(count, span):
    # A float32 field sees float32 times: the step between an output time 2 float32 ulps from the
    # jump and the jump (a few float32 ulps, many float64 ones) has inner stages at t + c dt that
    # round onto the jump unless kept on the step's side (tsit5's c = 0.98 does from either side).
    times = [span[0], float32_ulps_from(JUMP, count), span[1]]

    def field(t, y):
        return level(t).to(y.dtype) * torch.ones_like(y)

    solved = odeint(
        field,
        torch.zeros(1),
        times,
        method="tsit5",
        controller=PIController(jump_ts=[JUMP]),
        step_to_outputs=True,
    )
    expected = torch.tensor([[exact_switched(0.0, span[0], time)] for time in times])
    torch.testing.assert_close(solved.ys, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("gradient", ["checkpoint", "symplectic"])
def test_jumps_a_few_float32_ulps_apart_solve_and_replay_on_each_side(gradient):
    # Jumps 3 float32 ulps apart are distinct times to a float32 field: the step between them keeps
    # every stage strictly between them, and the replays take the same stage times.
    second = float32_ulps_from(JUMP, 3)

    class Between(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rate = torch.nn.Parameter(torch.tensor(0.7))

        def forward(self, t, y):
            inside = torch.where(t < second, 5.0, -2.0)
            value = torch.where(t < JUMP, 1.0, inside)
            value = torch.where((t == JUMP) | (t == second), math.nan, value)
            return value * torch.ones_like(y) - self.rate * y

    def solve(how):
        model = Between()
        solution = odeint(
            model, torch.ones(2), [0.0, 1.0], controller=PIController(jump_ts=[JUMP, second]), gradient=how
        )
        solution.ys[-1].sum().backward()
        return solution.ys[-1].detach(), model.rate.grad

    ys, grad = solve("direct")
    assert torch.isfinite(ys).all() and torch.isfinite(grad)
    replayed_ys, replayed_grad = solve(gradient)
    assert torch.equal(replayed_ys, ys)
    torch.testing.assert_close(replayed_grad, grad, rtol=1e-5, atol=0)
