"""The backward pass against the number of output times, this checkout beside another version
(made as loop_ab.py says)::

    python benchmarks/outputs_backward.py --old /tmp/oldpkg

A small MLP field in float64 over [0, 20] (15–19 accepted steps whatever the number of outputs, so
that almost every output lies inside a step and is read from the interpolant), the loss the sum of
every output; for each gradient method and number of outputs, one untimed round, then rounds that
time the backward pass (the process's CPU time, one thread) with both versions, which goes first
alternating. Prints the median times and the median per-round ratio, and the largest relative
difference between the two versions' gradients.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from fields import old_local_reg

import local_reg

GRADIENTS = ("direct", "checkpoint", "symplectic")


def backward_seconds(odeint, net: torch.nn.Module, n_outputs: int, gradient: str) -> tuple[float, list]:
    y0 = torch.randn(8, 2, dtype=torch.float64)
    t = torch.linspace(0.0, 20.0, n_outputs, dtype=torch.float64)
    params = tuple(net.parameters())
    solution = odeint(
        lambda _, y: net(y), y0, t, rtol=1e-6, atol=1e-6, gradient=gradient, adjoint_params=params
    )
    loss = solution.ys.sum()
    start = time.process_time()
    grads = torch.autograd.grad(loss, list(net.parameters()))
    return time.process_time() - start, grads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old", required=True, help="folder holding the package local_reg_old")
    parser.add_argument("--outputs", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    local_reg_old = old_local_reg(args.old)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2)).double()
    header = "| gradient | outputs | other version (s) | this checkout (s) | ratio |"
    print(header + " gradients' largest relative difference |")
    print("|---|---|---|---|---|---|")
    for gradient in GRADIENTS:
        for n_outputs in args.outputs:
            old_times, new_times, ratios, difference = [], [], [], 0.0
            for round_ in range(args.rounds + 1):  # the first warms both versions up, untimed
                seed = torch.seed()
                timed = {}
                for name, odeint in (("old", local_reg_old.odeint), ("new", local_reg.odeint))[
                    :: 1 - 2 * (round_ % 2)
                ]:
                    torch.manual_seed(seed)
                    timed[name] = backward_seconds(odeint, net, n_outputs, gradient)
                if round_ == 0:
                    continue
                (old, old_grads), (new, new_grads) = timed["old"], timed["new"]
                old_times.append(old)
                new_times.append(new)
                ratios.append(new / old)
                for a, b in zip(old_grads, new_grads, strict=True):
                    difference = max(difference, float((a - b).abs().max() / b.abs().max()))
            print(
                f"| {gradient} | {n_outputs} | {statistics.median(old_times):.3f} | "
                f"{statistics.median(new_times):.3f} | {statistics.median(ratios):.2f}x | {difference:.1e} |"
            )


if __name__ == "__main__":
    main()
