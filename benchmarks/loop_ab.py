"""Per-attempted-step time of this checkout's solver beside another version's, interleaved.

The other version is a copy of its ``local_reg/`` package renamed ``local_reg_old``
(``fields.old_local_reg``), e.g.::

    .venv/bin/python benchmarks/loop_ab.py --old /tmp/oldpkg

A small MLP field on a small state (where the loop's own overhead matters most), no autograd, one
thread; rounds alternate the two versions; times are the process's CPU time (less disturbed than
wall time by other jobs on shared cores); the table gives medians and the median per-round ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from fields import old_local_reg

import local_reg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old", required=True, help="folder holding the package local_reg_old")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--t1", type=float, default=200.0)
    args = parser.parse_args()
    local_reg_old = old_local_reg(args.old)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(2, 64),
        torch.nn.Tanh(),
        torch.nn.Linear(64, 64),
        torch.nn.Tanh(),
        torch.nn.Linear(64, 2),
    )
    y0 = torch.randn(16, 2)
    t = [0.0, args.t1]
    solvers = {"other (local_reg_old)": local_reg_old.odeint, "this checkout": local_reg.odeint}
    per_step: dict[str, list[float]] = {name: [] for name in solvers}
    counts = {}
    with torch.no_grad():
        for _ in range(args.rounds):
            for name, odeint in solvers.items():
                start = time.process_time()
                solution = odeint(lambda t, y: net(y), y0, t, rtol=1e-7, atol=1e-9)
                per_step[name].append((time.process_time() - start) / solution.stats.n_steps)
                counts[name] = (solution.stats.nfe, solution.stats.n_steps)
    setup = f"t in [0, {args.t1}], tsit5, rtol=1e-7, atol=1e-9, 1 thread, {args.rounds} rounds"
    print(f"MLP 2-64-64-2, batch 16, {setup}")
    print("| version | NFE | attempted steps | us / attempted step (median) |")
    print("|---|---|---|---|")
    for name in solvers:
        median_us = 1e6 * statistics.median(per_step[name])
        print(f"| {name} | {counts[name][0]} | {counts[name][1]} | {median_us:.0f} |")
    old, new = per_step.values()
    ratio = statistics.median(n / o for n, o in zip(new, old, strict=True))
    print(f"median per-round ratio this/other: {ratio:.3f}")


if __name__ == "__main__":
    main()
