"""``PIController(min_step=...)`` on a stiff relaxation the tolerance resolves only in tiny steps,
against scipy's Radau at 1e-12: evaluations, steps, forced steps (accepted with an error estimate
above 1), the smallest step and the error at the end (counts are deterministic).

    python benchmarks/min_step.py
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy.integrate import solve_ivp

from local_reg import PIController, SolverError, odeint

RATE = 1e3


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()

    def relaxation(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -RATE * (y - torch.cos(t))

    exact = solve_ivp(
        lambda t, y: -RATE * (y - np.cos(t)), (0.0, 1.0), [0.0], method="Radau", rtol=1e-12, atol=1e-14
    ).y[0, -1]
    y0 = torch.zeros(1, dtype=torch.float64)
    print(f"y' = -{RATE:g} (y - cos t), y(0) = 0, t in [0, 1], tsit5, rtol 1e-8, atol 1e-10")
    print("| controller | NFE | accepted | forced | smallest step | error at t = 1 |")
    print("|---|---|---|---|---|---|")
    for label, controller in (
        ("PIController()", PIController()),
        ("min_step=2e-3", PIController(min_step=2e-3)),
        ("min_step=5e-3", PIController(min_step=5e-3)),
        ("min_step=2e-3, force_min_step=False", PIController(min_step=2e-3, force_min_step=False)),
    ):
        try:
            solution = odeint(relaxation, y0, [0.0, 1.0], controller=controller, rtol=1e-8, atol=1e-10)
        except SolverError as error:
            print(f"| {label} | SolverError: {error.reason[:60]}... | | | | |")
            continue
        steps = solution.steps
        forced = int((steps.error_estimate > 1.0).sum())
        error = abs(solution.ys[-1].item() - exact)
        print(
            f"| {label} | {solution.stats.nfe} | {solution.stats.n_accepted} | {forced} | "
            f"{steps.dt.abs().min().item():.1e} | {error:.1e} |"
        )


if __name__ == "__main__":
    main()
