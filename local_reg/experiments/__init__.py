"""Experiments: train neural ODEs with and without (local or global) regularization, record
the results as JSON lines and report them side by side (``local-reg experiment``, ``local-reg report``).

- :mod:`.tasks`: the task interface and registry (one module per task).
- :mod:`.methods`: the training methods (vanilla, local-*, global-*, steer, rnode,
  taynode).
- :mod:`.runner`: the training loop, checkpoints, resume and the results file.
- :mod:`.report`: the Markdown table and the plots.
- :mod:`.cli`: the command line.

They need the ``experiments`` extra (``pip install 'local_reg[experiments]'``); :func:`main`, the
``local-reg`` command, says so when it is missing.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence

EXTRA_MODULES = {
    "tqdm": "tqdm",
    "matplotlib": "matplotlib",
    "sklearn": "scikit-learn",
    "mlxtend": "mlxtend",
    "mnist1d": "mnist1d",
}
"""The modules the experiments import (progress bars, plots, the data sets), by their distributions
of the ``experiments`` extra."""


def missing_extras() -> list[str]:
    """The distributions of the ``experiments`` extra that are not installed."""
    return [dist for module, dist in EXTRA_MODULES.items() if importlib.util.find_spec(module) is None]


def main(argv: Sequence[str] | None = None) -> int:
    """The ``local-reg`` command: :func:`.cli.main`, or exit status 2 naming the extra to install
    when a distribution it needs is missing (rather than a traceback, or a run that stops when
    its data set's package is first imported)."""
    if sys.platform == "win32":  # fcntl, the results files' locks, is POSIX's
        print("local-reg: error: the experiments need Linux or macOS (on Windows, WSL)", file=sys.stderr)
        return 2
    missing = missing_extras()
    if missing:
        print(
            "local-reg: error: the experiments need the 'experiments' extra: "
            f"pip install 'local_reg[experiments]' (not installed: {', '.join(missing)})",
            file=sys.stderr,
        )
        return 2
    from .cli import main as cli_main

    return cli_main(argv)
