"""``make demo``: train the digits neural ODE with and without local regularization and print the table.

Runs ``local-reg experiment digits --methods vanilla local-random --seeds 1 --quick --out
results/demo`` (a few minutes on 2 CPU cores). Finished runs are kept in ``results/demo`` and skipped
by the next ``make demo``, which then only prints the table again.
"""

from __future__ import annotations

import sys

from .experiments.cli import main as cli_main

DEMO_ARGS = ["experiment", "digits", "--methods", "vanilla", "local-random", "--seeds", "1", "--quick"]


def main() -> int:
    return cli_main([*DEMO_ARGS, "--out", "results/demo"])


if __name__ == "__main__":
    sys.exit(main())
