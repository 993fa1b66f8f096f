"""What the example scripts share: the command-line options every one has and the choice of model
by ``--regularize``, and saving the plot. (Each script puts its own folder on ``sys.path`` to import
this.)"""

from __future__ import annotations

import argparse
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from torch import nn

from local_reg import GloballyRegularized, LocallyRegularized, Regularized


def example_parser(description: str, *, iterations: int, quick: str) -> argparse.ArgumentParser:
    """``--regularize``, ``--weight``, ``--iterations`` and ``--quick`` (``quick`` says what it does);
    the script adds its own options."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--regularize", choices=("none", "local", "global"), default="local")
    parser.add_argument("--weight", type=float, default=None, help="penalty weight (default per regularizer)")
    parser.add_argument("--iterations", type=int, default=iterations)
    parser.add_argument("--quick", action="store_true", help=quick)
    return parser


def add_run_options(parser: argparse.ArgumentParser, *, lr: float, tol: float, out: str) -> None:
    """``--lr``, ``--rtol`` / ``--atol`` (both ``tol`` by default), ``--seed``, ``--threads``, ``--out``."""
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--rtol", type=float, default=tol)
    parser.add_argument("--atol", type=float, default=tol)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=out, help="where to save the plot")


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
    """Lay out ``fig``, write it to ``out`` (PNG, 100 dpi), close it and say where it went."""
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    print(f"plot saved to {out}")
