"""The adaptive (and fixed-step) time-stepping loop shared by every gradient method."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ._errors import SolverError
from .controller import PIController
from .solution import Stats, Steps
from .step import StepResult, VectorField, initial_step_size, rms_norm, step, time_tensor
from .tableaus import ButcherTableau

StepPenalty = Callable[[StepResult, float], Tensor]
"""``penalty(result, dt) -> 0-dim tensor`` evaluated on every accepted step (global regularization)."""

# Steps that would end within this fraction of the next output time land on it instead, so that no
# sliver of a step is left over.
_LANDING_SLACK = 0.01


def fixed_step_size(t: float, t_target: float, step_size: float) -> float:
    """The size of the equal steps, none longer than ``step_size``, that cover ``[t, t_target]``."""
    n_substeps = max(1, math.ceil(abs(t_target - t) / step_size - 1e-9))
    return abs(t_target - t) / n_substeps


def next_step_size(
    t: float, t_target: float, dt_abs: float, n_steps: int, max_steps: int
) -> tuple[float, bool]:
    """``(size, lands)`` of the next attempted step from ``t`` towards the output time ``t_target``:
    the proposed ``dt_abs``, or exactly what remains (``lands``) if that is within the landing slack.

    Raises :class:`SolverError` if ``max_steps`` attempts were made or the step underflows.
    """
    if n_steps >= max_steps:
        raise SolverError(f"max_steps={max_steps} exceeded", t=t, n_steps=n_steps)
    remaining = abs(t_target - t)
    lands = dt_abs * (1.0 + _LANDING_SLACK) >= remaining
    dt_used = remaining if lands else dt_abs
    if dt_used <= 4 * math.ulp(max(abs(t), 1.0)):
        raise SolverError(f"step size underflow (dt={dt_used:.3e})", t=t, n_steps=n_steps)
    return dt_used, lands


@dataclass
class SolveOptions:
    """Validated options of one solve (see :func:`local_reg.odeint`)."""

    tableau: ButcherTableau
    rtol: float
    atol: float
    first_step: float | None
    max_steps: int
    step_size: float | None
    controller: PIController = field(default_factory=PIController)
    norm: Callable[[Tensor], Tensor] = rms_norm
    """Norm of the scaled error (and of the initial-step heuristic): RMS over the whole state by
    default; the backsolve adjoint's seminorm leaves out the parameter-gradient components."""


@dataclass
class StepLog:
    t: list[float] = field(default_factory=list)
    dt: list[float] = field(default_factory=list)
    error_estimate: list[float] = field(default_factory=list)
    stiffness_estimate: list[float] = field(default_factory=list)
    states: list[Tensor] | None = None

    def to_steps(self, has_stiffness: bool) -> Steps:
        def as_tensor(values: list[float]) -> Tensor:
            return torch.tensor(values, dtype=torch.float64)

        return Steps(
            t=as_tensor(self.t),
            dt=as_tensor(self.dt),
            error_estimate=as_tensor(self.error_estimate),
            stiffness_estimate=as_tensor(self.stiffness_estimate) if has_stiffness else None,
            state_list=self.states,
        )


def _check_finite(y1: Tensor, error_estimate: float | None, t: float, n_steps: int) -> None:
    finite = error_estimate is None or math.isfinite(error_estimate)
    if not (finite and bool(torch.isfinite(y1).all())):
        raise SolverError("non-finite state or derivative", t=t, n_steps=n_steps)


def integrate(
    func: VectorField,
    y0: Tensor,
    times: list[float],
    options: SolveOptions,
    *,
    record_states: bool = False,
    f0: Tensor | None = None,
    step_penalty: StepPenalty | None = None,
    keep_state: Callable[[Tensor], None] | None = None,
) -> tuple[list[Tensor], Stats, Steps, list[Tensor]]:
    """Integrate from ``times[0]`` through every later time, landing exactly on each.

    Runs under whatever autograd mode the caller set. Returns the states at ``times``, the
    statistics, the accepted-step record and ``step_penalty(result, dt)`` of every accepted step
    (an empty list without ``step_penalty``). ``f0 = func(times[0], y0)`` may be passed if already
    evaluated (it is then not counted here). ``keep_state``, if given, is called with the state at
    the start of every accepted step (a gradient method's own record, apart from ``record_states``).
    """
    tableau = options.tableau
    stats = Stats()
    log = StepLog(states=[] if record_states else None)
    direction = 1.0 if len(times) < 2 or times[-1] > times[0] else -1.0
    t = times[0]
    y = y0
    if f0 is None:
        f0 = func(time_tensor(t, y0), y0)
        stats.nfe += 1
    if not bool(torch.isfinite(f0).all()):
        raise SolverError("non-finite derivative", t=t, n_steps=0)
    k1: Tensor | None = f0

    adaptive = options.step_size is None
    if adaptive:
        if options.first_step is not None:
            dt_abs = abs(options.first_step)
        else:
            dt_abs, extra_nfe = initial_step_size(
                func, t, y0, f0, tableau.order, options.rtol, options.atol, direction, norm=options.norm
            )
            stats.nfe += extra_nfe
    previous_error = 1.0
    after_rejection = False
    outputs = [y0]
    penalties: list[Tensor] = []

    for t_target in times[1:]:
        if not adaptive:
            dt_abs = fixed_step_size(t, t_target, options.step_size)
        while direction * (t_target - t) > 0:
            dt_used, lands = next_step_size(t, t_target, dt_abs, stats.n_steps, options.max_steps)
            dt = direction * dt_used

            result = step(
                func, t, y, dt, tableau, rtol=options.rtol, atol=options.atol, k1=k1, norm=options.norm
            )
            stats.nfe += result.nfe
            stats.n_steps += 1
            error_estimate = None if result.error_estimate is None else float(result.error_estimate.detach())
            _check_finite(result.y1, error_estimate, t, stats.n_steps)

            if not adaptive or error_estimate <= 1.0:
                stats.n_accepted += 1
                log.t.append(t)
                log.dt.append((t_target - t) if lands else dt)
                log.error_estimate.append(math.nan if error_estimate is None else error_estimate)
                if result.stiffness_estimate is not None:
                    log.stiffness_estimate.append(float(result.stiffness_estimate.detach()))
                if log.states is not None:
                    log.states.append(y.detach())
                if keep_state is not None:
                    keep_state(y.detach())
                if step_penalty is not None:
                    penalties.append(step_penalty(result, dt))
                t = t_target if lands else t + dt
                y = result.y1
                k1 = result.stages[-1] if tableau.fsal else None
                if adaptive:
                    factor = options.controller.accept_factor(
                        error_estimate, previous_error, tableau.order, after_rejection
                    )
                    # Landing on an output time shortens a step for reasons other than accuracy:
                    # keep the step the controller wanted before that.
                    dt_abs = max(dt_used * factor, dt_abs) if lands else dt_used * factor
                    previous_error = max(error_estimate, 1e-4)
                    after_rejection = False
            else:
                stats.n_rejected += 1
                dt_abs = dt_used * options.controller.reject_factor(error_estimate, tableau.order)
                after_rejection = True
        outputs.append(y)
    return outputs, stats, log.to_steps(tableau.stiffness_stages is not None), penalties
