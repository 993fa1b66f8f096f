"""Argument checks shared by every public entry point: each names the argument it rejects."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from itertools import pairwise

from torch import Tensor

from ._integrate import SolveOptions
from .controller import PIController
from .tableaus import ButcherTableau


def check_choice(name: str, value: object, choices: Iterable[str]) -> str:
    """``value`` if it is one of ``choices``, else a ``ValueError`` that names ``name`` and lists them."""
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {list(choices)}")
    return value


def positive_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a positive float, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be positive and finite, got {value}")
    return float(value)


def positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def validate_times(t: Tensor | Sequence[float]) -> list[float]:
    """Output times as Python floats; ``t`` must be 1-D and strictly increasing or decreasing."""
    if isinstance(t, Tensor):
        if t.dim() != 1:
            raise ValueError(f"t must be a 1-D tensor of times, got shape {tuple(t.shape)}")
        times = [float(v) for v in t.detach().cpu().tolist()]
    elif isinstance(t, Sequence):
        times = [float(v) for v in t]
    else:
        raise TypeError(f"t must be a 1-D tensor or a sequence of floats, got {type(t).__name__}")
    if len(times) == 0:
        raise ValueError("t must hold at least one time")
    if not all(math.isfinite(v) for v in times):
        raise ValueError("t must be finite")
    diffs = [b - a for a, b in pairwise(times)]
    if not (all(d > 0 for d in diffs) or all(d < 0 for d in diffs)):
        raise ValueError("t must be strictly increasing or strictly decreasing")
    return times


def validate_state(y0: object) -> Tensor:
    if not isinstance(y0, Tensor):
        raise TypeError(f"y0 must be a torch.Tensor, got {type(y0).__name__}")
    if not y0.is_floating_point():
        raise TypeError(f"y0 must have a floating dtype (float32 or float64), got {y0.dtype}")
    return y0


def solve_options(
    rtol: float,
    atol: float,
    first_step: float | None,
    max_steps: int,
    step_size: float | None,
    controller: PIController | None,
    tableau: ButcherTableau | None = None,
) -> SolveOptions:
    """The checked :class:`SolveOptions` of one solve. A fixed-step ``tableau`` needs ``step_size``.

    ``rtol = 0`` is allowed (a pure absolute tolerance, as in torchdiffeq); ``atol`` must be positive
    so that the error scale ``atol + rtol * |y|`` never vanishes."""
    rtol = 0.0 if rtol == 0 and not isinstance(rtol, bool) else positive_float("rtol", rtol)
    atol = positive_float("atol", atol)
    if first_step is not None:
        first_step = positive_float("first_step", first_step)
    if step_size is not None:
        step_size = positive_float("step_size", step_size)
    elif tableau is not None and not tableau.adaptive:
        raise ValueError(f"method {tableau.name!r} is fixed-step: pass step_size")
    positive_int("max_steps", max_steps)
    if controller is not None and not isinstance(controller, PIController):
        raise TypeError(f"controller must be a PIController, got {type(controller).__name__}")
    return SolveOptions(
        rtol=rtol,
        atol=atol,
        first_step=first_step,
        max_steps=max_steps,
        step_size=step_size,
        controller=controller or PIController(),
        tableau=tableau,
    )
