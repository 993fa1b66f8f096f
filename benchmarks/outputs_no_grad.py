"""A solve with many output times without autograd (inference, plotting), this checkout beside
another version (made as loop_ab.py says)::

    python benchmarks/outputs_no_grad.py --old /tmp/oldpkg

The field ``y' = -y`` in float64 over [0, 1] (6 accepted steps at the defaults, every output but
the ends read from the interpolant), for several state sizes and numbers of outputs; each version
solves under ``torch.no_grad()`` and, as a reference, with autograd, the versions alternating, and
the fastest of ``--rounds`` is printed (ms), with whether the outputs are equal to the bit.
"""

from __future__ import annotations

import argparse
import time

import torch
from fields import old_local_reg

import local_reg

CASES = [(2, 20000), (64, 5000), (1000, 2000), (10000, 400)]


def fastest(odeint, y0: torch.Tensor, t: torch.Tensor, grad: bool, rounds: int) -> tuple[float, torch.Tensor]:
    best, ys = float("inf"), None
    for _ in range(rounds):
        with torch.set_grad_enabled(grad):
            start = time.perf_counter()
            ys = odeint(lambda _, y: -y, y0, t).ys
            best = min(best, time.perf_counter() - start)
    return best * 1e3, ys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old", required=True, help="folder holding the package local_reg_old")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    versions = {"other version": old_local_reg(args.old).odeint, "this checkout": local_reg.odeint}
    print(
        "| state | outputs | no_grad, other version | no_grad, this checkout "
        "| with autograd, this checkout | equal |"
    )
    print("|---|---|---|---|---|---|")
    for size, n_outputs in CASES:
        y0 = torch.randn(size, dtype=torch.float64)
        t = torch.linspace(0.0, 1.0, n_outputs, dtype=torch.float64)
        times, outputs = {}, []
        for name, odeint in versions.items():
            times[name], ys = fastest(odeint, y0, t, False, args.rounds)
            outputs.append(ys)
        graph, with_graph = fastest(local_reg.odeint, y0, t, True, args.rounds)
        outputs.append(with_graph.detach())
        same = all(torch.equal(outputs[0], ys) for ys in outputs[1:])
        print(
            f"| {size} | {n_outputs} | {times['other version']:.1f} ms | {times['this checkout']:.1f} ms "
            f"| {graph:.1f} ms | {'yes' if same else 'no'} |"
        )


if __name__ == "__main__":
    main()
