"""The one time-stepping loop: every ODE and SDE solve, whatever the gradient method.

:func:`integrate` owns everything that is not the method itself: the step-size controller, landing
on output times, the accept/reject decision, the finiteness check, the statistics and the record
of accepted steps. A method enters only through a :class:`Stepper` (as in torchsde and diffrax,
where each solver implements ``step()`` and one loop drives them all): the explicit Runge--Kutta
pairs through :class:`local_reg._step.RKStepper`, Euler--Maruyama through
:class:`local_reg.sde._step.EulerMaruyamaStepper`.
"""

from __future__ import annotations

import bisect
import copy
import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import torch
from torch import Tensor

from ._checks import positive_int
from ._dense import DenseOutput
from ._diagnose import explain_failure
from ._errors import STEP_LIMIT_REACHED, STEP_SIZE_UNDERFLOW, SolverError, warn
from ._step import (
    RKStepper,
    StepResult,
    VectorField,
    beside_jump,
    jump_ends,
    too_close_to_step,
    trial_end,
    underflow_threshold,
    within_ulps,
)
from ._stepper import Stepper
from ._validate import (
    absolute_tolerance_for,
    atol_too_small,
    check_bool,
    checked_norm,
    compile_options,
    finite_float,
    longest_step,
    non_negative_float,
    per_element_tolerance,
    positive_float,
    rounded_list,
    time_direction,
    tolerance,
    type_name,
)
from .controller import DEFAULT_CONTROLLER, PIController
from .solution import Stats, Steps
from .tableaus import ButcherTableau

StepPenalty = Callable[[Any, float], Tensor]
"""``penalty(result, dt) -> 0-dim tensor`` evaluated on every accepted step (global regularization);
``result`` is the stepper's step result, ``dt`` the signed step size."""

StopCondition = Callable[[float, float, Tensor, Callable[[list[float]], Tensor]], float | None]
"""``stop(t0, t1, y1, dense) -> None | t_stop``, called after every accepted step from ``t0`` to ``t1``
(state ``y1``): ``None`` goes on; a time ``t_stop`` in ``(t0, t1]`` ends the solve there (a terminal
event, :func:`local_reg.odeint_event`). ``dense(times)`` is the step's dense output at ``times``,
stacked; it evaluates the stages the interpolant needs only when called."""


@dataclass(frozen=True)
class StepCallbacks:
    """Functions the loop calls with ``(t0, y0, dt)`` (floats and the flat state, ``dt`` signed):
    ``step`` before every attempted step, ``accept`` / ``reject`` after its decision, as torchdiffeq
    calls a vector field's ``callback_step`` / ``callback_accept_step`` / ``callback_reject_step``.
    Only the forward solve calls them (not a gradient method's backward pass)."""

    step: Callable[[float, Tensor, float], None] | None = None
    accept: Callable[[float, Tensor, float], None] | None = None
    reject: Callable[[float, Tensor, float], None] | None = None
    stop: StopCondition | None = None
    """A terminal condition (:data:`StopCondition`). With it the solve takes two times ``[t0, t1]``
    and runs from ``t0`` in the direction of ``t1``, whose value is otherwise ignored (torchdiffeq's
    ``odeint(event_fn=...)``), until ``stop`` returns a time; the outputs are the states at ``t0``
    and there, and ``steps.stop_time`` records it. Needs dense output (a Runge--Kutta stepper)."""

    def __post_init__(self) -> None:
        for name in ("step", "accept", "reject", "stop"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise TypeError(f"callbacks.{name} must be callable or None, got {type(value).__name__}")


NO_CALLBACKS = StepCallbacks()
"""The callbacks of a solve given none."""
DEFAULT_MAX_STEPS = 10_000
"""The attempted steps a solve (``odeint``, ``sdeint``) may take before it raises :class:`SolverError`."""
NO_STEP_LIMIT = 2**31 - 1
"""``max_steps`` for no limit: torchdiffeq's default ``max_num_steps`` (a fixed-step solve's count is
known), and torchsde's, which has none (local_reg.compat)."""
# Steps that would end within this fraction of the next output time land on it instead, so that no
# sliver of a step is left over.
_LANDING_SLACK = 0.01
STOP_NEVER_HELD = "the stop condition never held before the time overflowed"
STALLED_STEPS = 100
"""Accepted steps in a row, each shorter than the state dtype's ``eps`` times the span, that leave
every element of the state unchanged although its derivative is not zero: the solve fails there
(:class:`_StallWatch`)."""
_STALL_GROWTH = 8.0
"""A step this many times the stalled run's first ends the run: the controller is growing the step
out of it."""
_EXACT_COUNTS = 2**53
"""Step counts above this are not exact as floats: a fixed step size is then its own equal step."""


class TooManyFixedSteps(ValueError):
    """A fixed ``step_size`` that needs ``needed`` steps, more than ``max_steps``, refused before the
    first: a type of its own so that a caller naming the setting as its user spells it (the
    adjoints' backward solve, a regularized model) does not take a ``ValueError`` raised by ``func``
    for it. ``setting``: how the advice spells the setting, ``{}`` for the count; ``note``: said after
    the advice, ``{}`` for the count."""

    def __init__(
        self, step_size: float, needed: int, max_steps: int, setting: str = "max_steps={}", note: str = ""
    ) -> None:
        self.step_size, self.needed, self.max_steps = step_size, needed, max_steps
        if needed > _EXACT_COUNTS:
            needs, advice = f"about 1e{len(str(needed)) - 1}", "pass a longer step_size"
        else:
            advice = f"pass {setting.format(needed)} or a longer step_size{note.format(needed)}"
            needs = str(needed)
        super().__init__(
            f"step_size={step_size:g} needs {needs} steps over the output times, more than "
            f"max_steps={max_steps}: {advice}"
        )
        self._spelling = (setting, note)

    def spelt(self, setting: str, note: str = "") -> TooManyFixedSteps:
        """This refusal with its advice naming the setting as ``setting`` spells it."""
        return TooManyFixedSteps(self.step_size, self.needed, self.max_steps, setting, note)

    def __reduce__(self):  # pickled by its fields: the message is made from them
        return TooManyFixedSteps, (self.step_size, self.needed, self.max_steps, *self._spelling)


@dataclass(frozen=True, init=False)
class SolveOptions:
    """The options of one solve (see :func:`local_reg.odeint` and :func:`local_reg.sdeint`), checked
    once on construction: each bad value raises a ``ValueError``/``TypeError`` naming it.

    ``tableau`` and ``norm`` are the Runge--Kutta stepper's; an SDE solve leaves ``tableau`` unset.
    ``None`` for ``controller``, ``norm`` or ``callbacks`` means their default.
    ``rtol = 0`` is allowed (a pure absolute tolerance, as in torchdiffeq); ``atol`` must be positive
    so that the error scale ``atol + rtol * |y|`` never vanishes. A fixed-step ``tableau`` needs
    ``step_size``. ``entries_of``: the dict the settings after the tolerances came in (a regularized
    model's ``"options"``), whose entries a refusal then names (``options['first_step']``), rather
    than as the solver's keywords.
    """

    rtol: float | Tensor
    atol: float | Tensor
    """One number each, or per-element tolerances (tensors of the state's shape: ``odeint`` broadcasts
    them, :func:`local_reg.sdeint` and the backsolve adjoint's own solve take numbers only)."""
    first_step: float | None
    max_steps: int
    step_size: float | None
    controller: PIController
    tableau: ButcherTableau | None
    norm: Callable[[Tensor], Tensor]
    """Norm of the scaled error (and of the initial-step heuristic): RMS over the whole state by
    default (the backsolve adjoint computes its own error norm over (y, a) and the parameter integral).
    Any other callable is checked on every call to return a 0-dim tensor."""
    interpolate: bool
    """Step towards the last output time only and read the others from the stepper's dense output
    (adaptive Runge--Kutta solves); ``False`` lands a step on every output time."""
    dense: bool
    """Keep every accepted step's state and stages for :meth:`local_reg.Solution.evaluate`."""
    callbacks: StepCallbacks
    """Called on every attempted, accepted and rejected step of the forward solve."""
    time_dtype: torch.dtype | None
    """The dtype of the time argument the vector field gets; ``None``: the state's dtype."""
    times_rounding: float
    """How far apart two output times may be from what was meant, for they came rounded to a
    float narrower than float64 (:func:`times_rounding`; 0 for float64 times and plain floats):
    fixed steps take no sliver of a step for an interval past a multiple of ``step_size`` by no
    more than this."""
    compile: dict[str, Any] | None
    """``torch.compile`` keywords of the forward solve's Runge--Kutta steps (``None``: eager); ``True``
    and ``False`` are read as ``{}`` and ``None``."""

    def __init__(
        self,
        rtol: float | Tensor | Sequence[float | Tensor],
        atol: float | Tensor | Sequence[float | Tensor],
        first_step: float | Tensor | None = None,
        max_steps: int = DEFAULT_MAX_STEPS,
        step_size: float | Tensor | None = None,
        controller: PIController | None = None,
        tableau: ButcherTableau | None = None,
        norm: Callable[[Tensor], Tensor] | None = None,
        interpolate: bool = False,
        dense: bool = False,
        callbacks: StepCallbacks | None = None,
        time_dtype: torch.dtype | None = None,
        compile: bool | dict[str, Any] | None = None,
        times_rounding: float = 0.0,
        entries_of: str | None = None,
    ) -> None:
        def named(setting: str) -> str:
            return setting if entries_of is None else f"{entries_of}[{setting!r}]"

        # Each value is checked here, once: the fields hold checked values only (defaults in place of
        # ``None``, tolerances as numbers or tensors), so that their readers need no checks.
        checked: dict[str, object] = {
            "rtol": tolerance("rtol", rtol, relative=True),
            "atol": tolerance("atol", atol, relative=False),
            "first_step": None if first_step is None else positive_float(named("first_step"), first_step),
            "step_size": None if step_size is None else positive_float(named("step_size"), step_size),
            "max_steps": positive_int(named("max_steps"), max_steps),
            "controller": DEFAULT_CONTROLLER if controller is None else controller,
            "norm": checked_norm(norm, named("norm")),
            "callbacks": NO_CALLBACKS if callbacks is None else callbacks,
            "compile": None if compile is None else compile_options(compile, named("compile")),
            "times_rounding": non_negative_float("times_rounding", times_rounding),
        }
        if step_size is None and tableau is not None and not tableau.adaptive:
            raise ValueError(f"method {tableau.name!r} is fixed-step: pass {named('step_size')}")
        checked_controller = checked["controller"]
        if not isinstance(checked_controller, PIController):
            raise TypeError(f"{named('controller')} must be a PIController, got {type_name(controller)}")
        if step_size is not None and checked_controller.step_ts:
            raise ValueError(
                f"{named('controller')}.step_ts need an adaptive solve, not a fixed {named('step_size')} "
                "(put those times among the output times instead: fixed steps end on every output time)"
            )
        if tableau is not None and not isinstance(tableau, ButcherTableau):
            raise TypeError(f"tableau must be a ButcherTableau, got {type_name(tableau)}")
        if not isinstance(checked["callbacks"], StepCallbacks):
            raise TypeError(f"{named('callbacks')} must be a StepCallbacks, got {type_name(callbacks)}")
        checked["interpolate"] = check_bool("interpolate", interpolate)
        checked["dense"] = check_bool("dense", dense)
        checked["tableau"] = tableau
        checked["time_dtype"] = time_dtype
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @property
    def runge_kutta_tableau(self) -> ButcherTableau:
        """``tableau``, which every Runge--Kutta solve has (only an SDE solve's options leave it unset)."""
        if self.tableau is None:
            raise TypeError(
                "these options have no tableau: they are an SDE solve's, not a Runge--Kutta solve's"
            )
        return self.tableau

    def with_checked(self, **changes: Any) -> SolveOptions:
        """These options with ``changes``, values already checked: not ``dataclasses.replace``, whose
        checks would run again on tolerances that :meth:`for_state` may have cast."""
        options = copy.copy(self)
        for name, value in changes.items():
            object.__setattr__(options, name, value)
        return options

    def for_state(self, y: Tensor) -> SolveOptions:
        """These options for the state ``y``: per-element tolerances broadcast to its shape (a
        ``ValueError`` naming the tolerance if they do not broadcast), device and dtype; an element
        whose ``rtol`` is 0 and whose ``atol`` is below the dtype's smallest normal number is
        refused (its error scale is then that subnormal or zero alone, and the scaled error
        overflows). Beside ``rtol > 0`` such an ``atol`` is raised to that smallest normal number:
        ``rtol * |y|`` keeps the scale, as a tiny ``atol`` asks, except at an element that is exactly
        0, whose scale the dtype would otherwise round to 0 (a 0 / 0 error estimate)."""
        tiny = torch.finfo(y.dtype).tiny
        if not isinstance(self.rtol, Tensor) and not isinstance(self.atol, Tensor):
            floored = absolute_tolerance_for(self.atol, self.rtol, y.dtype)
            if floored == self.atol:
                return self
            return self.with_checked(atol=floored)
        # Broadcast in float64 first: the floor is checked on the values given, before the cast to
        # the state's dtype rounds a tiny atol to zero.
        rtol, atol = (
            per_element_tolerance(name, getattr(self, name), y.shape, y.device) for name in ("rtol", "atol")
        )
        atols, rtols = torch.broadcast_tensors(
            torch.as_tensor(atol, dtype=torch.float64, device=y.device),
            torch.as_tensor(rtol, dtype=torch.float64, device=y.device),
        )
        lone = atols[rtols == 0]
        if lone.numel() and float(lone.min()) < tiny:
            raise ValueError(atol_too_small(float(lone.min()), y.dtype))
        cast: dict[str, float | Tensor] = {}  # the checks ran on the values above, uncast
        for name, value in (("rtol", rtol), ("atol", atol)):
            cast[name] = value.to(y.dtype) if isinstance(value, Tensor) else value
        cast_atol = cast["atol"]
        cast["atol"] = cast_atol.clamp_min(tiny) if isinstance(cast_atol, Tensor) else max(cast_atol, tiny)
        return self.with_checked(**cast)

    def warn_if_below_resolution(self, y: Tensor) -> None:
        """Warn where an adaptive solve's tolerance at ``y`` (its start) is below a tenth of what
        ``y``'s dtype resolves: ``atol + rtol |y| < eps |y| / 10`` at some element. The error
        estimate is then mostly rounding: the solve cannot reach the tolerance (its error stays at
        what the dtype's rounding accumulates) and its steps shrink for nothing (float32 at
        ``rtol = atol = 1e-10``: 11x float64's evaluations). scipy's ``solve_ivp`` warns too (and
        raises ``rtol`` to ``100 eps``). Without a device read unless ``rtol`` is that small or
        per element."""
        if self.step_size is not None or (self.tableau is not None and not self.tableau.adaptive):
            return
        resolved = torch.finfo(y.dtype).eps / 10
        rtol = self.rtol
        if not isinstance(rtol, Tensor) and rtol >= resolved:
            return
        magnitude = y.detach().abs()
        unresolved = (self.atol + rtol * magnitude < resolved * magnitude).any()
        if bool(unresolved):
            wider = "" if y.dtype == torch.float64 else "; or solve in float64"
            rtol_text, atol_text = (
                "per element" if isinstance(value, Tensor) else f"{value:g}" for value in (rtol, self.atol)
            )
            warn(
                f"rtol={rtol_text} and atol={atol_text} ask for less than {y.dtype} resolves at "
                f"y0's scale (eps = {torch.finfo(y.dtype).eps:.2g}): the error estimate is mostly "
                "rounding, so the solve cannot reach this tolerance and its steps may shrink for "
                f"nothing. Loosen rtol and atol to at least eps * |y|{wider}",
                RuntimeWarning,
            )

    def over(self, times: list[float]) -> SolveOptions:
        """These options for a solve from ``times[0]`` through ``times[-1]`` (on in that direction
        with a stop condition): the controller's ``step_ts`` and ``jump_ts`` rounded to the dtype the
        field sees times in and without those beyond the span (:meth:`PIController.within`), the
        ones the solve and the gradient methods' replays of its steps take. Beside a fixed
        ``step_size`` each jump is the end of a step it is (:func:`jumps_at_step_ends`; with a
        stop condition, whose grid runs on past ``times[-1]``, only ``times[0]`` is one)."""
        end = times[-1]
        if self.callbacks.stop is not None:
            end = math.copysign(math.inf, times[-1] - times[0])
        controller = self.controller.within(times[0], end, self.time_dtype)
        if self.step_size is not None and controller.jump_ts:
            ends = times if self.callbacks.stop is None else times[:1]
            jump_ts = jumps_at_step_ends(
                controller.jump_ts, ends, self.step_size, self.times_rounding, self.time_dtype
            )
            controller = dataclasses.replace(controller, jump_ts=jump_ts)
        if controller == self.controller:
            return self
        return self.with_checked(controller=controller)


def jumps_at_step_ends(
    jump_ts: Sequence[float], times: list[float], step_size: float, rounding: float, dtype: torch.dtype | None
) -> tuple[float, ...]:
    """The sorted ``jump_ts`` of a solve with a fixed ``step_size`` through ``times`` (``rounding``:
    :attr:`SolveOptions.times_rounding`), each as the end of a step it is: an output time, or a point
    of the fixed grid inside an interval (:func:`integrate`'s, the interval's start plus a multiple
    of :func:`fixed_step_size`), within a few ulps of it or the same time in ``dtype`` (the one the
    field sees, to which :meth:`PIController.within` rounded the jumps). A jump inside a fixed step
    would be read on both sides of it: a ``ValueError``."""
    ordered = sorted(times)
    increasing = times[-1] >= times[0]
    candidates = []
    for jump in jump_ts:
        index = bisect.bisect_right(ordered, jump)
        ends = ordered[max(index - 2, 0) : index + 2]
        if 0 < index < len(ordered):
            low, high = ordered[index - 1], ordered[index]
            start, stop = (low, high) if increasing else (high, low)
            size = fixed_step_size(start, stop, step_size, rounding)
            count = fixed_step_count(start, stop, step_size, rounding)
            nearest = round(abs(jump - start) / size)
            direction = time_direction([start, stop])
            ends += [
                fixed_grid_point(start, direction, n, size)
                for n in range(max(nearest - 1, 1), min(nearest + 2, count))
            ]
        candidates.append(ends)
    every_end = [end for ends in candidates for end in ends]
    seen = every_end
    if dtype not in (None, torch.float64):  # all at once: a long grid's jumps (compat's perturb)
        seen = rounded_list(every_end, dtype)
    found = []
    position = 0
    for jump, ends in zip(jump_ts, candidates, strict=True):
        as_seen = seen[position : position + len(ends)]
        position += len(ends)
        matched = [
            end
            for end, end_seen in zip(ends, as_seen, strict=True)
            if end_seen == jump or within_ulps(end, jump)
        ]
        if not matched:
            raise ValueError(
                f"controller.jump_ts needs an adaptive solve where a jump is not the end of a step: a "
                f"fixed step_size={step_size:g} ends its steps on the output times and on its grid "
                f"between them only, and {jump!r} is none of them (a step across it would read the "
                "field on both sides); put it among the output times, or solve adaptively"
            )
        found.append(matched[0])
        if matched[0] != jump and within_ulps(matched[0], jump):
            # The grid's end a few ulps from the jump (0 + 3 * 0.1 against 0.3): the stages beside
            # it must lie beyond both, which jump_ends reads from the two as one.
            found.append(jump)
    return tuple(sorted(set(found)))


def open_end(dtype: torch.dtype) -> float:
    """How far a solve with a stop condition may go: as far as a step in the state's ``dtype``
    reaches (:func:`local_reg._validate.longest_step`)."""
    return longest_step(dtype)


def times_rounding(times: list[float], rounded_to: torch.dtype | None) -> float:
    """How far apart two of ``times`` may be from what was meant, for they came rounded to the
    float ``rounded_to`` (:func:`local_reg._validate.narrowest_float`; ``None``: exact, 0): two of
    its epsilons at the largest time, which bounds the rounding of a grid's points made at that
    scale (``torch.linspace(-1, 1, 201)`` computes its points near 0 from +-1), not only of
    their own values."""
    if rounded_to is None or not times:
        return 0.0
    return 2.0 * torch.finfo(rounded_to).eps * max(abs(time) for time in times)


def fixed_step_count(t: float, t_target: float, step_size: float, rounding: float = 0.0) -> int:
    """How many equal steps, none longer than ``step_size`` (but for the ``rounding`` of the times,
    :attr:`SolveOptions.times_rounding`, and then by at most 1%), cover ``[t, t_target]``."""
    ratio = abs(t_target - t) / step_size
    if math.isinf(ratio):
        # Beyond the floats (a tiny step over a huge span, or an event solve's open end): counted
        # exactly, for the refusal's message or the event solve's max_steps to report.
        return math.ceil(Fraction(abs(t_target - t)) / Fraction(step_size))
    count = max(1, math.ceil(ratio - 1e-9))
    # Float32 times are their intended values rounded, which can put an interval a hair past a
    # multiple of step_size (torch.linspace(0, 1, 11) has 0.3 - 0.2 = 0.10000001): an excess
    # within that rounding takes no sliver of a step, as on torchdiffeq's grid. At most the
    # landing slack of a step: where the times' rounding is coarser than that (float32 far from
    # 0), forgiving it would lengthen every step, beyond an explicit method's stability.
    forgiven = min(rounding / step_size, _LANDING_SLACK)
    if rounding > 0.0 and 1 < count <= _EXACT_COUNTS and ratio - (count - 1) <= forgiven:
        count -= 1
    return count


def fixed_steps_over(times: list[float], step_size: float, rounding: float = 0.0) -> int:
    """How many fixed steps a solve through ``times`` takes (each interval on its own)."""
    return sum(fixed_step_count(a, b, step_size, rounding) for a, b in itertools.pairwise(times))


def fixed_step_size(t: float, t_target: float, step_size: float, rounding: float = 0.0) -> float:
    """The size of the equal steps, none longer than ``step_size`` (but for the times'
    ``rounding``), that cover ``[t, t_target]``."""
    count = fixed_step_count(t, t_target, step_size, rounding)
    if count > _EXACT_COUNTS:
        return step_size  # equal steps this many are step_size to the float
    return abs(t_target - t) / count


def fixed_grid_point(start: float, direction: float, n: int, size: float) -> float:
    """The ``n``-th point of a fixed grid of steps of ``size`` from ``start`` in ``direction``
    (``1.0`` or ``-1.0``), counted from the start (as torchdiffeq's): adding each step to the last
    would round, and over many steps the grid would drift. :func:`integrate`'s steps end there, and
    the jumps beside them are matched to it to the bit."""
    return start + direction * n * size


def fixed_step_ends(times: list[float], step_size: float, rounding: float = 0.0) -> list[float]:
    """Where the steps of a solve through ``times`` with a fixed ``step_size`` start and end, in
    order: the output times and, inside each interval, :func:`integrate`'s grid (the interval's
    start plus the multiples of :func:`fixed_step_size` short of its end)."""
    ends = times[:1]
    for start, stop in itertools.pairwise(times):
        size = fixed_step_size(start, stop, step_size, rounding)
        count = fixed_step_count(start, stop, step_size, rounding)
        direction = time_direction([start, stop])
        ends += [fixed_grid_point(start, direction, n, size) for n in range(1, count)]
        ends.append(stop)
    return ends


def check_landing_gaps(times: list[float], why: str) -> None:
    """For a solve that ends a step on every output time: a ``ValueError`` naming two of ``times``
    too close for a step between them to move the time (:func:`next_step_size`'s underflow, which
    the loop would reach only after integrating up to them); ``why`` ends the message."""
    for a, b in itertools.pairwise(times):
        if too_close_to_step(a, b):
            raise ValueError(f"t holds {a!r} and {b!r}, within a few ulps of each other: {why}")


def next_step_size(
    t: float, t_target: float, dt_abs: float, n_steps: int, max_steps: int, max_step: float | None = None
) -> tuple[float, bool]:
    """``(size, lands)`` of the next attempted step from ``t`` towards the output time ``t_target``:
    the proposed ``dt_abs``, or exactly what remains (``lands``) if that is within the landing slack
    and at most ``max_step``.

    Raises :class:`SolverError` if ``max_steps`` attempts were made or the step underflows.
    """
    if n_steps >= max_steps:
        raise SolverError(f"{STEP_LIMIT_REACHED}{max_steps} exceeded", t=t, n_steps=n_steps)
    if math.isnan(dt_abs):
        # No comparison below would catch it: every step would be attempted, and rejected, at NaN.
        raise SolverError(
            "the step size is NaN (first_step, or the controller's factor)", t=t, n_steps=n_steps
        )
    remaining = abs(t_target - t)
    reach = dt_abs * (1.0 + _LANDING_SLACK)
    if max_step is not None and max_step < reach:
        reach = max_step
    lands = reach >= remaining
    if not lands:
        # Land rather than leave a remainder the next step could not take (the loop's own underflow
        # test, after the rounding of t + dt), exceeding the step (or max_step) by that remainder, a
        # few ulps of the time: steps of exactly max_step reach an output time only up to rounding,
        # and far from t = 0 a step is itself a few hundred ulps.
        t_after = t + math.copysign(dt_abs, t_target - t)
        left = abs(t_target - t_after)
        lands = left <= underflow_threshold(t_after, left)
    dt_used = remaining if lands else dt_abs
    if dt_used <= underflow_threshold(t, dt_used):
        reason = f"{STEP_SIZE_UNDERFLOW} (dt={dt_used:.3e})"
        if lands:
            # The solve was landing: it is the output times that are too close, not the dynamics.
            reason += (
                f": the next output time {t_target!r} is within a few ulps of t; output times this "
                "close cannot each end a step (merge them; an adaptive method interpolates them "
                "without step_to_outputs)"
            )
        elif max_step is not None and dt_used >= max_step:
            reason += (
                f": max_step={max_step:g} is within a few ulps of t, the least step that moves it "
                "(raise max_step, or shift the times nearer 0)"
            )
        raise SolverError(reason, t=t, n_steps=n_steps)
    return dt_used, lands


@dataclass
class StepLog:
    t: list[float] = field(default_factory=list)
    dt: list[float] = field(default_factory=list)
    error_estimate: list[float] = field(default_factory=list)
    stiffness_estimate: list[Tensor] = field(default_factory=list)
    """0-dim tensors, read into floats once, by :meth:`to_steps` (no device synchronisation per step)."""
    states: list[Tensor] | None = None
    dense: DenseOutput | None = None
    stop_time: float | None = None

    def to_steps(self, has_stiffness: bool) -> Steps:
        def as_tensor(values: list[float]) -> Tensor:
            return torch.tensor(values, dtype=torch.float64, device="cpu")

        stiffness = None
        if has_stiffness:
            stiffness = as_tensor([])
            if self.stiffness_estimate:
                stiffness = torch.stack(self.stiffness_estimate).to(device="cpu", dtype=torch.float64)
        return Steps(
            t=as_tensor(self.t),
            dt=as_tensor(self.dt),
            error_estimate=as_tensor(self.error_estimate),
            stiffness_estimate=stiffness,
            state_list=self.states,
            dense_output=self.dense,
            stop_time=self.stop_time,
        )


class AcceptedStep:
    """The dense output of one accepted step ``(t, y) -> (t + dt, result.y1)``; the stages the
    interpolant combines are evaluated once, when first needed (counted in ``stats``), under the
    solve's autograd mode even when a stop condition asks first, under ``no_grad``."""

    def __init__(
        self, stepper: Stepper, result: Any, t: float, dt: float, y: Tensor, t_next: float, stats: Stats
    ) -> None:
        self.stepper = stepper
        self.result = result
        self.t = t
        self.dt = dt
        self.y = y
        self.t_next = t_next
        self.stats = stats
        self.grad_mode = torch.is_grad_enabled()
        self._stages: Any = None

    @property
    def stages(self) -> Any:
        if self._stages is None:
            with torch.set_grad_enabled(self.grad_mode):
                self._stages = self.stepper.dense_stages(self.result, self.t, self.t_next, self.stats)
        return self._stages

    def states(self, t_outs: list[float]) -> Tensor:
        """The states at ``t_outs`` inside the step, stacked."""
        return self.stepper.interpolate(self.t, self.dt, self.y, self.stages, t_outs)


def _call_leaving_state(name: str, state: Tensor, callback: Callable[..., Any], *args: Any) -> Any:
    """``callback(*args)``, which must not change ``state`` in place: the solver reuses it (the
    outputs, the dense record and the next step start from it), so a change would silently give
    wrong states, as a ``func`` that changes its input would (``_validate.CheckedField``). Not
    checked while ``torch.compile`` traces, as ``func``'s input is not (``call_leaving_input``): the
    traced graph's version counters do not follow the eager ones."""
    if torch.compiler.is_compiling():
        return callback(*args)
    if state.is_inference():
        # An inference tensor keeps no version counter: its values are compared instead (once per
        # step, beside the step's evaluations of func).
        before = state.clone()
        value = callback(*args)
        changed = not torch.allclose(before, state, rtol=0.0, atol=0.0, equal_nan=True)
    else:
        version = state._version
        value = callback(*args)
        changed = state._version != version
    if changed:
        raise ValueError(
            f"callbacks.{name} modified the state it was given in place (at t={args[0]!r}); read it, "
            "or change a copy"
        )
    return value


def _shares_memory(tensor: Tensor, other: Tensor) -> bool:
    """Whether ``tensor`` is a view into ``other``'s memory (``y.reshape(y.shape)``, ``y[:]``)."""
    try:
        return tensor.untyped_storage().data_ptr() == other.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # a tensor without storage (a functorch wrapper)
        return False


def _checked_penalty(penalty: object, t: float) -> Tensor:
    if not isinstance(penalty, Tensor):
        raise TypeError(
            f"step_penalty must return a 0-dim tensor, got {type(penalty).__name__} (the step from t={t!r})"
        )
    if penalty.dim() != 0:
        raise ValueError(
            f"step_penalty must return a 0-dim tensor, got shape {tuple(penalty.shape)} "
            f"(the step from t={t!r})"
        )
    return penalty


INTERPOLATED_ELEMENTS = 2**22
"""Without autograd, the most elements of outputs interpolated in one call (16 MB in float32): a
step holding more is interpolated in near-equal batches, so that the interpolation's temporaries (a
product and a sum of the size of its result) stay small beside the outputs' own tensor."""


def _stacked_format(state: Tensor) -> torch.memory_format:
    """The memory format ``torch.stack`` gives states like ``state``: channels_last (3d) where it is
    in that format and not contiguous, else contiguous (a transposed state's strides are not kept)."""
    for dims, channels_last in ((4, torch.channels_last), (5, torch.channels_last_3d)):
        if state.dim() == dims and state.is_contiguous(memory_format=channels_last):
            return torch.contiguous_format if state.is_contiguous() else channels_last
    return torch.contiguous_format


class _OutputStates:
    """The states at the output times, in order. Without autograd (inference, and the graph-free
    gradient methods' forward pass) each is written into one tensor made for all of them as it
    comes: a list stacked at the end held every output twice at that moment. With autograd, a list
    stacked at the end, whose graph the outputs need."""

    def __init__(self, first: Tensor, count: int) -> None:
        self.listed: list[Tensor] = []
        self.into: Tensor | None = None
        self.state_size = 0  # the elements of an output in `into`; with autograd none are batched
        if not torch.is_grad_enabled():
            self.state_size = first.numel()
            layout = torch.empty_like(first, memory_format=_stacked_format(first)).stride()
            self.into = first.new_empty_strided((count, *first.shape), (self.state_size, *layout))
        self.count = 0
        self.append(first)

    def append(self, state: Tensor) -> None:
        if self.into is None:
            self.listed.append(state)
        else:
            self.into[self.count] = state
        self.count += 1

    def batches(self, times: list[float]) -> list[list[float]]:
        """``times`` inside one step in the batches to interpolate them in: all at once, unless
        that makes more than :data:`INTERPOLATED_ELEMENTS` without autograd (with autograd each
        call's graph would keep the step's stages stacked again). Then in batches of near-equal
        sizes, none of one output of several: such outputs may differ from autograd's one call in
        the last bit in float32, as the matrix product's kernel changes with its rows."""
        if not times:  # most steps, called for each accepted one
            return []
        count = min(math.ceil(len(times) * self.state_size / INTERPOLATED_ELEMENTS), len(times) // 2)
        if count <= 1:
            return [times]
        size, larger = divmod(len(times), count)  # the first `larger` batches take one more
        batches, start = [], 0
        for batch in range(count):
            end = start + size + (batch < larger)
            batches.append(times[start:end])
            start = end
        return batches

    def extend(self, states: Tensor) -> None:
        """``states`` stacked, as a step's dense output gives them."""
        if self.into is None:
            self.listed.extend(states.unbind(0))
        else:
            self.into[self.count : self.count + len(states)] = states
        self.count += len(states)

    def stacked(self) -> Tensor:
        if self.into is None:
            return torch.stack(self.listed)
        if self.count != len(self.into):
            raise RuntimeError(f"the solve made {self.count} outputs for {len(self.into)} output times")
        return self.into


def integrate(
    stepper: Stepper,
    y0: Tensor,
    times: list[float],
    options: SolveOptions,
    *,
    record_states: bool = False,
    step_penalty: StepPenalty | None = None,
    keep_state: Callable[[Tensor], None] | None = None,
) -> tuple[Tensor, Stats, Steps, list[Tensor]]:
    """Integrate from ``times[0]`` through every later time.

    By default a step lands exactly on each output time. With ``options.interpolate`` the steps
    head for the last time only and the states at the others come from the stepper's dense output
    inside the accepted step that holds them (an output time that happens to end a step gets that
    step's state). Runs under whatever autograd mode the caller set. Returns the states at
    ``times`` (stacked), the statistics, the accepted-step record (with the dense record if
    ``options.dense``) and ``step_penalty(result, dt)`` of every accepted step (an empty list
    without ``step_penalty``). ``keep_state``, if given, is called with the state at the start of
    every accepted step (a gradient method's own record, apart from ``record_states``).

    With ``options.callbacks.stop`` the steps head for the end of time (of the state's dtype) in the
    direction of ``times[1]`` until the first accepted step on which ``stop`` returns a time; the
    last output is the state there (the step's own state if it is the step's end, else its dense
    output). A stop that never holds ends in a :class:`SolverError` (``max_steps``, or the time
    overflowing the state's dtype).
    """
    stats = Stats()
    log = StepLog(states=[] if check_bool("record_states", record_states) else None)
    if options.dense:
        if stepper.interpolant is None:
            raise ValueError(f"dense=True needs a method with dense output, not {type(stepper).__name__}")
        log.dense = DenseOutput(stepper.interpolant, times[0])
    direction = time_direction(times)
    stop = options.callbacks.stop
    if stop is not None and (len(times) != 2 or options.dense):
        raise ValueError(
            "callbacks.stop needs exactly two times [t0, t1] (t1 only gives the direction) and no "
            f"dense record, got {len(times)} times and dense={options.dense}"
        )
    step_size = options.step_size
    adaptive = step_size is None
    if step_size is not None and stop is None:
        # Fixed steps: the count is known, so a step_size too small for max_steps is refused
        # before the first step, not after max_steps of them.
        n_fixed = fixed_steps_over(times, step_size, options.times_rounding)
        if n_fixed > options.max_steps:
            raise TooManyFixedSteps(step_size, n_fixed, options.max_steps)
    t = times[0]
    y = y0
    # A solve that starts at a jump (the backsolve adjoint's restart at an output time) evaluates
    # the field just after it, on its own side, from the first evaluation on.
    toward_end = math.copysign(math.inf, direction)
    field_time_dtype = options.time_dtype or y0.dtype
    begin_time = beside_jump(t, toward_end, field_time_dtype, options.controller.jump_ts)
    carry = stepper.begin(begin_time, y0, stats)

    interpolate = options.interpolate and adaptive
    controller = options.controller
    if adaptive:
        controller.gains(stepper.order)  # a controller that cannot work with this method fails now
    callbacks = options.callbacks
    # One output time without a stop condition takes no step: no first step size, whose heuristic's
    # trial Euler step would call func past t[0], outside the span.
    if adaptive and (len(times) > 1 or stop is not None):
        if options.first_step is not None:
            # The step asked for, unless the loop could not take it (within its underflow threshold
            # of t0): then twice that threshold, from which it grows.
            threshold = underflow_threshold(times[0], abs(options.first_step))
            dt_abs = abs(options.first_step) if abs(options.first_step) > threshold else 2 * threshold
        else:
            trial_bound = trial_end(t, times[-1], field_time_dtype, options.controller.jump_ts)
            dt_abs = stepper.initial_step_size(t, y0, carry, direction, stats, t_end=trial_bound)
        dt_abs = controller.limit(dt_abs)
    previous_error = 1.0
    after_rejection = False
    keeps_records = any(record is not None for record in (log.states, keep_state, log.dense))
    # Whether the step is shrinking away from non-finite trial steps: set by one, cleared by a
    # finite rejection or a step that grows (not by the slivers accepted in between).
    shrinking_from_non_finite = False
    outputs = _OutputStates(y0, len(times))
    # Steps this short may round away in the state's dtype: each accepted one is compared with y.
    stalls = _StallWatch(torch.finfo(y0.dtype).eps * abs(times[-1] - times[0]))
    penalties: list[Tensor] = []
    # With interpolation, the index of the next output time read from dense output.
    next_output = 1
    # The largest |dt| rho / stability_size among the steps forced at controller.min_step.
    forced_stability = 0.0
    stability_size = getattr(getattr(stepper, "tableau", None), "stability_size", None)

    targets = times[-1:] if interpolate and len(times) > 1 else times[1:]
    if stop is not None:
        targets = [direction * open_end(y0.dtype)]
    # The controller's own landing times inside the span, in the order the solve reaches them. Fixed
    # steps land on their grid only, where their jumps are (SolveOptions.over), and like adaptive
    # ones carry no stage across a jump.
    span = controller.within(times[0], targets[-1]) if targets else DEFAULT_CONTROLLER
    landings = (
        sorted({*span.step_ts, *span.jump_ts}, key=lambda landing: direction * landing) if adaptive else []
    )
    next_landing = 0
    for t_target in targets:
        if step_size is not None:
            dt_abs = fixed_step_size(t, t_target, step_size, options.times_rounding)
            grid_start, n_grid_steps = t, 0  # fixed_grid_point
        while direction * (t_target - t) > 0:
            # A landing within a few ulps of t or of the output time is no step's end of its own: the
            # step beside it ends or starts at it (jump_ends).
            while next_landing < len(landings) and (
                direction * (landings[next_landing] - t) <= 0 or within_ulps(landings[next_landing], t)
            ):
                next_landing += 1
            t_goal = t_target
            if next_landing < len(landings):
                landing = landings[next_landing]
                if direction * (landing - t_target) < 0 and not within_ulps(landing, t_target):
                    t_goal = landing
            try:
                dt_used, lands = next_step_size(
                    t,
                    t_goal,
                    dt_abs,
                    stats.n_steps,
                    options.max_steps,
                    controller.max_step if adaptive else None,
                )
            except SolverError as error:
                non_finite = stepper.failure if shrinking_from_non_finite else None
                raise explain_failure(error, log, options, non_finite, y, y0) from None
            dt = direction * dt_used
            t_next = t_goal if lands else t + dt
            if step_size is not None:
                n_grid_steps += 1
                if not lands:
                    t_next = fixed_grid_point(grid_start, direction, n_grid_steps, dt_abs)
            if not lands:
                # The step the times can represent (as scipy steps): far from 0, t + dt rounds by up to
                # half an ulp of t, which the state would otherwise not follow, a drift per step.
                dt = t_next - t
                dt_used = abs(dt)

            if callbacks.step is not None:
                _call_leaving_state("step", y, callbacks.step, t, y, dt)
            result = stepper.step(t, t_next, y, dt, carry, adaptive)
            stats.add(result.nfe, diffusion=result.nfe_diffusion)
            stats.n_steps += 1
            if result.error_estimate is None:  # a fixed step: recorded as NaN, read by no decision
                error_estimate = math.nan
                trial_non_finite = not bool(torch.isfinite(result.y1).all())
            else:
                error_estimate = float(stepper.error_check(result))
                trial_non_finite = not math.isfinite(error_estimate)
                if error_estimate < 0.0:
                    raise ValueError(
                        f"norm must return a non-negative number, got {error_estimate} at t={t!r}"
                    )
            if trial_non_finite:
                stepper.explain_non_finite()
                if not adaptive:
                    raise SolverError(stepper.failure, t=t, n_steps=stats.n_steps)
                # An overflowing trial step is too long, not fatal: reject it and shrink.
                error_estimate = math.inf
                shrinking_from_non_finite = True

            # An attempt at controller.min_step (proposed so, up to the rounding of the times, or shorter
            # to land), with force_min_step: accepted whatever its finite error.
            at_min_step = (
                adaptive and controller.min_step is not None and min(dt_abs, dt_used) <= controller.min_step
            )
            forced = at_min_step and controller.force_min_step and not trial_non_finite
            accepted = not adaptive or error_estimate <= 1.0 or forced
            if accepted:
                step_dt = (t_goal - t) if lands else dt
                ends_at_jump = bool(span.jump_ts) and jump_ends(t, step_dt, span.jump_ts)[1] is not None
                if callbacks.accept is not None:
                    _call_leaving_state("accept", y, callbacks.accept, t, y, step_dt)
                stats.n_accepted += 1
                log.t.append(t)
                log.dt.append(step_dt)
                log.error_estimate.append(error_estimate)
                if stepper.has_stiffness:
                    log.stiffness_estimate.append(result.stiffness_estimate.detach())
                if forced and error_estimate > 1.0 and stepper.has_stiffness and stability_size is not None:
                    ratio = dt_used * float(result.stiffness_estimate.detach()) / stability_size
                    forced_stability = max(forced_stability, ratio)
                # The caller may refill y0's memory after the solve (a reused buffer): the records
                # that outlive it keep their own copy.
                kept = y.clone() if y is y0 and keeps_records else y
                if log.states is not None:
                    log.states.append(kept.detach())
                if keep_state is not None:
                    keep_state(kept.detach())
                if step_penalty is not None:
                    penalties.append(_checked_penalty(step_penalty(result, dt), t))
                accepted_step = AcceptedStep(stepper, result, t, step_dt, y, t_next, stats)
                if log.dense is not None:
                    stages = accepted_step.stages
                    if kept is not y:  # a field that returns its input (or a view) made y0 its first stage
                        stages = tuple(
                            kept if stage is y0 else stage.clone() if _shares_memory(stage, y0) else stage
                            for stage in stages
                        )
                    log.dense.add_step(t, step_dt, t_next, kept, stages)
                if interpolate:
                    inside = []
                    while next_output < len(times) - 1 and direction * (times[next_output] - t_next) < 0:
                        inside.append(times[next_output])
                        next_output += 1
                    for batch in outputs.batches(inside):
                        outputs.extend(accepted_step.states(batch))
                    if next_output < len(times) - 1 and times[next_output] == t_next:
                        outputs.append(result.y1)
                        next_output += 1
                t_stop = (
                    None
                    if stop is None
                    else _call_leaving_state(
                        "stop", result.y1, stop, t, t_next, result.y1, accepted_step.states
                    )
                )
                if t_stop is not None:
                    t_stop = finite_float("the time callbacks.stop returned", t_stop)
                    if not (direction * (t_stop - t) > 0 and direction * (t_stop - t_next) <= 0):
                        raise ValueError(
                            f"callbacks.stop returned t={t_stop!r}, outside the step ({t}, {t_next}]"
                        )
                    log.stop_time = t_stop
                    y = result.y1 if t_stop == t_next else accepted_step.states([t_stop])[0]
                    break
                if adaptive:
                    stalls.observe(dt_used, y, result, t, stats)
                t = t_next
                y = result.y1
                if adaptive:
                    factor = controller.accept_factor(
                        error_estimate, previous_error, stepper.order, after_rejection
                    )
                    # Landing on an output time shortens a step for reasons other than accuracy:
                    # keep the step the controller wanted before that, and the error it remembers
                    # (a sliver's near-zero error would shrink the next step through the PI term).
                    if not (lands and dt_used < dt_abs and stepper.landing_keeps_error_memory):
                        previous_error = max(error_estimate, 1e-4)
                    dt_abs = controller.limit(max(dt_used * factor, dt_abs) if lands else dt_used * factor)
                    after_rejection = False
                    if factor > 1.0:
                        shrinking_from_non_finite = False
            else:
                if not trial_non_finite:
                    shrinking_from_non_finite = False
                stats.n_rejected += 1
                if callbacks.reject is not None:
                    _call_leaving_state("reject", y, callbacks.reject, t, y, dt)
                dt_abs = dt_used * controller.reject_factor(error_estimate, stepper.order)
                if controller.min_step is not None and dt_abs < controller.min_step:
                    if not controller.force_min_step or at_min_step:
                        raise SolverError(
                            f"the step size fell below min_step={controller.min_step:g} (error estimate "
                            f"{error_estimate:.3g} at dt={dt_used:.3e}"
                            + ("; the step was not finite)" if trial_non_finite else ")"),
                            t=t,
                            n_steps=stats.n_steps,
                        )
                    dt_abs = controller.min_step  # the next attempt is forced
                after_rejection = True
            # After dense output, which may have evaluated the next step's first stage.
            carry = stepper.next_carry(result, accepted, carry)
            if accepted and ends_at_jump:
                carry = stepper.after_jump(carry)
        outputs.append(y)
    if forced_stability > 1.0:
        # A forced step beyond the explicit method's stability region amplifies the error of every
        # such step: the solution may grow without bound while each step stays finite.
        # No counts in the text: a training loop would print it again for every new count.
        warn(
            f"steps were forced at min_step={controller.min_step:g} where |dt| * rho / stability_size "
            "exceeds 1 (solution.steps: error_estimate above 1, stiffness_estimate): outside the "
            "explicit method's stability region the forced solution is not to be trusted (lower min_step)",
            RuntimeWarning,
        )
    if stop is not None and log.stop_time is None:
        raise SolverError(STOP_NEVER_HELD, t=t, n_steps=stats.n_steps)
    if log.dense is not None:
        log.dense.add_state(y.clone() if y is y0 else y)
    return outputs.stacked(), stats, log.to_steps(stepper.has_stiffness), penalties


class _StallWatch:
    """Accepted steps shorter than ``below`` (the state dtype's ``eps`` times the span) whose ``y1``
    equals ``y`` in every element while the step's first stage is not zero: increments that round
    away in the state's dtype. :data:`STALLED_STEPS` of them in a row, the step size held within a
    factor of :data:`_STALL_GROWTH` of the run's first (a step growing out of a tiny first step
    stalls harmlessly on its way up), are a :class:`SolverError`: the solve would return a state
    that stopped following the solution (a float32 state pinned at float32's largest value,
    accepted step after step), or grind to ``max_steps``."""

    def __init__(self, below: float) -> None:
        self.below = below
        self.length = 0
        self.first_dt = 0.0

    def observe(self, dt_used: float, y: Tensor, result: Any, t: float, stats: Stats) -> None:
        if dt_used >= self.below or not torch.equal(result.y1, y):
            self.length = 0
            return
        stages = getattr(result, "stages", None)
        if (stages and not bool(stages[0].any())) or (
            self.length and dt_used > _STALL_GROWTH * self.first_dt
        ):
            self.length = 0  # a zero derivative (nothing to add), or a step growing out of the stall
            return
        if self.length == 0:
            self.first_dt = dt_used
        self.length += 1
        if self.length < STALLED_STEPS:
            return
        largest = float(y.detach().abs().max())
        overflow = largest == torch.finfo(y.dtype).max
        raise SolverError(
            f"{STALLED_STEPS} accepted steps in a row (the last dt={dt_used:.3e}) left every element of "
            "the state unchanged although its derivative is not zero: their increments round away in "
            f"{str(y.dtype).removeprefix('torch.')} (largest |y| {largest:.4g}"
            + (", the dtype's largest value: the solution overflows it" if overflow else "")
            + "); solve in float64, or rescale the state",
            t=t,
            n_steps=stats.n_steps,
        )


def integrate_ode(
    func: VectorField,
    y0: Tensor,
    times: list[float],
    options: SolveOptions,
    *,
    f0: Tensor | None = None,
    record_states: bool = False,
    step_penalty: Callable[[StepResult, float], Tensor] | None = None,
    keep_state: Callable[[Tensor], None] | None = None,
) -> tuple[Tensor, Stats, Steps, list[Tensor]]:
    """:func:`integrate` with the Runge--Kutta stepper of ``options.tableau``. ``f0 = func(times[0],
    y0)`` may be passed if already evaluated (it is then not counted here)."""
    stepper = RKStepper(
        func,
        options.runge_kutta_tableau,
        options.rtol,
        options.atol,
        options.norm,
        f0=f0,
        time_dtype=options.time_dtype,
        compile_options=options.compile,
        jump_ts=options.controller.jump_ts,
    )
    return integrate(
        stepper,
        y0,
        times,
        options,
        record_states=record_states,
        step_penalty=step_penalty,
        keep_state=keep_state,
    )
