"""``PIController(max_step=...)``: a bound on every attempted step, as scipy's ``solve_ivp(max_step=)``
and diffrax's ``PIDController(dtmax=)``, on every path that steps adaptively."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from local_reg import LocallyRegularized, PIController, SolverError, odeint, sdeint
from local_reg._integrate import next_step_size
from local_reg.regularization import _sampling
from tests.problems import DecaySDE

DTYPE = torch.float64


def assert_bounded(solution, max_step: float) -> None:
    """Every accepted step at most ``max_step``, up to the rounding of the times: a step advances by
    ``(t + dt) - t``, and one landing on an output time may exceed the bound by a remainder the next
    step could not take (4 ulps of the time, the loop's smallest step)."""
    largest_time = solution.ts.abs().max().item()
    assert solution.steps.dt.abs().max().item() <= max_step + 4 * math.ulp(largest_time)


def decay(t, y):
    return -y


def still(t, y):
    return torch.zeros_like(y)


@pytest.mark.parametrize("span", [(0.0, 10.0), (10.0, 0.0)], ids=["forward", "backward"])
def test_every_step_is_at_most_max_step_and_the_solution_stays_accurate(span):
    y0 = torch.ones(3, dtype=DTYPE)
    loose = {"rtol": 1e-3, "atol": 1e-3}
    unbounded = odeint(decay, y0, list(span), **loose)
    assert unbounded.steps.dt.abs().max() > 1.0  # the bound below is not met by itself
    bounded = odeint(decay, y0, list(span), controller=PIController(max_step=0.5), **loose)
    assert_bounded(bounded, 0.5)
    assert bounded.stats.n_accepted >= 20  # at least span / max_step steps
    exact = math.exp(-(span[1] - span[0]))
    torch.testing.assert_close(bounded.ys[-1], torch.full((3,), exact, dtype=DTYPE), rtol=1e-3, atol=1e-5)


def test_a_step_landing_on_an_output_time_stays_within_max_step():
    # Without the bound a step within 1% of the output time lands on it (no sliver is left over):
    # here 1.004 from a proposed 1.0. With max_step=1.0 it takes the sliver instead.
    y0 = torch.ones(2, dtype=DTYPE)
    unbounded = odeint(still, y0, [0.0, 1.004], first_step=1.0)
    assert unbounded.steps.dt.tolist() == [1.004]
    for first_step in (1.0, 5.0):  # a first step above the bound starts at it
        bounded = odeint(
            still, y0, [0.0, 1.004], first_step=first_step, controller=PIController(max_step=1.0)
        )
        assert bounded.steps.dt[0].item() == 1.0
        assert bounded.steps.dt.tolist() == pytest.approx([1.0, 0.004], rel=1e-12)


def test_interpolated_outputs_between_bounded_steps_match_the_exact_solution():
    y0 = torch.ones(2, dtype=DTYPE)
    times = torch.linspace(0.0, 4.0, 41, dtype=DTYPE)
    solution = odeint(decay, y0, times, rtol=1e-8, atol=1e-10, controller=PIController(max_step=0.3))
    assert_bounded(solution, 0.3)
    expected = torch.exp(-times)[:, None].expand(-1, 2)
    torch.testing.assert_close(solution.ys, expected, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("gradient", ["symplectic", "checkpoint", "adjoint"])
def test_every_gradient_method_differentiates_the_bounded_solve(gradient):
    weight = torch.tensor([[-0.4, 1.0], [-1.0, -0.3]], dtype=DTYPE, requires_grad=True)
    y0 = torch.tensor([1.0, 0.5], dtype=DTYPE)
    times = [0.0, 1.5, 3.0]
    controller = PIController(max_step=0.25)

    def field(t, y):
        return torch.tanh(y @ weight)

    def gradient_of(method, **extra):
        solution = odeint(
            field, y0, times, rtol=1e-9, atol=1e-9, controller=controller, gradient=method, **extra
        )
        assert_bounded(solution, 0.25)
        (grad,) = torch.autograd.grad(solution.ys.square().sum(), weight)
        return grad

    direct = gradient_of("direct")
    if gradient == "adjoint":
        # The backsolve adjoint's backward solve is its own (bounded by the same controller), so it
        # approaches the exact gradient as its tolerance tightens.
        torch.testing.assert_close(
            gradient_of(gradient, adjoint_params=(weight,)), direct, rtol=1e-6, atol=1e-8
        )
    else:
        torch.testing.assert_close(
            gradient_of(gradient, adjoint_params=(weight,)), direct, rtol=1e-10, atol=1e-12
        )


def test_sdeint_steps_are_at_most_max_step():
    y0 = torch.full((4, 1), 0.5, dtype=DTYPE)
    torch.manual_seed(0)
    unbounded = sdeint(DecaySDE(), y0, [0.0, 2.0], rtol=0.5, atol=0.5)
    assert unbounded.steps.dt.abs().max() > 0.2
    torch.manual_seed(0)
    bounded = sdeint(DecaySDE(), y0, [0.0, 2.0], rtol=0.5, atol=0.5, controller=PIController(max_step=0.2))
    assert_bounded(bounded, 0.2)
    assert bounded.stats.n_accepted >= 10


@pytest.mark.parametrize("t", [0.0, 1.0, 1e6])
@pytest.mark.parametrize("remaining_ulps", [3, 50, 300, 10**6])
@pytest.mark.parametrize("proposal", [0.5, 1.0, 1.0 - 1e-9, 2.0])
def test_the_landing_rule_with_an_infinite_bound_is_the_unbounded_one(t, remaining_ulps, proposal):
    # Near the landing slack's edge: a bound that never clips must change no decision.
    remaining = max(proposal, 1.0) + remaining_ulps * math.ulp(t + 2.0)
    dt_abs = remaining / 1.01 * proposal
    unbounded = next_step_size(t, t + remaining, dt_abs, 0, 10)
    assert next_step_size(t, t + remaining, dt_abs, 0, 10, max_step=math.inf) == unbounded
    assert next_step_size(t, t + remaining, dt_abs, 0, 10, max_step=2 * remaining) == unbounded


@pytest.mark.parametrize("t", [1.0, 1e6])
@pytest.mark.parametrize("max_step_ulps", [20, 1000])
def test_a_bound_of_a_few_ulps_lands_past_it_by_less_than_the_smallest_step(t, max_step_ulps):
    ulp = math.ulp(t)
    max_step = max_step_ulps * ulp
    for remainder_ulps in (1, 3, 5, 50):
        remaining = max_step + remainder_ulps * ulp
        # The loop proposes at most max_step (PIController.limit).
        dt_used, lands = next_step_size(t, t + remaining, max_step, 0, 10, max_step=max_step)
        if lands:  # only a remainder the next step could not take (4 ulps) is folded in
            assert remainder_ulps <= 4 and dt_used == pytest.approx(remaining, abs=2 * ulp)
        else:
            assert remainder_ulps > 4 and dt_used == max_step


@pytest.mark.parametrize("solve", ["odeint", "sdeint"])
def test_a_max_step_below_the_times_resolution_is_named_as_the_cause(solve):
    """At t = 1e9 a step must move t by more than 4 ulps (5e-7): a max_step of 3e-7 gave a bare
    "step size underflow" after 0 steps, which reads as a problem of the dynamics."""
    controller = PIController(max_step=3e-7)
    t = torch.tensor([1e9, 1e9 + 1e-4], dtype=torch.float64)
    match = r"step size underflow \(dt=3\.000e-07\): max_step=3e-07 is within a few ulps of t"
    with pytest.raises(SolverError, match=match):
        if solve == "odeint":
            odeint(lambda t, y: -y, torch.ones(1, dtype=torch.float64), t, controller=controller)
        else:
            sdeint(DecaySDE(), torch.ones(2, 1, dtype=torch.float64), t, controller=controller)
    # One a step can take from there is kept to, up to the rounding of t + dt.
    solution = odeint(
        lambda t, y: -y, torch.ones(1, dtype=torch.float64), t, controller=PIController(max_step=2e-5)
    )
    assert max(solution.steps.dt.tolist()) <= 2e-5 + math.ulp(1e9)


def test_the_backsolve_adjoints_backward_solve_is_bounded_too():
    weight = torch.tensor([[-0.4, 1.0], [-1.0, -0.3]], dtype=DTYPE, requires_grad=True)
    backward_times: list[float] = []

    def field(t, y):
        backward_times.append(float(t))
        return torch.tanh(y @ weight)

    def largest_gap_in_backward(controller):
        y0 = torch.tensor([1.0, 0.5], dtype=DTYPE)
        solution = odeint(
            field,
            y0,
            [0.0, 4.0],
            rtol=1e-3,
            atol=1e-3,
            controller=controller,
            gradient="adjoint",
            adjoint_params=(weight,),
        )
        backward_times.clear()
        solution.ys[-1].sum().backward()
        times = sorted(set(backward_times))
        return max(b - a for a, b in itertools.pairwise(times))

    assert largest_gap_in_backward(PIController()) > 0.5  # the backward solve's steps, unbounded
    assert largest_gap_in_backward(PIController(max_step=0.5)) <= 0.5 + 1e-12


def test_no_bound_is_the_default_and_inf_is_none():
    y0 = torch.ones(2, dtype=DTYPE)
    plain = odeint(decay, y0, [0.0, 10.0], rtol=1e-3, atol=1e-3)
    unbounded = odeint(
        decay, y0, [0.0, 10.0], rtol=1e-3, atol=1e-3, controller=PIController(max_step=math.inf)
    )
    assert PIController().max_step is None
    assert torch.equal(plain.steps.dt, unbounded.steps.dt)
    assert torch.equal(plain.ys, unbounded.ys)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan], ids=["zero", "negative", "nan"])
def test_a_max_step_that_bounds_nothing_sensible_is_refused_by_name(bad):
    with pytest.raises(ValueError, match="max_step must be positive"):
        PIController(max_step=bad)


@pytest.mark.parametrize("bad", ["0.1", True, torch.tensor([0.1, 0.2])], ids=["string", "bool", "1-D tensor"])
def test_a_max_step_that_is_not_a_number_is_refused_by_name(bad):
    with pytest.raises(TypeError, match="max_step must be a real number"):
        PIController(max_step=bad)


def test_a_0_dim_tensor_or_array_is_a_number_as_odeints_step_size_is():
    # PIController(max_step=torch.tensor(0.5)) was refused ("got Tensor") where odeint(step_size=)
    # and the tolerances take one.
    given = PIController(safety=np.array(0.8), max_step=torch.tensor(0.5), min_step=np.float32(0.25))
    assert given == PIController(safety=0.8, max_step=0.5, min_step=0.25)
    assert type(given.max_step) is float and type(given.safety) is float


class Decay(torch.nn.Module):
    """``y' = -y``, a module (what a regularized model wraps)."""

    def forward(self, t, y):
        return -y


@pytest.mark.parametrize(
    ("field", "backend"),
    [(Decay(), None), (DecaySDE(), None), (Decay(), "torchdiffeq")],
    ids=["ode", "sde", "ode-torchdiffeq"],
)
def test_the_probe_step_is_bounded_as_the_main_solves_first_step_is(monkeypatch, field, backend):
    # The paper's probe takes the initial-step heuristic's size from u(t_reg): the controller's
    # max_step and min_step bound it as they bound the main solve's first step from the same
    # heuristic, so the penalty measures a step the solve could take. With backend="torchdiffeq"
    # the bounds are torchdiffeq's options["max_step"] and ["min_step"], which its solver enforces.
    monkeypatch.setattr(_sampling, "sample_uniform_time", lambda times, dtype, generator: 0.2)

    def probe_step(**bounds):
        options = bounds if backend else {"controller": PIController(**bounds)}
        model = LocallyRegularized(
            field, penalty="error-dt", rtol=1e-5, atol=1e-7, backend=backend, options=options
        )
        model(torch.ones(2, 3, dtype=DTYPE), [0.0, 1.0])
        return model.stats.dt_reg

    free = probe_step()
    assert 0.0 < free < 0.2
    assert probe_step(max_step=free / 4) == free / 4
    assert probe_step(min_step=3 * free) == 3 * free
    if backend == "torchdiffeq":
        assert probe_step(max_step=float("inf"), min_step=0.0) == free  # its defaults: no bound
        with pytest.raises(ValueError, match=r"options\['max_step'\].*max_step must be positive"):
            LocallyRegularized(Decay(), backend=backend, options={"max_step": -1.0})
        # Its step factors are its own: one it accepts is not judged by PIController's rules.
        LocallyRegularized(Decay(), backend=backend, options={"ifactor": 1.0})
