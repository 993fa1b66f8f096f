"""The backsolve adjoint against the augmented system on one flat state, and against the exact gradient.

``BacksolveAdjoint`` integrates ``(y, a)`` and advances ``g = dL/dtheta`` per parameter with the same
Runge--Kutta weights. The reference below is the textbook formulation of Chen et al. (NeurIPS 2018):
the augmented field ``(f, -a^T df/dy, -a^T df/dtheta)`` on one flat state ``[y, a, g]``, solved by the
library's loop with its Runge--Kutta stepper and the same options (the seminorm: the RMS over
``(y, a)``, Kidger, Chen, Lyons, ICML 2021). Both solve the same continuous adjoint with the same
steps, so they agree to round-off.
"""

from __future__ import annotations

import dataclasses
from itertools import pairwise

import pytest
import torch

from local_reg import BacksolveAdjoint, odeint
from local_reg._integrate import SolveOptions, integrate_ode
from local_reg._step import rms_norm
from local_reg.tableaus import get_tableau

torchdiffeq = pytest.importorskip("torchdiffeq")

DTYPE = torch.float64
TIMES = [0.0, 0.4, 0.9, 1.6]


class Field(torch.nn.Module):
    """A time-dependent MLP, with a parameter it does not use (its gradient is zero)."""

    def __init__(self, dim: int = 3, width: int = 16) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(dim, width), torch.nn.Tanh(), torch.nn.Linear(width, dim)
        ).to(DTYPE)
        self.unused = torch.nn.Parameter(torch.ones(2, dtype=DTYPE))

    def forward(self, t, y):
        return 2.0 * self.net(y) * torch.cos(2 * t)


def loss_of(ys, skip_middle: bool):
    """Every output enters, or (``skip_middle``) the second one's cotangent is exactly zero, so the
    backward solve crosses it without a restart."""
    used = [0, 2, 3] if skip_middle else range(len(ys))
    return sum((index + 1) * ys[index].square().sum() + ys[index].sin().sum() for index in used)


def flat_augmented_backsolve(field, ys, grad_ys, times, options, seminorm: bool):
    """``(dL/dy0, [dL/dparam])`` and the calls of ``field``: the augmented system on ``[y, a, g]``."""
    params = tuple(field.parameters())
    shape = ys.shape[1:]
    n = shape.numel()

    def augmented(t, z):
        with torch.enable_grad():
            y = z[:n].reshape(shape).detach().requires_grad_(True)
            derivative = field(t, y)
            grads = torch.autograd.grad(
                derivative, (y, *params), -z[n : 2 * n].reshape(shape), allow_unused=True
            )
        rates = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads[1:], strict=True)]
        return torch.cat(
            [derivative.detach().reshape(-1), grads[0].reshape(-1), *(r.reshape(-1) for r in rates)]
        )

    if seminorm:
        options = dataclasses.replace(options, norm=lambda scaled: rms_norm(scaled[: 2 * n]))
    adjoint = grad_ys[-1].reshape(-1)
    parameter_gradient = ys.new_zeros(sum(p.numel() for p in params))
    last = len(times) - 1
    restarts = [0, *(i for i in range(1, last) if bool(grad_ys[i].any())), last]
    calls = 0
    for end, start in reversed(list(pairwise(restarts))):
        z = torch.cat([ys[start].reshape(-1), adjoint, parameter_gradient])
        outputs, stats, _, _ = integrate_ode(augmented, z, [times[start], times[end]], options)
        calls += stats.nfe
        adjoint = outputs[-1][n : 2 * n] + grad_ys[end].reshape(-1)
        parameter_gradient = outputs[-1][2 * n :]
    return torch.cat([adjoint, parameter_gradient]), calls


CASES = {
    "dopri5": ({"method": "dopri5", "rtol": 1e-6, "atol": 1e-8}, BacksolveAdjoint(), False),
    "dopri5 seminorm": (
        {"method": "dopri5", "rtol": 1e-6, "atol": 1e-8},
        BacksolveAdjoint(norm="seminorm"),
        False,
    ),
    "tsit5, zero cotangent crossed": (
        {"method": "tsit5", "rtol": 1e-7, "atol": 1e-9},
        BacksolveAdjoint(),
        True,
    ),
    "bosh3 seminorm, zero cotangent crossed": (
        {"method": "bosh3", "rtol": 1e-5, "atol": 1e-7},
        BacksolveAdjoint(norm="seminorm"),
        True,
    ),
    "backward dopri5 at its own tolerances": (
        {"method": "tsit5", "rtol": 1e-5, "atol": 1e-7},
        BacksolveAdjoint(method="dopri5", rtol=1e-9, atol=1e-10),
        False,
    ),
    "backward rk4, fixed steps": (
        {"method": "dopri5", "rtol": 1e-6, "atol": 1e-8},
        BacksolveAdjoint(method="rk4", step_size=0.05),
        False,
    ),
    "backward tsit5, fixed steps": (
        {"method": "rk4", "step_size": 0.1},
        BacksolveAdjoint(method="tsit5", step_size=0.05),
        False,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_backsolve_equals_the_augmented_system_on_one_flat_state(case):
    forward, gradient, skip_middle = CASES[case]
    field = Field()
    y0 = torch.randn(4, 3, dtype=DTYPE, requires_grad=True)
    solution = odeint(field, y0, TIMES, gradient=gradient, **forward)
    inputs = (y0, *field.parameters())
    grads = torch.autograd.grad(loss_of(solution.ys, skip_middle), inputs, allow_unused=True)
    # The reference's flat state holds zeros for a parameter func never uses; autograd, None.
    result = torch.cat(
        [(torch.zeros_like(x) if g is None else g).reshape(-1) for x, g in zip(inputs, grads, strict=True)]
    )

    ys = solution.ys.detach().requires_grad_(True)
    (grad_ys,) = torch.autograd.grad(loss_of(ys, skip_middle), ys)
    forward_options = SolveOptions(
        rtol=forward.get("rtol", 1e-6),
        atol=forward.get("atol", 1e-8),
        step_size=forward.get("step_size"),
        tableau=get_tableau(forward["method"]),
    )
    options = gradient.backward_options(forward_options)
    reference, calls = flat_augmented_backsolve(
        field, ys.detach(), grad_ys, TIMES, options, gradient.norm == "seminorm"
    )

    assert solution.stats.nfe_backward == calls
    assert float((result - reference).norm() / reference.norm()) <= 1e-12
    names = [name for name, _ in field.named_parameters()]
    assert grads[1 + names.index("unused")] is None


@pytest.mark.parametrize("norm", ["default", "seminorm"])
def test_backsolve_converges_to_direct_and_agrees_with_torchdiffeq(norm):
    field = Field()
    y0 = torch.randn(4, 3, dtype=DTYPE)
    params = tuple(field.net.parameters())

    def gradients(gradient):
        y = y0.clone().requires_grad_(True)
        ys = odeint(field, y, TIMES, method="dopri5", rtol=1e-11, atol=1e-12, gradient=gradient).ys
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss_of(ys, False), (y, *params))])

    reference = gradients("direct")
    errors = []
    for tolerance in (1e-4, 1e-7, 1e-10):
        result = gradients(BacksolveAdjoint(rtol=tolerance, atol=tolerance * 1e-2, norm=norm))
        errors.append(float((result - reference).norm() / reference.norm()))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-8

    # torchdiffeq's odeint_adjoint: another implementation of the same continuous adjoint.
    y = y0.clone().requires_grad_(True)
    ys = torchdiffeq.odeint_adjoint(
        field,
        y,
        torch.tensor(TIMES, dtype=DTYPE),
        method="dopri5",
        rtol=1e-11,
        atol=1e-12,
        adjoint_rtol=1e-10,
        adjoint_atol=1e-12,
        adjoint_options={"norm": "seminorm"} if norm == "seminorm" else {},
        adjoint_params=params,
    )
    theirs = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss_of(ys, False), (y, *params))])
    ours = gradients(BacksolveAdjoint(rtol=1e-10, atol=1e-12, norm=norm))
    assert float((ours - theirs).norm() / theirs.norm()) < 1e-8
