"""The backward pass against the number of output times, this checkout beside another version
(made as loop_ab.py says)::

    python benchmarks/outputs_backward.py --old /tmp/oldpkg

A small MLP field in float64 over [0, 20] (15–19 accepted steps whatever the number of outputs, so
that almost every output lies inside a step and is read from the interpolant), the loss the sum of
every output; for each gradient method and number of outputs, one untimed round, then rounds that
time the backward pass (the process's CPU time, one thread) with both versions, which goes first
alternating. Prints the median times and the median per-round ratio, and the largest relative
difference between the two versions' gradients.

With ``--memory``, peak memory instead, each version and gradient method in a fresh process
(benchmarks/gradients.py's ``peak_growth_mb``: the peak resident size above the size before,
glibc's mmap threshold at 16 KiB so that it follows the live tensors): that of the forward pass,
and that of the backward pass above the size it starts at (the outputs, their
cotangents and the forward's records already there)::

    python benchmarks/outputs_backward.py --old /tmp/oldpkg --memory --outputs 50 200 --state 250000

The field ``y' = rate * y`` (one parameter, ``rate = -0.1``) on a float32 state of ``--state``
elements over [0, 1], first step 1: one accepted step, every output but the first and the last
inside it; the outputs' cotangents given as one tensor of ones (``torch.autograd.grad(ys, rate,
ones)``), so that the backward pass measured is the solve's, not a loss's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Any

import torch
from fields import old_local_reg
from gradients import fresh_process_environment, peak_growth_mb

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


def time_table(local_reg_old, outputs: list[int], rounds: int) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2)).double()
    header = "| gradient | outputs | other version (s) | this checkout (s) | ratio |"
    print(header + " gradients' largest relative difference |")
    print("|---|---|---|---|---|---|")
    for gradient in GRADIENTS:
        for n_outputs in outputs:
            old_times, new_times, ratios, difference = [], [], [], 0.0
            for round_ in range(rounds + 1):  # the first warms both versions up, untimed
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


def one_step_solve(odeint, gradient: str, n_outputs: int, state: int) -> tuple[Any, torch.Tensor, int]:
    """The ``--memory`` problem's forward pass: its solution, the rate (the parameter differentiated)
    and the number of outputs inside the step."""
    torch.manual_seed(0)
    rate = torch.tensor(-0.1, requires_grad=True)
    y0 = torch.randn(state)
    t = torch.linspace(0.0, 1.0, n_outputs)
    solution = odeint(lambda _, y: rate * y, y0, t, first_step=1.0, gradient=gradient, adjoint_params=(rate,))
    inside = len(set(t.tolist()) - set(solution.steps.t.tolist()) - {1.0})
    return solution, rate, inside


def measure_memory(spec: dict, old_folder: str) -> None:
    """Child process: print the peak growth (MB) of the forward pass of ``spec``'s version and
    gradient method, that of its backward pass above the size it starts at (the cotangents made
    between the two), the gradient and the outputs inside the step."""
    torch.set_num_threads(1)
    odeint = (old_local_reg(old_folder) if spec["version"] == "old" else local_reg).odeint
    solve: dict = {}

    def warm_up() -> None:  # torch's lazy initialization, forward and backward
        solution, rate, _ = one_step_solve(odeint, spec["gradient"], 3, 16)
        torch.autograd.grad(solution.ys, rate, torch.ones_like(solution.ys))

    def forward() -> None:
        solve["solution"], solve["rate"], solve["inside"] = one_step_solve(
            odeint, spec["gradient"], spec["outputs"], spec["state"]
        )

    def cotangents() -> None:
        solve["cotangents"] = torch.ones_like(solve["solution"].ys)

    def backward() -> None:
        ys, rate = solve["solution"].ys, solve["rate"]
        solve["grad"] = float(torch.autograd.grad(ys, rate, solve["cotangents"])[0])

    forward_mb = peak_growth_mb(warm_up, forward)
    backward_mb = peak_growth_mb(cotangents, backward)
    result = {
        "forward_mb": forward_mb,
        "backward_mb": backward_mb,
        "grad": solve["grad"],
        "inside": solve["inside"],
    }
    print(json.dumps(result))


def memory_table(old_folder: str, outputs: list[int], state: int) -> None:
    print(
        f"y' = rate * y, float32 state of {state} elements ({state * 4 / 2**20:.2f} MB), one step over [0, 1]"
    )
    print(
        "| gradient | outputs | inside the step | forward, other version (MB) | forward, this checkout (MB) "
        "| backward, other version (MB) | backward, this checkout (MB) | backward ratio | gradients |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for gradient in GRADIENTS:
        for n_outputs in outputs:
            old, new = (
                measured_in_fresh_process(old_folder, version, gradient, n_outputs, state)
                for version in ("old", "new")
            )
            same = "equal" if old["grad"] == new["grad"] else f"{old['grad']} vs {new['grad']}"
            print(
                f"| {gradient} | {n_outputs} | {new['inside']} | {old['forward_mb']:.1f} | "
                f"{new['forward_mb']:.1f} | {old['backward_mb']:.1f} | {new['backward_mb']:.1f} | "
                f"{new['backward_mb'] / old['backward_mb']:.2f}x | {same} |"
            )


def measured_in_fresh_process(
    old_folder: str, version: str, gradient: str, n_outputs: int, state: int
) -> dict:
    """What :func:`measure_memory` prints, run in a fresh process."""
    spec = {"version": version, "gradient": gradient, "outputs": n_outputs, "state": state}
    command = [sys.executable, __file__, "--old", old_folder, "--memory-of", json.dumps(spec)]
    environment = fresh_process_environment()
    output = subprocess.run(command, check=True, capture_output=True, text=True, env=environment).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old", required=True, help="folder holding the package local_reg_old")
    parser.add_argument("--outputs", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory", action="store_true", help="peak memory of one step holding the outputs")
    parser.add_argument("--state", type=int, default=250_000, help="--memory's state size")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)  # a child of --memory: what to measure
    args = parser.parse_args()
    if args.memory_of is not None:
        measure_memory(json.loads(args.memory_of), args.old)
    elif args.memory:
        memory_table(args.old, args.outputs, args.state)
    else:
        time_table(old_local_reg(args.old), args.outputs, args.rounds)


if __name__ == "__main__":
    main()
