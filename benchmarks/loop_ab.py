"""Per-attempted-step time of this checkout's solver beside another version's, interleaved.

The other version is a copy of its ``local_reg/`` package renamed ``local_reg_old`` (its imports are
relative), e.g. for commit ``REV``::

    git worktree add /tmp/old REV && mkdir -p /tmp/oldpkg
    cp -r /tmp/old/local_reg /tmp/oldpkg/local_reg_old
    .venv/bin/python benchmarks/loop_ab.py --old /tmp/oldpkg

A small MLP field on a small state (where the loop's own overhead matters most), no autograd, one
thread; rounds alternate the two versions; times are the process's CPU time (less disturbed than
wall time by other jobs on shared cores); the table gives medians and the median per-round ratio.
Each round also times bare calls of the field, so the loop's own overhead per attempted step is
the time per step less ``NFE / steps`` bare calls.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import local_reg

BARE_CALLS = 400


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old", required=True, help="folder holding the package local_reg_old")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--t1", type=float, default=200.0)
    parser.add_argument("--method", default="tsit5")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--dim", type=int, default=2, help="state dimension (the MLP's input and output)")
    args = parser.parse_args()
    sys.path.insert(0, args.old)
    import local_reg_old

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(args.dim, 64),
        torch.nn.Tanh(),
        torch.nn.Linear(64, 64),
        torch.nn.Tanh(),
        torch.nn.Linear(64, args.dim),
    )
    y0 = torch.randn(args.batch, args.dim)
    t = [0.0, args.t1]
    solvers = {"other (local_reg_old)": local_reg_old.odeint, "this checkout": local_reg.odeint}
    per_step: dict[str, list[float]] = {name: [] for name in solvers}
    overhead: dict[str, list[float]] = {name: [] for name in solvers}
    counts = {}
    with torch.no_grad():
        for _ in range(args.rounds):
            start = time.process_time()
            for _ in range(BARE_CALLS):
                net(y0)
            bare = (time.process_time() - start) / BARE_CALLS
            for name, odeint in solvers.items():
                start = time.process_time()
                solution = odeint(lambda t, y: net(y), y0, t, method=args.method, rtol=1e-7, atol=1e-9)
                nfe, n_steps = solution.stats.nfe, solution.stats.n_steps
                per_step[name].append((time.process_time() - start) / n_steps)
                overhead[name].append(per_step[name][-1] - bare * nfe / n_steps)
                counts[name] = (nfe, n_steps)
    setup = f"t in [0, {args.t1}], {args.method}, rtol=1e-7, atol=1e-9, 1 thread, {args.rounds} rounds"
    print(f"MLP {args.dim}-64-64-{args.dim}, batch {args.batch}, {setup}")
    print("| version | NFE | attempted steps | us / attempted step (median) | overhead us / attempted step |")
    print("|---|---|---|---|---|")
    for name in solvers:
        median_us = 1e6 * statistics.median(per_step[name])
        overhead_us = 1e6 * statistics.median(overhead[name])
        print(f"| {name} | {counts[name][0]} | {counts[name][1]} | {median_us:.0f} | {overhead_us:.0f} |")
    for what, samples in (("per step", per_step), ("overhead", overhead)):
        old, new = samples.values()
        ratio = statistics.median(n / o for n, o in zip(new, old, strict=True))
        print(f"median per-round ratio this/other, {what}: {ratio:.3f}")


if __name__ == "__main__":
    main()
