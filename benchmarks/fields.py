"""Vector fields shared by the benchmarks."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch


def mlp(dim: int, width: int, activation: type[torch.nn.Module] = torch.nn.Tanh) -> torch.nn.Sequential:
    """``dim -> width -> width -> dim`` with ``activation`` (tanh by default) after each hidden layer."""
    return torch.nn.Sequential(
        torch.nn.Linear(dim, width),
        activation(),
        torch.nn.Linear(width, width),
        activation(),
        torch.nn.Linear(width, dim),
    )


class CallCounter(torch.nn.Module):
    """Wraps a vector field ``f(t, y)`` and counts its calls, independently of any solver (a module,
    so a wrapped module's parameters stay the counter's). ``graph_calls`` counts those made with
    autograd enabled (which build a graph to differentiate), ``calls`` all of them."""

    def __init__(self, field) -> None:
        super().__init__()
        self.field = field
        self.calls = 0
        self.graph_calls = 0

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.graph_calls += torch.is_grad_enabled()
        return self.field(t, y)


class CountingMLP(torch.nn.Module):
    """``f(t, y) = mlp(y)``, counting its calls independently of any solver.

    ``weight_scale`` multiplies the default-initialized weights: larger weights make the dynamics
    less trivial to integrate.
    """

    def __init__(self, dim: int, width: int, weight_scale: float = 1.0) -> None:
        super().__init__()
        self.net = mlp(dim, width)
        with torch.no_grad():
            for layer in self.net:
                if isinstance(layer, torch.nn.Linear):
                    layer.weight.mul_(weight_scale)
        self.calls = 0

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(y)


def device_argument(text: str) -> torch.device:
    """``--device``'s parser: a torch device this machine has (a script's ``.to(device)`` would end
    in a deep traceback far from the option)."""
    try:
        device = torch.device(text)
    except RuntimeError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: no CUDA device here (torch.cuda.is_available() is False)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(
            f"{text}: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    return device


def mlp_problem_parser(
    description: str, *, batch: int = 512, atol: float = 1e-8, device: bool = True
) -> argparse.ArgumentParser:
    """The command line of the MLP benchmarks: the field's ``--dim`` and ``--width``, ``--batch``,
    the span ``[0, --t1]``, ``--rtol``, ``--atol``, torch's ``--threads`` and, for a benchmark that
    times a GPU correctly (``device``), the ``--device``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--t1", type=float, default=5.0)
    parser.add_argument("--rtol", type=float, default=1e-6)
    parser.add_argument("--atol", type=float, default=atol)
    parser.add_argument("--threads", type=int, default=1)
    if device:
        parser.add_argument(
            "--device",
            type=device_argument,
            default="cpu",
            help="torch device of the field and states, e.g. cuda",
        )
    else:
        parser.set_defaults(device=torch.device("cpu"))
    return parser


def mlp_problem(args: argparse.Namespace) -> tuple[CountingMLP, torch.Tensor]:
    """The benchmark MLP (weights scaled by 2) and a batch of initial states, seeded (the same
    values on every device), on ``args.device``, with torch's threads set from ``args``."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    field, y0 = CountingMLP(args.dim, args.width, weight_scale=2.0), torch.randn(args.batch, args.dim)
    return field.to(args.device), y0.to(args.device)


def clock(device: str | torch.device, *, wall: bool = False) -> Callable[[], float]:
    """The benchmarks' clock on ``device``: the process's CPU time on a CPU (robust to other jobs on
    a shared machine; wall time with ``wall``), wall time after a synchronization on a GPU (whose
    kernels run outside the process's CPU time, asynchronously)."""
    device = torch.device(device)
    if device.type != "cuda":
        return time.perf_counter if wall else time.process_time

    def now() -> float:
        torch.cuda.synchronize(device)
        return time.perf_counter()

    return now


def old_local_reg(folder: str):
    """Another version of the package, copied to ``folder/local_reg_old`` (its imports are relative),
    e.g. for commit ``REV``::

        git worktree add /tmp/old REV && mkdir -p /tmp/oldpkg
        cp -r /tmp/old/local_reg /tmp/oldpkg/local_reg_old
    """
    package = Path(folder, "local_reg_old", "__init__.py")
    if not package.is_file():
        raise SystemExit(
            f"--old {folder}: no {package}; the folder must hold another version of local_reg copied "
            f"as local_reg_old (cp -r OTHER_CHECKOUT/local_reg {package.parent})"
        )
    sys.path.insert(0, folder)
    return importlib.import_module("local_reg_old")
