"""The entry point: ``odeint(func, y0, t)``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import Tensor

from ._integrate import SolveOptions, StepPenalty, integrate
from .controller import PIController
from .solution import Solution
from .step import VectorField, time_tensor
from .tableaus import ButcherTableau, get_tableau

DEFAULT_MAX_STEPS = 10_000


def _positive_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a positive float, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be positive and finite, got {value}")
    return float(value)


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


def evaluate_first(func: VectorField, t0: float, y0: Tensor) -> Tensor:
    """Evaluate ``func(t0, y0)`` once and check it returns a tensor shaped and typed like ``y0``."""
    f0 = func(time_tensor(t0, y0), y0)
    if not isinstance(f0, Tensor):
        raise TypeError(f"func must return a torch.Tensor, got {type(f0).__name__}")
    if f0.shape != y0.shape:
        raise ValueError(f"func returned shape {tuple(f0.shape)}, expected the shape of y0 {tuple(y0.shape)}")
    if f0.dtype != y0.dtype:
        raise TypeError(f"func returned dtype {f0.dtype}, expected the dtype of y0 {y0.dtype}")
    return f0


def make_options(
    method: str | ButcherTableau,
    rtol: float,
    atol: float,
    first_step: float | None,
    max_steps: int,
    step_size: float | None,
    controller: PIController | None = None,
) -> SolveOptions:
    tableau = get_tableau(method)
    rtol = _positive_float("rtol", rtol)
    atol = _positive_float("atol", atol)
    if first_step is not None:
        first_step = _positive_float("first_step", first_step)
    if step_size is not None:
        step_size = _positive_float("step_size", step_size)
    elif not tableau.adaptive:
        raise ValueError(f"method {tableau.name!r} is fixed-step: pass step_size")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
    return SolveOptions(
        tableau=tableau,
        rtol=rtol,
        atol=atol,
        first_step=first_step,
        max_steps=max_steps,
        step_size=step_size,
        controller=controller or PIController(),
    )


def odeint(
    func: VectorField,
    y0: Tensor,
    t: Tensor | Sequence[float],
    *,
    method: str | ButcherTableau = "tsit5",
    rtol: float = 1e-6,
    atol: float = 1e-8,
    first_step: float | None = None,
    max_steps: int = DEFAULT_MAX_STEPS,
    step_size: float | None = None,
    controller: PIController | None = None,
    record_states: bool = False,
    step_penalty: StepPenalty | None = None,
) -> Solution:
    """Solve ``dy/dt = func(t, y)`` from ``y(t[0]) = y0`` and return the solution at every ``t``.

    Args:
        func: the vector field, called as ``func(t, y)`` with ``t`` a 0-dim tensor; it must return
            a tensor of the shape and dtype of ``y``.
        y0: initial state, any shape (a batch is one state: one step size and one error norm for
            all of it, as in torchdiffeq), float32 or float64.
        t: output times, 1-D, strictly increasing or decreasing (backward integration).
        method: a name from :data:`local_reg.TABLEAUS` or a :class:`ButcherTableau`.
        rtol, atol: tolerances of the error estimate
            ``EEst = rms(err / (atol + rtol * max(|y0|, |y1|)))``; a step is accepted iff ``EEst <= 1``.
        first_step: initial step size; by default Hairer's heuristic picks it.
        max_steps: attempted steps (accepted + rejected) before a :class:`SolverError`.
        step_size: take fixed steps of (at most) this size instead of adaptive ones; required for
            ``euler``, ``midpoint`` and ``rk4``. Each interval between output times is divided into
            equal steps no longer than ``step_size``.
        controller: step-size controller (default :class:`PIController`).
        record_states: keep the state at the start of every accepted step in ``solution.steps``.
        step_penalty: ``penalty(step_result, dt) -> 0-dim tensor`` evaluated on every accepted
            step and returned, differentiable, as ``solution.penalties`` (global regularization).

    Every output time is the end of an accepted step: the adaptive step that would pass an output
    time is shortened to land on it, and the controller's proposal is resumed afterwards.

    Raises:
        ValueError, TypeError: bad arguments, naming the argument.
        SolverError: non-finite state or derivative, step size underflow or ``max_steps`` exceeded.
    """
    y0 = validate_state(y0)
    times = validate_times(t)
    options = make_options(method, rtol, atol, first_step, max_steps, step_size, controller)
    f0 = evaluate_first(func, times[0], y0)
    outputs, stats, steps, penalties = integrate(
        func, y0, times, options, record_states=record_states, f0=f0, step_penalty=step_penalty
    )
    stats.nfe += 1
    ts = torch.tensor(times, dtype=y0.dtype, device=y0.device)
    return Solution(
        ts=ts,
        ys=torch.stack(outputs),
        stats=stats,
        steps=steps,
        penalties=torch.stack(penalties) if step_penalty is not None and penalties else None,
    )
