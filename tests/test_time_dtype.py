"""The dtype of the time ``func`` receives: a float64 ``t`` stays float64 for a float32 state."""

import math

import pytest
import torch
import torchdiffeq

import local_reg.compat as compat
from local_reg import odeint

GRADIENTS = ["direct", "checkpoint", "symplectic", "adjoint", "interpolating_adjoint"]


class TimedField(torch.nn.Module):
    """A float32 MLP field scaled by ``cos(t)``, recording the dtype of every time it is given."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
        self.seen: set[torch.dtype] = set()

    def forward(self, t, y):
        self.seen.add(t.dtype)
        return self.net(y) * torch.cos(t).to(y.dtype)


def solve_and_differentiate(field, t, gradient, **kwargs):
    y0 = torch.tensor([[0.5, -0.3], [0.1, 0.8]], requires_grad=True)
    solution = odeint(field, y0, t, gradient=gradient, rtol=1e-6, atol=1e-8, **kwargs)
    grads = torch.autograd.grad(solution.ys.square().sum(), (y0, *field.parameters()))
    return solution, torch.cat([g.reshape(-1) for g in grads])


@pytest.mark.parametrize("gradient", GRADIENTS)
@pytest.mark.parametrize("kwargs", [{}, {"step_to_outputs": True}, {"method": "dopri5"}])
def test_func_sees_float64_time_in_forward_and_backward(gradient, kwargs):
    field = TimedField()
    t64 = torch.tensor([0.0, 0.5, 1.25, 2.0], dtype=torch.float64)
    solution, grads64 = solve_and_differentiate(field, t64, gradient, **kwargs)
    assert field.seen == {torch.float64}
    assert solution.ts.dtype == torch.float64 and solution.ys.dtype == torch.float32
    # The same times (exact in float32) as a float32 tensor: func sees float32, within tolerance.
    field.seen.clear()
    reference, grads32 = solve_and_differentiate(field, t64.float(), gradient, **kwargs)
    assert field.seen == {torch.float32} and reference.ts.dtype == torch.float32
    torch.testing.assert_close(solution.ys, reference.ys, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads64, grads32, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("gradient", GRADIENTS)
def test_the_gradient_with_respect_to_t_evaluates_func_at_float64_time(gradient):
    """``dL/dt_i = <v_i, f(t_i, y_i)>`` evaluates ``func`` again in the backward pass, at the time
    the forward solve used: at t = 1e4 a float32 time is off by 5e-4, and the gradient was off by
    1e-4 relative. The reference is the same gradient from a solve in float64 throughout."""
    field = TimedField()
    times = [1e4, 1e4 + 0.5001]
    t64 = torch.tensor(times, dtype=torch.float64, requires_grad=True)
    y0 = torch.tensor([[0.5, -0.3], [0.1, 0.8]])
    ys = odeint(field, y0, t64, gradient=gradient, rtol=1e-6, atol=1e-8).ys
    (grad_t,) = torch.autograd.grad(ys.square().sum(), t64)
    assert field.seen == {torch.float64}
    wide = TimedField().double()
    t_wide = torch.tensor(times, dtype=torch.float64, requires_grad=True)
    ys_wide = odeint(wide, y0.double(), t_wide, rtol=1e-10, atol=1e-12).ys
    (reference,) = torch.autograd.grad(ys_wide.square().sum(), t_wide)
    torch.testing.assert_close(grad_t, reference, rtol=2e-5, atol=1e-6)


def test_fixed_step_dense_output_and_interpolation_get_float64_time():
    field = TimedField()
    t = torch.linspace(0.0, 1.0, 5, dtype=torch.float64)
    y0 = torch.ones(2, 2)
    odeint(field, y0, t, method="rk4", step_size=0.1)
    odeint(field, y0, t, dense=True).evaluate(torch.tensor(0.3, dtype=torch.float64))
    assert field.seen == {torch.float64}


def test_float64_time_resolves_a_late_window_that_float32_time_cannot():
    """``y' = cos(100 t)`` on ``[3000, 3000.05]`` (float32 spacing there: 2.4e-4): with float64 times
    the float32 solve meets the analytic solution; with the times rounded to float32 it cannot."""
    t0, t1 = 3000.0, 3000.05
    exact = (math.sin(100 * t1) - math.sin(100 * t0)) / 100

    def field(t, y):
        return torch.cos(100 * t).to(y.dtype).expand_as(y)

    errors = {}
    for dtype in (torch.float64, torch.float32):
        solution = odeint(field, torch.zeros(1), torch.tensor([t0, t1], dtype=torch.float64).to(dtype))
        errors[dtype] = abs(float(solution.ys[-1, 0]) - exact)
    assert errors[torch.float64] < 1e-6 * abs(exact) + 1e-7
    assert errors[torch.float32] > 100 * errors[torch.float64]


@pytest.mark.parametrize(
    ("t", "y_dtype", "expected"),
    [
        ([0.0, 1.0], torch.float32, torch.float32),
        (torch.tensor([0.0, 1.0]), torch.float32, torch.float32),
        (torch.tensor([0.0, 1.0]), torch.float64, torch.float64),
        (torch.tensor([0.0, 1.0], dtype=torch.float64), torch.float64, torch.float64),
        (torch.tensor([0, 1]), torch.float32, torch.float32),
    ],
)
def test_other_times_keep_the_state_dtype(t, y_dtype, expected):
    seen = set()

    def field(t, y):
        seen.add(t.dtype)
        return -y

    solution = odeint(field, torch.ones(2, dtype=y_dtype), t)
    assert seen == {expected} and solution.ts.dtype == expected


@pytest.mark.parametrize("gradient", GRADIENTS)
def test_tuple_state_with_float64_time(gradient):
    field = TimedField()

    def tuple_field(t, state):
        z, scale = state
        return field(t, z), -scale * torch.cos(t).to(scale.dtype)

    z0 = torch.tensor([[0.5, -0.3]], requires_grad=True)
    s0 = torch.ones(3, requires_grad=True)
    t = torch.tensor([0.0, 0.7, 1.5], dtype=torch.float64)
    solution = odeint(tuple_field, (z0, s0), t, gradient=gradient, adjoint_params=tuple(field.parameters()))
    assert field.seen == {torch.float64}
    z, s = solution.ys
    torch.testing.assert_close(s[-1], torch.exp(-torch.sin(t[-1])).float().expand(3), rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(z.sum() + s.sum(), (z0, s0))
    # d s(t)/d s0 = exp(-sin t), summed over the output times.
    expected = torch.exp(-torch.sin(t)).sum().float().expand(3)
    torch.testing.assert_close(grads[1], expected, rtol=1e-4, atol=1e-5)


def test_compat_gives_func_the_time_dtype_torchdiffeq_gives():
    """torchdiffeq 0.2.5 casts the time to y0's dtype before calling func, whatever t's dtype."""
    for t_dtype, y_dtype in [(torch.float64, torch.float32), (torch.float32, torch.float64)]:
        seen = {}
        for name, module in (("ours", compat), ("torchdiffeq", torchdiffeq)):
            dtypes = set()

            def field(t, y, dtypes=dtypes):
                dtypes.add(t.dtype)
                return -y * torch.cos(t).to(y.dtype)

            ys = module.odeint(field, torch.ones(2, dtype=y_dtype), torch.tensor([0.0, 1.0], dtype=t_dtype))
            seen[name] = (dtypes, ys)
        assert seen["ours"][0] == seen["torchdiffeq"][0] == {y_dtype}
        torch.testing.assert_close(seen["ours"][1], seen["torchdiffeq"][1], rtol=1e-5, atol=1e-6)
