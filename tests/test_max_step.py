"""``PIController(max_step=...)``: a bound on every attempted step, as scipy's ``solve_ivp(max_step=)``
and diffrax's ``PIDController(dtmax=)``, on every path that steps adaptively."""

from __future__ import annotations

import math

import pytest
import torch

from local_reg import PIController, odeint, sdeint
from tests.problems import DecaySDE

DTYPE = torch.float64
# A step advances by (t + dt) - t (the step the times can represent), a few ulps off dt.
ROUNDING = 1e-12


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
    assert bounded.steps.dt.abs().max() <= 0.5 * (1 + ROUNDING)
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
    assert solution.steps.dt.abs().max() <= 0.3 * (1 + ROUNDING)
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
        assert solution.steps.dt.abs().max() <= 0.25 * (1 + ROUNDING)
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
    assert bounded.steps.dt.abs().max() <= 0.2 * (1 + ROUNDING)
    assert bounded.stats.n_accepted >= 10


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


@pytest.mark.parametrize("bad", ["0.1", True], ids=["string", "bool"])
def test_a_max_step_that_is_not_a_number_is_refused_by_name(bad):
    with pytest.raises(TypeError, match="max_step must be a real number"):
        PIController(max_step=bad)
