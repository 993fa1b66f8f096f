"""Why a solve failed, in words: the :class:`SolverError` of the loop with what the step record
says about it (a stiffness hint after ``max_steps``, steps held at ``max_step``, a state at the edge
of its dtype's range, the overflow behind a step-size underflow)."""

from __future__ import annotations

import statistics
from typing import Any, cast

import torch

from ._errors import STEP_LIMIT_REACHED, STEP_SIZE_UNDERFLOW, TRIAL_STEPS_NON_FINITE, SolverError
from .tableaus import TABLEAUS, ButcherTableau

STIFF_RATIO = 0.8
"""``|dt| * rho / stability_size`` at or above this over the last accepted steps means the step was
held at the edge of the explicit method's stability region (Hairer--Wanner II, IV.2: a
stability-limited step keeps ``|dt| * rho`` near the boundary, about 1 on this scale, while
accuracy would allow much longer steps; Hairer's DOPRI5 tests ``h * rho > 3.25``, 0.98 of its
3.3). Measured: 0.89--1.03 on stiff problems (van der Pol at mu = 1000, Robertson, with tsit5,
dopri5 and dopri8), 0.51--0.60 on accuracy-limited steps of a fast oscillator (``rho`` measures an
eigenvalue on the imaginary axis against the real axis' stability size)."""
RECENT_STEPS = 20
_MODEL_MAX_STEPS = "a regularized model's options={'max_steps': ...}"
RAISE_MAX_STEPS = f"raise max_steps ({_MODEL_MAX_STEPS}; options['max_num_steps'] in local_reg.compat)"
SETTINGS_HINT = f"({RAISE_MAX_STEPS}, or loosen rtol/atol)"
"""What a ``max_steps`` failure suggests when the problem does not look stiff."""
UNJUDGED = (
    "; {method} has no stiffness estimate to tell whether the problem is stiff, where a looser "
    "tolerance does not help ({judging} have one, and say so)"
)
"""What a ``max_steps`` failure adds with a method that cannot tell whether the problem is stiff
(``judging``: the tableaus that can, :func:`judges_stiffness`)."""
RAISE_SDE_MAX_STEPS = f"raise max_steps ({_MODEL_MAX_STEPS})"
SDE_HINT = (
    f"({RAISE_SDE_MAX_STEPS}, or loosen rtol/atol; "
    "sdeint's methods have no stiffness estimate to tell whether the drift is stiff, where a "
    "looser tolerance does not help)"
)
"""What a ``max_steps`` failure of an SDE solve suggests (``compat.sdeint`` sets no step limit)."""
NEAR_OVERFLOW = 0.01
"""A state whose largest magnitude is at least this fraction of its dtype's largest finite value
is at the edge of the range: the steps shrink to keep it finite, and no tolerance helps."""


def judges_stiffness(tableau: ButcherTableau) -> bool:
    """Whether a max_steps failure of ``tableau`` can tell a stiff problem: it records a stiffness
    estimate (``stiffness_stages``) and has a ``stability_size`` to measure the steps against."""
    return tableau.stiffness_stages is not None and tableau.stability_size is not None


def _judging_tableaus() -> str:
    """The registered tableaus that judge stiffness, in words: ``tsit5, dopri5 and dopri8``."""
    names = [name for name, tableau in TABLEAUS.items() if judges_stiffness(tableau)]
    return ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else "".join(names)


def stiffness_ratio(log: Any, stability_size: float | None) -> float | None:
    """Median of ``|dt| * rho / stability_size`` over the last accepted steps, or ``None`` without a
    stiffness estimate."""
    if stability_size is None or not log.stiffness_estimate:
        return None
    recent = list(zip(log.dt, log.stiffness_estimate, strict=True))[-RECENT_STEPS:]
    return statistics.median(abs(dt) * float(rho) / stability_size for dt, rho in recent)


def _near_overflow(state: torch.Tensor) -> str | None:
    """Why the steps shrank if ``state`` is at the edge of its dtype's range, else ``None``."""
    if not state.numel():
        return None
    largest = torch.finfo(state.dtype).max
    magnitude = float(torch.linalg.vector_norm(state.detach(), ord=float("inf")))
    if not NEAR_OVERFLOW * largest <= magnitude <= largest:
        return None
    wider = "" if state.dtype == torch.float64 else "; float64 reaches further"
    return (
        f" (|y| = {magnitude:.3g}, near the largest {state.dtype} value {largest:.3g}: the solution "
        f"overflows its dtype here, and the steps shrink to keep it finite{wider})"
    )


BLOW_UP = 1e3
"""A state whose largest magnitude is at least this many times ``max(|y0|, 1)`` where the step size
underflows has likely met a singularity, of the solution (a finite-time blow-up: ``y' = y**2``
from ``y0 = 1`` near ``t = 1``) or of the field (a derivative unbounded there, the state large but
finite): the steps shrink with the distance to it whatever the tolerance."""


def _blow_up(state: torch.Tensor | None, start: torch.Tensor | None) -> str | None:
    """Why the step size underflowed if the state grew :data:`BLOW_UP`-fold from ``start``, else
    ``None``."""
    if state is None or start is None or not state.numel() or not start.numel():
        return None
    initial = float(torch.linalg.vector_norm(start.detach(), ord=float("inf")))
    magnitude = float(torch.linalg.vector_norm(state.detach(), ord=float("inf")))
    if not magnitude >= BLOW_UP * max(initial, 1.0):
        return None
    return (
        f" (|y| grew from {initial:.3g} at t0 to {magnitude:.3g} here: the solution or the field is likely "
        "singular near this t, as in a finite-time blow-up, which no tolerance or step limit gets past)"
    )


def _held_at_max_step(log: Any, max_step: float | None) -> bool:
    """Whether the last accepted steps were as long as ``controller.max_step`` let them be."""
    recent = [abs(dt) for dt in log.dt[-RECENT_STEPS:]]
    return max_step is not None and bool(recent) and statistics.median(recent) >= 0.99 * max_step


def explain_failure(
    error: SolverError,
    log: Any,
    options: Any,
    non_finite: str | None,
    state: torch.Tensor | None = None,
    start: torch.Tensor | None = None,
) -> SolverError:
    """``error`` of :func:`local_reg._integrate.next_step_size`, its reason completed.

    ``non_finite``: the step was shrinking away from non-finite trial steps (the stepper's
    ``failure`` text; set by one, cleared by a finite rejection or a step that grows), so the step
    size underflowed while shrinking away from an overflow. ``state``: the state where the solve
    stopped, whose dtype's precision an ``rtol`` below it cannot reach (the likely cause then) and
    whose range it may have reached. ``start``: the initial state, against which a step-size
    underflow at a state grown many times over is a singularity of the solution or the field (not a
    tolerance below the dtype's resolution, which would have shrunk the steps anywhere).
    """
    reason = error.reason
    if reason.startswith(STEP_SIZE_UNDERFLOW) and non_finite is None:
        blow_up = _blow_up(state, start)
        if blow_up is not None and _near_overflow(cast(torch.Tensor, state)) is None:
            return SolverError(reason + blow_up, t=error.t, n_steps=error.n_steps)
    tableau = getattr(options, "tableau", None)
    adaptive = tableau is None or tableau.adaptive
    # compat.sdeint sets no step limit: an SDE's advice names none of compat's.
    raise_limit = RAISE_MAX_STEPS if tableau is not None else RAISE_SDE_MAX_STEPS
    rtol = getattr(options, "rtol", None)
    if isinstance(rtol, torch.Tensor):  # per-element: the tightest decides
        rtol = float(rtol.min()) if rtol.numel() else None
    dtype = None if state is None else state.dtype
    eps = None if dtype is None else torch.finfo(dtype).eps
    # Below the dtype's epsilon no step can meet rtol (scipy's solve_ivp raises an rtol below
    # 100 eps to that, with a warning).
    # A step limit reached with rtol just below eps is no sign of rounding (the steps need not be
    # short): a quarter of eps, where they are, before it is named as the cause.
    limited = reason.startswith(STEP_LIMIT_REACHED)
    if adaptive and eps is not None and non_finite is None and rtol and rtol < (eps / 4 if limited else eps):
        wider = "" if dtype == torch.float64 else " or solve in float64"
        # A step limit may be reached before the steps shrink that far: the limit may be the cause.
        limit = f"{raise_limit}; " if limited else ""
        cost = "the steps stay short" if limit else "the steps shrink until they fail"
        reason += (
            f" ({limit}rtol={rtol:g} is below what {dtype} resolves, eps = {eps:.2g}: the error estimate "
            f"stays at its rounding, so {cost}; loosen rtol{wider})"
        )
        return SolverError(reason, t=error.t, n_steps=error.n_steps)
    overflow = None if state is None else _near_overflow(state)
    if limited and overflow is not None:
        reason += overflow
    elif limited:
        if not adaptive:
            # A fixed-step solve has no tolerance to loosen (an event solve's count is open-ended).
            reason += f" ({RAISE_MAX_STEPS}, or a longer step_size)"
            return SolverError(reason, t=error.t, n_steps=error.n_steps)
        max_step = getattr(getattr(options, "controller", None), "max_step", None)
        if _held_at_max_step(log, max_step):
            reason += (
                f" (the last accepted steps were held at controller.max_step={max_step:g}: "
                f"{raise_limit}, or a longer max_step)"
            )
            return SolverError(reason, t=error.t, n_steps=error.n_steps)
        if tableau is None:
            reason += f" {SDE_HINT}"
            return SolverError(reason, t=error.t, n_steps=error.n_steps)
        ratio = stiffness_ratio(log, tableau.stability_size)
        if ratio is not None and ratio >= STIFF_RATIO:
            reason += (
                f"; the problem looks stiff: |dt| * rho / stability_size = {ratio:.2f} over the last "
                "accepted steps, so the explicit method's step is limited by stability, not accuracy "
                f"({RAISE_MAX_STEPS}, or reduce the stiffness, e.g. by training with "
                "GloballyRegularized(func, regularizer='stiffness'))"
            )
        else:
            reason += f" {SETTINGS_HINT}"
            if not judges_stiffness(tableau):
                reason += UNJUDGED.format(method=tableau.name, judging=_judging_tableaus())
    elif non_finite is not None:
        reason = f"{non_finite}: {TRIAL_STEPS_NON_FINITE}, down to a {reason}{overflow or ''}"
    elif overflow is not None:
        reason += overflow
    return SolverError(reason, t=error.t, n_steps=error.n_steps)
