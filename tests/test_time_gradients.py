"""Gradients w.r.t. the output times ``t`` (``local_reg.gradients._times``), every gradient method:
finite differences of the discrete solve (gradcheck in float64 at tight tolerances), an analytic
case, torchdiffeq's adjoint, and the bookkeeping (lazy evaluations, dtypes, zero cotangents)."""

from __future__ import annotations

import math

import pytest
import torch

import local_reg.compat as compat
from local_reg import BacksolveAdjoint, Checkpoint, InterpolatingAdjoint, Symplectic, odeint
from tests.problems import CountingField

DTYPE = torch.float64
TOL = 1e-10
METHODS = {
    "direct": "direct",
    "checkpoint": Checkpoint(),
    "checkpoint, checkpoints=2": Checkpoint(checkpoints=2),
    "symplectic": Symplectic(),
    "adjoint": BacksolveAdjoint(rtol=TOL, atol=TOL),
    "interpolating_adjoint": InterpolatingAdjoint(rtol=TOL, atol=TOL),
}
INCREASING = [0.2, 0.7, 1.3]
DECREASING = [1.1, 0.6, -0.2]
# Finite differences of the discrete solve differ from the exact solution's derivatives by its
# error over eps (measured: <= 5e-8 here), so gradcheck can be tight.
GRADCHECK = {"eps": 1e-6, "atol": 1e-6, "rtol": 1e-5}


def weights() -> torch.Tensor:
    return torch.tensor([[-0.5, 1.0], [-1.0, -0.3]], dtype=DTYPE, requires_grad=True)


def field(weight: torch.Tensor):
    """A nonlinear, time-dependent field: ``f(t, y) = tanh(y W) + cos(t) y``."""
    return lambda t, y: torch.tanh(y @ weight) + torch.cos(t) * y


def inputs(times: list[float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    t = torch.tensor(times, dtype=DTYPE, requires_grad=True)
    y0 = torch.tensor([[0.4, -0.8]], dtype=DTYPE, requires_grad=True)
    return t, y0, weights()


@pytest.mark.parametrize("times", [INCREASING, DECREASING], ids=["increasing", "decreasing"])
@pytest.mark.parametrize("name", list(METHODS))
def test_gradcheck_times_state_and_parameters(name, times):
    def solve(t, y0, weight):
        return odeint(
            field(weight), y0, t, rtol=TOL, atol=TOL, gradient=METHODS[name], adjoint_params=(weight,)
        ).ys

    assert torch.autograd.gradcheck(solve, inputs(times), **GRADCHECK)


@pytest.mark.parametrize("option", ["dense", "step_to_outputs"])
@pytest.mark.parametrize("name", ["direct", "symplectic", "adjoint", "interpolating_adjoint"])
def test_gradcheck_with_dense_output_and_steps_to_outputs(name, option):
    def solve(t, y0, weight):
        solution = odeint(
            field(weight),
            y0,
            t,
            rtol=TOL,
            atol=TOL,
            gradient=METHODS[name],
            adjoint_params=(weight,),
            **{option: True},
        )
        return solution.ys

    assert torch.autograd.gradcheck(solve, inputs(INCREASING), **GRADCHECK)


def test_dense_solution_evaluates_with_differentiable_times():
    t, y0, weight = inputs(INCREASING)
    solution = odeint(field(weight), y0, t, rtol=TOL, atol=TOL, dense=True)
    torch.testing.assert_close(solution.evaluate(t.detach()[2]), solution.ys[2].detach())


@pytest.mark.parametrize("name", ["direct", "adjoint"])
def test_gradcheck_tuple_state(name):
    def solve(t, z0, s0, weight):
        def pair(t, state):
            z, s = state
            return torch.tanh(z @ weight) * torch.cos(t), -(z**2).sum(-1)

        zs, ss = odeint(
            pair, (z0, s0), t, rtol=TOL, atol=TOL, gradient=METHODS[name], adjoint_params=(weight,)
        ).ys
        return zs, ss

    t, z0, weight = inputs(DECREASING)
    s0 = torch.tensor([0.5], dtype=DTYPE, requires_grad=True)
    assert torch.autograd.gradcheck(solve, (t, z0, s0, weight), **GRADCHECK)


@pytest.mark.parametrize("name", list(METHODS))
def test_exponential_growth_has_the_analytic_time_gradients(name):
    """``y' = a y``: ``dy(t_i)/dt_i = a y(t_i)``, ``dy(t_i)/dt0 = -a y(t_i)``, zero for the others."""
    a = -0.7
    t = torch.tensor([0.3, 0.9, 1.7], dtype=DTYPE, requires_grad=True)
    y0 = torch.tensor([1.2, -0.4], dtype=DTYPE)
    for i in (1, 2):
        solution = odeint(
            lambda t, y: a * y, y0, t, rtol=TOL, atol=TOL, gradient=METHODS[name], adjoint_params=()
        )
        (grad,) = torch.autograd.grad(solution.ys[i].sum(), t)
        exact = a * y0.sum() * math.exp(a * (t[i].item() - t[0].item()))
        expected = torch.zeros(3, dtype=DTYPE)
        expected[0], expected[i] = -exact, exact
        torch.testing.assert_close(grad, expected, rtol=1e-8, atol=1e-12)


def test_exact_methods_agree_to_rounding():
    """direct, checkpoint and symplectic apply the same discrete Jacobian to ``f(t0, y0)``."""
    grads = {}
    for name in ("direct", "checkpoint", "checkpoint, checkpoints=2", "symplectic"):
        t, y0, weight = inputs(DECREASING)
        ys = odeint(
            field(weight), y0, t, rtol=1e-6, atol=1e-6, gradient=METHODS[name], adjoint_params=(weight,)
        )
        loss = (ys.ys[1] ** 2).sum() + ys.ys[-1].sum()
        grads[name] = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, (t, y0, weight))])
    for name, grad in grads.items():
        torch.testing.assert_close(grad, grads["direct"], rtol=1e-12, atol=1e-14, msg=name)


def losses(ys: torch.Tensor) -> torch.Tensor:
    return 0.3 * ys[0].sum() + (ys[1] ** 2).sum() + 0.7 * ys[2].sum()


class Field(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(weights().detach())

    def forward(self, t, y):
        return field(self.weight)(t, y)


def gradients(solve, times: list[float]) -> torch.Tensor:
    torch.manual_seed(0)
    func = Field()
    t, y0, _ = inputs(times)
    loss = losses(solve(func, y0, t))
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, (t, y0, func.weight))])


@pytest.mark.parametrize("times", [INCREASING, DECREASING], ids=["increasing", "decreasing"])
def test_compat_matches_torchdiffeq_adjoint(times):
    """torchdiffeq's adjoint integrates ``a^T df/dt`` for ``t0``; the formula needs none."""
    torchdiffeq = pytest.importorskip("torchdiffeq")
    tight = {"rtol": 1e-12, "atol": 1e-12}
    adjoint_tight = {"adjoint_rtol": 1e-12, "adjoint_atol": 1e-12}
    reference = gradients(
        lambda f, y0, t: torchdiffeq.odeint_adjoint(f, y0, t, **tight, **adjoint_tight), times
    )
    ours = {
        "odeint": lambda f, y0, t: compat.odeint(f, y0, t, **tight),
        "backsolve": lambda f, y0, t: compat.odeint_adjoint(f, y0, t, **tight, **adjoint_tight),
        "symplectic": lambda f, y0, t: compat.odeint_adjoint(f, y0, t, **tight, adjoint_method="symplectic"),
        "rtol=0": lambda f, y0, t: compat.odeint_adjoint(
            f, y0, t, **tight, adjoint_rtol=0, adjoint_atol=1e-12
        ),
    }
    for name, solve in ours.items():
        torch.testing.assert_close(gradients(solve, times), reference, rtol=1e-8, atol=1e-10, msg=name)


@pytest.mark.parametrize(
    ("solver", "options"),
    [
        (compat.odeint, {}),
        (compat.odeint_adjoint, {"adjoint_rtol": TOL, "adjoint_atol": TOL}),
        (compat.odeint_adjoint, {"adjoint_rtol": 0.0, "adjoint_atol": TOL}),
        (compat.odeint_adjoint, {"adjoint_method": "symplectic"}),
    ],
    ids=["odeint", "odeint_adjoint", "odeint_adjoint rtol=0", "symplectic"],
)
def test_compat_gradcheck(solver, options):
    def solve(t, y0, weight):
        if solver is compat.odeint_adjoint:
            options["adjoint_params"] = (weight,)
        return solver(field(weight), y0, t, rtol=TOL, atol=TOL, **options)

    assert torch.autograd.gradcheck(solve, inputs(DECREASING), **GRADCHECK)


@pytest.mark.parametrize("name", ["direct", "symplectic", "adjoint", "interpolating_adjoint"])
def test_lazy_evaluations_are_counted_and_skip_zero_cotangents(name):
    t, y0, weight = inputs(INCREASING)
    func = CountingField(field(weight))
    solution = odeint(func, y0, t, rtol=1e-6, atol=1e-6, gradient=METHODS[name], adjoint_params=(weight,))
    assert func.calls == solution.stats.nfe  # the forward makes no extra call
    (grad_t,) = torch.autograd.grad(solution.ys[2].sum(), t)
    assert func.calls == solution.stats.nfe + solution.stats.nfe_backward
    plain = odeint(
        field(weight), y0, t.detach(), rtol=1e-6, atol=1e-6, gradient=METHODS[name], adjoint_params=(weight,)
    )
    torch.autograd.grad(plain.ys[2].sum(), weight)
    # One lazy f(t_2, y_2); output 1 has a zero cotangent and gets neither an evaluation nor a gradient.
    assert solution.stats.nfe_backward == (plain.stats.nfe_backward or 0) + 1
    assert grad_t[1] == 0.0 and grad_t[2] != 0.0


def test_values_are_unchanged_and_outputs_can_be_modified_in_place():
    t, y0, weight = inputs(INCREASING)
    ys = odeint(field(weight), y0, t).ys
    assert torch.equal(ys, odeint(field(weight), y0, t.detach()).ys)
    ys[0] = 0.0
    (grad_t,) = torch.autograd.grad(ys.sum(), t)
    assert torch.isfinite(grad_t).all()


def test_a_single_time_has_a_zero_gradient():
    t, y0, weight = inputs([0.4])
    (grad_t,) = torch.autograd.grad(odeint(field(weight), y0, t).ys.sum(), t)
    assert torch.equal(grad_t, torch.zeros(1, dtype=DTYPE))


@pytest.mark.parametrize(("t_dtype", "y_dtype"), [(torch.float32, DTYPE), (DTYPE, torch.float32)])
def test_the_gradient_has_the_dtype_of_t(t_dtype, y_dtype):
    t = torch.tensor([0.0, 1.0], dtype=t_dtype, requires_grad=True)
    y0 = torch.tensor([1.5], dtype=y_dtype)
    ys = odeint(lambda t, y: -y, y0, t, gradient="symplectic", adjoint_params=()).ys
    assert ys.dtype == y_dtype
    (grad_t,) = torch.autograd.grad(ys[1].sum(), t)
    assert grad_t.dtype == t_dtype
    expected = torch.tensor([1.5, -1.5], dtype=t_dtype) * math.exp(-1.0)
    torch.testing.assert_close(grad_t, expected, rtol=1e-5, atol=1e-6)


def test_a_sequence_of_tensors_gets_gradients():
    start = torch.tensor(0.2, dtype=DTYPE, requires_grad=True)
    end = torch.tensor(1.0, dtype=DTYPE, requires_grad=True)
    y0 = torch.tensor([2.0], dtype=DTYPE)
    ys = odeint(lambda t, y: -y, y0, [start, 0.5, end], rtol=TOL, atol=TOL).ys
    grads = torch.autograd.grad(ys[-1].sum(), (start, end))
    exact = 2.0 * math.exp(-0.8)
    torch.testing.assert_close(torch.stack(grads), torch.tensor([exact, -exact], dtype=DTYPE))


def test_no_gradient_under_no_grad():
    t, y0, weight = inputs(INCREASING)
    with torch.no_grad():
        ys = compat.odeint(field(weight), y0, t)
    assert not ys.requires_grad


def test_backsolve_adjoint_takes_a_pure_absolute_tolerance():
    t, y0, weight = inputs(INCREASING)
    reference = torch.autograd.grad(
        odeint(
            field(weight), y0, t, rtol=TOL, atol=TOL, gradient="symplectic", adjoint_params=(weight,)
        ).ys.sum(),
        (t, y0, weight),
    )
    gradient = BacksolveAdjoint(rtol=0, atol=1e-12)
    assert gradient.rtol == 0.0
    solution = odeint(field(weight), y0, t, rtol=TOL, atol=TOL, gradient=gradient, adjoint_params=(weight,))
    for ours, exact in zip(torch.autograd.grad(solution.ys.sum(), (t, y0, weight)), reference, strict=True):
        torch.testing.assert_close(ours, exact, rtol=1e-8, atol=1e-9)
    with pytest.raises(ValueError, match="BacksolveAdjoint rtol"):
        BacksolveAdjoint(rtol=-1e-6)
    with pytest.raises(TypeError, match="BacksolveAdjoint rtol"):
        BacksolveAdjoint(rtol=False)


def test_t_changed_in_place_after_the_solve_still_differentiates_to_first_order():
    # The refusal of mixed second derivatives ties t to the y0 identity; saving t for it made a
    # learned t changed in place under no_grad (a clamp, an optimizer step) fail every backward pass.
    times = torch.nn.Parameter(torch.tensor([0.0, 1.0], dtype=torch.float64))
    y0 = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)
    ys = odeint(lambda t, y: -y, y0, times, rtol=1e-10, atol=1e-10).ys
    with torch.no_grad():
        times.clamp_(0.0, 2.0)
    ys[-1].sum().backward()
    torch.testing.assert_close(
        times.grad, torch.tensor([1.0, -1.0], dtype=torch.float64) * ys[-1].sum().detach(), rtol=1e-8, atol=0
    )
    torch.testing.assert_close(
        y0.grad, torch.full((2,), math.exp(-1.0), dtype=torch.float64), rtol=1e-8, atol=0
    )


def test_a_t_that_requires_grad_leaves_second_derivatives_in_y0_and_parameters_intact():
    """With ``"direct"``, the identities that differentiate ``t`` pass the other cotangents on with
    their graph: the Hessian in ``y0`` and a parameter Hessian-vector product are those of a solve
    whose ``t`` needs no gradient (they were zero / wrong), checked by gradcheck's second-order test;
    differentiating the ``t``-gradient itself is an error, not a silent constant."""
    times = [0.2, 0.7, 1.3]

    def hessians(t_requires_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        t, y0, weight = inputs(times)
        t.requires_grad_(t_requires_grad)

        def loss(y0, weight):
            return (odeint(field(weight), y0, t, rtol=TOL, atol=TOL).ys ** 3).sum()

        in_y0 = torch.autograd.functional.hessian(lambda y: loss(y, weight), y0)
        (grad_weight,) = torch.autograd.grad(loss(y0, weight), weight, create_graph=True)
        (hvp,) = torch.autograd.grad(grad_weight.sum(), weight)
        return in_y0, hvp

    plain, with_t = hessians(False), hessians(True)
    assert plain[0].abs().sum() > 0 and plain[1].abs().sum() > 0
    for expected, got in zip(plain, with_t, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=0.0)

    t, y0, weight = inputs(times)
    assert torch.autograd.gradgradcheck(
        lambda y0: odeint(field(weight.detach()), y0, t, rtol=TOL, atol=TOL).ys, (y0,), **GRADCHECK
    )
    ys = odeint(field(weight), y0, t, rtol=TOL, atol=TOL).ys
    (grad_t,) = torch.autograd.grad((ys**2).sum(), t, create_graph=True)
    with pytest.raises(RuntimeError, match="gradient with respect to t is first order only"):
        torch.autograd.grad(grad_t.sum(), weight)
    # The other order: a derivative of dL/dy0 or dL/dweight with respect to t reached t only through
    # the cotangent's own graph (dys/dt = f) and missed how the solve's sensitivities depend on the
    # times, a silently wrong number (of the wrong sign on this problem); it is refused too.
    for wrt in (y0, weight):
        ys = odeint(field(weight), y0, t, rtol=TOL, atol=TOL).ys
        (gradient,) = torch.autograd.grad((ys**2).sum(), wrt, create_graph=True)
        with pytest.raises(RuntimeError, match="derivative with respect to t of a gradient"):
            torch.autograd.grad(gradient.sum(), t)


@pytest.mark.parametrize("read", ["evaluate", "odeint_dense"])
def test_a_second_derivative_in_t0_of_a_dense_read_is_refused_not_zero(read: str):
    """A state read from the dense record reaches ``t0`` through the start only: for a field linear
    in ``y`` and a loss linear in that state, ``dL/dt0`` (right) had no graph, so a Hessian in
    ``t0`` read as 0 (exactly ``a^2 y0 e^{a (t - t0)}`` here), silently; now refused as for ``ys``."""
    rate, start, value = -0.7, 1.3, 0.9

    def loss(t0: torch.Tensor) -> torch.Tensor:
        y0 = torch.tensor([start], dtype=DTYPE)
        end = torch.tensor(1.5, dtype=DTYPE)
        if read == "odeint_dense":
            dense = compat.odeint_dense(lambda t, y: rate * y, y0, t0, end, rtol=1e-10, atol=1e-12)
            return dense(torch.tensor(value, dtype=DTYPE)).sum()
        solution = odeint(
            lambda t, y: rate * y, y0, torch.stack([t0, end]), rtol=1e-10, atol=1e-12, dense=True
        )
        return solution.evaluate(value).sum()

    t0 = torch.tensor(0.2, dtype=DTYPE, requires_grad=True)
    (first,) = torch.autograd.grad(loss(t0), t0, create_graph=True)
    assert math.isclose(float(first.detach()), -rate * start * math.exp(rate * (value - 0.2)), rel_tol=1e-8)
    with pytest.raises(RuntimeError, match="gradient with respect to t is first order only"):
        torch.autograd.grad(first, t0)
    with pytest.raises(RuntimeError, match="gradient with respect to t is first order only"):
        torch.autograd.functional.hessian(loss, t0.detach())
