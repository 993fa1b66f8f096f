"""Jump times where the field itself is not a number: each step, and each first evaluation of a solve
that starts at a jump, must see the field on its own side only (docs/solver.md, "Times to land on,
and fields that jump"), so a NaN exactly at a jump never enters a solve."""

from __future__ import annotations

import math

import pytest
import torch
import torchsde

from local_reg import BacksolveAdjoint, LocallyRegularized, PIController, odeint, sdeint
from local_reg.regularization import _sampling
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


class Slow(torch.nn.Module):
    """``y' = -0.01 y`` times 1 before the jump and 2 after (NaN at it), each call's time recorded:
    the initial-step heuristic's first guess ``0.01 |y| / |f|`` is the whole unit span."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def forward(self, t, y):
        self.times.append(float(t))
        return -0.01 * y * torch.where(t < JUMP, 1.0, torch.where(t > JUMP, 2.0, math.nan)).to(y.dtype)


@pytest.mark.parametrize(
    "span",
    [(0.0, 1.0), (0.0, JUMP), (1.0, 0.0), (1.0, JUMP)],
    ids=["inside", "at-end", "back", "back-at-end"],
)
def test_the_initial_step_heuristics_trial_evaluation_stays_before_the_first_jump(span):
    # Its trial Euler step (the second evaluation) would reach t0 + 1, past the jump (or on it, at
    # the end of the span): it stops just before, so the first step size is the first piece's.
    field = Slow()
    y0 = torch.ones(2, dtype=DTYPE)
    solved = odeint(field, y0, list(span), rtol=1e-8, atol=1e-10, controller=PIController(jump_ts=[JUMP]))
    trial = field.times[1]
    assert (trial - span[0]) * (JUMP - trial) > 0

    def integral(t):  # of the rate from 0
        return 0.01 * t if t < JUMP else 0.01 * JUMP + 0.02 * (t - JUMP)

    expected = y0 * math.exp(integral(span[0]) - integral(span[1]))
    torch.testing.assert_close(solved.ys[-1], expected, rtol=1e-7, atol=0)


class SlowNoisy(SwitchedNoisy):
    """:class:`Slow`'s drift with a small diagonal noise, the drift's times recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.drift = Slow()

    def f(self, t, y):
        return self.drift(t, y)

    def g(self, t, y):
        return torch.full_like(y, 1e-4)


@pytest.mark.parametrize("span", [(0.0, 1.0), (0.0, JUMP)], ids=["inside", "at-end"])
def test_sdeints_initial_step_trial_stays_before_the_first_jump(span):
    # The SDE heuristic's trial is an Euler--Maruyama step whose estimate evaluates the drift at its
    # end: it ends just before the jump, as the ODE heuristic's trial evaluation does.
    sde = SlowNoisy()
    bm = torchsde.BrownianInterval(span[0], span[1], size=(3, 2), dtype=DTYPE, entropy=5)
    solved = sdeint(
        sde, torch.ones(3, 2, dtype=DTYPE), list(span), bm=bm, controller=PIController(jump_ts=[JUMP])
    )
    assert 0.0 < sde.drift.times[1] < JUMP
    assert torch.isfinite(solved.ys).all()


@pytest.mark.parametrize("penalty", ["error-dt", "kinetic"])
@pytest.mark.parametrize("before", [1e-3, 0.0], ids=["before", "at"])
@pytest.mark.parametrize("kind", ["ode", "torchdiffeq", "sde"])
def test_the_local_penalty_sees_the_field_on_the_solves_side_of_a_jump(monkeypatch, kind, before, penalty):
    # t_reg pinned at the jump or just before it: the field is read just after a jump at t_reg (as
    # the main solve's next step reads it), and the probe step stops at the next jump (as the main
    # solve's steps do), its last stages taken before it.
    t_reg = JUMP - before
    monkeypatch.setattr(_sampling, "sample_uniform_time", lambda times, dtype, generator: t_reg)
    field = JumpAtStart() if kind == "sde" else Decay()
    y0 = torch.tensor([[0.3, -1.0]], dtype=DTYPE)
    settings = {"options": {"controller": PIController(jump_ts=[JUMP])}}
    if kind == "torchdiffeq":  # its own option, which its solve and our penalty both read
        settings = {"backend": "torchdiffeq", "options": {"jump_t": torch.tensor([JUMP])}}
    model = LocallyRegularized(field, penalty=penalty, **settings)
    model(y0, [0.0, 1.0])
    stats = model.stats
    assert stats.penalty_finite and math.isfinite(stats.penalty)
    if penalty == "error-dt":
        assert math.isfinite(stats.error_estimate)
        if before:
            assert stats.dt_reg == pytest.approx(before, rel=1e-9)
        else:
            assert 0.0 < stats.dt_reg <= 1.0 - JUMP
