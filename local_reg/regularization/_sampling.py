"""Where local regularization looks: its sampling options, the unbiased draw of ``t_reg`` and its
place among the output times. Shared by the ODE and SDE regularizers."""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch

from .._validate import check_bool, check_choice, generator_device, rounded, time_direction

SAMPLINGS = ("random", "biased")
# Redraws of t_reg before its span counts as unresolvable: on a span of two representable times
# half the draws round onto the end, so 64 failures in a row happen with probability 2^-64.
_MAX_DRAWS = 64
STEP_SIZES = ("initial", "solver")


def check_sampling(sampling: object, step_size: object, detach_state: object) -> None:
    """Check the sampling options of local regularization."""
    sampling = check_choice("sampling", sampling, SAMPLINGS)
    check_choice("step_size", step_size, STEP_SIZES)
    check_bool("detach_state", detach_state)
    if sampling == "biased" and not detach_state:
        raise ValueError(
            "detach_state=False needs sampling='random': biased sampling restarts from the recorded "
            "(detached) state of an accepted step, which has no graph to the parameters"
        )


def time_tolerance(times: Sequence[float], t_dtype: torch.dtype) -> float:
    """Two times closer than this are one: a sliver of a step between them would underflow, and
    the backend may see the times rounded to ``t_dtype``. At most a thousandth of the span: far
    from 0 (``|t| / span`` beyond ~1e5 in float32) the draws are rounded to ``t_dtype`` anyway, whose
    distinct values are a whole step apart, and a wider tolerance would snap every draw to ``t0``."""
    span = abs(times[-1] - times[0])
    scale = max(abs(times[0]), abs(times[-1]), span)
    return min(max(1e-9 * span, 64 * torch.finfo(t_dtype).eps * scale), 1e-3 * span)


def insert_time(times: Sequence[float], t_new: float, tolerance: float) -> tuple[list[float], int, bool]:
    """Insert ``t_new`` into the monotone ``times`` (not after the last).

    Returns ``(new_times, index, inserted)``. A ``t_new`` within ``tolerance`` of an existing time
    (other than the last) is that time: it is not inserted again (the solver needs strictly monotone
    times, and a sliver of a step would underflow).
    """
    direction = time_direction(times)
    keys = [direction * v for v in times]
    position = bisect.bisect_left(keys, direction * t_new)
    for index in (position - 1, position):
        if 0 <= index < len(times) - 1 and abs(times[index] - t_new) <= tolerance:
            return list(times), index, False
    new_times = list(times)
    new_times.insert(position, t_new)
    return new_times, position, True


def uniform_draw(generator: torch.Generator | None) -> float:
    """``u ~ U[0, 1)`` from ``generator`` (default: the global CPU generator), whatever the default
    device (a CPU generator cannot fill a tensor on another device)."""
    return float(torch.rand((), generator=generator, dtype=torch.float64, device=generator_device(generator)))


def sample_uniform_time(
    times: Sequence[float], t_dtype: torch.dtype, generator: torch.Generator | None
) -> float:
    """``t_reg ~ U[t0, t1)`` [LR23, unbiased sampling], rounded to ``t_dtype``."""
    t0, t1 = times[0], times[-1]
    tolerance = time_tolerance(times, t_dtype)
    resolvable = rounded(t0, t_dtype) != rounded(t1, t_dtype)
    for _ in range(_MAX_DRAWS if resolvable else 0):
        u = uniform_draw(generator)
        # Round to the dtype the backend will see the times in.
        t_reg = rounded(t0 + u * (t1 - t0), t_dtype)
        # [t0, t1): a draw that rounds onto (or within a sliver of) the end is drawn again, as is
        # one that rounds out of the span (its ends need not be times of t_dtype).
        direction = 1.0 if t1 > t0 else -1.0
        if direction * (t_reg - t0) >= 0 and direction * (t1 - t_reg) > tolerance:
            return t_reg
    raise ValueError(
        f"t spans [{t0}, {t1}], which {t_dtype} cannot resolve into distinct times to sample t_reg "
        f"from: pass t (or y0) in float64, or shift t towards 0"
    )
