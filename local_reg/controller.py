"""Step-size control."""

from __future__ import annotations

import bisect
import dataclasses
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ._validate import (
    check_bool,
    explain_unknown_keywords,
    finite_times,
    real_number,
    rounded_list,
    step_control_spellings,
)

TimeSet = Tensor | np.ndarray | Sequence[float | Tensor]
"""Times as the solvers take them: a 1-D tensor or numpy array, or a sequence of floats or 0-dim tensors."""


@dataclass(frozen=True, kw_only=True)
class PIController:
    """Proportional--integral step-size controller (Gustafsson 1991; Hairer--Wanner II, IV.2).

    After an accepted step with error estimate ``EEst_n`` (previous accepted: ``EEst_{n-1}``)::

        dt_next = dt * clip(safety * EEst_n ** -beta1 * EEst_{n-1} ** beta2, min_factor, max_factor)

    with ``beta2 = 0.2 / order`` and ``beta1 = 1 / order - 0.75 * beta2`` by default; ``beta1`` must
    exceed ``beta2`` (at a steady error the factor is ``safety * EEst ** (beta2 - beta1)``: else no
    step grows again), checked when the controller is made, or, for a given ``beta2`` and the
    default ``beta1``, when the method's order is known (the solve's start). Hairer's DOPRI5
    code's stabilization (``beta = 0.04`` at order 5) scaled to the order of the propagated solution.
    It damps step-size oscillation and settles at a smaller error than an integral controller
    (``beta2 = 0``, as torchdiffeq's): at one tolerance it takes up to ~20% more steps (``dopri5``
    against torchdiffeq's on the DETEST problems: a median 0.92–1.09x the evaluations, at most
    1.23x, docs/benchmarks.md) and is several times more accurate; at equal error the two are
    within ~20% either way (docs/benchmarks.md, the controllers table). A rejected step shrinks by
    an integral controller's factor, ``safety * EEst ** (-1 / order)`` whatever ``beta1`` and
    ``beta2`` are (scipy's and torchdiffeq's rule; Hairer's code and OrdinaryDiffEq shrink by
    ``safety * EEst ** -beta1`` there: with the gains above, Hairer's DOPRI5's and OrdinaryDiffEq's
    DP5's, a retried step about 4% longer at ``EEst = 4``; OrdinaryDiffEq's other methods, its Tsit5
    among them, take ``beta1 = 7 / (10 order)``, ``beta2 = 2 / (5 order)``: about 9% longer), never
    below ``min_factor``, and the step after a rejection may not grow. ``EEst_{n-1}`` is floored at
    1e-4 and is 1 before the first accepted step (Hairer's code and OrdinaryDiffEq start it at 1e-4,
    so their first growth is ``1e-4 ** beta2`` ours: 0.69x at order 5 with DP5's gains, 0.48x with
    Tsit5's).

    ``max_step`` bounds the size of every attempted step of an adaptive solve, the first one and a
    step landing on an output time included (scipy's ``solve_ivp(max_step=...)``, diffrax's
    ``PIDController(dtmax=...)``), up to the rounding of the times (a landing step folds in a
    remainder of at most 4 ulps that no step could take): for a field with features shorter than the
    steps the tolerance alone would allow (a brief forcing pulse), or to keep the dense output's
    steps short. ``None`` or ``inf``: unbounded (the same steps).

    ``min_step`` bounds the proposals from below (diffrax's ``dtmin``): where a rejected step would
    shrink below it, with ``force_min_step=True`` (the default, as diffrax's ``force_dtmin``) the
    next attempt of ``min_step`` is accepted whatever its (finite) error estimate, which the step
    record keeps (above 1), so that a solve goes on through a stretch the tolerance cannot resolve at
    that step size (a learned field turned stiff in training) rather than stop; with
    ``force_min_step=False`` it raises :class:`local_reg.SolverError` naming ``t``. A step shortened
    to land on an output or landing time may be shorter.

    ``step_ts`` and ``jump_ts`` are times every adaptive solve lands a step on (diffrax's
    ``PIDController(step_ts=..., jump_ts=...)``, torchdiffeq's ``options["step_t"]`` /
    ``["jump_t"]``): a step that would pass one is shortened to end on it, and the controller's
    proposal is resumed after it, as at an output time. At a jump time the field may be
    discontinuous: the step after it does not reuse the last stage of the step before (FSAL), and
    a stage whose time is the jump is evaluated one representable time inside its own step (in the
    dtype the field sees times in), so each step sees one side of the jump only (torchdiffeq's
    perturbation). Any 1-D sequence, array or tensor of finite times, kept sorted without
    repeats; a solve rounds them to the dtype its field sees times in, starts after a jump at its
    ``t0``, and ignores those beyond its span (:meth:`within`). A fixed ``step_size`` takes
    ``jump_ts`` at the ends of its steps (output times, or points of its grid between two), each
    step then read on its own side, and refuses ``step_ts`` and a jump inside a step; beside it a
    controller may set nothing but ``jump_ts``. See docs/solver.md.

    It takes keywords only (positional settings mean other things in other libraries:
    OrdinaryDiffEq's ``PIController(beta1, beta2)`` would set ``safety`` and ``min_factor``); a
    dataclass subclass declares ``kw_only=True`` too, or its own fields take the positions.
    """

    safety: float = 0.9
    min_factor: float = 0.2
    max_factor: float = 10.0
    beta1: float | None = None
    beta2: float | None = None
    max_step: float | None = None
    min_step: float | None = None
    force_min_step: bool = True
    step_ts: tuple[float, ...] = ()
    jump_ts: tuple[float, ...] = ()

    if TYPE_CHECKING:
        # The constructor as a type checker should read it: the times may be any 1-D sequence, array
        # or tensor, which __post_init__ keeps as the sorted tuples of floats the fields are.
        def __init__(
            self,
            *,
            safety: float = 0.9,
            min_factor: float = 0.2,
            max_factor: float = 10.0,
            beta1: float | None = None,
            beta2: float | None = None,
            max_step: float | None = None,
            min_step: float | None = None,
            force_min_step: bool = True,
            step_ts: TimeSet = (),
            jump_ts: TimeSet = (),
        ) -> None: ...

    def __post_init__(self) -> None:
        for name in ("step_ts", "jump_ts"):
            object.__setattr__(self, name, tuple(sorted(set(finite_times(name, getattr(self, name))))))
        check_bool("force_min_step", self.force_min_step)
        for name in ("safety", "min_factor", "max_factor", "beta1", "beta2", "max_step", "min_step"):
            value = getattr(self, name)
            # A 0-dim tensor or array is one number, as odeint's step_size and tolerances take it.
            required = name in ("safety", "min_factor", "max_factor")
            if (value is not None or required) and type(value) is not float:
                object.__setattr__(self, name, real_number(name, value, "a real number"))
        # A beta1 <= 0 would grow the step as the error grows (each step rejected until the step
        # size underflows); a NaN one, the same through NaN comparisons.
        if self.beta1 is not None and not (math.isfinite(self.beta1) and self.beta1 > 0):
            raise ValueError(f"beta1 must be positive and finite, got {self.beta1}")
        # A negative beta2 would grow the step after a large previous error (Hairer's DOPRI5 code
        # reads a negative one as 0).
        if self.beta2 is not None and not (math.isfinite(self.beta2) and self.beta2 >= 0):
            raise ValueError(f"beta2 must be non-negative and finite (0: integral control), got {self.beta2}")
        # With beta1 <= beta2 the factor after an accepted step, safety * (EEst_{n-1} / EEst_n) ** ...
        # at a steady error, stays below 1: the steps only shrink, down to max_steps or an underflow.
        if self.beta1 is not None and self.beta2 is not None and self.beta1 <= self.beta2:
            raise ValueError(
                f"beta1 must exceed beta2 (else no step grows again), got {self.beta1} <= {self.beta2}"
            )
        if self.max_step is not None and not self.max_step > 0:  # NaN fails this too
            raise ValueError(f"max_step must be positive (or None for no bound), got {self.max_step}")
        if self.min_step is not None and not 0 < self.min_step < math.inf:
            raise ValueError(f"min_step must be positive and finite (or None), got {self.min_step}")
        if self.min_step is not None and self.max_step is not None and self.min_step > self.max_step:
            raise ValueError(f"min_step={self.min_step} exceeds max_step={self.max_step}")
        if not 0.0 < self.safety <= 1.0:
            raise ValueError(f"safety must be in (0, 1], got {self.safety}")
        if not 0.0 < self.min_factor < 1.0 < self.max_factor < math.inf:
            raise ValueError(
                f"need 0 < min_factor < 1 < max_factor < inf, got min_factor={self.min_factor}, "
                f"max_factor={self.max_factor}"
            )

    def gains(self, order: int) -> tuple[float, float]:
        """``(beta1, beta2)`` for a method of order ``order``, the defaults filled in; a
        ``ValueError`` if one given leaves the other's default such that ``beta1 <= beta2`` (both
        given, :meth:`__post_init__` checked them)."""
        beta2 = 0.2 / order if self.beta2 is None else self.beta2
        beta1 = 1.0 / order - 0.75 * beta2 if self.beta1 is None else self.beta1
        if beta1 <= beta2 and self.beta1 is None:
            raise ValueError(
                f"beta2={beta2:g} leaves the default beta1 = 1/{order} - 0.75 * beta2 = {beta1:g} not "
                f"above beta2 for this method (order {order}), so no step could grow again: pass a "
                f"beta1 > beta2 too, or beta2 < {4 / (7 * order):g}"
            )
        if beta1 <= beta2:
            raise ValueError(
                f"beta1={beta1:g} is not above the default beta2 = 0.2/{order} = {beta2:g} for this method "
                f"(order {order}), so no step could grow again: pass a larger beta1, or beta2 too"
            )
        return beta1, beta2

    @property
    def lands(self) -> bool:
        """Whether solves land on times of their own (``step_ts`` or ``jump_ts``)."""
        return bool(self.step_ts or self.jump_ts)

    def within(self, t0: float, t1: float, dtype: torch.dtype | None = None) -> PIController:
        """This controller for a solve from ``t0`` to ``t1`` (either order): the ``step_ts`` strictly
        between them and the ``jump_ts`` from one to the other, ends included (a jump at ``t0`` has
        the solve's first step start after it); with ``dtype`` (the one the field sees times in)
        each rounded to it first: times the field cannot tell apart are one, a jump if either is (as
        ``local_reg.compat`` rounds torchdiffeq's), and one the field cannot tell from an end of the
        span is that end."""
        low, high = min(t0, t1), max(t0, t1)
        rounding = None if dtype == torch.float64 else dtype
        # Only times within rounding of the span can round into it: the rest are not rounded (a
        # long list of times, a short window of it solved).
        info = torch.finfo(dtype or torch.float64)
        margin = 2.0 * info.eps * max(abs(low), abs(high)) + info.tiny

        def kept(times: tuple[float, ...]) -> tuple[float, ...]:
            if rounding is not None and times:
                times = times[
                    bisect.bisect_left(times, low - margin) : bisect.bisect_right(times, high + margin)
                ]
                ends = dict(zip(rounded_list((low, high), rounding), (low, high), strict=True))
                times = tuple(sorted({ends.get(time, time) for time in rounded_list(times, rounding)}))
            return times

        jump_ts = kept(self.jump_ts)
        jump_ts = jump_ts[bisect.bisect_left(jump_ts, low) : bisect.bisect_right(jump_ts, high)]
        step_ts = kept(self.step_ts)
        step_ts = step_ts[bisect.bisect_right(step_ts, low) : bisect.bisect_left(step_ts, high)]
        jumps = set(jump_ts)
        step_ts = tuple(time for time in step_ts if time not in jumps)
        if (step_ts, jump_ts) == (self.step_ts, self.jump_ts):
            return self
        return dataclasses.replace(self, step_ts=step_ts, jump_ts=jump_ts)

    def limit(self, dt_abs: float) -> float:
        """The step size ``dt_abs`` (absolute), at most ``max_step`` and at least ``min_step``."""
        if self.max_step is not None:
            dt_abs = min(dt_abs, self.max_step)
        return dt_abs if self.min_step is None else max(dt_abs, self.min_step)

    def accept_factor(
        self, error_estimate: float, previous_error_estimate: float, order: int, after_rejection: bool
    ) -> float:
        """The factor on the step after an accepted one, ``safety EEst_n^-beta1 EEst_{n-1}^beta2``
        within ``[min_factor, max_factor]`` (at most 1 right after a rejection; ``max_factor`` at a
        zero error), for a method of order ``order`` (:meth:`gains`)."""
        beta1, beta2 = self.gains(order)
        max_factor = 1.0 if after_rejection else self.max_factor
        if error_estimate == 0.0:
            return max_factor
        try:
            factor = self.safety * error_estimate**-beta1 * previous_error_estimate**beta2
        except OverflowError:
            # A large beta1 on a tiny error: the factor is beyond any max_factor.
            factor = math.inf
        return min(max_factor, max(self.min_factor, factor))

    def reject_factor(self, error_estimate: float, order: int) -> float:
        """The factor on a rejected step, ``safety EEst^(-1/order)`` within ``[min_factor, 1]``
        (``min_factor`` for a non-finite estimate)."""
        if not math.isfinite(error_estimate):
            return self.min_factor
        return min(1.0, max(self.min_factor, self.safety * error_estimate ** (-1.0 / order)))


_DIFFRAX_GAINS = (
    "diffrax's PID gains: beta1= and beta2= here, the exponents of this step's and the previous "
    "step's error (with dcoeff=0, beta1 = (pcoeff + icoeff) / order and beta2 = pcoeff / order, order "
    "the method's; diffrax keeps the step after an accepted one from shrinking and shrinks a rejected "
    "one by its gains, this controller by safety * EEst**(-1/order): the same gains take other steps)"
)
# A port of diffrax's PIDController(rtol, atol, ...) or OrdinaryDiffEq's solve settings names
# settings that are the solve's here, or are spelt otherwise; the dataclass's own message names the
# keyword only.
_FOREIGN_SETTINGS = {
    **step_control_spellings("{keyword}="),
    **{
        name: f"the solve's tolerance: odeint's and sdeint's {name}=, not the controller's"
        for name in ("rtol", "atol")
    },
    "factormin": "diffrax's: min_factor= here",
    "factormax": "diffrax's: max_factor= here",
    "pcoeff": _DIFFRAX_GAINS,
    "icoeff": _DIFFRAX_GAINS,
    "dcoeff": "diffrax's derivative gain: this is a PI controller, of beta1= and beta2=",
    "norm": "the solve's error norm: odeint's norm=",
}
_keywords_checked_init = explain_unknown_keywords(_FOREIGN_SETTINGS)(PIController.__init__)


@functools.wraps(PIController.__init__)
def _init_by_keywords(self: PIController, *args: object, **kwargs: Any) -> None:
    # Positional settings mean different things in other libraries: OrdinaryDiffEq's
    # PIController(beta1, beta2) would set safety and min_factor here, within their ranges.
    if args:
        raise TypeError(
            f"PIController takes keywords only, got {len(args)} positional argument"
            f"{'s' if len(args) > 1 else ''} {', '.join(map(repr, args))}: OrdinaryDiffEq's "
            "PIController(beta1, beta2) is PIController(beta1=..., beta2=...) here, and diffrax's "
            "PIDController(rtol, atol) sets the solve's rtol= and atol= (odeint's, sdeint's)"
        )
    _keywords_checked_init(self, **kwargs)


PIController.__init__ = _init_by_keywords  # type: ignore[method-assign]

DEFAULT_CONTROLLER = PIController()
"""The controller of a solve given none (a frozen dataclass: one object serves every solve)."""
