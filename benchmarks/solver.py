"""Solver overhead: local_reg.odeint against torchdiffeq.odeint on the same MLP vector field.

Forward solves only (no autograd), equal tolerances. Repetitions are interleaved so that both
solvers see the same machine load; the table reports medians.

    python benchmarks/solver.py [--width 64] [--batch 512] [--repeats 7]
"""

from __future__ import annotations

import statistics
import time

import torch
import torchdiffeq
from fields import CountingMLP, mlp_problem, mlp_problem_parser

import local_reg


def time_solve(solve, field: CountingMLP) -> tuple[float, int]:
    field.calls = 0
    start = time.perf_counter()
    with torch.no_grad():
        solve()
    return time.perf_counter() - start, field.calls


def main() -> None:
    parser = mlp_problem_parser(__doc__.splitlines()[0], device=False)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    field, y0 = mlp_problem(args)
    t = torch.tensor([0.0, args.t1])
    tol = dict(rtol=args.rtol, atol=args.atol)
    # A bare evaluation loop measures the cost of the vector field alone.
    pairs = {
        "dopri5 vs dopri5": (
            lambda: local_reg.odeint(field, y0, t, method="dopri5", **tol),
            lambda: torchdiffeq.odeint(field, y0, t, method="dopri5", **tol),
        ),
        "tsit5 vs dopri5": (
            lambda: local_reg.odeint(field, y0, t, method="tsit5", **tol),
            lambda: torchdiffeq.odeint(field, y0, t, method="dopri5", **tol),
        ),
        "bosh3 vs bosh3": (
            lambda: local_reg.odeint(field, y0, t, method="bosh3", **tol),
            lambda: torchdiffeq.odeint(field, y0, t, method="bosh3", **tol),
        ),
    }
    y_probe = y0.clone()

    def bare_evaluations() -> None:
        for _ in range(200):
            field(t[0], y_probe)

    samples: dict[str, dict[str, list[float]]] = {name: {"ours": [], "theirs": []} for name in pairs}
    nfe: dict[str, dict[str, int]] = {name: {} for name in pairs}
    eval_times = []
    for _ in range(args.repeats):
        eval_seconds, calls = time_solve(bare_evaluations, field)
        eval_times.append(eval_seconds / calls)
        for name, (ours, theirs) in pairs.items():
            for label, solve in (("ours", ours), ("theirs", theirs)):
                seconds, calls = time_solve(solve, field)
                samples[name][label].append(seconds)
                nfe[name][label] = calls
    seconds_per_eval = statistics.median(eval_times)
    print(
        f"MLP {args.dim}->{args.width}->{args.width}->{args.dim}, batch {args.batch}, t in [0, {args.t1}], "
        f"rtol={args.rtol}, atol={args.atol}, {args.threads} thread(s), median of {args.repeats}; "
        f"bare evaluation {seconds_per_eval * 1e6:.0f} us"
    )
    header = (
        "| local_reg vs torchdiffeq | NFE ours | NFE theirs | time ours (ms) | time theirs (ms) "
        "| per-eval ours (us) | per-eval theirs (us) | per-eval ratio | overhead/eval ours (us) "
        "| overhead/eval theirs (us) |"
    )
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for name in pairs:
        ours = statistics.median(samples[name]["ours"])
        theirs = statistics.median(samples[name]["theirs"])
        per_ours = ours / nfe[name]["ours"]
        per_theirs = theirs / nfe[name]["theirs"]
        print(
            f"| {name} | {nfe[name]['ours']} | {nfe[name]['theirs']} | {ours * 1e3:.1f} | {theirs * 1e3:.1f} "
            f"| {per_ours * 1e6:.0f} | {per_theirs * 1e6:.0f} | {per_ours / per_theirs:.2f} "
            f"| {(per_ours - seconds_per_eval) * 1e6:.0f} | {(per_theirs - seconds_per_eval) * 1e6:.0f} |"
        )


if __name__ == "__main__":
    main()
