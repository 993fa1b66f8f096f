"""Gradients of the graph-free methods (the shared autograd Function and the backsolve adjoint)
against references that do not go through their backward passes: the matrix exponential of a
linear ODE, and backpropagation through the forward solve (``gradient="direct"``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.linalg import expm

from local_reg import BacksolveAdjoint, PIController, odeint
from local_reg.gradients._function import steps_before_outputs
from tests.problems import LINEAR_MATRIX, TIGHT_TOLERANCES, LinearRows

DTYPE = torch.float64


def linear_y0() -> torch.Tensor:
    return torch.tensor([[1.0, -0.5, 0.25], [0.3, 0.8, -1.2]], dtype=DTYPE, requires_grad=True)


def solve_linear(times: list[float], **options) -> tuple:
    """dopri5 on the linear field from :func:`linear_y0`: the solution and that ``y0``."""
    y0 = linear_y0()
    return odeint(LinearRows(), y0, times, method="dopri5", **options), y0


def analytic_grad_y0(weights: list[np.ndarray], times: list[float]) -> np.ndarray:
    """``d/dz0 sum_i <W_i, z(t_i)>`` for ``z(t) = z0 expm(A t)^T``: ``sum_i W_i expm(A (t_i - t_0))``."""
    return sum(w @ expm(LINEAR_MATRIX * (t - times[0])) for w, t in zip(weights, times, strict=True))


@pytest.mark.parametrize(("rtol", "atol"), [(0.0, 1e-12), (1e-11, 1e-12)], ids=["absolute", "relative"])
def test_backsolve_at_its_own_tolerances_matches_the_matrix_exponential(rtol: float, atol: float) -> None:
    # A linear field: the adjoint a(t) does not depend on y, so dL/dy0 is W expm(A T) however
    # loosely the forward solve ran, and its accuracy is that of the backward solve alone. That is
    # only tight if the backward solve gets its own rtol and atol (rtol=0: error control by atol
    # alone), not the forward's loose ones.
    times = [0.0, 0.7, 1.5]
    weights = [np.full((2, 3), 0.5), np.arange(6.0).reshape(2, 3) / 6, np.ones((2, 3))]
    solution, y0 = solve_linear(times, rtol=1e-3, atol=1e-5, gradient=BacksolveAdjoint(rtol=rtol, atol=atol))
    loss = sum((torch.from_numpy(w) * y).sum() for w, y in zip(weights, solution.ys, strict=True))
    (grad,) = torch.autograd.grad(loss, y0)
    np.testing.assert_allclose(grad.numpy(), analytic_grad_y0(weights, times), rtol=0, atol=1e-9)


def test_backsolve_first_step_is_the_backward_solves_first_step() -> None:
    # The backward solve starts at t=1 with a first attempted step of -first_step: tsit5's second
    # stage is then evaluated at t = 1 - c2 * first_step (c2 = 0.161), which the initial-step
    # heuristic would not pick.
    calls: list[float] = []
    field = LinearRows()

    def recorded(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls.append(float(t))
        return field(t, y)

    y0 = linear_y0()
    first_step = 0.0123
    solution = odeint(
        recorded,
        y0,
        [0.0, 1.0],
        method="tsit5",
        gradient=BacksolveAdjoint(first_step=first_step),
        adjoint_params=tuple(field.parameters()),
    )
    calls.clear()
    solution.ys[-1].sum().backward()
    assert calls[0] == 1.0
    assert calls[1] == pytest.approx(1.0 - 0.161 * first_step, abs=1e-12)


class LateForcing(torch.nn.Module):
    """``z A^T + [t > 0.5] p``: the forcing ``p`` enters only after t = 0.5, so the backward solve
    from t = 1 to t = 0 uses it in its first evaluations and never in its last ones."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = LinearRows()
        self.forcing = torch.nn.Parameter(torch.tensor([0.3, -0.2, 0.1], dtype=DTYPE))

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        out = self.linear(t, z)
        return out + self.forcing if float(t) > 0.5 else out


@pytest.mark.parametrize("norm", ["default", "seminorm"])
def test_backsolve_gives_a_parameter_used_only_part_of_the_time_its_gradient(norm: str) -> None:
    def grads(gradient: str | BacksolveAdjoint) -> tuple[torch.Tensor | None, ...]:
        field = LateForcing()
        y0 = linear_y0()
        solution = odeint(field, y0, [0.0, 1.0], method="dopri5", **TIGHT_TOLERANCES, gradient=gradient)
        return torch.autograd.grad(solution.ys[-1].square().sum(), (y0, field.forcing), allow_unused=True)

    expected = grads("direct")
    got = grads(BacksolveAdjoint(rtol=1e-10, atol=1e-12, norm=norm))
    assert got[1] is not None and float(expected[1].abs().min()) > 0.1
    for result, reference in zip(got, expected, strict=True):
        # The jump of the field at t = 0.5 is not a step boundary of either solve: agreement to
        # the solves' accuracy across a discontinuity, not to round-off.
        torch.testing.assert_close(result, reference, rtol=1e-5, atol=1e-7)


def test_steps_before_outputs_counts_steps_starting_strictly_before() -> None:
    # By hand from the definition: an output at a step's start is not counted in that step (it is
    # that step's starting state, not a point inside it), in either direction of integration.
    starts = [0.0, 0.5, 1.0, 1.5]
    assert steps_before_outputs([0.0, 1.0, 1.2, 2.0], starts) == [0, 2, 3, 4]
    reverse = [2.0, 1.5, 1.0, 0.5]
    assert steps_before_outputs([2.0, 1.0, 0.8, 0.0], reverse) == [0, 2, 3, 4]


@pytest.mark.parametrize("gradient", ["checkpoint", "symplectic"])
def test_outputs_on_step_boundaries_cost_no_dense_output(gradient: str) -> None:
    # rk4 at a fixed step with every output time on a step boundary: the documented backward cost
    # per step is the s = 4 stages re-run ("checkpoint"), or 4 - 1 plain + 4 with a VJP
    # ("symplectic"); an output handled as a point inside the step (theta = 0) would evaluate the
    # dense output's extra stage.
    field = LinearRows()
    y0 = linear_y0()
    solution = odeint(field, y0, [0.0, 0.5, 1.0, 2.0], method="rk4", step_size=0.1, gradient=gradient)
    solution.ys.square().sum().backward()
    per_step = {"checkpoint": 4, "symplectic": 7}[gradient]
    assert solution.stats.n_accepted == 20
    assert solution.stats.nfe_backward == per_step * solution.stats.n_accepted


@pytest.mark.parametrize("gradient", ["checkpoint", "symplectic", "adjoint", "interpolating_adjoint"])
def test_a_field_independent_of_the_state_passes_the_cotangent_through(gradient: str) -> None:
    # y' = cos(t) (not a function of y, no parameters): y(T) = y0 + sin(T), so dy(T)/dy0 = I and
    # the gradient of sum(w * y(T)) is w exactly; the adjoint's rate -a^T df/dy is zero.
    def field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.cos(t) * torch.ones_like(y)

    y0 = torch.tensor([1.0, -2.0, 3.0], dtype=DTYPE, requires_grad=True)
    solution = odeint(field, y0, [0.0, 0.5, 1.5], gradient=gradient, adjoint_params=())
    weights = torch.tensor([0.5, 2.0, -1.0], dtype=DTYPE)
    ((weights * solution.ys[1:]).sum()).backward()
    torch.testing.assert_close(y0.grad, 2 * weights, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("method", "per_step"), [("dopri5", 11), ("bosh3", 5)])
def test_outputs_with_a_zero_cotangent_cost_no_dense_output(method: str, per_step: int) -> None:
    # The middle outputs lie inside steps but only the last output enters the loss: their
    # cotangents are exactly zero, so the symplectic backward pass costs the documented count of a
    # step without outputs, s' - 1 plain + s' with a VJP (s' = 6 for dopri5, 3 for bosh3), not the
    # dense output's extra stage.
    times = [0.0, 0.55, 1.3, 2.0]
    field = LinearRows()
    y0 = linear_y0()
    solution = odeint(field, y0, times, method=method, rtol=1e-4, atol=1e-6, gradient="symplectic")
    assert not set(times[1:-1]) & set(solution.steps.t.tolist())  # read from dense output
    solution.ys[-1].square().sum().backward()
    assert solution.stats.nfe_backward == per_step * solution.stats.n_accepted


def test_a_solve_without_steps_has_no_penalties_as_with_direct() -> None:
    # One output time: no accepted step, so no step penalty; "checkpoint" (graph-free forward)
    # returns what "direct" (the reference, autograd through the solve) returns.
    def penalties(gradient: str) -> torch.Tensor | None:
        y0 = torch.ones(2, dtype=DTYPE, requires_grad=True)
        return odeint(
            lambda t, y: -y,
            y0,
            [0.0],
            gradient=gradient,
            adjoint_params=(),
            step_penalty=lambda result, dt: result.error_estimate * abs(dt),
        ).penalties

    assert penalties("direct") is None
    assert penalties("checkpoint") is None


def test_backsolve_steps_with_the_forward_solves_controller() -> None:
    # The backward solve takes the forward's step-size controller (it has no setting of its own).
    # Reference: the augmented system of the linear field written out by hand on one flat state
    # [z, a, g] (f = z A^T, a' = -a A, g' = -a^T z), solved by the solver loop with that controller
    # and the forward's tolerances: the same continuous adjoint with the same steps.
    controller = PIController(safety=0.5, max_factor=2.0)
    tolerances = {"rtol": 1e-6, "atol": 1e-8}
    span = [0.0, 1.5]
    field = LinearRows()
    y0 = linear_y0()
    weights = torch.linspace(-1.0, 1.0, 6, dtype=DTYPE).reshape(2, 3)
    solution = odeint(
        field, y0, span, method="tsit5", controller=controller, gradient="adjoint", **tolerances
    )
    grads = torch.autograd.grad((weights * solution.ys[-1]).sum(), (y0, field.matrix))

    matrix = field.matrix.detach()

    def augmented(t: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
        z, a = flat[:6].reshape(2, 3), flat[6:12].reshape(2, 3)
        return torch.cat([(z @ matrix.T).reshape(-1), (-a @ matrix).reshape(-1), (-a.T @ z).reshape(-1)])

    start = torch.cat(
        [solution.ys[-1].detach().reshape(-1), weights.reshape(-1), torch.zeros(9, dtype=DTYPE)]
    )
    backward = odeint(augmented, start, span[::-1], method="tsit5", controller=controller, **tolerances)
    assert solution.stats.nfe_backward == backward.stats.nfe
    torch.testing.assert_close(grads[0], backward.ys[-1][6:12].reshape(2, 3), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grads[1], backward.ys[-1][12:].reshape(3, 3), rtol=1e-12, atol=1e-14)


def test_a_fixed_step_backward_method_takes_the_forwards_step_size() -> None:
    # Documented: step_size defaults to the forward's when the backward method is fixed-step (here
    # the forward runs dopri5 at fixed steps). rk4 at the forward's h = 0.125 over [0, 1]: 8
    # backward steps of 4 calls each, and dL/dy0 within rk4's error at that step of the matrix
    # exponential.
    times = [0.0, 1.0]
    weights = [np.zeros((2, 3)), np.ones((2, 3))]
    solution, y0 = solve_linear(times, step_size=0.125, gradient=BacksolveAdjoint(method="rk4"))
    (grad,) = torch.autograd.grad(solution.ys[-1].sum(), y0)
    assert solution.stats.nfe_backward == 4 * 8
    np.testing.assert_allclose(grad.numpy(), analytic_grad_y0(weights, times), rtol=0, atol=1e-5)
