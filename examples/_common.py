"""What the example scripts share: the command-line options every one has and the choice of model
by ``--regularize``, and saving the plot. (Each script puts its own folder on ``sys.path`` to import
this.)"""

from __future__ import annotations

import argparse
import io
import math
import os
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from torch import nn

from local_reg import GloballyRegularized, LocallyRegularized, Regularized


def positive_int(text: str) -> int:
    """An ``argparse`` type: an integer of at least 1 (a size or a count)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """An ``argparse`` type: an integer of at least 0 (iterations: 0 measures the untrained model)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer of at least 0, got {text}")
    return value


def positive_float(text: str) -> float:
    """An ``argparse`` type: a finite number above 0 (a tolerance, a rate, a length of time)."""
    value = float(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """An ``argparse`` type: a finite number of at least 0 (a penalty weight)."""
    value = float(text)
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number of at least 0, got {text}")
    return value


def plot_path(text: str) -> str:
    """An ``argparse`` type: a file in an existing, writable folder, of a format matplotlib writes here (named
    by its extension, which matplotlib would otherwise add or refuse; a figure with text is saved in
    it to a buffer, so a format that needs an absent program, pgf's xelatex, is refused too), checked
    before training, not after."""
    path = Path(text)
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"the folder {str(path.parent)!r} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise argparse.ArgumentTypeError(f"the folder {str(path.parent)!r} is not writable")
    if path.is_dir() or text.endswith(("/", os.sep)):
        example = str(path / "plot.png")
        raise argparse.ArgumentTypeError(f"{text!r} is a folder: name a file in it, e.g. {example!r}")
    formats = Figure().canvas.get_supported_filetypes()
    extension = path.suffix.lstrip(".").lower()
    if extension not in formats:
        known = ", ".join("." + name for name in sorted(formats))
        given = path.suffix or "no extension"
        raise argparse.ArgumentTypeError(
            f"{text!r} must end in a format matplotlib writes ({known}), got {given!r}"
        )
    probe = Figure()
    probe.text(0.5, 0.5, "t")  # text, as every plot here has: pgf lays it out with xelatex
    try:
        probe.savefig(io.BytesIO(), format=extension)
    except Exception as error:  # whatever the format's own writer raises
        raise argparse.ArgumentTypeError(f"matplotlib cannot write {path.suffix} here: {error}") from None
    return text


def seed(text: str) -> int:
    """An ``argparse`` type: an integer ``torch.manual_seed`` takes."""
    value = int(text)
    if not -(2**63) <= value < 2**64:
        raise argparse.ArgumentTypeError(f"must be an integer from -2**63 to 2**64 - 1, got {text}")
    return value


def example_parser(description: str, *, iterations: int, quick: str) -> argparse.ArgumentParser:
    """``--regularize``, ``--weight``, ``--iterations`` and ``--quick`` (``quick`` says what it does);
    the script adds its own options."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--regularize", choices=("none", "local", "global"), default="local")
    parser.add_argument(
        "--weight", type=non_negative_float, default=None, help="penalty weight (default per regularizer)"
    )
    parser.add_argument("--iterations", type=non_negative_int, default=iterations)
    parser.add_argument("--quick", action="store_true", help=quick)
    return parser


def add_run_options(parser: argparse.ArgumentParser, *, lr: float, tol: float, out: str) -> None:
    """``--lr``, ``--rtol`` / ``--atol`` (both ``tol`` by default), ``--seed``, ``--threads``, ``--out``."""
    parser.add_argument("--lr", type=positive_float, default=lr)
    parser.add_argument("--rtol", type=positive_float, default=tol)
    parser.add_argument("--atol", type=positive_float, default=tol)
    parser.add_argument("--seed", type=seed, default=0)
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--out", type=plot_path, default=out, help="where to save the plot")


def make_model(
    func: nn.Module,
    regularize: str,
    weight: float | None,
    *,
    local_weight: float | None = None,
    global_weight: float = 1.0,
    **solve: Any,
) -> Regularized:
    """The three variants share one interface, ``model(y0, t)`` and ``model.reg_loss``; ``weight``
    (``None``: ``local_weight`` or ``global_weight``) weighs the penalty; a ``None`` local weight is
    ``LocallyRegularized``'s default, which tunes itself."""
    if regularize == "local":
        return LocallyRegularized(
            func, sampling="random", weight=local_weight if weight is None else weight, **solve
        )
    if regularize == "global":
        return GloballyRegularized(func, weight=global_weight if weight is None else weight, **solve)
    return Regularized(func, **solve)  # no penalty: reg_loss stays 0


def save_plot(fig: Figure, out: str) -> None:
    """Lay out ``fig``, write it to ``out`` (in the format its extension names, 100 dpi), close it
    and say where it went."""
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    print(f"plot saved to {out}")
