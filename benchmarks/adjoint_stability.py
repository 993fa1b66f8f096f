"""The continuous adjoints where solving ``y`` backwards is unstable: backsolve against interpolating.

``u' = -k u``, ``v' = -v + c u^2`` (``k = 20``, ``c = 3``) from ``(1, 0.5)`` over ``[0, T]``, loss
``v(T)``, in float64. Forwards ``u`` decays like ``exp(-k t)``; the backsolve adjoint solves ``u``
backwards from the forward's ``u(T)``, so every error there grows like ``exp(k t)``, and ``v``'s
adjoint reads that ``u``. The interpolating adjoint reads ``u(t)`` from the forward solve's dense
output instead. Columns: the relative error of ``(dL/dk, dL/dc, dL/dy0)`` against the analytic
gradient, the backward pass's calls of the field, and its time (median of ``--repeats``, one thread),
for ``direct`` (the discrete solve's exact gradient) and the two adjoints at the forward's tolerance.

    python benchmarks/adjoint_stability.py [--times 1 2 3] [--rtol 1e-7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from local_reg import odeint

DTYPE = torch.float64
Y0 = (1.0, 0.5)


class FastDecayFeeding(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(20.0, dtype=DTYPE))
        self.c = torch.nn.Parameter(torch.tensor(3.0, dtype=DTYPE))

    def forward(self, t, y):
        u, v = y[..., 0], y[..., 1]
        return torch.stack([-self.k * u, -v + self.c * u * u], -1)


def exact_gradient(t1: float) -> torch.Tensor:
    """``d v(t1) / d(k, c, u0, v0)`` from ``v(t1) = v0 e^-t + c u0^2 (e^(-2kt) - e^-t) / (1 - 2k)``."""
    k, c, u0, v0 = (torch.tensor(v, dtype=DTYPE, requires_grad=True) for v in (20.0, 3.0, *Y0))
    t = torch.tensor(t1, dtype=DTYPE)
    v = v0 * torch.exp(-t) + c * u0**2 * (torch.exp(-2 * k * t) - torch.exp(-t)) / (1 - 2 * k)
    return torch.stack(torch.autograd.grad(v, (k, c, u0, v0)))


def gradient(method: str, t1: float, rtol: float) -> tuple[torch.Tensor, int, float]:
    field = FastDecayFeeding()
    y0 = torch.tensor(Y0, dtype=DTYPE, requires_grad=True)
    solution = odeint(field, y0, [0.0, t1], rtol=rtol, atol=rtol * 1e-2, gradient=method)
    start = time.perf_counter()
    grads = torch.autograd.grad(solution.ys[-1][1], (field.k, field.c, y0))
    seconds = time.perf_counter() - start
    return torch.cat([g.reshape(-1) for g in grads]), solution.stats.nfe_backward or 0, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--times", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    parser.add_argument("--rtol", type=float, default=1e-7)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"u' = -20 u, v' = -v + 3 u^2 from (1, 0.5), loss v(T); rtol = {args.rtol:g}, atol = rtol / 100\n")
    print("| T | gradient | relative error | backward NFE | backward ms |")
    print("|---|---|---|---|---|")
    for t1 in args.times:
        expected = exact_gradient(t1)
        for method in ("direct", "adjoint", "interpolating_adjoint"):
            runs = [gradient(method, t1, args.rtol) for _ in range(args.repeats)]
            grads, nfe, _ = runs[0]
            error = float((grads - expected).norm() / expected.norm())
            milliseconds = 1e3 * statistics.median(seconds for _, _, seconds in runs)
            print(f"| {t1:g} | {method} | {error:.1e} | {nfe} | {milliseconds:.1f} |")


if __name__ == "__main__":
    main()
