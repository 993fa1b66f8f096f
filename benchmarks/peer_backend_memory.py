"""Peak memory and time of the regularized models' peer backends (``backend="torchdiffeq"``,
``backend="torchsde"``) on a large state, this checkout beside another version (made as
loop_ab.py says)::

    python benchmarks/peer_backend_memory.py --old /tmp/oldpkg

Each backend records where the user's function first returned non-finite values, read only when
the solve fails. The field ``y' = rate * (1 + cos(40 t)) * y`` (``rate = -50``, one parameter) on a
float64 state of ``--state`` elements over [0, ``--t1``] (dopri5 rejects 3 of its 24 steps), and
the SDE with that drift and diffusion 0.1; ``LocallyRegularized`` in eval mode (the main solve
alone). "peak" is the forward call's peak resident size above the size before it, each version and
configuration in a fresh process (benchmarks/gradients.py's ``peak_growth_mb``); "time" the median
over interleaved rounds of the process's CPU time of one call, both versions in one process, one
thread. ``--configurations`` picks rows of :data:`CONFIGURATIONS`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import torch
from fields import old_local_reg
from gradients import peak_growth_mb, peak_mb_of

import local_reg

CONFIGURATIONS = {
    "torchdiffeq dopri5": {"backend": "torchdiffeq", "gradient": "adjoint"},
    "torchdiffeq rk4, step_size 0.005": {
        "backend": "torchdiffeq",
        "gradient": "adjoint",
        "method": "rk4",
        "options": {"step_size": 0.005},
    },
    "torchsde euler, adaptive": {"backend": "torchsde", "gradient": "adjoint"},
}
"""The main solves measured, each with its peer's adjoint (``odeint_adjoint``, ``sdeint_adjoint``),
whose forward solve keeps no graph (under ``"direct"`` the graph holds every stage anyway)."""


class Oscillating(torch.nn.Module):
    """The ODE's field."""

    def __init__(self) -> None:
        super().__init__()
        self.rate = torch.nn.Parameter(torch.tensor(-50.0, dtype=torch.float64))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.rate * (1 + torch.cos(40 * t)) * y


class OscillatingSDE(Oscillating):
    """The SDE: the ODE's field as its drift, the diffusion 0.1."""

    noise_type, sde_type = "diagonal", "ito"

    def f(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self(t, y)

    def g(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.full_like(y, 0.1)


def solve(package: Any, configuration: str, state: int, t1: float) -> torch.Tensor:
    """One eval-mode call of ``package``'s ``LocallyRegularized`` on a ``(state // 2, 2)`` state."""
    torch.manual_seed(0)
    y0 = torch.rand(state // 2, 2, dtype=torch.float64) + 0.5
    settings = CONFIGURATIONS[configuration]
    field = OscillatingSDE() if settings["backend"] == "torchsde" else Oscillating()
    model = package.LocallyRegularized(field, weight=1.0, **settings)
    return model.eval()(y0, torch.tensor([0.0, t1], dtype=torch.float64))


def measure_memory(spec: dict, old_folder: str) -> None:
    """Child process: print the peak growth (MB) of one call in ``spec``'s version and configuration."""
    torch.set_num_threads(1)
    package = old_local_reg(old_folder) if spec["version"] == "old" else local_reg
    peak = peak_growth_mb(
        lambda: solve(package, spec["configuration"], 64, spec["t1"]),
        lambda: solve(package, spec["configuration"], spec["state"], spec["t1"]),
    )
    print(json.dumps({"peak_mb": peak}))


def table(old_folder: str, state: int, t1: float, rounds: int, configurations: list[str]) -> None:
    torch.set_num_threads(1)
    versions = {"old": old_local_reg(old_folder), "new": local_reg}
    print(
        f"float64 state of {state} elements ({state * 8 / 2**20:.1f} MB), t in [0, {t1}], eval mode, "
        "1 thread, "
        f"{rounds} rounds"
    )
    print(
        "| configuration | peak, other version (MB) | peak, this checkout (MB) | time, other version (s) "
        "| time, this checkout (s) | time ratio | outputs |"
    )
    print("|---|---|---|---|---|---|---|")
    for configuration in configurations:
        peaks = {}
        for version in versions:
            spec = {"version": version, "configuration": configuration, "state": state, "t1": t1}
            peaks[version] = peak_mb_of(
                [sys.executable, __file__, "--old", old_folder, "--memory-of", json.dumps(spec)]
            )
        seconds: dict[str, list[float]] = {version: [] for version in versions}
        ratios, outputs = [], {}
        for round_ in range(rounds + 1):  # the first warms both versions up, untimed
            for version, package in list(versions.items())[:: 1 - 2 * (round_ % 2)]:
                start = time.process_time()
                outputs[version] = solve(package, configuration, state, t1)
                if round_:
                    seconds[version].append(time.process_time() - start)
            if round_:
                ratios.append(seconds["new"][-1] / seconds["old"][-1])
        same = "equal" if torch.equal(outputs["old"], outputs["new"]) else "differ"
        print(
            f"| {configuration} | {peaks['old']:.1f} | {peaks['new']:.1f} | "
            f"{statistics.median(seconds['old']):.2f} | {statistics.median(seconds['new']):.2f} | "
            f"{statistics.median(ratios):.2f}x | {same} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old", required=True, help="folder holding the package local_reg_old")
    parser.add_argument("--state", type=int, default=4_000_000, help="state elements (float64)")
    parser.add_argument("--t1", type=float, default=0.1, help="the span's end")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--configurations", nargs="+", choices=list(CONFIGURATIONS), default=list(CONFIGURATIONS)
    )
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)  # a child: what to measure
    args = parser.parse_args()
    if args.memory_of is not None:
        measure_memory(json.loads(args.memory_of), args.old)
    else:
        table(args.old, args.state, args.t1, args.rounds, args.configurations)


if __name__ == "__main__":
    main()
