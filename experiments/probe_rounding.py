"""What the local regularizer's probe measures on the digits ODE: EEst of one Tsit5 step at each
probe's step size, in float32 (the task's dtype) and in float64 with the same weights.

    PYTHONPATH=. python experiments/probe_rounding.py
"""

from __future__ import annotations

import copy

import torch

from local_reg import initial_step_size, odeint
from local_reg import step as rk_step
from local_reg.experiments.tasks import REGISTRY
from local_reg.regularization._probe import heuristic_order
from local_reg.tableaus import get_tableau


def main() -> None:
    torch.manual_seed(0)
    task = REGISTRY["digits"]
    settings = task.settings("quick")
    f32 = task.build_dynamics(settings)
    f64 = copy.deepcopy(f32).double()
    x = task.load_data(settings, 0).train.tensors[0][:128]
    tableau = get_tableau("tsit5")
    span = torch.tensor([0.0, 0.5], dtype=torch.float64)
    state = odeint(f64, x.double(), span, rtol=1e-10, atol=1e-10).ys[-1]
    print("| rtol = atol | probe | dt | EEst, float32 | EEst, float64 |\n|---|---|---|---|---|")
    for tol in (1e-6, 1.4e-8):
        for probe, scale in (("initial", 1), ("initial-hairer", 1), ("initial-hairer", 4)):
            row = []
            for func, dtype in ((f32, torch.float32), (f64, torch.float64)):
                y = state.to(dtype)
                with torch.no_grad():
                    k1 = func(torch.tensor(0.5, dtype=dtype), y)
                    dt, _ = initial_step_size(func, 0.5, y, k1, heuristic_order(5, probe), tol, tol)
                    result = rk_step(func, 0.5, y, dt * scale, tableau, rtol=tol, atol=tol, k1=k1)
                row.append((dt * scale, float(result.error_estimate)))
            name = probe + (f" x {scale}" if scale != 1 else "")
            print(f"| {tol:g} | `{name}` | {row[0][0]:.3g} | {row[0][1]:.2g} | {row[1][1]:.2g} |")


if __name__ == "__main__":
    main()
