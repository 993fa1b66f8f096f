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

import sys

from .experiments.cli import main as cli_main

ONE_SEED = ["--methods", "vanilla", "local-random", "--seeds", "1", "--quick"]
DEFAULT_WEIGHT = ["--set", "weights.local-random=default"]
PAPER_TOLERANCE = ["--set", "solver.rtol=1.4e-8", "--set", "solver.atol=1.4e-8"]
DEMOS = [
    ("tabular", DEFAULT_WEIGHT, "results/demo-default-tabular"),
    ("nsde_digits", DEFAULT_WEIGHT, "results/demo-default-nsde"),
    ("digits", PAPER_TOLERANCE, "results/demo"),
]


def main() -> int:
    for task, settings, out in DEMOS:
        code = cli_main(["experiment", task, *ONE_SEED, *settings, "--out", out])
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
