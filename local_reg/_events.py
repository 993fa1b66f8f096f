"""Terminal events: integrate until ``event_fn(t, y)`` changes sign (torchdiffeq's ``odeint_event``).

The solve is one run of the one loop (:func:`local_reg._integrate.integrate`) with a stop condition
(``StepCallbacks.stop``): after every accepted step the event function is evaluated at the step's
end; on the first step where it has changed sign, the event time is located inside the step on the
step's dense output (:mod:`local_reg.interpolants`) by the Illinois variant of regula falsi,
safeguarded by bisection, to ``4 eps |dt|`` of the step in the state's dtype and no finer than the
times ``event_fn`` gets (5--18 evaluations of ``event_fn`` on the problems of
``benchmarks/events.py``), and the solve ends there. Only the steps' ends are read: a sign change
and back within one step is not seen (as in torchdiffeq and diffrax). Several entries
are combined as torchdiffeq combines them: ``h = min_i s_i g_i(t, y)`` with ``s = sign(g(t0, y0))``
starts positive, and the event is the first time any entry changes sign. With a ``direction``
(diffrax's; or scipy's, one per entry), ``s`` is set again at the start of every step: for
up-crossings ``s_i = -1`` where ``g_i < 0`` there, for down-crossings ``s_i = 1`` where ``g_i > 0``,
and an entry on the other side or at 0 is left out of the minimum for that step (it cannot cross
that way within it); an entry without a direction keeps its sign at ``t0``.

Gradients, by the implicit function theorem. The solve differentiates the state ``y(t_e)`` at the
event time *held fixed* (any gradient method; the last output lies inside the last step, which the
stepwise methods differentiate like any dense output). ``g(t_e, y(t_e; theta); theta_g) = 0``
defines ``t_e``, so::

    dt_e = -(dg/dy . dy|_t + dg/dtheta_g dtheta_g) / D,     D = dg/dt + dg/dy . f(t_e, y_e)
    dy_e = dy|_t + f(t_e, y_e) dt_e

Both are added as a term ``s = (h - h.detach()) / -D`` that is zero in value: ``t_e + s`` and
``y_e + f s`` (the straight-through form of torchdiffeq's ``ImplicitFnGradientRerouting``). Autograd
then carries the gradient to whatever ``g`` depends on, the event function's own parameters
included (torchdiffeq leaves those without a gradient). It costs one evaluation of ``event_fn``
in grad mode and, when a gradient can flow, one of ``func`` and another of ``event_fn``. ``D`` is
read where the sign has changed, or, where ``g`` is flat there (clamped at 0), at the other end of
the root's final bracket (two more evaluations of ``event_fn``). The gradient w.r.t. ``t0`` uses
``dy(t)/dt0 = -(dy(t)/dy0) f(t0, y0)``: an identity on ``y0`` whose backward adds
``-<dL/dy0, f(t0, y0)>`` to ``t0`` (:class:`local_reg.gradients._times.StartTime`, as for
:func:`local_reg.odeint`'s times), ``f(t0, y0)`` evaluated then.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor
from torch.autograd import forward_ad

from ._autograd import first_order_only, solve_entry_point, untraced_hook
from ._errors import STEP_LIMIT_REACHED, SolverError, warn
from ._integrate import DEFAULT_MAX_STEPS, STOP_NEVER_HELD, StepCallbacks, open_end
from ._odeint import odeint
from ._step import VectorField, beside_jump, time_tensor
from ._tuple import StateField, accepts_structured_states
from ._validate import (
    ARGS_HINT,
    DT0_HINT,
    STEP_CONTROL_SPELLINGS,
    THROW_HINT,
    batched_cotangent,
    call_leaving_input,
    carries_tangent,
    check_bool,
    check_function_transforms,
    check_penalty_time_gradient,
    check_strided,
    checked_field,
    keyword_parameters,
    one_time,
    scipy_jacobian_hints,
    time_dtype,
    type_name,
    unknown_keywords_error,
    validate_state,
    without_autocast,
)
from .controller import PIController
from .gradients._finite import passing_cotangents_on
from .gradients._times import StartTime
from .solution import Solution, State, Stats

EventFunction = Callable[[Tensor, Any], Tensor]
"""``event_fn(t, y) -> tensor``: ``t`` a 0-dim tensor in the dtype ``func`` gets, ``y`` the state (a tuple for
a tuple ``y0``); the output is a floating-point tensor of any fixed shape (a 0-dim tensor for one
event), each of whose entries is an event function."""


EVENT_UNREACHED = "event_fn did not change sign within max_steps"
"""How the reason of a solve until an event that reached its step limit begins (an event that never
happens, the likeliest cause, which the loop cannot tell apart)."""

EVENT_BEYOND_LARGEST_TIME = (
    "event_fn did not change sign before t reached the largest time the solve represents"
)
"""Why a solve until an event failed when its steps grew until the time overflowed (an event that
never happens on a solution that settles)."""

_MAX_ROOT_ITERATIONS = 400
"""A cap the safeguarded iteration does not reach: a step's bracket is at most ``2 max(|t0|, |t1|)``
wide and the tolerance ``4 eps max(|t0|, |t1|)``, 51 halvings in float64 at three evaluations per
halving, plus the secant steps in between (at most 186 evaluations over 40,000 random brackets)."""


EntryDirections = bool | tuple[bool | None, ...] | None
"""``odeint_event``'s ``direction`` once checked: one for all entries of ``event_fn``, or one per
entry (flattened)."""


class CombinedEvent:
    """``event_fn`` as one number that is positive at the start: ``min_i s_i g_i(t, y)``,
    ``s = sign(g(t0, y0))``; with a ``direction``, the minimum over the entries that can cross
    the way theirs asks, ``s`` set at the start of each step (:meth:`arm`). Each call checks
    ``event_fn``'s output."""

    def __init__(
        self,
        event_fn: EventFunction,
        layout: Callable[[Tensor], Any],
        t0: float,
        y0: Tensor,
        time_dtype: torch.dtype,
        direction: EntryDirections = None,
    ) -> None:
        if isinstance(event_fn, (list, tuple)) and len(event_fn) > 0 and all(map(callable, event_fn)):
            raise TypeError(
                f"event_fn must be callable as event_fn(t, y), got a {type(event_fn).__name__} (scipy's "
                "list of events: one event_fn returning them stacked, event_fn=lambda t, y: "
                "torch.stack([e(t, y) for e in events]), ends the solve at the first of them; per-entry "
                "direction=[...] as scipy's)"
            )
        if not callable(event_fn):
            raise TypeError(f"event_fn must be callable as event_fn(t, y), got {type(event_fn).__name__}")
        self.event_fn = event_fn
        self.layout = layout
        self.time_dtype = time_dtype
        """The dtype of the time ``event_fn`` gets (that of the solve's times, the wider of ``t0``'s
        and the state's)."""
        self.shape: torch.Size | None = None
        with torch.no_grad():
            initial = self.values(t0, y0.detach())
        self.shape = initial.shape
        if isinstance(direction, tuple):
            if len(direction) != initial.numel():
                raise ValueError(
                    f"direction has {len(direction)} entries, but event_fn returned shape "
                    f"{tuple(initial.shape)} at t0: give one per entry of its output ({initial.numel()}, "
                    "counted flattened)"
                )
            if len(set(direction)) == 1:
                direction = direction[0]  # one for all: named as the single value in messages
        self.direction = direction
        """``None``: any sign change; ``True``: up-crossings only (negative to non-negative);
        ``False``: down-crossings only (positive to non-positive); or one of these per entry."""
        self.entries: tuple[bool | None, ...] = (
            direction if isinstance(direction, tuple) else (direction,) * initial.numel()
        )
        """``direction`` entry by entry (flattened)."""
        self.start_signs = self.signs = torch.sign(initial)
        zero = self.signs == 0
        if direction is not None:

            def entries_asking(way: bool | None) -> Tensor:
                asking = [entry is way for entry in self.entries]
                return torch.tensor(asking, device=initial.device).reshape(initial.shape)

            self.up, self.down, self.any_way = (entries_asking(way) for way in (True, False, None))
            zero &= self.any_way
        zero_entries = zero.reshape(-1).nonzero()
        self.zero_at_start = int(zero_entries[0]) if len(zero_entries) else None
        """The entry zero at ``t0`` that puts the event there (as in torchdiffeq), if any: one
        counting any sign change. An entry with a direction has not crossed either way yet: its
        crossing is still to come."""
        self.arm(initial)
        self.armed_at_start = self.signs != 0
        self.start_value = float(self.combine(initial))

    def arm(self, values: Tensor) -> None:
        """Set ``s`` from ``values``, ``event_fn`` at the start of the next step, for a
        ``direction``: the entries strictly on the side their direction crosses from, and the
        entries without one at their signs at ``t0``."""
        if self.direction is None:
            return
        side = torch.where(self.up & (values < 0), -1.0, torch.where(self.down & (values > 0), 1.0, 0.0))
        self.signs = torch.where(self.any_way, self.start_signs, side.to(values.dtype))

    def left_out_advice(self) -> str:
        """What a solve that never met its event is told of an entry that crossed zero (or left it)
        the way its direction leaves out, ``""`` if none: a time limit that falls through zero
        under ``direction=True`` is the usual cause. An entry on the side its direction crosses
        from leaves it only by the crossing that ends the solve, so one there now that was not at
        ``t0`` is such an entry (found here once, not looked for at every step)."""
        if self.direction is None:
            return ""
        left_out = ((self.signs != 0) & ~self.armed_at_start).reshape(-1).nonzero()
        if not len(left_out):
            return ""
        index = int(left_out[0])
        entries = list(self.entries)
        moved = "fell below" if entries[index] else "rose above"
        entries[index] = None
        return (
            f"entry {index} of event_fn {moved} zero after t0, a crossing its direction leaves out, and "
            "never crossed back: a time limit among the entries must cross the way its direction "
            "asks (t - t_max for up-crossings, t_max - t for down-crossings; the other way round with "
            f"reverse_time) or count any crossing, e.g. direction={entries}"
        )

    def combine(self, values: Tensor) -> Tensor:
        """``h`` of the entries' ``values``: positive while none has crossed (``inf`` with a
        direction where none can cross in this step)."""
        weighted = values * self.signs
        if self.direction is not None:
            weighted = torch.where(self.signs != 0, weighted, math.inf)
        return weighted.amin()

    def values(self, t: float | Tensor, y: Tensor) -> Tensor:
        time = t if isinstance(t, Tensor) else time_tensor(t, y, self.time_dtype)
        # Checked as func is: a changed y would be the step's end state, which the solve goes on from.
        # Outside torch.autocast on every call, as the root search runs inside the solve: a sign at
        # t0 read in half precision could differ from the same state's read there, and the search
        # would miss the crossing.
        with without_autocast():
            out = call_leaving_input("event_fn", (), lambda t, y: self.event_fn(t, self.layout(y)), time, y)
        if not isinstance(out, Tensor):
            raise TypeError(f"event_fn must return a torch.Tensor, got {type(out).__name__}")
        check_strided("event_fn", out, returned=True)
        if not out.is_floating_point():
            raise TypeError(f"event_fn must return a floating-point tensor, got dtype {out.dtype}")
        if out.numel() == 0:
            raise ValueError("event_fn returned an empty tensor: it must hold at least one event value")
        if self.shape is not None and out.shape != self.shape:
            raise ValueError(
                f"event_fn returned shape {tuple(out.shape)}, but {tuple(self.shape)} at t0: its shape "
                "must not change"
            )
        if out.device != y.device:
            raise ValueError(f"event_fn returned a tensor on {out.device}, expected y0's device {y.device}")
        if not bool(torch.isfinite(out).all()):
            raise ValueError(f"event_fn returned a non-finite value at t={float(time)!r}")
        return out

    def __call__(self, t: float | Tensor, y: Tensor) -> Tensor:
        return self.combine(self.values(t, y))


class _EventEntry:
    """Entry ``index`` of ``event``'s ``event_fn`` alone, ``g_k(t, y)``: at an event at ``t0`` the
    entry that is zero there, whose own slope locates the event (the combined ``h`` weighs it by
    its sign at ``t0``, zero)."""

    def __init__(self, event: CombinedEvent, index: int) -> None:
        self.event = event
        self.index = index
        self.time_dtype = event.time_dtype

    def __call__(self, t: float | Tensor, y: Tensor) -> Tensor:
        return self.event.values(t, y).reshape(-1)[self.index]


def _time_spacing(value: float, dtype: torch.dtype) -> float:
    """The gap from ``value`` (non-negative, rounded to ``dtype``) to the next larger time of ``dtype``."""
    rounded = torch.tensor(value, dtype=dtype, device="cpu")
    return float(torch.nextafter(rounded, torch.tensor(math.inf, dtype=dtype, device="cpu")) - rounded)


def find_root(
    h: Callable[[float], float], ta: float, ha: float, tb: float, hb: float, xtol: float
) -> tuple[float, float]:
    """A bracket within ``xtol`` of a sign change of ``h`` in ``(ta, tb]``, given ``h(ta) = ha > 0 >=
    hb = h(tb)``: its end where ``h > 0`` and its end where ``h <= 0`` (the event has happened, the
    event time).

    Illinois regula falsi (Dowell and Jarratt, BIT 11, 1971), superlinear on a simple root, with
    two safeguards as in Brent's method: a trial point stays ``xtol / 2`` (and at least one float)
    inside the bracket, so that once one end has converged the next point lands across the root and
    closes the bracket; and a bracket that has not halved in three iterations is bisected, so that
    no ``h`` (a multiple root, a jump) takes more than three evaluations per halving."""
    replaced = 0  # which end the last iteration replaced: +1 ta, -1 tb
    widths = [math.inf] * 3
    # Not done at hb == 0: an h that reaches 0 and stays there (a clamped gap) is 0 from the sign
    # change on, so only the bracket's width locates its first zero. Regula falsi then proposes
    # just inside tb: h > 0 there ends the search (an exact root), 0 again means a plateau. One
    # probe a little further in finds the edge of a plateau a few ulps wide (an h that rounds to 0
    # around its root; bisecting the whole bracket down to it took ~30 evaluations); a wider one
    # (a clamped gap) is bisected.
    plateau = probed = False
    for _ in range(_MAX_ROOT_ITERATIONS):
        width = abs(tb - ta)
        if width <= xtol:
            break
        edge = tb - math.copysign(2 * xtol, tb - ta)
        if plateau and not probed and min(ta, tb) < edge < max(ta, tb):
            probed = True
            tc = edge
        # ha == hb: both ends' values halved to 0 (subnormal event values), no secant to follow.
        elif plateau or width > 0.5 * widths[-3] or ha == hb:
            tc = 0.5 * (ta + tb)
        else:
            # At least one float inside: with xtol one ulp, half of it rounds back onto an end.
            margin, lower, upper = 0.5 * xtol, min(ta, tb), max(ta, tb)
            low = max(lower + margin, math.nextafter(lower, math.inf))
            high = min(upper - margin, math.nextafter(upper, -math.inf))
            tc = min(max(tb - hb * (tb - ta) / (hb - ha), low), high)
        widths.append(width)
        hc = h(tc)
        if hc > 0.0:
            ta, ha = tc, hc
            if replaced == 1:
                hb *= 0.5
            replaced = 1
        else:
            plateau = hc == 0.0 and hb == 0.0
            tb, hb = tc, hc
            if replaced == -1:
                ha *= 0.5
            replaced = -1
    return ta, tb


class EventLocator:
    """The stop condition of an event solve: ``None`` while ``h`` stays positive at the ends of
    the accepted steps; on the first step where it does not, the event time inside it."""

    def __init__(self, event: CombinedEvent) -> None:
        self.event = event
        self.start_value = event.start_value
        """``h`` at the start of the current step (positive)."""
        self.live: tuple[float, Tensor] | None = None
        """Once located, the end of the root's final bracket where ``h`` is still positive, and the
        dense output's state there (where the root finder read ``h > 0``)."""

    def __call__(
        self, t0: float, t1: float, y1: Tensor, dense: Callable[[list[float]], Tensor]
    ) -> float | None:
        # Detached: a view of a tensor that requires grad still requires grad under no_grad.
        with torch.no_grad():
            values = self.event.values(t1, y1.detach())
            end_value = float(self.event.combine(values))
            if end_value > 0.0:
                # The next step starts here: with a direction, the entries that may cross in it.
                self.event.arm(values)
                self.start_value = float(self.event.combine(values))
                return None
            # What the step's dense output can resolve: a fraction of the step set by the state's
            # dtype, and no finer than the times event_fn gets (one ulp of them: far from t = 0,
            # a few ulps are a noticeable part of the step, and the state there misses the event).
            xtol = max(
                4 * torch.finfo(y1.dtype).eps * abs(t1 - t0),
                _time_spacing(max(abs(t0), abs(t1)), self.event.time_dtype),
            )
            live_time, event_time = find_root(
                lambda t: float(self.event(t, dense([t])[0].detach())),
                t0,
                self.start_value,
                t1,
                end_value,
                xtol,
            )
            self.live = live_time, dense([live_time])[0].detach()
            return event_time


class _InitialRate:
    """``f(t0, y0)`` for the backward pass of :class:`StartTime`, counted in ``stats.nfe_backward``
    of the event solve (set once the solve has run)."""

    def __init__(self, func: VectorField, t0: float, time_dtype: torch.dtype) -> None:
        self.func = func
        self.t0 = t0
        self.time_dtype = time_dtype
        self.stats = Stats()  # replaced by the event solve's, before any backward pass

    def __call__(self, y0: Tensor) -> Tensor:
        f0 = self.func(time_tensor(self.t0, y0, self.time_dtype), y0)
        self.stats.nfe_backward = (self.stats.nfe_backward or 0) + 1
        return f0


_ODEINT_KEYWORDS = frozenset(keyword_parameters(odeint)) - {"func", "y0", "t", "dense"}
"""The keywords :func:`odeint_event` passes on to :func:`local_reg.odeint`."""

_FORWARD_MODE = (
    "odeint_event: {} forward-mode tangents (torch.autograd.forward_ad), which odeint_event cannot "
    "differentiate: the event time's implicit-function derivative is a reverse-mode one (their "
    "tangents would miss the event time's shift); differentiate with torch.autograd (loss.backward(), "
    "torch.autograd.grad)"
)


def _reroute(
    event: CombinedEvent | _EventEntry,
    func: VectorField,
    t_event: float,
    y_event: Tensor,
    t_dtype: torch.dtype,
    field_t_dtype: torch.dtype,
    live: tuple[float, Tensor] | None = None,
    rate_time: float | None = None,
) -> tuple[Tensor, Tensor, int]:
    """``(t_e, y_e, nfe)``: the event time as a tensor of ``t_dtype`` and the state there,
    differentiable by the implicit function theorem (the module docstring); ``y_event`` is the
    state at ``t_e`` held fixed. ``func`` gets times in ``field_t_dtype``, ``event_fn`` in
    ``event.time_dtype``.

    ``h`` is differentiated at ``t_e``, the end of the root's bracket where ``h <= 0``; where it does
    not change along the solution there (an ``event_fn`` clamped at 0 past the crossing, ``relu``),
    at ``live = (time, state)``, the bracket's other end, within the root finder's tolerance before
    ``t_e``, where the root finder read ``h > 0`` (the state's value there, its graph
    ``y_event``'s): the crossing's own slope. ``rate_time``: where ``f`` is evaluated for
    ``dy/dt`` there (default ``t_e``; beside a jump at ``t_e``, the solve's side of it)."""
    event_t = torch.tensor(t_event, dtype=t_dtype, device=y_event.device)
    # Tangents are possible only inside forward AD's dual_level (torch's own record of it).
    dual_level = getattr(forward_ad, "_current_level", -1) >= 0
    if not torch.is_grad_enabled() and not dual_level:
        return event_t, y_event, 0
    crossing = event(t_event, y_event)
    if dual_level and (carries_tangent(y_event) or carries_tangent(crossing)):
        raise ValueError(_FORWARD_MODE.format("func or event_fn uses a tensor that carries"))
    if not torch.is_grad_enabled() or not crossing.requires_grad:
        return event_t, y_event, 0
    with torch.no_grad():
        rate_at = t_event if rate_time is None else rate_time
        rate = func(time_tensor(rate_at, y_event, field_t_dtype), y_event)
    along = _rate_along_solution(event, t_event, y_event, rate, crossing.dtype)
    if float(along.detach()) == 0.0 and live is not None:
        live_time, live_state = live
        y_live = y_event + (live_state - y_event).detach()
        crossing = event(live_time, y_live)
        along = _rate_along_solution(event, live_time, y_live, rate, crossing.dtype)
    rate_along = float(along.detach())
    # The warnings carry no per-solve values: a training loop would print them again for each.
    if rate_along == 0.0:
        warn(
            "event_fn does not change along the solution at the event (a tangential crossing): the "
            "event time is not differentiable there and gets no gradient"
        )
        return event_t, y_event, 1
    # The shift gives the implicit function theorem's first derivatives exactly; its second
    # derivatives would miss the terms of ``rate`` and ``along`` (held constant).
    shift = first_order_only(
        (crossing.detach() - crossing) / along.detach(),
        "odeint_event's event time and state are differentiable to first order only: a second "
        "derivative through them (create_graph=True, a Hessian) is not available",
    )
    if shift.requires_grad:
        shift.register_hook(untraced_hook(functools.partial(_within_range, along=rate_along)))
    return event_t + shift.to(t_dtype), y_event + rate * shift.to(y_event.dtype), 1


def _within_range(grad: Tensor | None, *, along: float) -> Tensor | None:
    """The event time's cotangent ``grad``, or zeros with a warning where ``-grad / along``, the
    cotangent of ``event_fn``'s value, overflows its dtype (an ``event_fn`` of subnormal scale,
    or a loss that weighs the event time heavily beside a slow one): backpropagated into
    ``event_fn``'s graph it would be ``inf`` and NaN, silently."""
    # A non-finite cotangent is the loss's, passed on as it is (not an overflow of the quotient); a
    # batch of cotangents (jacobian(vectorize=True)) cannot be read, and is passed on too, as is an
    # undefined one (gradcheck's check of undefined cotangents hands the hook None).
    if grad is None or batched_cotangent(grad):
        return grad
    if not bool((torch.isfinite(grad) & (grad.abs() > torch.finfo(grad.dtype).max * abs(along))).any()):
        return grad
    dtype = str(grad.dtype).removeprefix("torch.")
    warn(
        "event_fn changes so slowly along the solution at the event that the event time's gradient "
        f"over its rate (the gradient of event_fn's value) overflows {dtype}: the event time gets no "
        "gradient; scale event_fn up (its event time stays the same)"
    )
    return torch.zeros_like(grad)


def _rate_along_solution(
    event: CombinedEvent | _EventEntry, t: float, y: Tensor, rate: Tensor, dtype: torch.dtype
) -> Tensor:
    """``dh/dt + dh/dy . f``: how fast ``h`` changes along the solution at ``(t, y)``, a constant."""
    with torch.enable_grad():
        time = time_tensor(t, y, event.time_dtype).requires_grad_(True)
        state = y.detach().requires_grad_(True)
        grad_t, grad_y = torch.autograd.grad(event(time, state), (time, state), allow_unused=True)
    along = torch.zeros((), dtype=dtype, device=rate.device)
    if grad_t is not None:
        along = along + grad_t
    if grad_y is not None:
        along = along + (grad_y * rate).sum()
    return along


def direction_time(t0: float, reverse_time: bool, largest: float = math.inf) -> float:
    """The second time of an event solve from ``t0``, which gives only its direction:
    ``t0 +- max(1, |t0|)``, which differs from ``t0`` in every dtype, held within ``+-largest`` (a
    narrow time dtype's range)."""
    direction = -1.0 if reverse_time else 1.0
    t1 = t0 + direction * max(1.0, abs(t0))
    return max(-largest, min(t1, largest))


def _scipy_attribute(event_fn: EventFunction, name: str, *, bools: bool) -> numbers.Real | bool | None:
    """``event_fn``'s attribute ``name`` where it has scipy's type (scipy reads its event settings
    from the function's attributes), else ``None``: an attribute of another type (a tensor; a
    bool, unless ``bools``), or any attribute of a ``torch.nn.Module`` (scipy's events are plain
    functions), is the object's own of the same name."""
    if isinstance(event_fn, torch.nn.Module):
        return None
    value = getattr(event_fn, name, None)
    if isinstance(value, (bool, np.bool_)):
        return bool(value) if bools else None
    return value if isinstance(value, numbers.Real) else None


def _checked_direction(direction: object) -> EntryDirections:
    """``direction`` as ``odeint_event`` takes it: ``None``, a bool, or a list or tuple of them
    (made a tuple); anything else is a ``TypeError`` naming it."""
    if isinstance(direction, (list, tuple)):
        for index, entry in enumerate(direction):
            if entry is not None and not isinstance(entry, bool):
                raise TypeError(_direction_error(f"direction[{index}]", "None, True or False", entry))
        return tuple(direction)
    if direction is not None and not isinstance(direction, bool):
        # numpy's and torch's bools and arrays too: a tensor's truth would be read on every call.
        expected = "None, True, False or a list of them, one per entry of event_fn's output"
        raise TypeError(_direction_error("direction", expected, direction))
    return direction


def _direction_error(name: str, expected: str, value: object) -> str:
    """Why ``value`` is refused as ``name``; a number is scipy's spelling, which is told its own."""
    scipy = isinstance(value, numbers.Real) and not isinstance(value, bool)
    hint = " (scipy's direction=+1 is True here, -1 False, 0 None)" if scipy else ""
    return f"{name} must be {expected}, got {type_name(value)}{hint}"


def _with_scipy_attributes(event_fn: EventFunction, direction: EntryDirections) -> EntryDirections:
    """``direction``, or where it is ``None`` the one scipy's ``event_fn.direction`` asks for
    (its sign: up-crossings, down-crossings, either); an ``event_fn.terminal`` of scipy's that
    goes on past the first crossing is refused (the solve would end there without a word)."""
    terminal = _scipy_attribute(event_fn, "terminal", bools=True)
    if terminal is not None and terminal != 1:
        going_on = (
            "records the crossing and goes on" if not terminal else f"ends the solve at crossing {terminal}"
        )
        raise ValueError(
            f"event_fn.terminal={terminal!r}: scipy's event then {going_on}, but odeint_event's events are "
            "terminal, the solve ends at the first; solve again from each event in a loop (docs/solver.md, "
            "Events) and set event_fn.terminal = True"
        )
    scipy_direction = _scipy_attribute(event_fn, "direction", bools=False)
    if scipy_direction is None:
        return direction
    sign = float(scipy_direction)
    if math.isnan(sign):
        raise ValueError("event_fn.direction is nan: scipy's direction is positive, negative or 0")
    asked = None if sign == 0 else sign > 0
    given = direction if isinstance(direction, tuple) else (direction,)
    if direction is not None and any(entry != asked for entry in given):
        raise ValueError(
            f"direction={direction!r} and event_fn.direction={scipy_direction!r} differ (scipy's "
            f"direction={scipy_direction!r} is direction={asked!r} here): give one"
        )
    return asked if direction is None else direction


@solve_entry_point
def odeint_event(
    func: Callable[[Tensor, Any], Any],
    y0: State,
    t0: Tensor | float,
    *,
    event_fn: EventFunction,
    reverse_time: bool = False,
    direction: bool | Sequence[bool | None] | None = None,
    **odeint_kwargs: Any,
) -> tuple[Tensor, Solution[State]]:
    """Solve ``dy/dt = func(t, y)`` from ``y(t0) = y0`` until ``event_fn(t, y)`` changes sign
    (torchdiffeq 0.2.5's ``odeint_event``; a terminal event).

    Args:
        func, y0: as in :func:`local_reg.odeint` (a tuple ``y0`` gives ``event_fn`` tuples too).
        t0: the initial time: a float or a one-element tensor (which then gets a gradient).
        event_fn: ``event_fn(t, y) -> tensor`` of any fixed shape (a 0-dim tensor for one event):
            the solve stops at the first time any entry changes sign (the way ``direction``
            asks). An entry that is zero at ``t0`` puts the event at ``t0`` (with no direction).
        reverse_time: integrate towards decreasing time.
        direction: which crossings are events, as diffrax's ``Event(direction=)``: ``None`` (the
            default) any sign change; ``True`` an entry going from negative to zero or above,
            ``False`` from positive to zero or below, in the order the solve passes them (with
            ``reverse_time``, as time decreases); or a list of these, one per entry of
            ``event_fn``'s output (counted flattened), as scipy gives each event its own, e.g.
            ``[True, None]`` for an up-crossing and a time limit ``t_max - t`` (which falls). With a
            direction an entry that is zero at ``t0`` is no event there: it counts from the first
            step end where it is not zero (scipy reports an event at ``t0`` where the entry then
            moves the way asked). Left ``None``, it is read from a scipy event
            function's ``event_fn.direction`` (a number: positive ``True``, negative ``False``, 0
            ``None``); a ``direction`` that differs from that attribute is a ``ValueError``, as is
            scipy's ``event_fn.terminal`` other than ``True`` (scipy's non-terminal event:
            odeint_event's events are terminal).
        odeint_kwargs: every other keyword of :func:`local_reg.odeint` (``method``, ``rtol``,
            ``atol``, ``gradient``, ``adjoint_params``, ``max_steps``, ``callbacks``, ...) but
            ``dense``; ``t`` is replaced by ``t0``.

    Returns:
        ``(event_t, solution)``: the event time (a 0-dim tensor in ``t0``'s dtype, or ``y0``'s for
        a float ``t0``) and the :class:`~local_reg.Solution` with ``ts = [t0, event_t]`` and
        ``ys = [y0, y(event_t)]``. Both are differentiable w.r.t. ``y0``, ``func``'s parameters,
        ``t0`` and whatever ``event_fn`` depends on, by the implicit function theorem, with every
        gradient method but ``"interpolating_adjoint"``, refused by name (a stopped solve keeps no
        dense record; docs/solver.md, "Events").

    The event time is located on the last step's dense output to ``4 eps |dt|`` of the step
    (``y0``'s ``eps``), and no finer than the times' dtype resolves; ``func`` and ``event_fn`` get
    times in the wider of ``t0``'s and ``y0``'s dtypes (``y0``'s for a float ``t0``), as
    :func:`local_reg.odeint` for a tensor
    ``t``. The state there is read from the same dense output (the step's own state if the event
    is its end). ``event_fn`` is evaluated once at ``t0``, once per accepted step and a few times in
    the located step, without a graph.

    Raises:
        ValueError, TypeError: bad arguments, or an ``event_fn`` output that is not a floating-point
            tensor of a fixed shape with finite values (naming ``event_fn``).
        SolverError: the event was not reached within ``max_steps`` attempted steps (or the time
            overflowed), or any failure of :func:`local_reg.odeint`.
    """
    for name in ("t", "dense"):
        if name in odeint_kwargs:
            raise ValueError(
                f"odeint_event does not take {name}=: it solves from t0 to the event (for the dense "
                "solution, solve again with odeint(func, y0, [t0, event_t], dense=True))"
            )
    if not _ODEINT_KEYWORDS.issuperset(odeint_kwargs):
        raise unknown_keywords_error(
            "odeint_event",
            set(odeint_kwargs) - _ODEINT_KEYWORDS,
            [*_ODEINT_KEYWORDS, "event_fn", "reverse_time", "direction"],
            {
                "options": "torchdiffeq's dict of solver settings: local_reg.odeint_event takes them as "
                "keywords, e.g. step_size=, first_step=, max_steps= for max_num_steps; "
                "local_reg.compat.odeint_event takes torchdiffeq's signature",
                "adjoint": "diffrax's adjoint: gradient= here, e.g. gradient='adjoint'",
                "dt0": DT0_HINT,
                "event": "diffrax's Event: event_fn= here",
                "events": "scipy's events: event_fn= here, one function whose output's entries are the "
                "events (torch.stack them), with a direction each if they differ",
                "terminal": "scipy's event attribute: the events here are terminal; to go on past one, "
                "solve again from it (docs/solver.md, Events)",
                "t_span": "scipy's t_span: t0 here, after y0; the solve runs to the event, and a time "
                "limit is one more entry of event_fn (docs/solver.md, Events)",
                "args": ARGS_HINT,
                **scipy_jacobian_hints(
                    "the methods here are explicit, and scipy's stiff solvers (local_reg.compat.odeint's "
                    "method='scipy_solver') take no event_fn"
                ),
                "throw": THROW_HINT,
                "root_finder": "diffrax's root finder: the event time is found here by Illinois regula "
                "falsi safeguarded by bisection on the last step's dense output, to 4 eps |dt| of the "
                "step (docs/solver.md, Events)",
                "t_eval": "odeint_event solves to the event; for output times, odeint(func, y0, t)",
                "dense_output": "odeint_event keeps no dense output; for it, solve again with "
                "odeint(func, y0, [t0, event_t], dense=True)",
                **STEP_CONTROL_SPELLINGS,
            },
        )
    direction = _with_scipy_attributes(event_fn, _checked_direction(direction))
    solution = _solve_until_event(
        func, y0, t0, event_fn=event_fn, reverse_time=reverse_time, direction=direction, **odeint_kwargs
    )
    return solution.ts[-1], solution


@accepts_structured_states
def _solve_until_event(
    func: VectorField,
    y0: Tensor | tuple[Tensor, ...],
    t0: Tensor | float,
    *,
    event_fn: EventFunction,
    reverse_time: bool,
    direction: EntryDirections = None,
    times_in_state_dtype: bool = False,
    **odeint_kwargs: Any,
) -> Solution:
    """:func:`odeint_event` on a flat state, its solution's ``ts[-1]`` the event time.
    ``times_in_state_dtype``: ``func`` gets times in the state's dtype whatever ``t0``'s
    (torchdiffeq's rule, for :mod:`local_reg.compat`); ``event_fn`` keeps ``odeint``'s rule, so the
    event is located as finely (torchdiffeq's adaptive methods give it float64)."""
    check_function_transforms("odeint_event", differentiable=False)
    for name, value in (("y0", y0), ("t0", t0)):
        if carries_tangent(value):
            raise ValueError(_FORWARD_MODE.format(f"{name} carries"))
    y0 = validate_state(y0)
    check_bool("reverse_time", reverse_time)
    callbacks = odeint_kwargs.pop("callbacks", None) or StepCallbacks()
    if not isinstance(callbacks, StepCallbacks):
        raise TypeError(f"callbacks must be a StepCallbacks, got {type(callbacks).__name__}")
    if callbacks.stop is not None:
        raise ValueError("odeint_event sets callbacks.stop itself: pass callbacks without a stop condition")
    t0_value, t0_tensor = one_time("t0", t0)
    if abs(t0_value) >= open_end(y0.dtype):
        raise ValueError(
            f"t0={t0_value!r} lies at or beyond the largest time an event solve of a {y0.dtype} state "
            f"reaches, {open_end(y0.dtype):.3g}"
        )
    # The event time is returned in t0's dtype; func and event_fn get their times as odeint would
    # for a t of t0's dtype (the wider of t0's and the state's), func in compat the state's.
    t_dtype = t0_tensor.dtype if t0_tensor is not None and t0_tensor.is_floating_point() else y0.dtype
    event_t_dtype = time_dtype(t0_tensor, y0)
    field_t_dtype = y0.dtype if times_in_state_dtype else event_t_dtype
    layout = func.state.unflatten if isinstance(func, StateField) else (lambda y: y)
    event = CombinedEvent(event_fn, layout, t0_value, y0, event_t_dtype, direction)
    checked = checked_field(func)

    initial_t = time_tensor(t0_value, y0, t_dtype) if t0_tensor is None else t0_tensor.to(y0.device, t_dtype)
    # The solve's jump times (rounded to the field's time dtype, as the solve rounds them): f at a
    # jump at t0 or at the event time is taken on the solve's side, as odeint takes it.
    time_direction = -1.0 if reverse_time else 1.0
    controller = odeint_kwargs.get("controller")
    jump_ts: tuple[float, ...] = ()
    if isinstance(controller, PIController):
        jump_ts = controller.within(t0_value, math.copysign(math.inf, time_direction), field_t_dtype).jump_ts
    start = y0
    rate_start = beside_jump(t0_value, math.copysign(math.inf, time_direction), field_t_dtype, jump_ts)
    initial_rate = _InitialRate(checked, rate_start, field_t_dtype)
    if t0_tensor is not None and t0_tensor.requires_grad and torch.is_grad_enabled():
        check_penalty_time_gradient(odeint_kwargs.get("step_penalty"), "t0")
        start = StartTime.apply(initial_rate, t0_tensor, y0)
    if event.zero_at_start is not None:
        # The event is t0 itself: no step is taken. Its time and state are differentiable as any
        # event's, through the entry that is zero there (the combined h is zero whatever the state).
        solution = odeint(func, y0, [t0_value], callbacks=callbacks, **odeint_kwargs)
        initial_rate.stats = solution.stats
        zero_entry = _EventEntry(event, event.zero_at_start)
        event_t, y_event, nfe = _reroute(
            zero_entry, checked, t0_value, start, t_dtype, field_t_dtype, rate_time=rate_start
        )
        solution.stats.nfe += nfe
        return replace(
            solution,
            ts=torch.stack([initial_t, event_t]),
            ys=torch.stack([passing_cotangents_on(y0), y_event]),
            steps=replace(solution.steps, stop_time=t0_value),  # the event ended it, at t0
        )
    # The second time only gives the direction; it must differ from t0 in floating point.
    t1 = direction_time(t0_value, reverse_time)
    locator = EventLocator(event)
    stop = replace(callbacks, stop=locator)
    try:
        # Floats give func the state's dtype; a wider dtype needs a tensor of it (no rounding).
        span: Any = [t0_value, t1]
        if field_t_dtype != y0.dtype:
            span = torch.tensor(span, dtype=field_t_dtype, device=y0.device)
        solution = odeint(func, start, span, callbacks=stop, **odeint_kwargs)
    except SolverError as error:
        # An entry its direction left out explains an event never met better than the step
        # limit's advice (a time limit left out runs on until the steps are stability-limited).
        left_out = event.left_out_advice()
        if error.reason.startswith(STEP_LIMIT_REACHED):
            # It may have changed sign the other way.
            if isinstance(event.direction, tuple):
                crossing = f" the ways direction={list(event.direction)} asks"
            else:
                crossing = {
                    None: "",
                    True: " the way direction=True asks (from negative to zero or above)",
                    False: " the way direction=False asks (from positive to zero or below)",
                }[event.direction]
            limit = f"{STEP_LIMIT_REACHED}{odeint_kwargs.get('max_steps', DEFAULT_MAX_STEPS)} exceeded"
            reason = f"{EVENT_UNREACHED}{crossing}: " + (f"{limit}; {left_out}" if left_out else error.reason)
        elif error.reason == STOP_NEVER_HELD:
            reason = EVENT_BEYOND_LARGEST_TIME + (f"; {left_out}" if left_out else "")
        else:
            raise
        raise SolverError(reason, t=error.t, n_steps=error.n_steps) from None
    initial_rate.stats = solution.stats
    stop_time = cast(float, solution.steps.stop_time)  # the solve stopped: it raised otherwise
    event_t, y_event, nfe = _reroute(
        event,
        checked,
        stop_time,
        solution.ys[-1],
        t_dtype,
        field_t_dtype,
        locator.live,
        beside_jump(stop_time, t0_value, field_t_dtype, jump_ts),
    )
    solution.stats.nfe += nfe
    return replace(
        solution, ts=torch.stack([initial_t, event_t]), ys=torch.stack([passing_cotangents_on(y0), y_event])
    )


__all__ = ["odeint_event"]
