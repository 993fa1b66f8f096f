"""Shampine's stiffness estimate (``solution.steps.stiffness_estimate``) against the known spectrum.

On linear problems ``y' = A y``, ``y(0) = (1, 1)``, ``t in [0, 10]``, float64, whose largest
eigenvalue modulus ``|lambda_max|`` is known: ``diag(-1, -1000)``, the same rotated by 30 degrees
(``Q diag(-1, -1000) Q^T``, not diagonal in the state's coordinates), ``diag(-1, -10)`` (mildly stiff)
and the oscillator ``[[0, 10], [-10, 0]]`` (eigenvalues ``+-10i``). For each method with an estimate
(tsit5, dopri5, dopri8) and ``rtol = atol`` in {1e-3, 1e-6}, over the accepted steps that start at
``t > 1`` (after the fast transient; ``e^{-1000 t}`` and ``e^{-10 t}`` have decayed by then) it prints
the median, min and max of ``rho / |lambda_max|`` (1 = the estimate reads the dominant eigenvalue),
the median of ``|dt| * rho / stability_size`` (the stiffness hint as the solver sees it) and the
median of ``|dt| * |lambda_max| / stability_size`` (1 = the step sits on the stability boundary along
the negative real axis, the tableau's ``stability_size``; for the oscillator, whose eigenvalues are on
the imaginary axis, only a scale).

    python benchmarks/stiffness_estimate.py
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import local_reg

METHODS = ("tsit5", "dopri5", "dopri8")
TOLERANCES = (1e-3, 1e-6)
T1 = 10.0
AFTER = 1.0


def rotation(angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, -s], [s, c]], dtype=torch.float64)


STIFF = torch.diag(torch.tensor([-1.0, -1000.0], dtype=torch.float64))
Q = rotation(math.pi / 6)
PROBLEMS = {
    "diag(-1, -1000)": STIFF,
    "rotated diag(-1, -1000)": Q @ STIFF @ Q.T,
    "diag(-1, -10)": torch.diag(torch.tensor([-1.0, -10.0], dtype=torch.float64)),
    "oscillator +-10i": torch.tensor([[0.0, 10.0], [-10.0, 0.0]], dtype=torch.float64),
}


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    y0 = torch.ones(2, dtype=torch.float64)
    print(
        f"y' = A y, y(0) = (1, 1), t in [0, {T1:g}], float64; "
        f"statistics over the accepted steps with t > {AFTER:g}\n"
    )
    print(
        "| method | A | rtol = atol | accepted / rejected | rho / abs(lambda_max): median [min, max] "
        "| dt rho / stability_size: median | dt abs(lambda_max) / stability_size: median |"
    )
    print("|---|---|---|---|---|---|---|")
    for method in METHODS:
        size = local_reg.get_tableau(method).stability_size
        for name, matrix in PROBLEMS.items():
            lam = float(torch.linalg.eigvals(matrix).abs().max())
            for tol in TOLERANCES:
                sol = local_reg.odeint(
                    lambda t, y, a=matrix: a @ y,
                    y0,
                    [0.0, T1],
                    method=method,
                    rtol=tol,
                    atol=tol,
                    max_steps=100_000,
                )
                steps = sol.steps
                late = steps.t > AFTER
                rho = steps.stiffness_estimate[late]
                dt = steps.dt[late].abs()
                ratio = rho / lam
                print(
                    f"| {method} | {name} | {tol:.0e} | {sol.stats.n_accepted} / {sol.stats.n_rejected} "
                    f"| {ratio.median():.3f} [{ratio.min():.3f}, {ratio.max():.3f}] "
                    f"| {(dt * rho / size).median():.3f} | {(dt * lam / size).median():.3f} |"
                )
    print("\nstability_size: " + ", ".join(f"{m} {local_reg.get_tableau(m).stability_size}" for m in METHODS))
    print(f"total: {time.perf_counter() - start:.1f} s, {torch.get_num_threads()} thread(s)")


if __name__ == "__main__":
    main()
