"""What the local regularizer's probe measures: EEst of one Tsit5 step in float32 (the task's dtype)
and in float64 with the same weights.

Without arguments: on the digits ODE at initialization, at each probe's step size. With
``--task spiral`` (any ODE task): during training with the paper's penalty at the library's
weight and probe (``penalty="error-dt"``: the default before the kinetic one, which takes no probe
step), every ``--every`` iterations, the step its probe took (its ``t_reg``, ``u(t_reg)``, ``dt``).

    PYTHONPATH=. python experiments/probe_rounding.py
    PYTHONPATH=. python experiments/probe_rounding.py --task spiral --iterations 400 --every 100
"""

from __future__ import annotations

import argparse
import copy

import torch
from torch.utils.data import DataLoader

from local_reg import LocallyRegularized, initial_step_size, odeint
from local_reg import step as rk_step
from local_reg.experiments.methods import METHODS
from local_reg.experiments.tasks import REGISTRY, ModelContext
from local_reg.regularization._probe import heuristic_order
from local_reg.tableaus import get_tableau


def at_initialization() -> None:
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


def during_training(task_name: str, iterations: int, every: int) -> None:
    """Train ``task_name``'s quick model at the default weight and probe (seed 0) and, every ``every``
    iterations, redo the probe's step in float32 and float64 from the same state and step size."""
    torch.manual_seed(0)
    task = REGISTRY[task_name]
    settings = task.settings("quick")
    settings["weights"] = {**settings["weights"], "local-random": "default"}
    # The probe step of the previous default (the paper's penalty with the library's weight and
    # probe): the kinetic default takes no probe step.
    settings["local"] = {"penalty": "error-dt"}
    data = task.load_data(settings, seed=0)
    model = task.build_model(settings, ModelContext(METHODS["local-random"], "direct", iterations))
    (block,) = [m for m in model.modules() if isinstance(m, LocallyRegularized)]
    optimizer = torch.optim.Adam(model.parameters(), lr=settings["lr"])
    rtol, atol = settings["solver"]["rtol"], settings["solver"]["atol"]
    tableau = get_tableau("tsit5")
    print(f"{task_name}, rtol = {rtol:g}, atol = {atol:g}, the default's probe, seed 0")
    print("| iteration | dt | main solve's steps | EEst, float32 | EEst, float64 |\n|---|---|---|---|---|")
    iteration = 0
    while iteration <= iterations:
        for batch in DataLoader(data.train, batch_size=settings["batch_size"], shuffle=True):
            loss, _ = task.training_loss(model, batch)
            stats = block.stats
            if iteration % every == 0:
                wide = copy.deepcopy(block.func).double()
                with torch.no_grad():
                    narrow_step = rk_step(
                        block.func, stats.t_reg, stats.state, stats.dt_reg, tableau, rtol=rtol, atol=atol
                    )
                    wide_step = rk_step(
                        wide, stats.t_reg, stats.state.double(), stats.dt_reg, tableau, rtol=rtol, atol=atol
                    )
                print(
                    f"| {iteration} | {abs(stats.dt_reg):.3g} | {stats.n_accepted} | "
                    f"{float(narrow_step.error_estimate):.2g} | {float(wide_step.error_estimate):.2g} |"
                )
            optimizer.zero_grad()
            (loss + block.reg_loss).backward()
            optimizer.step()
            iteration += 1
            if iteration > iterations:
                return


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", help="an ODE task: trace the default's probe during training")
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--every", type=int, default=100)
    args = parser.parse_args()
    if args.task is None:
        at_initialization()
    else:
        during_training(args.task, args.iterations, args.every)
