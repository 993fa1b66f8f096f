"""``make demo``: train the digits neural ODE with and without local regularization and print the table.

Runs ``local-reg experiment digits --methods vanilla local-random --seeds 1 --quick --set
solver.rtol=1.4e-8 --set solver.atol=1.4e-8 --out results/demo`` (about two minutes on 2 CPU cores).
The tolerance is the paper's MNIST one: at the task's default 1e-6 the solve takes ~10 steps and
there is little to save (docs/results.md). Finished runs are kept in ``results/demo`` and skipped by
the next ``make demo``, which then only prints the table again.
"""

from __future__ import annotations

import sys

from .experiments.cli import main as cli_main

DEMO_ARGS = [
    "experiment",
    "digits",
    "--methods",
    "vanilla",
    "local-random",
    "--seeds",
    "1",
    "--quick",
    "--set",
    "solver.rtol=1.4e-8",
    "--set",
    "solver.atol=1.4e-8",
]


def main() -> int:
    return cli_main([*DEMO_ARGS, "--out", "results/demo"])


if __name__ == "__main__":
    sys.exit(main())
