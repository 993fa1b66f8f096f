"""Fixed cost per call: tiny solves (a few steps of a small MLP), where checking the arguments and
setting up a solve weigh most, against torchdiffeq; and one training iteration of the regularized
model against the plain solve.

MLP 2-16-2 (tanh), batch 4, ``t = [0, 0.5]``, dopri5 at ``rtol=1e-6, atol=1e-8`` (three steps, 20
evaluations for both libraries). The cases are interleaved round by round (each round times a block
of calls of every case) so that they see the same machine load; the table gives the median over
rounds of CPU microseconds per call, and the ratio to torchdiffeq's call of the same kind.

    OMP_NUM_THREADS=1 python benchmarks/per_call.py [--rounds 15] [--block 20]

``--libraries DIR [DIR ...]`` instead times seven workloads of the solver's hot paths (tiny and
medium forward solves, the three exact gradient methods, a LocallyRegularized iteration, an sdeint
forward solve) for each copy of ``local_reg`` under the DIRs (each on PYTHONPATH in a fresh process,
one after the other, round by round), and prints the median over rounds of each copy's best block:
the same workloads before and after a change, side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torchdiffeq

import local_reg
import local_reg.compat

TOLERANCES = {"method": "dopri5", "rtol": 1e-6, "atol": 1e-8}


class MLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner, self.outer = torch.nn.Linear(2, 16), torch.nn.Linear(16, 2)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.outer(torch.tanh(self.inner(y)))


def cases(field: MLP, y0: torch.Tensor, t: torch.Tensor) -> dict[str, tuple[Callable[[], None], str | None]]:
    """Each case's call, and the torchdiffeq case it is compared with."""

    def forward(solve: Callable[[], object]) -> Callable[[], None]:
        def call() -> None:
            with torch.no_grad():
                solve()

        return call

    def trained(solve: Callable[[], tuple[torch.Tensor, torch.Tensor | float]]) -> Callable[[], None]:
        def call() -> None:
            field.zero_grad(set_to_none=True)
            ys, penalty = solve()
            (ys[-1].pow(2).mean() + penalty).backward()

        return call

    regularized = local_reg.LocallyRegularized(field, sampling="random", **TOLERANCES)
    plain = local_reg.Regularized(field, **TOLERANCES)
    regularized.train()
    plain.train()

    def modelled(model: local_reg.Regularized) -> tuple[torch.Tensor, torch.Tensor | float]:
        return model(y0, t), model.reg_loss

    torchdiffeq_forward, torchdiffeq_trained = "torchdiffeq.odeint, forward", "torchdiffeq.odeint, training"
    torchdiffeq_adjoint = "torchdiffeq.odeint_adjoint, training"
    return {
        torchdiffeq_forward: (forward(lambda: torchdiffeq.odeint(field, y0, t, **TOLERANCES)), None),
        "local_reg.odeint, forward": (
            forward(lambda: local_reg.odeint(field, y0, t, **TOLERANCES)),
            torchdiffeq_forward,
        ),
        "local_reg.compat.odeint, forward": (
            forward(lambda: local_reg.compat.odeint(field, y0, t, **TOLERANCES)),
            torchdiffeq_forward,
        ),
        torchdiffeq_trained: (trained(lambda: (torchdiffeq.odeint(field, y0, t, **TOLERANCES), 0.0)), None),
        "local_reg.odeint, training": (
            trained(lambda: (local_reg.odeint(field, y0, t, **TOLERANCES).ys, 0.0)),
            torchdiffeq_trained,
        ),
        "Regularized (no penalty), training": (trained(lambda: modelled(plain)), torchdiffeq_trained),
        "LocallyRegularized(sampling='random'), training": (
            trained(lambda: modelled(regularized)),
            torchdiffeq_trained,
        ),
        torchdiffeq_adjoint: (
            trained(lambda: (torchdiffeq.odeint_adjoint(field, y0, t, **TOLERANCES), 0.0)),
            None,
        ),
        "local_reg.odeint(gradient='adjoint'), training": (
            trained(lambda: (local_reg.odeint(field, y0, t, gradient="adjoint", **TOLERANCES).ys, 0.0)),
            torchdiffeq_adjoint,
        ),
    }


class _Field(torch.nn.Module):
    """A 2-h-h-2 tanh MLP, the field of the hot-path workloads."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.a, self.b, self.c = (
            torch.nn.Linear(2, width),
            torch.nn.Linear(width, width),
            torch.nn.Linear(width, 2),
        )

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.c(torch.tanh(self.b(torch.tanh(self.a(y)))))


class _DiagonalSDE:
    noise_type, sde_type = "diagonal", "ito"

    def __init__(self) -> None:
        self.drift = _Field(32)

    def f(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.drift(t, y)

    def g(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 0.1 * torch.ones_like(y)


def workloads() -> dict[str, tuple[Callable[[], None], int]]:
    """Each hot-path workload's call and the calls per timed block."""
    torch.manual_seed(0)
    tiny, y_tiny, t_tiny = _Field(16), torch.randn(4, 2), torch.tensor([0.0, 0.5])
    medium, y_medium, t_medium = _Field(64), torch.randn(256, 2), torch.linspace(0, 1, 10)
    sde, y_sde = _DiagonalSDE(), torch.randn(64, 2)
    regularized = local_reg.LocallyRegularized(medium, sampling="random", rtol=1e-6, atol=1e-6)
    regularized.train()

    def tiny_forward() -> None:
        with torch.no_grad():
            local_reg.odeint(tiny, y_tiny, t_tiny, method="dopri5", rtol=1e-6, atol=1e-8)

    def medium_forward() -> None:
        with torch.no_grad():
            local_reg.odeint(medium, y_medium, t_medium, method="tsit5", rtol=1e-6, atol=1e-6)

    def trained(gradient: str) -> Callable[[], None]:
        def call() -> None:
            medium.zero_grad(set_to_none=True)
            solution = local_reg.odeint(
                medium, y_medium, t_medium, method="tsit5", rtol=1e-6, atol=1e-6, gradient=gradient
            )
            solution.ys.pow(2).mean().backward()

        return call

    def regularized_iteration() -> None:
        medium.zero_grad(set_to_none=True)
        ys = regularized(y_medium, t_medium)
        (ys[-1].pow(2).mean() + regularized.reg_loss).backward()

    def sde_forward() -> None:
        with torch.no_grad():
            generator = torch.Generator().manual_seed(0)
            local_reg.sdeint(sde, y_sde, torch.tensor([0.0, 1.0]), rtol=1e-3, atol=1e-3, generator=generator)

    return {
        "tiny_fwd (MLP 2-16-16-2, batch 4, dopri5, no_grad)": (tiny_forward, 40),
        "med_fwd (MLP 2-64-64-2, batch 256, tsit5, 10 outputs, no_grad)": (medium_forward, 3),
        "direct fwd+bwd": (trained("direct"), 2),
        "checkpoint fwd+bwd": (trained("checkpoint"), 2),
        "symplectic fwd+bwd": (trained("symplectic"), 2),
        "reg_iter (LocallyRegularized, sampling='random')": (regularized_iteration, 2),
        "sde_fwd (sdeint, diagonal noise, 64x2, rtol=atol=1e-3)": (sde_forward, 3),
    }


def time_workloads() -> None:
    """One round: each workload's best of three blocks, CPU us per call, as JSON on stdout."""
    best = {}
    for name, (call, block) in workloads().items():
        call()
        blocks = []
        for _ in range(3):
            start = time.process_time_ns()
            for _ in range(block):
                call()
            blocks.append((time.process_time_ns() - start) / block / 1e3)
        best[name] = min(blocks)
    print(json.dumps(best))


def compare_libraries(libraries: list[str], rounds: int) -> None:
    """:func:`time_workloads` of each copy of local_reg under ``libraries``, interleaved round by round."""
    results: dict[str, list[dict[str, float]]] = {library: [] for library in libraries}
    for _ in range(rounds):
        for library in libraries:
            environment = {**os.environ, "PYTHONPATH": library, "OMP_NUM_THREADS": "1"}
            run = subprocess.run(
                [sys.executable, __file__, "--workloads"],
                env=environment,
                capture_output=True,
                text=True,
                check=True,
            )
            results[library].append(json.loads(run.stdout))
    print(f"{rounds} interleaved rounds, median over rounds of the best of 3 blocks, CPU us per call")
    print("| workload | " + " | ".join(libraries) + " |")
    print("|---|" + "---|" * len(libraries))
    for name in results[libraries[0]][0]:
        medians = [statistics.median(result[name] for result in results[library]) for library in libraries]
        print(f"| {name} | " + " | ".join(f"{median:.0f}" for median in medians) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--block", type=int, default=20)
    parser.add_argument("--libraries", nargs="+", help="directories holding a copy of local_reg each")
    parser.add_argument("--workloads", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.workloads:
        time_workloads()
        return
    if args.libraries:
        compare_libraries(args.libraries, args.rounds)
        return
    torch.manual_seed(0)
    field, y0, t = MLP(), torch.randn(4, 2), torch.tensor([0.0, 0.5])
    table = cases(field, y0, t)
    for call, _ in table.values():  # warm-up: first calls allocate and fill caches
        for _ in range(5):
            call()
    times: dict[str, list[float]] = {name: [] for name in table}
    for _ in range(args.rounds):
        for name, (call, _) in table.items():
            start = time.process_time_ns()
            for _ in range(args.block):
                call()
            times[name].append((time.process_time_ns() - start) / args.block / 1e3)
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"{args.rounds} interleaved rounds of {args.block} calls, median CPU us per call")
    print("| case | us per call | / torchdiffeq |")
    print("|---|---|---|")
    for name, (_, reference) in table.items():
        ratio = "" if reference is None else f"{medians[name] / medians[reference]:.2f}"
        print(f"| {name} | {medians[name]:.0f} | {ratio} |")


if __name__ == "__main__":
    main()
