"""Backpropagation through stability-limited explicit steps, against the solve's own sensitivity.

Van der Pol at ``mu = 100`` from ``(2, 0)``, outputs at ``t = 5, 10``, loss ``x(5) + x(10) + 0.01 v(10)``,
in float64, backpropagated through the discrete solve with its step sizes held fixed
(``gradient="direct"``; checkpoint and symplectic return the same to rounding). On the slow branch
the field's Jacobian has an eigenvalue near ``-mu (x^2 - 1)``, so an explicit method's steps sit at
its stability boundary, where the controller keeps the solve stable by responding to the state;
the recursion with those steps fixed need not be stable. Columns: ``dL/dx0`` and ``dL/dmu`` by
backpropagation per method and tolerance, for this library and torchdiffeq's ``odeint`` (both
backpropagate through their steps), ``dL/dx0`` by central differences of the same solve (its steps
free to respond), and the reference from scipy's Radau (an implicit method) by central differences.

    python benchmarks/stiff_discrete_gradient.py [--tolerances 1e-8 1e-9 1e-10 1e-11 1e-12]
"""

from __future__ import annotations

import argparse

import torch
import torchdiffeq
from scipy.integrate import solve_ivp

from local_reg import odeint

DTYPE = torch.float64
TIMES = (0.0, 5.0, 10.0)


class VanDerPol(torch.nn.Module):
    def __init__(self, mu: float) -> None:
        super().__init__()
        self.mu = torch.nn.Parameter(torch.tensor(mu, dtype=DTYPE))

    def forward(self, t, y):
        x, v = y.unbind(-1)
        return torch.stack([v, self.mu * (1 - x * x) * v - x], -1)


def loss_of(ys: torch.Tensor) -> torch.Tensor:
    return ys[1:, 0].sum() + 0.01 * ys[-1, 1]


def discrete_gradient(solver: str, method: str, tol: float) -> tuple[float, float]:
    field = VanDerPol(100.0)
    y0 = torch.tensor([2.0, 0.0], dtype=DTYPE, requires_grad=True)
    times = torch.tensor(TIMES, dtype=DTYPE)
    if solver == "local_reg":
        ys = odeint(field, y0, times, method=method, rtol=tol, atol=tol, max_steps=10**6).ys
    else:
        ys = torchdiffeq.odeint(field, y0, times, method=method, rtol=tol, atol=tol)
    loss_of(ys).backward()
    return y0.grad[0].item(), field.mu.grad.item()


def solve_loss(solver: str, method: str, tol: float, x0: float) -> float:
    field, times = VanDerPol(100.0), torch.tensor(TIMES, dtype=DTYPE)
    y0 = torch.tensor([x0, 0.0], dtype=DTYPE)
    with torch.no_grad():
        if solver == "local_reg":
            ys = odeint(field, y0, times, method=method, rtol=tol, atol=tol, max_steps=10**6).ys
        else:
            ys = torchdiffeq.odeint(field, y0, times, method=method, rtol=tol, atol=tol)
    return loss_of(ys).item()


def differenced_gradient(solver: str, method: str, tol: float, step: float = 1e-7) -> float:
    return (solve_loss(solver, method, tol, 2.0 + step) - solve_loss(solver, method, tol, 2.0 - step)) / (
        2 * step
    )


def radau_loss(x0: float, mu: float) -> float:
    def field(t, y):
        return [y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]]

    solution = solve_ivp(
        field, TIMES[::2], [x0, 0.0], method="Radau", t_eval=TIMES[1:], rtol=1e-12, atol=1e-12
    )
    return float(solution.y[0].sum() + 0.01 * solution.y[1, -1])


def radau_gradient(step: float = 1e-5) -> tuple[float, float]:
    d_x0 = (radau_loss(2.0 + step, 100.0) - radau_loss(2.0 - step, 100.0)) / (2 * step)
    d_mu = (radau_loss(2.0, 100.0 + step) - radau_loss(2.0, 100.0 - step)) / (2 * step)
    return d_x0, d_mu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tolerances", type=float, nargs="+", default=[1e-8, 1e-9, 1e-10, 1e-11, 1e-12])
    args = parser.parse_args()
    torch.set_num_threads(1)
    d_x0, d_mu = radau_gradient()
    print(f"reference (scipy Radau, central differences): dL/dx0 = {d_x0:.4g}, dL/dmu = {d_mu:.4g}\n")
    print("| solver | method | rtol = atol | dL/dx0 | dL/dmu | dL/dx0, differences of the solve |")
    print("|---|---|---|---|---|---|")
    for tol in args.tolerances:
        for solver, method in (("local_reg", "tsit5"), ("local_reg", "dopri5"), ("torchdiffeq", "dopri5")):
            grad_x0, grad_mu = discrete_gradient(solver, method, tol)
            differenced = differenced_gradient(solver, method, tol)
            print(
                f"| {solver} | {method} | {tol:g} | {grad_x0:.4g} | {grad_mu:.4g} | {differenced:.4g} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
