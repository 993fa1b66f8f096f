"""Terminal events (``local_reg.odeint_event``, ``local_reg.compat``'s ``event_fn`` and ``odeint_event``):
event times and their implicit-function gradients against analytic values, finite differences and
torchdiffeq 0.2.5 itself."""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import local_reg
import local_reg.compat as compat
from local_reg import SolverError, _events, odeint_event
from local_reg._integrate import open_end
from tests.problems import rotation

GRADIENTS = ["direct", "checkpoint", "symplectic", "adjoint"]
TIGHT = {"rtol": 1e-11, "atol": 1e-13}


class Ball(nn.Module):
    """Free fall: ``(height, velocity)' = (velocity, -g)``, ``g`` a parameter."""

    def __init__(self, g: float = 9.81, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.g = nn.Parameter(torch.tensor(g, dtype=dtype))

    def forward(self, t, y):
        return torch.stack([y[1], -self.g * torch.ones_like(y[1])])


class Ground(nn.Module):
    """The event ``height - level``, ``level`` a parameter of the event function."""

    def __init__(self, level: float = 0.0) -> None:
        super().__init__()
        self.level = nn.Parameter(torch.tensor(level, dtype=torch.float64))

    def forward(self, t, y):
        return y[0] - self.level


def impact(h: float, v: float, g: float, level: float = 0.0) -> dict[str, float]:
    """The time ``(v + S) / g``, ``S = sqrt(v^2 + 2 g (h - level))``, at which ``h + v t - g t^2 / 2``
    falls to ``level``, and its derivatives."""
    s = math.sqrt(v * v + 2 * g * (h - level))
    return {
        "t": (v + s) / g,
        "h": 1 / s,
        "v": (1 + v / s) / g,
        "g": (h - level) / (s * g) - (v + s) / g**2,
        "level": -1 / s,
    }


def falling_ball(gradient, h=10.0, v=2.0, g=9.81, t0=0.0, **kwargs):
    func = Ball(g)
    ground = Ground()
    height = torch.tensor(h, dtype=torch.float64, requires_grad=True)
    velocity = torch.tensor(v, dtype=torch.float64, requires_grad=True)
    start = torch.tensor(t0, dtype=torch.float64, requires_grad=True)
    y0 = torch.stack([height, velocity])
    event_t, solution = odeint_event(func, y0, start, event_fn=ground, gradient=gradient, **TIGHT, **kwargs)
    return event_t, solution, (height, velocity, start, func.g, ground.level)


@pytest.mark.parametrize("gradient", GRADIENTS)
def test_falling_ball_event_time_and_gradients_are_analytic(gradient):
    event_t, solution, (height, velocity, start, g, level) = falling_ball(gradient)
    exact = impact(10.0, 2.0, 9.81)
    assert event_t.item() == pytest.approx(exact["t"], rel=1e-12)
    assert solution.ts.tolist() == [0.0, event_t.item()]
    assert solution.steps.stop_time == event_t.item()
    assert abs(solution.ys[-1, 0].item()) < 1e-10
    assert solution.ys[-1, 1].item() == pytest.approx(2.0 - 9.81 * exact["t"], rel=1e-12)

    grads = torch.autograd.grad(event_t, (height, velocity, start, g, level))
    expected = [exact["h"], exact["v"], 1.0, exact["g"], exact["level"]]
    for got, want in zip(grads, expected, strict=True):
        assert float(got) == pytest.approx(want, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("gradient", ["direct", "symplectic", "adjoint"])
def test_falling_ball_state_at_the_event_is_differentiated_through_the_event_time(gradient):
    # The impact velocity v - g t_e moves with t_e: d/dh = -g dt_e/dh; the height stays at the
    # ground, d/dh = 0 (the state at a fixed time would give 1).
    _, solution, (height, velocity, _, g, _) = falling_ball(gradient)
    exact = impact(10.0, 2.0, 9.81)
    grad_h = torch.autograd.grad(solution.ys[-1, 1], (height, velocity, g), retain_graph=True)
    assert float(grad_h[0]) == pytest.approx(-9.81 * exact["h"], rel=1e-9)
    assert float(grad_h[1]) == pytest.approx(1 - 9.81 * exact["v"], rel=1e-9)
    assert float(grad_h[2]) == pytest.approx(-exact["t"] - 9.81 * exact["g"], rel=1e-9)
    (grad_height,) = torch.autograd.grad(solution.ys[-1, 0], height)
    assert abs(float(grad_height)) < 1e-9


def test_reverse_time_finds_the_earlier_root():
    # Backwards from t0 = 1 the ball rises to h at t0 and was on the ground at the earlier root.
    event_t, solution, (height, velocity, start, g, _) = falling_ball("direct", t0=1.0, reverse_time=True)
    s = math.sqrt(2.0**2 + 2 * 9.81 * 10.0)
    assert event_t.item() == pytest.approx(1.0 + (2.0 - s) / 9.81, rel=1e-12)
    assert solution.steps.dt.max() < 0
    grad_h, grad_t0 = torch.autograd.grad(event_t, (height, start))
    assert float(grad_h) == pytest.approx(-1 / s, rel=1e-9)
    assert float(grad_t0) == pytest.approx(1.0, rel=1e-9)


def pendulum(w, c, a):
    """A damped, driven pendulum: ``x'' = -w^2 sin x - c x' + a cos t``."""

    def field(t, y):
        x, v = y[0], y[1]
        return torch.stack([v, -(w**2) * torch.sin(x) - c * v + a * torch.cos(t)])

    return field


def pendulum_loss(x: list[float], gradient: str = "direct") -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``t_e + 0.3 v(t_e)`` at the first time the angle falls to ``level``, and the inputs
    ``x = (x0, v0, t0, level, w, c, a)`` as tensors that require grad."""
    inputs = [torch.tensor(value, dtype=torch.float64, requires_grad=True) for value in x]
    x0, v0, t0, level, w, c, a = inputs
    func = pendulum(w, c, a)

    def event_fn(t, y):
        return y[0] - level

    y0 = torch.stack([x0, v0])
    event_t, solution = odeint_event(
        func, y0, t0, event_fn=event_fn, gradient=gradient, adjoint_params=(w, c, a), **TIGHT
    )
    return event_t + 0.3 * solution.ys[-1, 1], inputs


@pytest.mark.parametrize("gradient", ["direct", "symplectic", "adjoint"])
def test_nonlinear_event_gradients_match_finite_differences(gradient):
    base = [1.0, 0.5, 0.2, -0.3, 1.3, 0.2, 0.4]
    loss, inputs = pendulum_loss(base, gradient)
    analytic = [float(g) for g in torch.autograd.grad(loss, inputs)]
    eps = 1e-6
    for index, want in enumerate(analytic):
        plus, minus = list(base), list(base)
        plus[index] += eps
        minus[index] -= eps
        with torch.no_grad():
            numeric = (float(pendulum_loss(plus)[0]) - float(pendulum_loss(minus)[0])) / (2 * eps)
        assert want == pytest.approx(numeric, rel=1e-6, abs=1e-7), index


@pytest.mark.parametrize("method", ["tsit5", "dopri5", "dopri8", "bosh3", "heun_euler"])
def test_exact_graph_free_methods_equal_direct_with_the_event_inside_the_last_step(method):
    # The event state is read from the last step's dense output (with the extra stage f(t + dt, y1)
    # for heun_euler): checkpoint and symplectic differentiate it as backpropagation does.
    base = [1.0, 0.5, 0.2, -0.3, 1.3, 0.2, 0.4]
    grads = {}
    for gradient in ("direct", "checkpoint", "symplectic"):
        inputs = [torch.tensor(value, dtype=torch.float64, requires_grad=True) for value in base]
        x0, v0, t0, level, w, c, a = inputs
        event_t, solution = odeint_event(
            pendulum(w, c, a),
            torch.stack([x0, v0]),
            t0,
            event_fn=lambda t, y, level=level: y[0] - level,
            gradient=gradient,
            adjoint_params=(w, c, a),
            method=method,
            rtol=1e-5,
            atol=1e-7,
        )
        theta = (solution.steps.stop_time - solution.steps.t[-1]) / solution.steps.dt[-1]
        assert 0 < theta < 1
        grads[gradient] = torch.stack(torch.autograd.grad(event_t + 0.3 * solution.ys[-1, 1], inputs))
    torch.testing.assert_close(grads["checkpoint"], grads["direct"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads["symplectic"], grads["direct"], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("h", "root", "most_calls"),
    [
        (math.cos, math.pi / 2, 10),  # a simple root: superlinear
        # Regula falsi is exact on a linear h: one secant lands on the root (to rounding), the
        # next trial point, xtol / 2 inside the bracket, lands across it and closes the bracket.
        (lambda t: 1.3 - t, 1.3, 3),
        (lambda t: 1.0 - 3.0 * t, 1.0 / 3.0, 3),
        # Simple roots of smooth h: Illinois is superlinear (order 1.44); bisection would take
        # log2(2.9 / 1e-14) = 48 evaluations. 15 leaves room over the few the method needs and
        # is far below the linear convergence of plain regula falsi / bisection.
        (lambda t: 1.3**2 - t**2, 1.3, 15),  # concave: the left end is retained
        (lambda t: (3.1 - t) ** 2 - 1.8**2, 1.3, 15),  # convex: the right end is retained
        (lambda t: -math.atan(t - 1.3), 1.3, 15),
        # Regula falsi alone would crawl on a triple root and a jump: the safeguard bisects at least
        # every third evaluation, and 48 halvings take the bracket from 2.9 to 1e-14.
        (lambda t: (1.3 - t) ** 3, 1.3, 3 * 48),
        (lambda t: 1.0 if t < 0.7 else -1.0, 0.7, 3 * 48),
        # Zero from the root on (a clamped gap): h(tb) == 0 does not mean tb is the first zero.
        (lambda t: max(0.7 - t, 0.0), 0.7, 3 * 48),
        # Zero for a few ulps around the root (an h that rounds to 0 there): one probe past the
        # zeros finds the plateau's edge, where bisecting the bracket took ~30 more evaluations.
        (lambda t: 0.0 if abs(t - 1.3) <= 1.5e-14 else 1.3 - t, 1.3 - 1.5e-14, 10),
    ],
)
def test_find_root_brackets_the_sign_change_to_the_tolerance(h, root, most_calls):
    calls = []

    def counted(t):
        calls.append(t)
        return h(t)

    xtol = 1e-14
    live, found = _events.find_root(counted, 0.1, h(0.1), 3.0, h(3.0), xtol)
    assert h(found) <= 0 < h(live)
    assert abs(found - root) <= 2 * xtol and abs(found - live) <= xtol
    assert len(calls) <= most_calls


def test_an_event_fn_that_stays_zero_after_the_crossing_finds_the_first_zero():
    """A clamped height is 0 from impact on, so the first step that ends past the impact ends where
    it is already 0; the event is the first time it is 0 (as torchdiffeq finds it)."""
    y0 = torch.tensor([10.0, 0.0], dtype=torch.float64)
    expected, _ = odeint_event(Ball(), y0, 0.0, event_fn=lambda t, y: y[0])
    event_t, _ = odeint_event(Ball(), y0, 0.0, event_fn=lambda t, y: y[0].clamp(min=0.0))
    torch.testing.assert_close(event_t, expected, rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("gradient", GRADIENTS)
@pytest.mark.parametrize(
    "flat_after",
    [lambda height: height.clamp(min=0.0), torch.relu, lambda height: torch.sqrt(height.clamp(min=0.0))],
    ids=["clamp", "relu", "sqrt-clamp"],
)
def test_an_event_fn_flat_after_the_crossing_keeps_the_analytic_gradients(flat_after, gradient):
    """Past the impact ``g`` stays 0, so its rate along the solution at the located time (the side
    where the sign has changed) is 0: the crossing's slope is read on the other side of the root's
    bracket. It used to warn of a tangential crossing and drop the gradient (the ball hits at 16 m/s)."""
    height = torch.tensor(10.0, dtype=torch.float64, requires_grad=True)
    velocity = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    func = Ball()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        event_t, _ = odeint_event(
            func,
            torch.stack([height, velocity]),
            0.0,
            event_fn=lambda t, y: flat_after(y[0]),
            gradient=gradient,
            **TIGHT,
        )
    exact = impact(10.0, 2.0, 9.81)
    grads = torch.autograd.grad(event_t, (height, velocity, func.g))
    for got, want in zip(grads, [exact["h"], exact["v"], exact["g"]], strict=True):
        assert float(got) == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("rtol", [1e-6, 1e-8, 1e-10])
@pytest.mark.parametrize("height", [10.0, 7.3, 3.1])
def test_a_flat_event_fn_keeps_its_gradient_at_any_tolerance_and_height(height, rtol):
    """The slope is read at the state where the root finder saw ``g > 0``; extrapolating there from
    the located state instead (across a bracket of a few ulps) left ``g <= 0`` in about a third of
    such solves, which then warned of a tangential crossing and dropped the gradient."""
    for flat_after in (lambda h: h.clamp(min=0.0), torch.relu):
        start = torch.tensor(height, dtype=torch.float64, requires_grad=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            event_t, _ = odeint_event(
                Ball(),
                torch.stack([start, torch.tensor(2.0, dtype=torch.float64)]),
                0.0,
                event_fn=lambda t, y, flat_after=flat_after: flat_after(y[0]),
                rtol=rtol,
                atol=rtol * 1e-2,
            )
        (grad,) = torch.autograd.grad(event_t, start)
        assert float(grad) == pytest.approx(impact(height, 2.0, 9.81)["h"], rel=1e-5)


def test_compat_event_solves_count_max_num_steps_as_a_whole_and_check_t():
    """torchdiffeq counts an event solve's steps as a whole (its ``t[1]`` only gives the direction):
    an event not reached within them is named so, and ``t`` must be two finite, distinct times."""
    never = dict(event_fn=lambda t, y: y[0] + 1.0, method="dopri5", options={"max_num_steps": 50})
    with pytest.raises(SolverError, match="event_fn did not change sign within max_steps: max_steps=50"):
        compat.odeint(
            lambda t, y: torch.ones_like(y),
            torch.zeros(1, dtype=torch.float64),
            torch.tensor([0.0, 1.0]),
            **never,
        )
    for t, match in [([0.0, 0.0], "strictly increasing"), ([0.0, math.nan], "must be finite")]:
        with pytest.raises(ValueError, match=match):
            compat.odeint(lambda t, y: -y, torch.ones(1), torch.tensor(t), event_fn=lambda t, y: y[0] - 0.5)
    with pytest.raises(ValueError, match=r"t0 must be one time .* shape \(2,\)"):
        compat.odeint_event(lambda t, y: -y, torch.ones(1), torch.zeros(2), event_fn=lambda t, y: y[0] - 0.5)
    # A float32 t0 too large for t0 + 1 to differ from it still sets a direction.
    event_t, _ = compat.odeint_event(
        lambda t, y: -torch.ones_like(y), torch.ones(1), torch.tensor(1e8), event_fn=lambda t, y: y[0] - 0.5
    )
    assert float(event_t) == pytest.approx(1e8 + 0.5, rel=1e-7)
    # A float16 t0 whose t0 + |t0| overflows float16 sets its direction within the dtype's range.
    half = torch.tensor(40000.0, dtype=torch.float16)
    ours, _ = compat.odeint_event(
        lambda t, y: -torch.ones_like(y), torch.ones(1), half, event_fn=lambda t, y: y[0] - 0.5
    )
    native, _ = odeint_event(
        lambda t, y: -torch.ones_like(y), torch.ones(1), half, event_fn=lambda t, y: y[0] - 0.5
    )
    assert ours.dtype == torch.float16 and float(ours) == float(native)
    # t0 as torchdiffeq takes it too: a number, a 0-d array, a one-element list.
    for start in (0.25, np.float64(0.25), np.array(0.25), [0.25]):
        event_t, _ = compat.odeint_event(
            lambda t, y: -torch.ones_like(y), torch.ones(1), start, event_fn=lambda t, y: y[0] - 0.5
        )
        assert float(event_t) == pytest.approx(0.75, rel=1e-6)
    for start, error in (
        (True, TypeError),
        (np.True_, TypeError),
        ("0.25", TypeError),
        ([0.0, 1.0], ValueError),
    ):
        with pytest.raises(error, match="t0 must be"):
            compat.odeint_event(lambda t, y: -y, torch.ones(1), start, event_fn=lambda t, y: y[0] - 0.5)


def test_several_entries_stop_at_the_first_that_changes_sign():
    func = Ball()
    y0 = torch.tensor([10.0, 2.0], dtype=torch.float64)
    exact = impact(10.0, 2.0, 9.81)["t"]

    def ground_or_deadline(deadline):
        return lambda t, y: torch.stack([y[0], deadline - t])

    event_t, _ = odeint_event(func, y0, 0.0, event_fn=ground_or_deadline(5.0), rtol=1e-10, atol=1e-12)
    assert event_t.item() == pytest.approx(exact, rel=1e-12)
    event_t, solution = odeint_event(func, y0, 0.0, event_fn=ground_or_deadline(1.0), rtol=1e-10, atol=1e-12)
    assert event_t.item() == pytest.approx(1.0, rel=1e-14)
    # A deadline does not move with the state: the event time has no gradient w.r.t. the ball.
    assert solution.ys[-1, 0].item() == pytest.approx(10.0 + 2.0 - 9.81 / 2, rel=1e-10)


def test_an_event_at_t0_ends_there_as_in_torchdiffeq():
    y0 = torch.tensor([0.0, 2.0], dtype=torch.float64)
    event_t, solution = odeint_event(Ball(), y0, 0.5, event_fn=lambda t, y: y[0])
    assert event_t.item() == 0.5
    assert torch.equal(solution.ys, torch.stack([y0, y0]))
    assert solution.stats.n_steps == 0
    # The event ended the solve, at t0 (its stop_time was None, a solve that ran to its end).
    assert solution.steps.stop_time == 0.5


def test_tuple_state_and_float32():
    class TupleBall(nn.Module):
        def forward(self, t, state):
            height, velocity = state
            return velocity.reshape(1), -9.81 * torch.ones_like(velocity)

    y0 = (torch.tensor([10.0]), torch.tensor(2.0))
    event_t, solution = odeint_event(TupleBall(), y0, 0.0, event_fn=lambda t, state: state[0][0])
    assert isinstance(solution.ys, tuple)
    assert solution.ys[0].shape == (2, 1) and solution.ys[1].shape == (2,)
    assert event_t.dtype == torch.float32
    assert event_t.item() == pytest.approx(impact(10.0, 2.0, 9.81)["t"], rel=1e-5)


def dtype_recording_ball():
    """A falling ball's field and ground event that record the dtypes of the times they get."""
    seen = set()

    def ball(t, y):
        seen.add(t.dtype)
        return torch.stack([y[1], torch.full_like(y[1], -9.81)])

    def ground(t, y):
        seen.add(t.dtype)
        return y[0]

    return ball, ground, seen


def test_float32_state_far_from_zero_with_a_float64_t0_locates_the_event_to_the_solver_error():
    """A float32 state with ``t0 = 1e6`` as a float64 tensor: the event is located on the step's
    dense output to a fraction of the step (it was ``4 eps32 |t|`` = 0.48 s wide, the ball then 1.5 m
    underground), and ``func`` and ``event_fn`` get float64 times, as ``odeint`` gives them for a
    float64 ``t``."""
    ball, ground, seen = dtype_recording_ball()
    flight = impact(2.0, 0.0, 9.81)["t"]
    for t0 in (0.0, 1e3, 1e6):
        start = torch.tensor(t0, dtype=torch.float64)
        event_t, solution = odeint_event(ball, torch.tensor([2.0, 0.0]), start, event_fn=ground)
        assert event_t.dtype == torch.float64
        assert (event_t - start).item() == pytest.approx(flight, abs=1e-5)
        assert abs(solution.ys[-1][0].item()) < 1e-4
    assert seen == {torch.float64}


@pytest.mark.parametrize(
    ("dtype", "rate", "bound"), [(torch.float32, 1e3, 1e-5), (torch.float64, 1e6, 1e-11)], ids=["f32", "f64"]
)
def test_an_event_on_short_steps_is_located_relative_to_the_step(dtype, rate, bound):
    """The root finder's tolerance is relative to the step that brackets the event: a triple root
    (found by bisection, not regula falsi) on steps of ~1e-4 (1e-7) was left 300-3000x less accurate
    by an absolute tolerance of a few ulps of 1, and no test saw it (simple roots converge anyway).
    ``y' = -k y``, ``(y - 1/2)^3 = 0`` at ``ln 2 / k``."""
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    event_t, _ = odeint_event(
        lambda t, y: -rate * y,
        torch.tensor([1.0], dtype=dtype),
        0.0,
        event_fn=lambda t, y: (y[0] - 0.5) ** 3,
        rtol=tol,
        atol=tol * 1e-3,
    )
    exact = math.log(2) / rate
    assert abs(float(event_t) - exact) / exact < bound


@pytest.mark.parametrize("reverse_time", [False, True])
@pytest.mark.parametrize("t0", [0.0, 1e6, 1e12, -1e12])
def test_far_from_zero_the_event_is_located_to_one_ulp_of_the_time(t0, reverse_time):
    """``y' = -y`` from ``(1, 2)`` until ``y[0] = 1/2`` (forwards; ``y[0] = 2`` backwards): the root
    finder's bracket is one ulp of the times wide (1.2e-4 at 1e12), not 4 eps |t| (2-4 ulps past the
    root: the state there missed the event by as many times its rate)."""
    target = 2.0 if reverse_time else 0.5
    start = torch.tensor(t0, dtype=torch.float64)
    calls = []

    def event_fn(t, y):
        calls.append(t)
        return y[0] - target

    event_t, solution = odeint_event(
        lambda t, y: -y,
        torch.tensor([1.0, 2.0], dtype=torch.float64),
        start,
        event_fn=event_fn,
        reverse_time=reverse_time,
        rtol=1e-12,
        atol=1e-12,
    )
    exact = t0 - math.log(target)
    resolution = max(math.ulp(t0), 1e-12)  # near 0, the solve's error
    assert abs(event_t.item() - exact) <= resolution
    # Trial points stay a float inside the bracket: half an ulp rounded onto its ends, and the
    # search stalled until bisection (up to 5x the evaluations).
    located = len(calls) - solution.stats.n_accepted - 1
    assert located <= 10, located
    assert abs(solution.ys[-1][0].item() - target) <= 2 * target * resolution


def test_a_float32_t0_does_not_narrow_a_float64_solve_and_compat_keeps_torchdiffeqs_time_dtype():
    """The native rule is odeint's (the wider of t0's and the state's dtype): a float32 ``t0``
    (``torch.tensor(0.)``) leaves a float64 ball's event exact, returned in float32. compat hands
    ``func`` the state's dtype whatever ``t0``'s, as torchdiffeq does (a float32 field that
    concatenates ``t`` into its input runs with a float64 ``t0``), and ``event_fn`` ``t0``'s."""
    ball, ground, seen = dtype_recording_ball()

    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64)
    event_t, solution = odeint_event(ball, y0, torch.tensor(0.0), event_fn=ground, rtol=1e-10, atol=1e-10)
    assert event_t.dtype == torch.float32 and seen == {torch.float64}
    assert abs(solution.ys[-1][0].item()) < 1e-12

    seen.clear()
    linear = nn.Linear(3, 2)
    with torch.no_grad():  # y' = (1 + t, 0): the event y[0] = 5 at t = 2.
        linear.weight.zero_()
        linear.weight[0, 2] = 1.0
        linear.bias.copy_(torch.tensor([1.0, 0.0]))

    def timed(t, y):
        seen.add(t.dtype)
        return linear(torch.cat([y, t.reshape(1)]))

    t0 = torch.tensor(0.0, dtype=torch.float64)
    event_t, _ = compat.odeint_event(timed, torch.tensor([1.0, 0.5]), t0, event_fn=lambda t, y: y[0] - 5.0)
    expected, _ = torchdiffeq.odeint_event(
        timed, torch.tensor([1.0, 0.5]), t0, event_fn=lambda t, y: y[0] - 5.0
    )
    assert seen == {torch.float32}
    assert event_t.item() == pytest.approx(expected.item(), rel=1e-6)
    assert event_t.item() == pytest.approx(2.0, rel=1e-6)

    # event_fn keeps t0's float64 there, as in torchdiffeq: far from 0 the event is still located
    # to the solver's error (a float32 time there is 0.06 s wide).
    seen.clear()
    start = torch.tensor(1e6, dtype=torch.float64)
    event_t, states = compat.odeint_event(ball, torch.tensor([10.0, 0.0]), start, event_fn=ground)
    assert (event_t - start).item() == pytest.approx(impact(10.0, 0.0, 9.81)["t"], abs=1e-5)
    assert abs(states[-1][0].item()) < 1e-3
    assert seen == {torch.float32, torch.float64}  # func's, event_fn's


def test_second_derivatives_through_the_event_are_refused_not_silently_wrong():
    """The event's first derivatives are exact (implicit function theorem); a Hessian through it
    would hold the event's rate constant and miss terms (the ball's impact-time Hessian read
    zero; a state's was 53.2 against 60.0 by finite differences), so it is a RuntimeError."""
    height = torch.tensor(10.0, dtype=torch.float64)

    def impact_time(state):
        event_t, _ = odeint_event(Ball(), state, 0.0, event_fn=Ground(), **TIGHT)
        return event_t

    state = torch.stack([height, torch.tensor(2.0, dtype=torch.float64)])
    with pytest.raises(RuntimeError, match="differentiable to first order only"):
        torch.autograd.functional.hessian(impact_time, state)
    (grad,) = torch.autograd.grad(impact_time(state.requires_grad_(True)), state)
    exact = impact(10.0, 2.0, 9.81)
    torch.testing.assert_close(grad, torch.tensor([exact["h"], exact["v"]], dtype=torch.float64))


def test_fixed_step_method_locates_the_event_on_its_dense_output():
    # rk4 is exact on a quadratic, and so is the cubic Hermite interpolant inside each step.
    event_t, _ = odeint_event(
        Ball(),
        torch.tensor([10.0, 2.0], dtype=torch.float64),
        0.0,
        event_fn=Ground(),
        method="rk4",
        step_size=0.3,
    )
    assert event_t.item() == pytest.approx(impact(10.0, 2.0, 9.81)["t"], rel=1e-12)


@pytest.mark.parametrize(
    ("event_fn", "error", "match"),
    [
        (lambda t, y: 1.0, TypeError, "event_fn must return a torch.Tensor"),
        (lambda t, y: (y[0] > 0).long(), TypeError, "floating-point"),
        (lambda t, y: y[:0], ValueError, "empty"),
        (lambda t, y: y[0] * torch.ones(1 + int(t > 0.1)), ValueError, "shape"),
        (lambda t, y: torch.where(t > 0.2, torch.nan, 1.0).to(y), ValueError, "non-finite"),
        ("y[0]", TypeError, "event_fn must be callable"),
        # scipy's list of events was a bare "must be callable, got list".
        ([Ground(), Ground()], TypeError, r"scipy's list of events: one event_fn returning them stacked"),
    ],
)
def test_bad_event_functions_are_named(event_fn, error, match):
    y0 = torch.tensor([10.0, 2.0], dtype=torch.float64)
    with pytest.raises(error, match=match):
        odeint_event(Ball(), y0, 0.0, event_fn=event_fn)


def test_bad_arguments_are_named():
    y0 = torch.tensor([10.0, 2.0], dtype=torch.float64)
    for name in ("dense", "t"):
        with pytest.raises(ValueError, match=f"odeint_event does not take {name}="):
            odeint_event(Ball(), y0, 0.0, event_fn=Ground(), **{name: True})
    with pytest.raises(ValueError, match="t0 must be one time"):
        odeint_event(Ball(), y0, torch.zeros(2), event_fn=Ground())
    with pytest.raises(TypeError, match="reverse_time"):
        odeint_event(Ball(), y0, 0.0, event_fn=Ground(), reverse_time="yes")
    with pytest.raises(ValueError, match="stop"):
        stop = local_reg._integrate.StepCallbacks(stop=lambda *args: None)
        odeint_event(Ball(), y0, 0.0, event_fn=Ground(), callbacks=stop)
    with pytest.raises(ValueError, match=re.escape("t must not require grad with callbacks.stop")):
        t = torch.tensor([0.0, 1.0], dtype=torch.float64, requires_grad=True)
        local_reg.odeint(Ball(), y0, t, callbacks=local_reg._integrate.StepCallbacks(stop=Ground()))
    with pytest.raises(ValueError, match="exactly two times"):
        local_reg.odeint(
            Ball(), y0, [0.0, 1.0, 2.0], callbacks=local_reg._integrate.StepCallbacks(stop=Ground())
        )


def test_an_event_never_reached_raises_at_max_steps():
    def decay(t, y):
        return -y

    y0 = torch.ones(1)
    with pytest.raises(SolverError, match="event_fn did not change sign within max_steps: max_steps=200"):
        odeint_event(decay, y0, 0.0, event_fn=lambda t, y: y[0] + 1.0, max_steps=200)
    # A constant solution has no error: its steps grow tenfold each until the time overflows. The
    # message named an internal "stop condition" the caller never set.
    with pytest.raises(SolverError, match="event_fn did not change sign before t reached the largest time"):
        odeint_event(lambda t, y: torch.zeros_like(y), y0, 0.0, event_fn=lambda t, y: y[0] + 1.0)
    # A t0 beyond that time failed the same way "after 0 steps".
    with pytest.raises(ValueError, match=r"t0=1e\+36 lies at or beyond the largest time .* torch\.float32"):
        odeint_event(decay, y0, 1e36, event_fn=lambda t, y: y[0] - 0.5)


def test_subnormal_event_values_are_bisected_not_divided_by_zero():
    """Illinois halves the value kept at one end: with subnormal values both ends reached 0 and the
    secant divided 0 by 0 (a ZeroDivisionError)."""
    y0 = torch.tensor([10.0, 0.0], dtype=torch.float64)
    exact = math.sqrt(2 * 5 / 9.81)
    for scale in (1.0, 1e-300, 1e-318):
        event_t, _ = odeint_event(Ball(), y0, 0.0, event_fn=lambda t, y, s=scale: (y[0] - 5.0) * s, **TIGHT)
        # Subnormal values carry few digits: the sign change is located as finely as they resolve.
        assert float(event_t) == pytest.approx(exact, abs=1e-12 if scale >= 1e-300 else 1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_an_event_time_gradient_that_overflows_over_its_rate_warns_and_gives_none(dtype):
    """event_fn's value gets the event time's cotangent over -(its rate along the solution): a
    subnormal rate, or a heavily weighted event time beside a slow rate, gave an inf and a NaN
    gradient silently. Where the quotient fits, the gradient is exact however small the scale."""
    fall = math.sqrt(10 / 9.81)  # from rest through 5: t = sqrt(10 / g)
    exact = torch.tensor([1 / (9.81 * fall), 1 / 9.81, -fall / (2 * 9.81)], dtype=dtype)
    tiny, subnormal = (1e-306, 1e-310) if dtype == torch.float64 else (1e-37, 1e-40)

    def gradient(scale, weight):
        y0 = torch.tensor([10.0, 0.0], dtype=dtype, requires_grad=True)
        gravity = torch.tensor(9.81, dtype=dtype, requires_grad=True)
        event_t, _ = odeint_event(
            lambda t, y: torch.stack([y[1], -gravity * torch.ones_like(y[1])]),
            y0,
            0.0,
            event_fn=lambda t, y: (y[0] - 5.0) * scale,
            adjoint_params=(gravity,),
            **(TIGHT if dtype == torch.float64 else {}),
        )
        assert float(event_t.detach()) == pytest.approx(fall, rel=1e-3 if dtype == torch.float32 else 1e-6)
        grads = torch.autograd.grad(weight * event_t, [y0, gravity])
        return torch.cat([g.reshape(-1) for g in grads]) / weight

    rtol = 1e-3 if dtype == torch.float32 else 1e-7
    for scale in (1.0, tiny, subnormal):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            torch.testing.assert_close(gradient(scale, 1e-3), exact, rtol=rtol, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(gradient(tiny, 1.0), exact, rtol=rtol, atol=0)
    overflowing = r"the event time's gradient over its rate .* overflows (float64|float32)"
    messages = []
    for scale, weight in ((tiny, 1e6), (subnormal, 1.0)):
        with pytest.warns(UserWarning, match=overflowing) as caught:
            assert torch.equal(gradient(scale, weight), torch.zeros(3, dtype=dtype))
        messages.append(str(caught[0].message))
    # One text whatever the rate: Python's default filter shows it once in a training loop.
    assert messages[0] == messages[1]
    # An infinite cotangent is the loss's, passed on (it was zeroed as an overflow where |D| < 1).
    for scale in (1.0, 1e-3):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert not torch.isfinite(gradient(scale, math.inf)).any()


def test_a_field_that_returns_a_view_of_a_parameter_raises_no_torch_warning():
    """Its rate, evaluated under no_grad, still requires grad (a view of the parameter): reading it
    as a float was torch's "Converting a tensor with requires_grad=True to a scalar" warning,
    pointing into the library."""

    class Constant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.v = nn.Parameter(torch.tensor([1.0, 0.0], dtype=torch.float64))

        def forward(self, t, y):
            return self.v.expand_as(y)

    field = Constant()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        event_t, _ = odeint_event(
            field, torch.zeros(2, dtype=torch.float64), 0.0, event_fn=lambda t, y: y[0] - 1.0
        )
        event_t.backward()
    # y[0] = v0 t reaches 1 at t = 1 / v0: dt/dv0 = -1 / v0^2.
    assert field.v.grad[0].item() == pytest.approx(-1.0, rel=1e-6)


# --- local_reg.compat against torchdiffeq 0.2.5 -------------------------------------------------

torchdiffeq = pytest.importorskip("torchdiffeq")


class Spiral(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([[-0.1, 1.0], [-1.0, -0.1]], dtype=torch.float64))

    def forward(self, t, y):
        return y @ self.weight.T


def spiral_event(t, y):
    return y[0] - 0.2 * torch.cos(t)


@pytest.mark.parametrize("reverse_time", [False, True])
@pytest.mark.parametrize("interface", ["odeint", "odeint_adjoint"])
def test_compat_odeint_event_matches_torchdiffeq(interface, reverse_time):
    results = {}
    for name, module in (("ours", compat), ("theirs", torchdiffeq)):
        func = Spiral()
        y0 = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
        t0 = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
        event_t, solution = module.odeint_event(
            func,
            y0,
            t0,
            event_fn=spiral_event,
            reverse_time=reverse_time,
            odeint_interface=getattr(module, interface),
            rtol=1e-10,
            atol=1e-12,
        )
        assert solution.shape == (2, 2)
        loss = event_t + solution[-1].sum()
        results[name] = (event_t.item(), solution.detach(), torch.autograd.grad(loss, (y0, t0, func.weight)))
    ours, theirs = results["ours"], results["theirs"]
    assert ours[0] == pytest.approx(theirs[0], abs=1e-9)
    torch.testing.assert_close(ours[1], theirs[1], rtol=0, atol=1e-8)
    for mine, reference in zip(ours[2], theirs[2], strict=True):
        torch.testing.assert_close(mine, reference, rtol=1e-6, atol=1e-8)


def test_compat_odeint_with_event_fn_returns_torchdiffeqs_types():
    func = Spiral()
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    ours = compat.odeint(func, y0, t, event_fn=spiral_event)
    theirs = torchdiffeq.odeint(func, y0, t, event_fn=spiral_event)
    assert isinstance(ours, tuple) and len(ours) == 2
    assert ours[0].shape == theirs[0].shape == ()
    assert ours[0].dtype == theirs[0].dtype
    assert ours[1].shape == theirs[1].shape == (2, 2)
    assert ours[0].item() == pytest.approx(theirs[0].item(), abs=1e-8)

    state = (y0, torch.zeros(3, dtype=torch.float64))

    def pair(t, s):
        return func(t, s[0]), torch.ones_like(s[1])

    event_t, solution = compat.odeint_adjoint(
        pair, state, t, event_fn=lambda t, s: spiral_event(t, s[0]), adjoint_params=tuple(func.parameters())
    )
    reference_t, reference = torchdiffeq.odeint_adjoint(
        pair, state, t, event_fn=lambda t, s: spiral_event(t, s[0]), adjoint_params=tuple(func.parameters())
    )
    assert event_t.item() == pytest.approx(reference_t.item(), abs=1e-8)
    for mine, theirs_part in zip(solution, reference, strict=True):
        torch.testing.assert_close(mine, theirs_part, rtol=0, atol=1e-7)


def test_compat_fixed_step_events_have_torchdiffeqs_limit_not_local_regs():
    """torchdiffeq allows a fixed-grid solve 20000 steps to its event; local_reg's default is 10000."""
    y0 = torch.zeros(1, dtype=torch.float64)
    for library in (compat, torchdiffeq):
        event_t, _ = library.odeint_event(
            lambda t, y: torch.ones_like(y),
            y0,
            torch.tensor(0.0, dtype=torch.float64),
            event_fn=lambda t, y: y[0] - 15.0,
            method="euler",
            options=dict(step_size=0.001),
        )
        assert event_t.item() == pytest.approx(15.0, abs=1e-6), library
    # Beyond it, the refusal's advice is a longer step: max_num_steps does not change that limit
    # (it advised raising max_steps, an option a fixed grid ignores).
    with (
        pytest.warns(UserWarning, match="ignored by the fixed-step method"),
        pytest.raises(SolverError, match=r"within 20000 fixed steps.*pass a longer options\['step_size'\]"),
    ):
        compat.odeint_event(
            lambda t, y: torch.ones_like(y),
            y0,
            torch.tensor(0.0, dtype=torch.float64),
            event_fn=lambda t, y: y[0] - 25.0,
            method="euler",
            options=dict(step_size=0.001, max_num_steps=50_000),
        )


def test_compat_event_errors():
    func = Spiral()
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="len\\(t\\) == 2"):
        compat.odeint(func, y0, torch.linspace(0, 1, 3, dtype=torch.float64), event_fn=spiral_event)
    with pytest.raises(ValueError, match="step_size"):
        compat.odeint(func, y0, torch.tensor([0.0, 1.0]), event_fn=spiral_event, method="rk4")
    with pytest.raises(ValueError, match="odeint_interface"):
        compat.odeint_event(
            func, y0, torch.tensor(0.0), event_fn=spiral_event, odeint_interface=torchdiffeq.odeint
        )
    # local_reg's own odeint, named by its module (it read "got 'odeint'", as the accepted one does).
    with pytest.raises(ValueError, match=r"compat\.odeint_adjoint, got local_reg\._odeint\.odeint$"):
        compat.odeint_event(
            func, y0, torch.tensor(0.0), event_fn=spiral_event, odeint_interface=local_reg.odeint
        )
    # Not a function at all: its type (it read "got ?.5").
    with pytest.raises(TypeError, match=r"compat\.odeint_adjoint, got an object of type int$"):
        compat.odeint_event(func, y0, torch.tensor(0.0), event_fn=spiral_event, odeint_interface=5)


def test_y0_changed_in_place_before_the_backward_pass_is_refused():
    """The t0 gradient evaluates ``f(t0, y0)`` in the backward pass: a ``y0`` changed in place
    since the solve would give a wrong gradient silently, so autograd's version check refuses it."""
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    t0 = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    start = y0 * 1.0
    event_t, _ = odeint_event(rotation, start, t0, event_fn=lambda t, y: y[0] - 0.5)
    with torch.no_grad():
        start.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        event_t.backward()


# --- root finding, counts and times: cases other tests let a wrong implementation through ---

F64 = torch.float64


def ball(t, y):
    return torch.stack([y[1], -9.81 * torch.ones_like(y[1])])


def impact_time(h: float, v: float, g: float = 9.81) -> float:
    return (v + math.sqrt(v * v + 2 * g * h)) / g


# --- the event locator's bracket values ----------------------------------------------------------


def calls_inside_last_step(event_fn, **kwargs):
    """``y' = 1`` from ``y(0) = 0``: every stage is 1, so each step's dense output is linear in t
    (to rounding) and so is ``h`` along it. Returns the times ``event_fn`` got strictly inside the
    last step, the event time and the solution."""
    times = []

    def recorded(t, y):
        times.append(float(t))
        return event_fn(t, y)

    with torch.no_grad():
        event_t, solution = odeint_event(
            lambda t, y: torch.ones_like(y), torch.zeros(1, dtype=F64), 0.0, event_fn=recorded, **kwargs
        )
    start = float(solution.steps.t[-1])
    end = start + float(solution.steps.dt[-1])
    return [t for t in times if start < t < end], float(event_t), solution


def test_the_root_finder_gets_h_at_the_start_of_a_later_step():
    """The bracket's left value must be ``h`` at the step's start (the previous step's end): with
    the exact end values, the first regula falsi point on a linear ``h`` is its root (to rounding,
    ~1e-15 here; a stale left value puts it elsewhere in the step)."""
    inside, event_t, solution = calls_inside_last_step(lambda t, y: y[0] - 5.0)
    assert solution.stats.n_steps > 1  # the event is not in the first step
    assert event_t == pytest.approx(5.0, abs=1e-12)
    assert inside[0] == pytest.approx(5.0, abs=1e-9)


def test_the_root_finder_gets_h_at_t0_in_the_first_step_with_several_entries():
    """Two entries, 0.5 and 100 away from their zeros at t0: ``h = min_i s_i g_i`` is 0.5 at t0,
    not 100. A first step of 1 holds the event at t = 0.5, where ``h = 0.5 - t`` is linear: the first
    regula falsi point is the root (to rounding), ``1 - 0.5 / (100.5)`` with the wrong left value."""
    inside, event_t, solution = calls_inside_last_step(
        lambda t, y: torch.stack([y[0] - 0.5, 100.0 - t]), first_step=1.0
    )
    assert solution.stats.n_steps == 1
    assert event_t == pytest.approx(0.5, abs=1e-12)
    assert inside[0] == pytest.approx(0.5, abs=1e-9)


def test_the_event_time_is_the_end_of_the_bracket_where_the_sign_has_changed():
    """``find_root`` returns the end where ``h <= 0``: the event has happened there. On the linear
    ``y = t`` the state read there is past 5 (or at it), and the time is within a few ulps."""
    _, event_t, solution = calls_inside_last_step(lambda t, y: y[0] - 5.0)
    assert float(solution.ys[-1, 0]) - 5.0 >= 0.0
    assert event_t == pytest.approx(5.0, abs=1e-12)


# --- event at t0 -----------------------------------------------------------------------------------


def test_one_entry_zero_at_t0_puts_the_event_at_t0():
    """Module docstring: "An entry that is zero at t0 puts the event at t0" -- also when another
    entry is not zero."""
    y0 = torch.tensor([10.0, 2.0], dtype=F64)
    event_t, solution = odeint_event(ball, y0, 0.5, event_fn=lambda t, y: torch.stack([y[0], t - 0.5]))
    assert event_t.item() == 0.5
    assert torch.equal(solution.ys, torch.stack([y0, y0]))
    assert solution.stats.n_steps == 0


@pytest.mark.parametrize("gradient", ["direct", "checkpoint", "symplectic", "adjoint"])
def test_an_event_at_t0_is_differentiable_as_the_event_just_after_it(gradient):
    """A ball at the ground moving down (``h = 0``, ``v = -2``) has its event at ``t0``. Its time and
    state are differentiable as any event's (it got no gradient: ``event_t`` was ``t0`` itself): the
    limit of the derivatives of the events that a ball released ``eps`` higher reaches at
    ``t = eps / 2``, ``dt_e/dh0 = 1/2`` and ``dy_e/dh0 = (0, -g / 2)``; ``dt_e/dv0 = 0``."""
    y0 = torch.tensor([0.0, -2.0], dtype=F64, requires_grad=True)
    event_t, solution = odeint_event(
        ball, y0, 0.0, event_fn=lambda t, y: y[0], gradient=gradient, adjoint_params=()
    )
    assert event_t.item() == 0.0 and solution.stats.n_steps == 0
    (dt_dy0,) = torch.autograd.grad(event_t, y0, retain_graph=True)
    jacobian = torch.stack(
        [torch.autograd.grad(solution.ys[-1][i], y0, retain_graph=True)[0] for i in range(2)]
    )
    eps = 1e-6
    with torch.no_grad():
        later_t, later = odeint_event(
            ball, torch.tensor([eps, -2.0], dtype=F64), 0.0, event_fn=lambda t, y: y[0]
        )
    assert dt_dy0.tolist() == pytest.approx([later_t.item() / eps, 0.0], abs=1e-5)
    assert dt_dy0[0].item() == pytest.approx(0.5, rel=1e-12)
    difference = (later.ys[-1] - torch.tensor([0.0, -2.0], dtype=F64)) / eps
    assert jacobian[:, 0].tolist() == pytest.approx(difference.tolist(), abs=1e-5)
    assert jacobian[:, 0].tolist() == pytest.approx([0.0, -9.81 / 2], rel=1e-12, abs=1e-12)


def test_an_event_at_t0_of_an_entry_in_time_alone_does_not_move_with_t0():
    """``g = t - 0.5`` zero at ``t0 = 0.5``: the event is at 0.5 wherever the solve starts before it,
    so ``dt_e/dt0 = 0`` (it was 1: ``event_t`` was ``t0`` itself)."""
    t0 = torch.tensor(0.5, dtype=F64, requires_grad=True)
    event_t, _ = odeint_event(ball, torch.tensor([10.0, 2.0], dtype=F64), t0, event_fn=lambda t, y: t - 0.5)
    assert event_t.item() == 0.5
    (grad,) = torch.autograd.grad(event_t, t0, allow_unused=True)
    assert grad is not None and grad.item() == 0.0


# --- costs counted in the stats --------------------------------------------------------------------


@pytest.mark.parametrize("height", [10.0, 0.0], ids=["later", "at-t0"])
@pytest.mark.parametrize("mode", ["gradient", "grad-mode-no-input-needs-grad", "no_grad"])
def test_stats_nfe_counts_the_field_evaluations_made(mode, height):
    """``stats.nfe`` is the number of times ``func`` ran: the rate ``f(t_e, y_e)`` for the implicit
    function theorem is evaluated (and counted) only when a gradient can flow; also for an event at
    ``t0``, which takes no step (its gradient's evaluations went uncounted unseen)."""
    calls = []

    def counted(t, y):
        calls.append(float(t))
        return ball(t, y)

    y0 = torch.tensor([height, 2.0], dtype=F64, requires_grad=mode == "gradient")
    with torch.set_grad_enabled(mode != "no_grad"):
        event_t, solution = odeint_event(counted, y0, 0.0, event_fn=lambda t, y: y[0], rtol=1e-8, atol=1e-10)
    assert event_t.item() == pytest.approx(impact_time(height, 2.0) if height else 0.0, rel=1e-7)
    assert solution.stats.nfe == len(calls)


def test_stats_nfe_backward_counts_the_start_rate_of_the_t0_gradient():
    """The ``t0`` gradient evaluates ``f(t0, y0)`` once in the backward pass, counted in
    ``stats.nfe_backward``; the gradient is ``dt_e/dt0 = 1`` (the ball's flight does not depend on
    when it starts)."""
    calls = []

    def counted(t, y):
        calls.append(float(t))
        return ball(t, y)

    t0 = torch.tensor(0.5, dtype=F64, requires_grad=True)
    event_t, solution = odeint_event(
        counted, torch.tensor([10.0, 2.0], dtype=F64), t0, event_fn=lambda t, y: y[0], gradient="direct"
    )
    forward = len(calls)
    event_t.backward()
    assert float(t0.grad) == pytest.approx(1.0, rel=1e-9)
    assert len(calls) - forward >= 1
    assert solution.stats.nfe_backward == len(calls) - forward


# --- the time dtype of the gradient evaluations ------------------------------------------------------


def test_float32_state_with_float64_t0_gets_float64_times_also_in_the_gradient_evaluations():
    """odeint_event's docstring: ``func`` and ``event_fn`` get times in the wider of ``t0``'s and
    ``y0``'s dtypes -- also the evaluations for the implicit-function gradient (a float32 time at
    1e3 is 6e-5 coarse). The event time is ``t0 + sqrt(2 h / g)``; its gradient w.r.t. the height
    ``1 / sqrt(2 g h)``."""
    seen = set()

    def field(t, y):
        seen.add(("func", t.dtype))
        return ball(t, y)

    def ground(t, y):
        seen.add(("event_fn", t.dtype))
        return y[0]

    height = torch.tensor(2.0, requires_grad=True)
    t0 = torch.tensor(1e3, dtype=F64)
    event_t, _ = odeint_event(field, torch.stack([height, torch.tensor(0.0)]), t0, event_fn=ground)
    (grad,) = torch.autograd.grad(event_t, height)
    assert (event_t - t0).item() == pytest.approx(math.sqrt(2 * 2.0 / 9.81), abs=1e-5)
    assert float(grad) == pytest.approx(1 / math.sqrt(2 * 9.81 * 2.0), rel=1e-4)
    assert seen == {("func", F64), ("event_fn", F64)}


def test_a_t0_at_the_open_end_is_refused():
    """ "t0 ... lies at or beyond the largest time an event solve ... reaches": at it, too."""
    end = open_end(torch.float32)
    with pytest.raises(ValueError, match="lies at or beyond the largest time"):
        odeint_event(lambda t, y: -y, torch.ones(1), end, event_fn=lambda t, y: y[0] - 0.5)


@pytest.mark.parametrize(("flat_after", "in_grad_mode"), [(None, 2), (torch.relu, 4)], ids=["simple", "relu"])
def test_event_fn_evaluations_in_grad_mode_are_the_documented_ones(flat_after, in_grad_mode):
    """Module docstring: the gradient costs "one evaluation of event_fn in grad mode and, when a
    gradient can flow, ... another of event_fn"; where ``g`` is flat at the event, "two more". The
    root finding runs without a graph. The gradient is the analytic ``dt_e/dh = 1 / sqrt(v^2 + 2 g h)``."""
    graph_calls = []

    def ground(t, y):
        if torch.is_grad_enabled():
            graph_calls.append(float(t.detach()))
        return y[0] if flat_after is None else flat_after(y[0])

    height = torch.tensor(10.0, dtype=F64, requires_grad=True)
    event_t, _ = odeint_event(
        ball,
        torch.stack([height, torch.tensor(2.0, dtype=F64)]),
        0.0,
        event_fn=ground,
        rtol=1e-10,
        atol=1e-12,
    )
    (grad,) = torch.autograd.grad(event_t, height)
    assert float(grad) == pytest.approx(1 / math.sqrt(4.0 + 2 * 9.81 * 10.0), rel=1e-7)
    assert len(graph_calls) == in_grad_mode


@pytest.mark.parametrize("entry", [odeint_event, compat.odeint_event])
def test_forward_mode_tangents_through_an_event_solve_are_refused_rather_than_missing_the_event_shift(entry):
    # A dual y0, t0, func parameter or event_fn parameter gave tangents at a fixed time (dt_e/dh0 None
    # for the falling ball, where it is 1/sqrt(2); dy_e/dh0 [1, 0] where it is [0, -1/sqrt(2)]).
    import torch.autograd.forward_ad as fwad

    dtype = torch.float64
    y0 = torch.tensor([1.0, 0.0], dtype=dtype)
    one = torch.tensor(1.0, dtype=dtype)

    def fall(gravity):
        return lambda t, y: torch.stack([y[1], -gravity * torch.ones_like(y[1])])

    def ground(level):
        return lambda t, y: y[0] - level

    cases = {
        "y0 carries": lambda: entry(
            fall(one), fwad.make_dual(y0, torch.tensor([1.0, 0.0], dtype=dtype)), 0.0, event_fn=ground(0.0)
        ),
        # compat passes t0 on as the first of its t, and names that.
        "t0? carries": lambda: entry(
            fall(one), y0, fwad.make_dual(torch.tensor(0.0, dtype=dtype), one), event_fn=ground(0.0)
        ),
        "func or event_fn uses a tensor that carries": lambda: entry(
            fall(fwad.make_dual(one, one)), y0, 0.0, event_fn=ground(0.0)
        ),
    }
    for who, solve in cases.items():
        with (
            fwad.dual_level(),
            pytest.raises(ValueError, match=f"odeint_event: {who} forward-mode tangents"),
        ):
            solve()
    with fwad.dual_level(), pytest.raises(ValueError, match="func or event_fn uses a tensor that carries"):
        entry(fall(one), y0, 0.0, event_fn=ground(fwad.make_dual(torch.tensor(0.0, dtype=dtype), one)))
    # Without tangents, inside a dual level too, the event is found: sqrt(2).
    with fwad.dual_level():
        event_t, _ = entry(fall(one), y0, 0.0, event_fn=ground(0.0))
    assert float(event_t) == pytest.approx(math.sqrt(2.0), rel=1e-6)


def test_a_tangential_crossing_warns_and_leaves_the_event_time_without_a_gradient():
    """solver.md: where event_fn does not change along the solution (here a step function, which
    changes sign without a slope), the event time is not differentiable: a warning says so and
    the time has no graph, where the smooth event function's time has d t_e / d y0 = -1."""
    y0 = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    t0 = torch.tensor(0.0, dtype=torch.float64)

    def rise(t, y):
        return torch.ones_like(y)

    with pytest.warns(UserWarning, match=r"\(a tangential crossing\): the event time is not differentiable"):
        event_t, solution = local_reg.odeint_event(rise, y0, t0, event_fn=lambda t, y: torch.sign(y[0] - 1.5))
    assert float(event_t) == pytest.approx(0.5, abs=1e-9) and not event_t.requires_grad
    assert solution.ys[-1].requires_grad  # the state still carries y0's gradient
    smooth_t, _ = local_reg.odeint_event(rise, y0, t0, event_fn=lambda t, y: y[0] - 1.5)
    assert float(torch.autograd.grad(smooth_t, y0)[0]) == pytest.approx(-1.0, rel=1e-9)


@pytest.mark.parametrize("solver", ["odeint_event", "compat"])
def test_event_fn_reads_the_same_function_at_t0_as_in_the_search_under_autocast(solver):
    """Under bfloat16 autocast a learned event function's sign at t0 was read in bfloat16 (+0.001)
    and in the root search in float32 (-0.0005): the crossing at 5e-4 was missed and the solve ran
    to 3e35. Every evaluation of event_fn runs outside autocast now, as the search does."""
    event_layer = nn.Linear(2, 1)
    with torch.no_grad():
        event_layer.weight.fill_(1.0)
        event_layer.bias.fill_(-1.0)
    dtypes = []

    def event_fn(t, y):
        value = event_layer(y).squeeze(-1)
        dtypes.append(value.dtype)
        return value

    y0 = torch.tensor([0.9985, 0.001])  # event_fn(y0) = -0.0005 in float32; y[0] grows at rate 1
    solve = local_reg.odeint_event if solver == "odeint_event" else compat.odeint_event
    with torch.autocast("cpu", dtype=torch.bfloat16):
        event_t, _ = solve(
            lambda t, y: torch.tensor([1.0, 0.0]) + 0 * y, y0, torch.tensor(0.0), event_fn=event_fn
        )
    assert float(event_t) == pytest.approx(5e-4, rel=1e-3)
    assert set(dtypes) == {torch.float32}


# --- direction: up-crossings or down-crossings only ------------------------------------------------


class DampedOscillator(nn.Module):
    """``x'' = -x - c x'`` as ``(x, v)``, the damping ``c`` a parameter: from ``(1, 0)`` ``x`` crosses
    each level in ``(-0.7, 1)`` downward first, then upward (for the levels above ``-0.45``)."""

    def __init__(self, damping: float = 0.2) -> None:
        super().__init__()
        self.damping = nn.Parameter(torch.tensor(damping, dtype=torch.float64))

    def forward(self, t, y):
        return torch.stack([y[1], -y[0] - self.damping * y[1]])


def scipy_first_crossing(levels, direction, y0=(1.0, 0.0), damping=0.2):
    """The first time ``x`` crosses one of ``levels`` in scipy's ``direction`` (+1 up, -1 down, 0
    either; or a list of them, one per level), by ``solve_ivp``'s own event location."""
    from scipy.integrate import solve_ivp

    directions = direction if isinstance(direction, list) else [direction] * len(levels)
    events = []
    for level, direction in zip(levels, directions, strict=True):

        def crossing(t, y, level=level):
            return y[0] - level

        crossing.terminal = True
        crossing.direction = direction
        events.append(crossing)
    result = solve_ivp(
        lambda t, y: [y[1], -y[0] - damping * y[1]],
        (0.0, 50.0),
        list(y0),
        method="DOP853",
        rtol=1e-13,
        atol=1e-13,
        events=events,
    )
    return min(float(times[0]) for times in result.t_events if len(times))


@pytest.mark.parametrize("levels", [[0.3], [0.3, -0.4]])
@pytest.mark.parametrize(("direction", "scipy_direction"), [(True, 1), (False, -1), (None, 0)])
def test_direction_stops_at_the_first_crossing_that_way_as_scipy_does(levels, direction, scipy_direction):
    """Up-crossings only (diffrax's ``direction=True``, scipy's ``+1``), down-crossings only, or
    either; with several entries the first entry to cross that way ends the solve."""
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    level = torch.tensor(levels, dtype=torch.float64)
    event_t, solution = odeint_event(
        DampedOscillator(), y0, 0.0, event_fn=lambda t, y: y[0] - level, direction=direction, **TIGHT
    )
    expected = scipy_first_crossing(levels, scipy_direction)
    assert event_t.item() == pytest.approx(expected, rel=1e-9)
    crossed = solution.ys[-1, 0] - level
    assert crossed.abs().min().item() < 1e-9
    # The crossing is the one asked for: the first down-crossing of 0.3 comes at 1.33, the first
    # up-crossing (of -0.4 at 4.18, or of 0.3 at 5.38) after x has swung below.
    assert (event_t.item() < 2.0) == (direction is not True)


def test_with_a_direction_an_entry_zero_at_t0_is_no_event_and_a_crossing_never_made_is_unreached():
    """``direction=None`` puts the event at ``t0`` where an entry is zero there (torchdiffeq's
    rule); with a direction the entry's crossing is still to come, as a bounce restarted on the
    surface needs. From ``x = 0.3`` at rest ``x`` swings down and never climbs back to 0.3."""
    y0 = torch.tensor([0.3, 0.0], dtype=torch.float64)

    def above(t, y):
        return y[0] - 0.3

    event_t, solution = odeint_event(DampedOscillator(), y0, 0.0, event_fn=above)
    assert float(event_t) == 0.0 and solution.stats.n_steps == 0
    for direction in (True, False):
        with pytest.raises(SolverError, match=r"^event_fn did not change sign within max_steps"):
            odeint_event(DampedOscillator(), y0, 0.0, event_fn=above, direction=direction, max_steps=300)
    # Launched upward from the ground, a ball's down-crossing is its landing, 2 v / g.
    ball = torch.tensor([0.0, 5.0], dtype=torch.float64)
    event_t, _ = odeint_event(Ball(), ball, 0.0, event_fn=lambda t, y: y[0], direction=False, **TIGHT)
    assert float(event_t) == pytest.approx(2 * 5.0 / 9.81, rel=1e-12)


def test_an_up_crossing_time_has_the_implicit_function_gradient():
    """The event time's gradient w.r.t. the field's damping and the event's level, at the first
    up-crossing, against gradcheck's finite differences."""

    def up_crossing_time(damping, level):
        y0 = torch.tensor([1.0, 0.0], dtype=torch.float64)

        def field(t, y):
            return torch.stack([y[1], -y[0] - damping * y[1]])

        event_t, _ = odeint_event(field, y0, 0.0, event_fn=lambda t, y: y[0] - level, direction=True, **TIGHT)
        return event_t

    damping = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    level = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    assert float(up_crossing_time(damping, level)) == pytest.approx(scipy_first_crossing([0.3], 1), rel=1e-9)
    # With gradcheck's own checks, the undefined cotangent's among them (which handed the event
    # time's tensor hook a None).
    assert torch.autograd.gradcheck(up_crossing_time, (damping, level), eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "direction", ["up", 1, np.bool_(True), torch.tensor(True), torch.tensor([True]), np.array([True])]
)
def test_a_direction_that_is_not_none_or_a_bool_is_refused_naming_it(direction):
    y0 = torch.tensor([10.0, 2.0], dtype=torch.float64)
    with pytest.raises(TypeError, match=r"^direction must be None, True, False or a list of them"):
        odeint_event(Ball(), y0, 0.0, event_fn=Ground(), direction=direction)


@pytest.mark.parametrize(
    ("direction", "name"), [(1, "direction"), (-1.0, "direction"), ([True, 0], r"direction\[1\]")]
)
def test_scipys_numeric_direction_is_refused_with_its_spelling_here(direction, name):
    y0 = torch.tensor([10.0, 2.0], dtype=torch.float64)
    with pytest.raises(
        TypeError, match=rf"^{name} must be .*scipy's direction=\+1 is True here, -1 False, 0 None"
    ):
        odeint_event(Ball(), y0, 0.0, event_fn=Ground(), direction=direction)


def time_limited_decay(limit_entry, direction, rate=-1.0, **kwargs):
    """``y' = rate y`` from 1 until ``y`` rises to 2 (never, where it decays the way the solve
    goes) or the time limit entry crosses zero."""
    y0 = torch.tensor([1.0], dtype=torch.float64)
    return odeint_event(
        lambda t, y: rate * y, y0, 0.0, event_fn=lambda t, y: torch.stack([y[0] - 2.0, limit_entry(t)]),
        direction=direction, **kwargs,
    )  # fmt: skip


def test_a_direction_per_entry_keeps_a_time_limit_under_an_up_crossing():
    """scipy gives each event its own direction: the documented time limit ``t_max - t`` falls, so
    under ``direction=True`` it was left out and the solve ran to max_steps (with stiffness advice).
    As scipy's ``solve_ivp(t_span=(0, 5))``, which reaches 5 without an event, it ends at 5."""
    event_t, _ = time_limited_decay(lambda t: 5.0 - t, [True, None])
    assert event_t.item() == pytest.approx(5.0, rel=1e-12)
    # Given per entry, the time limit written either way; the up-crossing still counts first.
    event_t, _ = time_limited_decay(lambda t: t - 5.0, [True, True])
    assert event_t.item() == pytest.approx(5.0, rel=1e-12)
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    event_t, _ = odeint_event(
        DampedOscillator(), y0, 0.0, event_fn=lambda t, y: torch.stack([y[0] - 0.3, 30.0 - t]),
        direction=(True, None), **TIGHT,
    )  # fmt: skip
    assert event_t.item() == pytest.approx(scipy_first_crossing([0.3], 1), rel=1e-9)


@pytest.mark.parametrize("directions", [[1, -1], [-1, 1], [1, 0], [0, -1]])
def test_each_entry_crosses_the_way_its_own_direction_asks_as_scipy_does(directions):
    levels = [[0.3, -0.4]]
    here = [{1: True, -1: False, 0: None}[d] for d in directions]
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    level = torch.tensor(levels, dtype=torch.float64)  # shape (1, 2): entries counted flattened
    event_t, _ = odeint_event(
        DampedOscillator(), y0, 0.0, event_fn=lambda t, y: y[0] - level, direction=here, **TIGHT
    )
    assert event_t.item() == pytest.approx(scipy_first_crossing(levels[0], directions), rel=1e-9)


def test_a_direction_per_entry_of_one_value_is_that_direction_bit_for_bit():
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    level = torch.tensor([0.3, -0.4], dtype=torch.float64)
    for direction in (True, False, None):
        results = [
            odeint_event(DampedOscillator(), y0, 0.0, event_fn=lambda t, y: y[0] - level, direction=given)
            for given in (direction, [direction, direction])
        ]
        (scalar_t, scalar), (listed_t, listed) = results
        assert scalar_t.item() == listed_t.item() and torch.equal(scalar.ys, listed.ys)
        assert scalar.stats.nfe == listed.stats.nfe


def test_a_direction_per_entry_zero_at_t0_puts_the_event_there_only_for_a_none_entry():
    """A ball launched upward from the ground, its height twice: the entry without a direction is
    an event at t0 (torchdiffeq's rule), the one with ``False`` waits for the landing, 2 v / g."""
    ball = torch.tensor([0.0, 5.0], dtype=torch.float64)

    def heights(t, y):
        return torch.stack([y[0], y[0]])

    event_t, solution = odeint_event(Ball(), ball, 0.0, event_fn=heights, direction=[False, None])
    assert float(event_t) == 0.0 and solution.stats.n_steps == 0
    event_t, _ = odeint_event(Ball(), ball, 0.0, event_fn=heights, direction=[False, True], **TIGHT)
    assert event_t.item() == pytest.approx(2 * 5.0 / 9.81, rel=1e-12)


@pytest.mark.parametrize("direction", [[True], [True, None, False], []])
def test_a_direction_per_entry_of_the_wrong_length_is_refused_naming_the_shape(direction):
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    level = torch.tensor([0.3, -0.4], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^direction has .* event_fn returned shape \(2,\)"):
        odeint_event(DampedOscillator(), y0, 0.0, event_fn=lambda t, y: y[0] - level, direction=direction)


def test_a_time_limit_left_out_by_the_direction_is_named_when_the_step_limit_ends_the_solve():
    """The time limit ``t_max - t`` under ``direction=True`` falls through zero, the other way: the
    step-limit error gave stiffness advice (the steps of ``y' = -y`` out to t = 35,000 are
    stability-limited), not the entry that direction left out."""
    with pytest.raises(SolverError) as error:
        time_limited_decay(lambda t: 5.0 - t, True, max_steps=300)
    reason = error.value.reason
    assert reason.startswith("event_fn did not change sign within max_steps the way direction=True asks")
    assert "entry 1 of event_fn fell below zero after t0" in reason and "stiff" not in reason
    assert "direction=[True, None]" in reason
    # With reverse_time the time limit t - t_min falls as the solve goes.
    with pytest.raises(SolverError, match="entry 1 of event_fn fell below zero after t0"):
        time_limited_decay(lambda t: t + 5.0, True, rate=1.0, max_steps=300, reverse_time=True)


def test_compat_odeint_event_keeps_torchdiffeqs_signature_without_direction():
    with pytest.raises(TypeError, match="direction"):
        compat.odeint_event(
            lambda t, y: -y,
            torch.ones(1),
            torch.tensor(0.0),
            event_fn=lambda t, y: y[0] - 0.5,
            direction=True,
        )


# --- scipy's event attributes ---------------------------------------------------------------------


def scipy_event(level, **attributes):
    """scipy's spelling of an event: a function ``x - level`` carrying ``attributes``."""

    def crossing(t, y):
        return y[0] - level

    for name, value in attributes.items():
        setattr(crossing, name, value)
    return crossing


@pytest.mark.parametrize("scipy_direction", [1, -1, 0, 2.5, np.int64(-3)])
def test_a_scipy_event_functions_direction_attribute_picks_the_crossing_as_scipy_does(scipy_direction):
    """A scipy event function passed as it is: its ``.direction`` was ignored, and the solve stopped
    at the first crossing either way (from x = 1 a down-crossing at 1.33, where scipy's ``+1`` stops at
    5.38)."""
    # From x = +-1 at rest, the first crossing of the level between is the other way than asked.
    start = (-1.0, 0.0) if scipy_direction < 0 else (1.0, 0.0)
    y0 = torch.tensor(start, dtype=torch.float64)
    crossing = scipy_event(0.3, direction=scipy_direction, terminal=True)
    event_t, _ = odeint_event(DampedOscillator(), y0, 0.0, event_fn=crossing, **TIGHT)
    expected = scipy_first_crossing([0.3], float(np.sign(scipy_direction)), y0=start)
    assert event_t.item() == pytest.approx(expected, rel=1e-9)
    # direction= agreeing with it is taken.
    agreeing = {1: True, -1: False, 0: None}[int(np.sign(scipy_direction))]
    event_t, _ = odeint_event(DampedOscillator(), y0, 0.0, event_fn=crossing, direction=agreeing, **TIGHT)
    assert event_t.item() == pytest.approx(expected, rel=1e-9)


def test_an_event_functions_attribute_direction_of_another_type_is_left_alone():
    """Only a real number is scipy's direction: a bool, a tensor or a string (a module's own
    attribute of that name) leaves the solve at its default, any crossing."""
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    expected = scipy_first_crossing([0.3], 0)
    for unrelated in (True, torch.tensor(1.0), "up"):
        event_fn = scipy_event(0.3, direction=unrelated)
        event_t, _ = odeint_event(DampedOscillator(), y0, 0.0, event_fn=event_fn, **TIGHT)
        assert event_t.item() == pytest.approx(expected, rel=1e-9)

    # A module's attributes are its own, numbers and bools too (scipy's events are plain functions):
    # its direction sign convention stopped the solve at another crossing, a terminal flag was refused.
    class Level(torch.nn.Module):
        def __init__(self, level: float, direction: float) -> None:
            super().__init__()
            self.level, self.direction, self.terminal = level, direction, False

        def forward(self, t, y):
            return self.direction * (y[0] - self.level)

    for own in (1, -1):
        event_t, _ = odeint_event(DampedOscillator(), y0, 0.0, event_fn=Level(0.3, own), **TIGHT)
        assert event_t.item() == pytest.approx(expected, rel=1e-9)


def test_a_direction_list_of_the_wrong_length_is_refused_beside_a_scipy_direction():
    """A list agreeing with the event function's ``.direction`` was taken as that one value, its
    length unchecked."""
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64)

    def two_levels(t, y):
        return torch.stack([y[0] - 0.3, y[0] - 0.5])

    two_levels.direction = 1  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match=r"^direction has 5 entries, but event_fn returned shape \(2,\)"):
        odeint_event(DampedOscillator(), y0, 0.0, event_fn=two_levels, direction=[True] * 5)


def test_a_direction_that_contradicts_the_event_functions_attribute_is_refused_naming_both():
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    for attribute, direction in [(1, False), (-1, True), (0, True), (1.0, False)]:
        with pytest.raises(ValueError, match=r"^direction=.* and event_fn\.direction=.* differ"):
            odeint_event(DampedOscillator(), y0, 0.0, event_fn=scipy_event(0.3, direction=attribute),
                         direction=direction)  # fmt: skip


@pytest.mark.parametrize("terminal", [False, 0, np.bool_(False), 3])
def test_a_scipy_event_that_is_not_terminal_at_its_first_crossing_is_refused(terminal):
    """scipy's default, ``terminal=False``, records the crossing and goes on, and ``terminal=3``
    stops at the third: odeint_event stopped at the first crossing without a word."""
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    with pytest.raises(
        ValueError, match=r"^event_fn\.terminal=.*odeint_event's events are terminal.*docs/solver"
    ):
        odeint_event(DampedOscillator(), y0, 0.0, event_fn=scipy_event(0.3, terminal=terminal))
    # terminal=True (or 1) is odeint_event's own rule.
    for terminal in (True, 1):
        event_t, _ = odeint_event(
            DampedOscillator(), y0, 0.0, event_fn=scipy_event(0.3, terminal=terminal), **TIGHT
        )
        assert event_t.item() == pytest.approx(scipy_first_crossing([0.3], 0), rel=1e-9)


def test_scipys_non_terminal_event_is_ported_by_restarting_from_each_event():
    """docs/solver.md's loop for scipy's non-terminal event (record it and go on): every crossing's
    time, as scipy's ``t_events``, solving again from each event until a time limit."""
    from scipy.integrate import solve_ivp

    def crossing(t, y):
        return y[0] - 0.3

    expected = solve_ivp(
        lambda t, y: [y[1], -y[0] - 0.1 * y[1]], (0, 30), [1.0, 0.0], rtol=1e-10, atol=1e-12, events=crossing
    ).t_events[0]
    field = DampedOscillator(damping=0.1)
    times, t0, y = [], 0.0, torch.tensor([1.0, 0.0], dtype=torch.float64)
    while True:
        event_t, solution = odeint_event(
            field, y, t0, event_fn=lambda t, y: torch.stack([y[0] - 0.3, 30 - t]), rtol=1e-10, atol=1e-12
        )
        if event_t.item() >= 30:
            break
        times.append(event_t.item())
        t0, y = event_t, solution.ys[-1]
    assert len(times) == len(expected) == 7
    np.testing.assert_allclose(times, expected, rtol=1e-8)


def test_with_a_direction_an_entry_zero_at_t0_and_rising_is_no_event_where_scipy_reports_one():
    """A departure from scipy, documented: ``g = y`` zero at t0 and rising is scipy's up-crossing
    event at t0 (its ``direction=+1``); here, with ``direction=True``, the entry has not crossed
    yet, so the solve goes on (to the time limit, here)."""
    from scipy.integrate import solve_ivp

    def rising(t, y):
        return y[0]

    rising.terminal, rising.direction = True, 1
    assert solve_ivp(lambda t, y: [1.0], (0, 5), [0.0], events=rising).t_events[0].tolist() == [0.0]
    y0 = torch.tensor([0.0], dtype=torch.float64)
    event_t, _ = odeint_event(
        lambda t, y: torch.ones_like(y), y0, 0.0, event_fn=lambda t, y: torch.stack([y[0], t - 5.0]),
        direction=True,
    )  # fmt: skip
    assert event_t.item() == pytest.approx(5.0, rel=1e-12)
