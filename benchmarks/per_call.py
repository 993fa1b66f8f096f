"""Fixed cost per call: tiny solves (a few steps of a small MLP), where checking the arguments and
setting up a solve weigh most, against torchdiffeq; and one training iteration of the regularized
model against the plain solve.

MLP 2-16-2 (tanh), batch 4, ``t = [0, 0.5]``, dopri5 at ``rtol=1e-6, atol=1e-8`` (three steps, 20
evaluations for both libraries). The cases are interleaved round by round (each round times a block
of calls of every case) so that they see the same machine load; the table gives the median over
rounds of CPU microseconds per call, and the ratio to torchdiffeq's call of the same kind.

    OMP_NUM_THREADS=1 python benchmarks/per_call.py [--rounds 15] [--block 20]
"""

from __future__ import annotations

import argparse
import statistics
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--block", type=int, default=20)
    args = parser.parse_args()
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
