"""The entry point: ``odeint(func, y0, t)``."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from itertools import pairwise

import torch
from torch import Tensor

from ._integrate import SolveOptions, StepPenalty
from .controller import PIController
from .gradients import (
    GRADIENT_METHODS,
    BacksolveAdjoint,
    CheckpointGradient,
    GradientMethod,
    SymplecticGradient,
    check_step_penalty_support,
    resolve_adjoint_params,
    solve_direct,
    solve_without_graph,
)
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


ADJOINT_OPTION_KEYS = ("norm", "step_size", "first_step", "max_steps")


def validate_gradient(gradient: object) -> str:
    if not isinstance(gradient, str):
        raise TypeError(f"gradient must be a str, one of {GRADIENT_METHODS}, got {type(gradient).__name__}")
    if gradient not in GRADIENT_METHODS:
        raise ValueError(f"unknown gradient {gradient!r}; expected one of {GRADIENT_METHODS}")
    return gradient


def make_adjoint(
    options: SolveOptions,
    adjoint_method: str | ButcherTableau | None,
    adjoint_rtol: float | None,
    adjoint_atol: float | None,
    adjoint_options: dict | None,
) -> BacksolveAdjoint:
    """The backsolve adjoint's solver: the forward's method, tolerances and step options unless
    overridden (``adjoint_options`` keys: ``norm``, ``step_size``, ``first_step``, ``max_steps``)."""
    if adjoint_options is None:
        adjoint_options = {}
    if not isinstance(adjoint_options, dict):
        raise TypeError(f"adjoint_options must be a dict, got {type(adjoint_options).__name__}")
    unknown = sorted(set(adjoint_options) - set(ADJOINT_OPTION_KEYS))
    if unknown:
        raise ValueError(f"adjoint_options: unknown keys {unknown}; expected some of {ADJOINT_OPTION_KEYS}")
    try:
        tableau = options.tableau if adjoint_method is None else get_tableau(adjoint_method)
    except (TypeError, ValueError) as error:
        raise type(error)(f"adjoint_method: {error}") from None
    rtol = options.rtol if adjoint_rtol is None else _positive_float("adjoint_rtol", adjoint_rtol)
    atol = options.atol if adjoint_atol is None else _positive_float("adjoint_atol", adjoint_atol)
    step_size = adjoint_options.get("step_size", options.step_size)
    if step_size is not None:
        step_size = _positive_float("adjoint_options['step_size']", step_size)
    elif not tableau.adaptive:
        raise ValueError(
            f"adjoint_method {tableau.name!r} is fixed-step: pass adjoint_options={{'step_size': ...}}"
        )
    first_step = adjoint_options.get("first_step")
    if first_step is not None:
        first_step = _positive_float("adjoint_options['first_step']", first_step)
    max_steps = adjoint_options.get("max_steps", options.max_steps)
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"adjoint_options['max_steps'] must be a positive int, got {max_steps!r}")
    adjoint_solve_options = SolveOptions(
        tableau=tableau,
        rtol=rtol,
        atol=atol,
        first_step=first_step,
        max_steps=max_steps,
        step_size=step_size,
        controller=options.controller,
    )
    return BacksolveAdjoint(adjoint_solve_options, norm=adjoint_options.get("norm", "default"))


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
    gradient: str = "direct",
    adjoint_params: Iterable[Tensor] | None = None,
    adjoint_rtol: float | None = None,
    adjoint_atol: float | None = None,
    adjoint_method: str | ButcherTableau | None = None,
    adjoint_options: dict | None = None,
    checkpoints: int | None = None,
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
        gradient: how ``ys`` are differentiated (see docs/gradients.md), one of
            ``"direct"`` (backpropagation through every step; exact, most memory),
            ``"checkpoint"`` (re-run each accepted step with a graph in the backward pass; exact),
            ``"symplectic"`` (the symplectic adjoint of Matsubara et al. 2021; exact, least memory
            of the exact methods) and ``"adjoint"`` (the continuous backsolve adjoint of Chen et al.
            2018; approximate, constant memory). All four differentiate w.r.t. ``y0`` and
            ``adjoint_params``; none w.r.t. ``t``.
        adjoint_params: the tensors the non-direct methods return gradients for, besides ``y0``;
            default ``func.parameters()`` when ``func`` is a ``torch.nn.Module``. A plain function
            needs it (``()`` if it has no parameters). Ignored by ``"direct"``, where autograd finds
            every tensor ``func`` uses.
        adjoint_rtol, adjoint_atol, adjoint_method: the backward solve of ``"adjoint"``; default
            the forward's.
        adjoint_options: ``"adjoint"`` only: ``{"norm": "seminorm"}`` leaves the parameter
            gradient out of the backward solve's error norm (Kidger et al. 2021); ``step_size``
            (default the forward's), ``first_step`` and ``max_steps`` of the backward solve.
        checkpoints: ``"checkpoint"`` and ``"symplectic"`` only: keep at most this many step
            states in the forward pass (evenly spaced) instead of all ``N``; the backward pass
            re-computes the others, segment by segment, for one extra forward solve's evaluations.
            The gradient is unchanged. About ``checkpoints + 2 N / checkpoints`` states are alive at
            once, least near ``checkpoints = sqrt(2 N)``. Default: keep every state.
        record_states: keep the state at the start of every accepted step in ``solution.steps``.
        step_penalty: ``penalty(step_result, dt) -> 0-dim tensor`` evaluated on every accepted
            step and returned, differentiable, as ``solution.penalties`` (global regularization).
            Needs a per-step graph: only with ``gradient="direct"`` or ``"checkpoint"``.

    Every output time is the end of an accepted step: the adaptive step that would pass an output
    time is shortened to land on it, and the controller's proposal is resumed afterwards.
    ``solution.stats.nfe_backward`` counts the calls of ``func`` made by the backward pass once it
    has run.

    Raises:
        ValueError, TypeError: bad arguments, naming the argument.
        SolverError: non-finite state or derivative, step size underflow or ``max_steps`` exceeded.
    """
    y0 = validate_state(y0)
    times = validate_times(t)
    options = make_options(method, rtol, atol, first_step, max_steps, step_size, controller)
    gradient = validate_gradient(gradient)
    adjoint_only = {
        "adjoint_rtol": adjoint_rtol,
        "adjoint_atol": adjoint_atol,
        "adjoint_method": adjoint_method,
        "adjoint_options": adjoint_options,
    }
    if gradient != "adjoint":
        given = [name for name, value in adjoint_only.items() if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)} only apply to gradient='adjoint', not {gradient!r}")
    if checkpoints is not None:
        if gradient not in ("checkpoint", "symplectic"):
            raise ValueError(
                f"checkpoints only applies to gradient='checkpoint' or 'symplectic', not {gradient!r}"
            )
        if isinstance(checkpoints, bool) or not isinstance(checkpoints, int):
            raise TypeError(f"checkpoints must be an int or None, got {type(checkpoints).__name__}")
        if checkpoints < 1:
            raise ValueError(f"checkpoints must be at least 1, got {checkpoints}")

    if gradient == "direct":
        f0 = evaluate_first(func, times[0], y0)
        ys, stats, steps, penalties = solve_direct(
            func, y0, times, options, f0, record_states=record_states, step_penalty=step_penalty
        )
    else:
        gradient_method: GradientMethod
        if gradient == "adjoint":
            gradient_method = make_adjoint(
                options, adjoint_method, adjoint_rtol, adjoint_atol, adjoint_options
            )
        elif gradient == "checkpoint":
            gradient_method = CheckpointGradient(checkpoints)
        else:
            gradient_method = SymplecticGradient(checkpoints)
        check_step_penalty_support(gradient_method, step_penalty)
        params = resolve_adjoint_params(func, adjoint_params, gradient)
        with torch.no_grad():
            f0 = evaluate_first(func, times[0], y0)
        ys, stats, steps, penalties = solve_without_graph(
            gradient_method,
            func,
            y0,
            times,
            options,
            params,
            f0,
            record_states=record_states,
            step_penalty=step_penalty,
        )
    stats.nfe += 1
    ts = torch.tensor(times, dtype=y0.dtype, device=y0.device)
    return Solution(ts=ts, ys=ys, stats=stats, steps=steps, penalties=penalties)
