"""Why a solve failed, in words: the :class:`SolverError` of the loop with what the step record
says about it (a stiffness hint after ``max_steps``, the overflow behind a step-size underflow)."""

from __future__ import annotations

import statistics
from typing import Any

import torch

from ._errors import SolverError

STIFF_RATIO = 0.5
"""``|dt| * rho / stability_size`` at or above this over the last accepted steps means the step was
held at the edge of the explicit method's stability region (Hairer--Wanner II, IV.2: a
stability-limited step keeps ``|dt| * rho`` near the boundary, about 1 on this scale, while
accuracy would allow much longer steps)."""
RECENT_STEPS = 20
RAISE_MAX_STEPS = "raise max_steps (options['max_num_steps'] in local_reg.compat)"
SETTINGS_HINT = f"({RAISE_MAX_STEPS}, or loosen rtol/atol)"
"""What a ``max_steps`` failure suggests when the problem does not look stiff."""


def stiffness_ratio(log: Any, stability_size: float | None) -> float | None:
    """Median of ``|dt| * rho / stability_size`` over the last accepted steps, or ``None`` without a
    stiffness estimate."""
    if stability_size is None or not log.stiffness_estimate:
        return None
    recent = list(zip(log.dt, log.stiffness_estimate, strict=True))[-RECENT_STEPS:]
    return statistics.median(abs(dt) * float(rho) / stability_size for dt, rho in recent)


def explain_failure(
    error: SolverError, log: Any, options: Any, non_finite: str | None, dtype: torch.dtype | None = None
) -> SolverError:
    """``error`` of :func:`local_reg._integrate.next_step_size`, its reason completed.

    ``non_finite``: the step was shrinking away from non-finite trial steps (the stepper's
    ``failure`` text; set by one, cleared by a finite rejection or a step that grows), so the step
    size underflowed while shrinking away from an overflow. ``dtype``: the state's, whose precision
    an ``rtol`` below it cannot reach (the likely cause then).
    """
    reason = error.reason
    tableau = getattr(options, "tableau", None)
    adaptive = tableau is None or tableau.adaptive
    rtol = getattr(options, "rtol", None)
    if isinstance(rtol, torch.Tensor):  # per-element: the tightest decides
        rtol = float(rtol.min()) if rtol.numel() else None
    eps = None if dtype is None else torch.finfo(dtype).eps
    # Below the dtype's epsilon no step can meet rtol (scipy's solve_ivp raises an rtol below
    # 100 eps to that, with a warning).
    if adaptive and eps is not None and non_finite is None and rtol and rtol < eps:
        reason += (
            f" (rtol={rtol:g} is below what {dtype} resolves, eps = {eps:.2g}: the error estimate stays "
            "at its rounding, so the steps shrink until they fail; loosen rtol or solve in float64)"
        )
        return SolverError(reason, t=error.t, n_steps=error.n_steps)
    if reason.startswith("max_steps"):
        if not adaptive:
            # A fixed-step solve has no tolerance to loosen (an event solve's count is open-ended).
            reason += f" ({RAISE_MAX_STEPS}, or a longer step_size)"
            return SolverError(reason, t=error.t, n_steps=error.n_steps)
        ratio = stiffness_ratio(log, None if tableau is None else tableau.stability_size)
        if ratio is not None and ratio >= STIFF_RATIO:
            reason += (
                f"; the problem looks stiff: |dt| * rho / stability_size = {ratio:.2f} over the last "
                "accepted steps, so the explicit method's step is limited by stability, not accuracy "
                f"({RAISE_MAX_STEPS}, or reduce the stiffness, e.g. with regularizer='stiffness')"
            )
        else:
            reason += f" {SETTINGS_HINT}"
    elif non_finite is not None:
        reason = f"{non_finite}: the trial steps kept turning non-finite, down to a {reason}"
    return SolverError(reason, t=error.t, n_steps=error.n_steps)
