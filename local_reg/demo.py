"""``make demo``: vanilla against local regularization, three small tables (about one minute on 2 CPU
cores; one seed each, so the numbers are single runs, not the 3-seed means of docs/results.md).

1. **At the library's defaults** (``LocallyRegularized(func)``: the kinetic penalty with the
   self-tuning weight, the spec ``weights.local-random=default``) on a tabular classifier (breast
   cancer) and the neural SDE on sklearn digits::

       local-reg experiment tabular --methods vanilla local-random --seeds 1 --quick \\
           --set weights.local-random=default --out results/demo-default-tabular
       local-reg experiment nsde_digits --methods vanilla local-random --seeds 1 --quick \\
           --set weights.local-random=default --out results/demo-default-nsde

2. **The paper's procedure** (its weights and probe) on the digits neural ODE at its MNIST tolerance,
   1.4e-8 (at the task's default 1e-6 the solve takes ~10 steps and there is little to save)::

       local-reg experiment digits --methods vanilla local-random --seeds 1 --quick \\
           --set solver.rtol=1.4e-8 --set solver.atol=1.4e-8 --out results/demo

Finished runs are kept in the ``results/demo*`` folders and skipped by the next ``make demo``,
which then only prints the tables again.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .experiments import main as cli_main

ONE_SEED = ["--methods", "vanilla", "local-random", "--seeds", "1", "--quick"]
DEFAULT_WEIGHT = ["--set", "weights.local-random=default"]
PAPER_TOLERANCE = ["--set", "solver.rtol=1.4e-8", "--set", "solver.atol=1.4e-8"]
DEMOS = [
    ("tabular", DEFAULT_WEIGHT, "demo-default-tabular"),
    ("nsde_digits", DEFAULT_WEIGHT, "demo-default-nsde"),
    ("digits", PAPER_TOLERANCE, "demo"),
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m local_reg.demo",
        description="Vanilla against local regularization: three small tables, about one minute "
        "(the commands: the module's docstring). Finished runs are kept and skipped next time.",
    )
    parser.add_argument("--out", default="results", help="the folder of the demo* results (default results/)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, or argparse has printed the reason
        return int(exit_.code or 0)
    for task, settings, folder in DEMOS:
        code = cli_main(["experiment", task, *ONE_SEED, *settings, "--out", f"{args.out}/{folder}"])
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
