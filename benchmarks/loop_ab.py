"""Per-attempted-step time of this checkout's solver beside another version's, interleaved.

The other version is a copy of its ``local_reg/`` package renamed ``local_reg_old`` (its imports are
relative), e.g. for commit ``REV``::

    git worktree add /tmp/old REV && mkdir -p /tmp/oldpkg
    cp -r /tmp/old/local_reg /tmp/oldpkg/local_reg_old
    .venv/bin/python benchmarks/loop_ab.py --old /tmp/oldpkg

A small MLP field on a small state (where the loop's own overhead matters most), or with
``--sde`` the SDE ``dy = MLP(y) dt + 0.1 dW`` (``--step-size`` for fixed steps), no autograd, one
thread; each round runs the other version, then this checkout; times are the process's CPU time
(less disturbed than wall time by other jobs on shared cores); the table gives medians and the
median per-round ratio.
Each round also times bare calls of the field, so the loop's own overhead per attempted step is
the time per step less ``NFE / steps`` bare calls.

``--instructions`` counts executed instructions instead (valgrind's callgrind, about 20 minutes):
deterministic, so unaffected by other jobs, though not a time. Each count runs in its own process,
which imports both versions and solves once with each before counting: one process does nothing
more (the baseline), one makes ``--repeats`` solves with each version, one as many bare calls of
the field as those solves made.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time

import torch
from fields import old_local_reg

import local_reg

BARE_CALLS = 400
VERSIONS = {"old": "other (local_reg_old)", "new": "this checkout"}


def problem(args: argparse.Namespace):
    """The MLP field, its initial state and the output times."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(args.dim, 64),
        torch.nn.Tanh(),
        torch.nn.Linear(64, 64),
        torch.nn.Tanh(),
        torch.nn.Linear(64, args.dim),
    )
    return net, torch.randn(args.batch, args.dim), [0.0, args.t1]


def solvers(args: argparse.Namespace) -> dict:
    local_reg_old = old_local_reg(args.old)
    if args.sde:
        return {VERSIONS["old"]: local_reg_old.sdeint, VERSIONS["new"]: local_reg.sdeint}
    return {VERSIONS["old"]: local_reg_old.odeint, VERSIONS["new"]: local_reg.odeint}


class AdditiveSDE(torch.nn.Module):
    """``dy = net(y) dt + 0.1 dW``, diagonal noise: the ``--sde`` problem."""

    noise_type, sde_type = "diagonal", "ito"

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def f(self, t, y):
        return self.net(y)

    def g(self, t, y):
        return torch.full_like(y, 0.1)


def solve(solver, net, y0, t, args: argparse.Namespace):
    if args.sde:
        # One seed: both versions draw the same Brownian path, so their outputs compare to the bit.
        steps = {} if args.step_size is None else {"step_size": args.step_size}
        return solver(AdditiveSDE(net), y0, t, generator=torch.Generator().manual_seed(0), **steps)
    return solver(lambda t, y: net(y), y0, t, method=args.method, rtol=1e-7, atol=1e-9)


def field_calls(solution) -> int:
    """The calls of the MLP a solve made (an SDE's diffusion calls are not the MLP's)."""
    return solution.stats.nfe - (solution.stats.nfe_diffusion or 0)


def describe(args: argparse.Namespace, what: str) -> None:
    if args.sde:
        steps = "adaptive (rtol = atol = 1e-2)" if args.step_size is None else f"step_size={args.step_size}"
        setup = f"t in [0, {args.t1}], sdeint (Euler-Maruyama, {steps}), 1 thread, {what}"
        print(f"dy = MLP(y) dt + 0.1 dW, MLP {args.dim}-64-64-{args.dim}, batch {args.batch}, {setup}")
        return
    setup = f"t in [0, {args.t1}], {args.method}, rtol=1e-7, atol=1e-9, 1 thread, {what}"
    print(f"MLP {args.dim}-64-64-{args.dim}, batch {args.batch}, {setup}")


def time_rounds(args: argparse.Namespace) -> None:
    net, y0, t = problem(args)
    odeints = solvers(args)
    per_step: dict[str, list[float]] = {name: [] for name in odeints}
    overhead: dict[str, list[float]] = {name: [] for name in odeints}
    counts = {}
    outputs = {}
    with torch.no_grad():
        for _ in range(args.rounds):
            start = time.process_time()
            for _ in range(BARE_CALLS):
                net(y0)
            bare = (time.process_time() - start) / BARE_CALLS
            for name, odeint in odeints.items():
                start = time.process_time()
                solution = solve(odeint, net, y0, t, args)
                nfe, n_steps = solution.stats.nfe, solution.stats.n_steps
                per_step[name].append((time.process_time() - start) / n_steps)
                overhead[name].append(per_step[name][-1] - bare * field_calls(solution) / n_steps)
                counts[name] = (nfe, n_steps)
                outputs[name] = solution.ys
    describe(args, f"{args.rounds} rounds")
    print("| version | NFE | attempted steps | us / attempted step (median) | overhead us / attempted step |")
    print("|---|---|---|---|---|")
    for name in odeints:
        median_us = 1e6 * statistics.median(per_step[name])
        overhead_us = 1e6 * statistics.median(overhead[name])
        print(f"| {name} | {counts[name][0]} | {counts[name][1]} | {median_us:.0f} | {overhead_us:.0f} |")
    for what, samples in (("per step", per_step), ("overhead", overhead)):
        old, new = samples.values()
        ratio = statistics.median(n / o for n, o in zip(new, old, strict=True))
        print(f"median per-round ratio this/other, {what}: {ratio:.3f}")
    print(f"outputs identical to the bit: {torch.equal(*outputs.values())}")


def child(args: argparse.Namespace) -> None:
    """What one counted process runs (``--child``): warm-up solves, then its share of the work."""
    net, y0, t = problem(args)
    odeints = solvers(args)
    with torch.no_grad():
        solutions = {name: solve(odeint, net, y0, t, args) for name, odeint in odeints.items()}
        if args.child == "bare":
            for _ in range(args.repeats * field_calls(solutions[VERSIONS["old"]])):
                net(y0)
        elif args.child != "baseline":
            for _ in range(args.repeats):
                solve(odeints[VERSIONS[args.child]], net, y0, t, args)
    print(
        "STATS",
        json.dumps({name: [s.stats.nfe, s.stats.n_steps, field_calls(s)] for name, s in solutions.items()}),
    )


def count_instructions(args: argparse.Namespace) -> None:
    forwarded = [
        *("--old", args.old, "--t1", str(args.t1), "--method", args.method),
        *("--batch", str(args.batch), "--dim", str(args.dim), "--repeats", str(args.repeats)),
        *(("--sde",) if args.sde else ()),
        *(() if args.step_size is None else ("--step-size", str(args.step_size))),
    ]
    counts = {}
    for which in ("baseline", "bare", *VERSIONS):
        command = [
            *("valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"),
            *(sys.executable, __file__, "--child", which, *forwarded),
        ]
        run = subprocess.run(command, capture_output=True, text=True, check=True)
        counts[which] = int(re.search(r"Collected : (\d+)", run.stderr).group(1))
        stats = json.loads(re.search(r"STATS (.*)", run.stdout).group(1))
    bare_per_call = (counts["bare"] - counts["baseline"]) / (args.repeats * stats[VERSIONS["old"]][2])
    describe(args, f"{args.repeats} solves per version, executed instructions")
    print("| version | NFE | attempted steps | instructions / attempted step | overhead / attempted step |")
    print("|---|---|---|---|---|")
    per_step = {}
    overhead = {}
    for which, name in VERSIONS.items():
        nfe, n_steps, calls = stats[name]
        per_solve = (counts[which] - counts["baseline"]) / args.repeats
        per_step[name] = per_solve / n_steps
        overhead[name] = (per_solve - calls * bare_per_call) / n_steps
        print(f"| {name} | {nfe} | {n_steps} | {per_step[name]:,.0f} | {overhead[name]:,.0f} |")
    print(f"bare call of the field: {bare_per_call:,.0f} instructions")
    for what, values in (("per step", per_step), ("overhead", overhead)):
        old, new = values.values()
        print(f"ratio this/other, {what}: {new / old:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old", required=True, help="folder holding the package local_reg_old")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--t1", type=float, default=200.0)
    parser.add_argument("--method", default="tsit5")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--dim", type=int, default=2, help="state dimension (the MLP's input and output)")
    parser.add_argument("--instructions", action="store_true", help="count instructions (valgrind)")
    parser.add_argument("--repeats", type=int, default=3, help="solves per version with --instructions")
    parser.add_argument("--sde", action="store_true", help="solve dy = MLP(y) dt + 0.1 dW with sdeint")
    parser.add_argument("--step-size", type=float, help="with --sde: fixed steps of this size")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args)
    elif args.instructions:
        count_instructions(args)
    else:
        time_rounds(args)


if __name__ == "__main__":
    main()
