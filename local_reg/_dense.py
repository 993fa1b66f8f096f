"""The dense solution: every accepted step's start, size, state and stages, evaluated anywhere in the
span through the method's interpolant (:mod:`local_reg.interpolants`)."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._autograd import solve_entry_point
from ._step import combine_rows
from ._validate import (
    check_time_tensor,
    finite_times,
    host_list,
    narrowest_float,
    refuse_tracing,
    rounded,
    rounded_list,
    without_autocast,
)
from .interpolants import Interpolant


@dataclass
class DenseOutput:
    """The record behind :meth:`local_reg.Solution.evaluate` (``odeint(dense=True)``).

    Attributes:
        interpolant: the method's dense output.
        t0: where the solve starts (the whole span of a solve of one output time, which takes no step).
        t, dt: start time and signed size of each accepted step.
        t_end: where the last accepted step ended, as the solve recorded it (``t[-1] + dt[-1]`` may
            round to another float); ``t0`` before the first step.
        states: the state at each step start, and the final state last.
        stages: the stages the interpolant combines, per step.
        on_read: called with the states of every read (:meth:`evaluate`, :meth:`derivative`): a
            backward pass through them reaches the solve apart from its ``ys``, and the gradient
            method that keeps the solve's graph watches it there as at ``ys``.
    """

    interpolant: Interpolant
    t0: float
    t: list[float] = field(default_factory=list)
    dt: list[float] = field(default_factory=list)
    t_end: float = field(init=False)
    states: list[Tensor] = field(default_factory=list)
    stages: list[tuple[Tensor, ...]] = field(default_factory=list)
    on_read: Callable[[Tensor], None] | None = field(default=None, repr=False)
    # The step starts times the direction, for bisection: made again when a step has been added.
    _keys: list[float] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        self.t_end = self.t0

    def __getstate__(self) -> dict[str, Any]:
        # The watch belongs to this process's graph of the solve (a closure, which cannot be
        # pickled): a copy, saved or sent to another process, reads without it.
        return {**self.__dict__, "on_read": None}

    def add_step(self, t: float, dt: float, t_end: float, y: Tensor, stages: tuple[Tensor, ...]) -> None:
        self.t.append(t)
        self.dt.append(dt)
        self.t_end = t_end
        self.add_state(y)
        self.stages.append(stages)

    def add_state(self, y: Tensor) -> None:
        # Outside autograd (the graph-free gradient methods' forward solves) the stages carry no
        # graph, so neither may the states: the first is the caller's y0, and an evaluation through
        # it alone would differentiate as the identity, a silently wrong gradient.
        self.states.append(y if torch.is_grad_enabled() else y.detach())

    def _at_span_ends(
        self, values: list[float], dtype: torch.dtype | None, outside_only: bool = False
    ) -> list[float]:
        """``values`` with each that is a span end once both are rounded to ``dtype`` (narrower than
        float64) moved onto that end: the solution's own float32 ``ts`` hold the span ends rounded,
        which lie outside the span as often as inside it. ``outside_only``: move only those outside
        the span (plain floats, rounded to the solve's float32 times: ``0.7`` for a float32 ``t``
        ending at 0.7 is that end, while a time inside stays where the float puts it). Other times
        stay as given."""
        if dtype is None:
            return values
        ends = (self.t[0], self.t_end) if self.t else (self.t0,)
        end_of = {rounded(end, dtype): end for end in ends}
        if not outside_only:
            # An end itself stays: in a span shorter than the dtype's ulp both ends round alike.
            return [v if v in ends else end_of.get(v, v) for v in values]
        low, high = min(ends), max(ends)
        as_dtype = rounded_list(values, dtype)
        return [v if low <= v <= high else end_of.get(r, v) for v, r in zip(values, as_dtype, strict=True)]

    @property
    def direction(self) -> float:
        """``1.0`` if the recorded steps go forwards in time, ``-1.0`` if backwards."""
        return 1.0 if self.dt[0] > 0 else -1.0

    def _step_keys(self) -> list[float]:
        if len(self._keys) != len(self.t):
            self._keys = [self.direction * s for s in self.t]
        return self._keys

    def _locate(self, t: float, keys: list[float]) -> int:
        """The index of the step whose dense output gives ``t``, or ``-1 - index`` if ``t`` is the
        recorded state ``states[index]``; ``keys``: the step starts times the direction."""
        direction = self.direction
        t_start = self.t[0]
        t_end = self.t_end
        if direction * (t - t_start) < 0 or direction * (t - t_end) > 0:
            lo, hi = sorted((t_start, t_end))
            raise ValueError(f"t={t} is outside the solved span [{lo}, {hi}]")
        # The step that starts at or last before t; a step start is returned exactly as recorded.
        index = max(bisect.bisect_right(keys, direction * t) - 1, 0)
        if t == self.t[index]:
            return -1 - index
        if index == len(self.t) - 1 and t == t_end:
            return -len(self.states)
        return index

    def evaluate(
        self,
        t: Tensor | float | np.ndarray | Sequence[float | Tensor],
        times_dtype: torch.dtype | None = None,
    ) -> Tensor:
        """The solution at ``t`` (a float, a 0-dim or a 1-D tensor or numpy array of times, or a
        sequence of them, as ``odeint``'s ``t``). The times inside one step are evaluated together,
        as the solve evaluated its output times. ``times_dtype``: the dtype of the solve's own
        times, to which plain floats are rounded to meet the span's ends."""
        return self._read(t, times_dtype, derivative=False)

    def derivative(
        self,
        t: Tensor | float | np.ndarray | Sequence[float | Tensor],
        times_dtype: torch.dtype | None = None,
    ) -> Tensor:
        """The interpolant's time derivative ``dy/dt = sum_i B_i'(theta) k_i`` at ``t`` (as
        :meth:`evaluate` takes it). Every interpolant here has ``B'(0) = e_1`` and ``B'(1)`` the
        last stage's weight (:mod:`local_reg.interpolants`), so at a step's start or end it is the
        stage there, the field at the recorded state: continuous across steps, except at a jump,
        where a recorded state is read at the end of the step the solve reached it through."""
        if not self.t:
            raise ValueError(
                "the solve took no step (one output time), so its dense output has no derivative: "
                "the derivative at t[0] is func(t[0], y0)"
            )
        return self._read(t, times_dtype, derivative=True)

    @solve_entry_point  # eager under a user's torch.compile (its numpy tables)
    def _read(
        self,
        t: Tensor | float | np.ndarray | Sequence[float | Tensor],
        times_dtype: torch.dtype | None,
        derivative: bool,
    ) -> Tensor:
        # The read picks its step by the query time's value, which a trace would keep as a constant.
        refuse_tracing("derivative" if derivative else "evaluate")
        if isinstance(t, (np.number, np.ndarray)) and t.ndim == 0:
            if t.dtype.kind not in "fiu":
                raise TypeError(f"t must be a real number or array, got dtype {t.dtype}")
            try:  # a numpy scalar (or 0-dim array) as the 0-dim tensor of its dtype
                t = torch.as_tensor(t)
            except TypeError:  # one torch has no dtype for (longdouble, uint64): its value
                t = float(t)
        one_dimensional = not isinstance(t, (Tensor, int, float)) or (isinstance(t, Tensor) and t.dim() == 1)
        if isinstance(t, (np.ndarray, Sequence)) and not isinstance(t, (str, bytes)):
            values, rounded_to = finite_times("t", t), narrowest_float(t)
        elif isinstance(t, Tensor):
            if t.dim() > 1:
                raise ValueError(f"t must be a float, a 0-dim or a 1-D tensor, got shape {tuple(t.shape)}")
            check_time_tensor("t", t)
            values = [float(v) for v in host_list(t.reshape(-1))]
            rounded_to = narrowest_float(t)
        elif isinstance(t, bool) or not isinstance(t, (int, float)):
            raise TypeError(
                f"t must be a float, a tensor, an array or a sequence of times, got {type(t).__name__}"
            )
        else:
            values, rounded_to = [float(t)], None
        if not all(math.isfinite(v) for v in values):
            raise ValueError("t must be finite")
        if not values:
            return self.states[0].new_empty((0, *self.states[0].shape))
        if rounded_to is not None:
            values = self._at_span_ends(values, rounded_to)
        elif times_dtype is not None and torch.finfo(times_dtype).bits < 64:
            values = self._at_span_ends(values, times_dtype, outside_only=True)
        if not self.t:
            for v in values:
                if v != self.t0:
                    raise ValueError(f"t={v} is outside the solved span [{self.t0}, {self.t0}]")
            out = torch.stack([self.states[0] for _ in values])
        else:
            keys = self._step_keys()
            results: dict[int, Tensor] = {}
            # Per step, the positions read inside it and their fractions of it.
            groups: dict[int, tuple[list[int], list[float]]] = {}
            for position, v in enumerate(values):
                index = self._locate(v, keys)
                if index >= 0:
                    step, theta = index, (v - self.t[index]) / self.dt[index]
                elif not derivative:
                    results[position] = self.states[-1 - index]
                    continue
                else:
                    # A recorded state: the end of the step the solve reached it through (at t0, the
                    # start of the first), the one-sided derivative there where the field jumps.
                    state = -1 - index
                    step, theta = (0, 0.0) if state == 0 else (state - 1, 1.0)
                positions, thetas = groups.setdefault(step, ([], []))
                positions.append(position)
                thetas.append(theta)
            for step, (positions, thetas) in groups.items():
                read = self._combine(step, thetas, derivative)
                for p, state in zip(positions, read, strict=True):
                    results[p] = state
            out = torch.stack([results[position] for position in range(len(values))])
        if self.on_read is not None:
            self.on_read(out)
        return out if one_dimensional else out[0]

    def _combine(self, index: int, thetas: list[float], derivative: bool = False) -> Tensor:
        """The states (or with ``derivative``, their time derivatives) at the fractions ``thetas``
        of step ``index``, stacked."""
        with without_autocast():  # a matrix product, in the state's dtype
            if derivative:
                rows = self.interpolant.derivative_matrix(thetas)
                return combine_rows(None, 1.0, rows, self.stages[index])
            rows = self.interpolant.weight_matrix(thetas)
            return combine_rows(self.states[index], self.dt[index], rows, self.stages[index])

    def state_at(self, t: float, offset: float = 0.0) -> Tensor:
        """The solution at the time ``t + offset`` of the recorded steps' span, without
        :meth:`evaluate`'s checks: the interpolating adjoint's read at each stage of its backward
        solve, ``t`` that step's start and ``offset`` the stage's ``c_i dt``. The interpolant's
        ``theta`` is ``((t - start) + offset) / dt``, so ``t + offset`` is not rounded to a float on
        the way: far from ``t = 0`` that rounding moves a stage by ulps of ``t``, against steps of a
        few hundred ulps, and the state read there by as many ulps times its rate. A time just
        outside the span (a stage rounded past it) is read at the span's end."""
        low, high = sorted((self.t[0], self.t_end))
        position = t + offset
        if not low <= position <= high:
            t, offset = min(max(position, low), high), 0.0
            position = t
        keys = self._step_keys()
        index = min(max(bisect.bisect_right(keys, self.direction * position) - 1, 0), len(self.t) - 1)
        return self._combine(index, [((t - self.t[index]) + offset) / self.dt[index]])[0]
