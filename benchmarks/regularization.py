"""Cost of one training iteration (forward + backward): vanilla vs local regularization [LR23]
(``LocallyRegularized``'s default, the kinetic penalty with its self-tuning weight, with random and
biased sampling; and the paper's probe step, ``LocallyRegularized.paper``, random) vs global
regularization [GR21], for every gradient method.

The same MLP vector field, batch and loss for every variant; no optimizer step, so every iteration
sees the same model. Repetitions are interleaved (every variant once per round) so all variants see
the same machine load; the table reports medians, and each ratio is the median over rounds of the
variant's time divided by the vanilla time of the same gradient method in the same round; the last
column is the ratio of mean CPU times, which also counts the default weight's measurement of the
gradient ratio every tenth iteration. Both wall time and the process's CPU time are measured (one
intra-op thread, so CPU time is the work done and is less disturbed by other processes on a shared
machine).

    python benchmarks/regularization.py [--repeats 9] [--batch 512] [--width 64]
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
from fields import CountingMLP, clock, mlp_problem, mlp_problem_parser

import local_reg
from local_reg import GloballyRegularized, LocallyRegularized

Iteration = Callable[[], dict[str, int | None]]


def make_iterations(
    field: CountingMLP, y0: torch.Tensor, t: torch.Tensor, target: torch.Tensor, args: argparse.Namespace
) -> dict[tuple[str, str], Iteration]:
    """(gradient label, variant) -> one training iteration returning its NFE counts."""
    tol = dict(rtol=args.rtol, atol=args.atol)
    iterations: dict[tuple[str, str], Iteration] = {}

    def finish(ys: torch.Tensor, reg: torch.Tensor | None) -> None:
        loss = (ys - target).pow(2).mean()
        if reg is not None:
            loss = loss + reg
        field.zero_grad(set_to_none=True)
        loss.backward()

    def vanilla(gradient: str, backend: str) -> Iteration:
        def run() -> dict[str, int | None]:
            if backend == "torchdiffeq":
                import torchdiffeq

                solve = torchdiffeq.odeint_adjoint if gradient == "adjoint" else torchdiffeq.odeint
                field.calls = 0
                ys = solve(field, y0, t, method="dopri5", **tol)
                forward = field.calls
                finish(ys, None)
                return {"nfe": forward, "reg": 0, "backward": field.calls - forward or None}
            solution = local_reg.odeint(field, y0, t, method=args.method, gradient=gradient, **tol)
            finish(solution.ys, None)
            return {"nfe": solution.stats.nfe, "reg": 0, "backward": solution.stats.nfe_backward}

        return run

    def regularized(model: torch.nn.Module) -> Iteration:
        model.train()

        def run() -> dict[str, int | None]:
            ys = model(y0, t)
            finish(ys, model.reg_loss)
            stats = model.stats
            return {"nfe": stats.nfe_main, "reg": stats.nfe_reg, "backward": stats.nfe_backward}

        return run

    for backend, gradients in (
        ("local_reg", ("direct", "checkpoint", "symplectic", "adjoint")),
        ("torchdiffeq", ("direct", "adjoint")),
    ):
        for gradient in gradients:
            label = gradient if backend == "local_reg" else f"torchdiffeq {gradient}"
            method = args.method if backend == "local_reg" else "dopri5"
            iterations[label, "vanilla"] = vanilla(gradient, backend)
            common = dict(method=method, gradient=gradient, backend=backend, **tol)
            for sampling in ("random", "biased"):
                iterations[label, f"local {sampling}"] = regularized(
                    LocallyRegularized(
                        field, sampling=sampling, generator=torch.Generator().manual_seed(0), **common
                    )
                )
            iterations[label, "local random, paper"] = regularized(
                LocallyRegularized.paper(
                    field, weight=1.0, generator=torch.Generator().manual_seed(0), **common
                )
            )
            if backend == "local_reg" and gradient in ("direct", "checkpoint"):
                iterations[label, "global"] = regularized(
                    GloballyRegularized(field, method=method, gradient=gradient, **tol)
                )
    return iterations


def main() -> None:
    parser = mlp_problem_parser(__doc__.splitlines()[0], device=False)
    parser.add_argument("--n-times", type=int, default=5, help="output times in [0, t1]")
    parser.add_argument("--method", default="tsit5")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    field, y0 = mlp_problem(args)
    t = torch.linspace(0.0, args.t1, args.n_times)
    target = torch.randn(args.n_times, args.batch, args.dim)
    iterations = make_iterations(field, y0, t, target, args)

    # On a GPU both are wall time with the device synchronized (fields.clock).
    wall, cpu = clock(args.device, wall=True), clock(args.device)
    for run in iterations.values():  # warm-up
        run()
    seconds: dict[tuple[str, str], list[float]] = {key: [] for key in iterations}
    cpu_seconds: dict[tuple[str, str], list[float]] = {key: [] for key in iterations}
    counts: dict[tuple[str, str], list[dict[str, int | None]]] = {key: [] for key in iterations}
    for _ in range(args.repeats):
        for key, run in iterations.items():
            start, cpu_start = wall(), cpu()
            count = run()
            seconds[key].append(wall() - start)
            cpu_seconds[key].append(cpu() - cpu_start)
            counts[key].append(count)

    print(
        f"MLP {args.dim}->{args.width}->{args.width}->{args.dim}, batch {args.batch}, {args.n_times} output "
        f"times in [0, {args.t1}], {args.method} (torchdiffeq rows: dopri5), rtol={args.rtol}, "
        f"atol={args.atol}, {args.threads} thread(s), float32, median of {args.repeats} interleaved rounds"
    )
    header = (
        "| gradient | variant | wall s / iteration | wall ratio to vanilla | CPU s / iteration "
        "| CPU ratio to vanilla | forward NFE (main + reg) | backward NFE | CPU ratio of means |"
    )
    print(header)
    print("|---" * (header.count("|") - 1) + "|")

    def ratio(samples: list[float], vanilla: list[float]) -> float:
        return statistics.median(s / v for s, v in zip(samples, vanilla, strict=True))

    for (label, variant), samples in seconds.items():
        cpu = cpu_seconds[label, variant]
        wall_ratio = ratio(samples, seconds[label, "vanilla"])
        cpu_ratio = ratio(cpu, cpu_seconds[label, "vanilla"])
        nfe = statistics.median(c["nfe"] for c in counts[label, variant])
        reg = statistics.median(c["reg"] for c in counts[label, variant])
        backward = [c["backward"] for c in counts[label, variant] if c["backward"] is not None]
        backward_text = f"{statistics.median(backward):.0f}" if backward else "n/a"
        mean_ratio = statistics.mean(cpu) / statistics.mean(cpu_seconds[label, "vanilla"])
        print(
            f"| {label} | {variant} | {statistics.median(samples):.3f} | {wall_ratio:.3f} "
            f"| {statistics.median(cpu):.3f} | {cpu_ratio:.3f} | {nfe:.0f} + {reg:.0f} | {backward_text} "
            f"| {mean_ratio:.3f} |"
        )


if __name__ == "__main__":
    main()
