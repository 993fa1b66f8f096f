"""The record of a regularizer's main (unregularized) solve, whatever its backend, and what local
regularization reads from it. Every backend (:mod:`._ode_backends`, :mod:`._sde_backends`) fills it."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._errors import SolverError
from .._validate import generator_device
from ..solution import Solution, Stats

_EMPTY_STATE = (
    "y0 has no elements, whose error norm {backend} reads as NaN: skip the empty batch, or solve "
    "with backend='local_reg' (which returns it)"
)
"""What a peer backend's failure adds for an empty state (its adaptive solve cannot take one)."""


class FinitenessRecord:
    """Where a user's function, called by a peer backend's forward solve (torchdiffeq's ``func``,
    torchsde's drift and diffusion), first returned non-finite values: for each call its time and
    the smallest and largest entry of its output (``torch.aminmax``, which propagates NaN: both are
    finite exactly when every entry is; a sum, one pass too, overflows for finite entries near the
    dtype's largest value). They stay on the device, read on the host only where the solve fails:
    a read per call would wait for the device at each evaluation, and the outputs themselves, kept
    instead, held a rejected step's stages alive until the next accepted one (on a large state, a
    few states' worth of memory).

    ``returned`` says what a non-finite call means in the messages: e.g. ``"func returned
    non-finite values"``."""

    FOLDED_AFTER = 256
    """Calls kept one by one before they are reduced, on the device, to the earliest non-finite one:
    a fixed-grid solve, which has no accepted step to clear the record at, keeps a few tensors."""

    def __init__(self, direction: float, returned: str) -> None:
        self.backwards = direction < 0
        self.returned = returned
        self._calls: list[tuple[Tensor, Tensor, Tensor]] = []
        self._folded: Tensor | None = None
        """The earliest time of a non-finite call among those reduced (``inf``, ``-inf`` backwards,
        if none was)."""

    def note(self, t: Tensor, output: Tensor) -> None:
        """Record a call at ``t`` that returned ``output``."""
        if output.numel() == 0:
            return  # no entry to be non-finite, and no extremes to take
        smallest, largest = torch.aminmax(output.detach())
        self._calls.append((t.detach(), smallest, largest))
        if len(self._calls) >= self.FOLDED_AFTER:
            self._fold()

    def clear(self) -> None:
        """Forget the calls so far: the solve got past them (an accepted step), or it is over (the
        stats keep the backend's wrapper, and under a ``torch.func`` transform these are its tensors)."""
        self._calls, self._folded = [], None

    def earliest(self) -> float | None:
        """The earliest time along the solve at which the function returned non-finite values since
        the record was last cleared (``None`` if it did not); it reads the device."""
        self._fold()
        if self._folded is None:
            return None
        earliest = float(self._folded)
        return None if math.isinf(earliest) else earliest

    def _fold(self) -> None:
        if not self._calls:
            return
        times, smallest, largest = (torch.stack(column) for column in zip(*self._calls, strict=True))
        self._calls = []
        finite = smallest.isfinite() & largest.isfinite()
        never = -math.inf if self.backwards else math.inf
        candidates = torch.where(finite, never, times.to(finite.device))
        earliest = candidates.amax() if self.backwards else candidates.amin()
        if self._folded is not None:
            earliest = (torch.maximum if self.backwards else torch.minimum)(self._folded, earliest)
        self._folded = earliest


def peer_solver_error(
    error: AssertionError,
    backend: str,
    evaluations: str,
    y0: Tensor,
    last_t: Tensor | None,
    n_steps: int | None,
    calls: FinitenessRecord,
) -> SolverError:
    """A peer backend's own assert, its report of a failed solve (torchdiffeq's underflow in dt,
    torchsde's NaN error estimate), as the library's contract has it: a :class:`SolverError` at
    ``last_t``, the time of the last evaluation (``nan`` before any), after ``n_steps`` (``None``
    where the peer does not count them) and ``evaluations`` (what they were, counted). Where a call
    in the record ``calls`` returned non-finite values, that is the reason the message gives, and
    the earliest such call's time ``t``."""
    non_finite_from = calls.earliest()
    if non_finite_from is None:
        reason = f"{backend}: {error} (after {evaluations})"
        t = math.nan if last_t is None else float(last_t.detach())
    else:
        stopped = f"{backend} then stopped: {error}, after {evaluations}"
        reason = f"{backend}: {calls.returned} ({stopped}); the earliest"
        t = non_finite_from
    if y0.numel() == 0:
        reason += f"; {_EMPTY_STATE.format(backend=backend)}"
    return SolverError(reason, t=t, n_steps=n_steps)


def check_peer_outputs(
    ys: Tensor, times: list[float], backend: str, evaluations: str, calls: FinitenessRecord
) -> None:
    """A :class:`SolverError` where a state at an output time is not finite: a peer backend's fixed
    steps (torchdiffeq's grids, torchsde's ``adaptive=False``) return a NaN solution without a word,
    where local_reg's own loop stops at the step (``n_steps``: ``None``, the peer's count unknown).
    Its ``t`` is the earliest call in the record ``calls`` that returned non-finite values, where
    one did no later than the first such output time; else (the state overflowed in the solver's own
    arithmetic, a call at it returning NaN only after) that output time."""
    finite = torch.isfinite(ys).reshape(len(ys), -1).all(dim=1)
    if bool(finite.all()):
        return
    first = times[int((~finite).nonzero()[0])]
    outputs = f"one of t, or the regularization time t_reg a training call adds; after {evaluations}"
    non_finite_from = calls.earliest()
    direction = 1.0 if times[-1] >= times[0] else -1.0
    if non_finite_from is None or (non_finite_from - first) * direction > 0:
        reason = f"{backend}: non-finite state at an output time ({outputs}; the peer solver went on with it)"
        t = first
    else:
        reason = (
            f"{backend}: {calls.returned}, and the peer solver went on with them to a non-finite state "
            f"at the output time {first!r} ({outputs}); the earliest"
        )
        t = non_finite_from
    raise SolverError(reason, t=t, n_steps=None)


_RAISED_BY_USER = "_local_reg_raised_by_user"


def call_user(function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)``, a user's function called by a peer backend (torchdiffeq, torchsde), its
    ``AssertionError`` marked as the user's: the backend's conversion of the peer's own asserts to
    :class:`local_reg.SolverError` passes it on as raised (:func:`raised_by_user`). A mark on the
    error, not a reference to it: that would keep its traceback's frames alive with the model."""
    try:
        return function(*args)
    except AssertionError as error:
        setattr(error, _RAISED_BY_USER, True)
        raise


def raised_by_user(error: BaseException) -> bool:
    """Whether ``error`` came from a user's function through :func:`call_user`."""
    return getattr(error, _RAISED_BY_USER, False)


@dataclass(frozen=True)
class Request:
    """What a main solve records besides its outputs: the accepted steps, their start states, and a
    penalty on every accepted step (global regularization)."""

    steps: bool = False
    states: bool = False
    step_penalty: Callable[[Any, float], Tensor] | None = None
    interpolated: tuple[float, ...] = ()
    """Output times added only to be read (the sampled ``t_reg``): they must not become grid points
    of a fixed grid made of the output times (torchdiffeq's fixed-grid methods without a
    ``step_size``); they are read from its interpolation instead."""


@dataclass(frozen=True, eq=False)
class BackwardCounter:
    """The evaluations a backend's counting field makes after its forward solve's ``forward_calls``:
    the adjoint's backward solve (``None`` before it ran, and always for plain backpropagation,
    which calls the field no more). An object, not a closure, so a model that holds it pickles.
    Hashed by identity (``eq=False``): a field-reading hash fails on the half-made object that
    ``torch.compile`` hashes while tracing its ``__init__``."""

    counting: Any
    """The backend's wrapper of the user's field, with a ``calls`` count."""
    forward_calls: int
    adjoint: bool

    def __call__(self) -> int | None:
        extra = self.counting.calls - self.forward_calls
        return extra if self.adjoint and extra > 0 else None


@dataclass(kw_only=True)
class MainSolve:
    """The main solve of a regularizer.

    Attributes:
        ys: the solution at the solve's output times.
        stats: its statistics (evaluations always; steps where the backend reports them).
        n_accepted: accepted steps, when known.
        step_t, step_dt: start time and signed step size of each accepted step, when recorded.
        step_states: the state at each step start, when recorded.
        penalties: the per-step penalties of ``step_penalty`` (``local_reg`` backend), else ``None``.
        backward_counter: reads the evaluations of the backend's backward pass (``None`` while
            unknown); ``None`` when the backend reports them in ``stats.nfe_backward``.
    """

    ys: Tensor
    stats: Stats
    n_accepted: int | None = None
    step_t: list[float] | None = None
    step_dt: list[float] | None = None
    step_states: Tensor | None = None
    penalties: Tensor | None = None
    backward_counter: BackwardCounter | None = None

    @classmethod
    def from_solution(cls, solution: Solution, *, record_steps: bool = True) -> MainSolve:
        """The record of a ``local_reg`` solve (:func:`local_reg.odeint` or :func:`local_reg.sdeint`)."""
        steps = solution.steps
        return cls(
            ys=solution.ys,
            stats=solution.stats,
            n_accepted=solution.stats.n_accepted,
            step_t=steps.t.tolist() if record_steps else None,
            step_dt=steps.dt.tolist() if record_steps else None,
            step_states=steps.states,
            penalties=solution.penalties,
        )

    def _recorded_steps(self) -> tuple[list[float], list[float]]:
        """``(step_t, step_dt)``; a ``ValueError`` if the solve did not record its steps."""
        if self.step_t is None or self.step_dt is None:
            raise ValueError("the main solve did not record its accepted steps (Request(steps=True))")
        return self.step_t, self.step_dt

    def _recorded_states(self) -> Tensor:
        """``step_states``; a ``ValueError`` if the solve did not record them."""
        if self.step_states is None:
            raise ValueError("the main solve did not record its step states (Request(states=True))")
        return self.step_states

    def _step_index(self, t_reg: float, direction: float) -> int:
        """The accepted step that contains ``t_reg`` (starts at it, if one does)."""
        step_t, _ = self._recorded_steps()
        starts = [direction * v for v in step_t]
        return max(bisect.bisect_right(starts, direction * t_reg) - 1, 0)

    def step_containing(self, t_reg: float, direction: float) -> float:
        """``|dt|`` of the accepted step that contains ``t_reg`` (starts at it, if one does)."""
        _, step_dt = self._recorded_steps()
        return abs(step_dt[self._step_index(t_reg, direction)])

    def state_at(self, t_reg: float, direction: float) -> Tensor:
        """``u(t_reg)`` (detached) by linear interpolation between the recorded states at the ends
        of the accepted step that contains it, as torchsde interpolates its outputs between steps;
        the last step ends at the final output. Needs the recorded steps and states."""
        step_t, step_dt = self._recorded_steps()
        step_states = self._recorded_states()
        index = self._step_index(t_reg, direction)
        start = step_states[index]
        end = step_states[index + 1] if index + 1 < len(step_t) else self.ys[-1].detach()
        fraction = (t_reg - step_t[index]) / step_dt[index]
        return torch.lerp(start, end, fraction)

    def sample_step(self, generator: torch.Generator | None) -> tuple[float, Tensor, float]:
        """An accepted step drawn uniformly [LR23, biased sampling]: ``(t_reg, u(t_reg), |dt|)``,
        its start time, recorded start state and step size."""
        step_t, step_dt = self._recorded_steps()
        step_states = self._recorded_states()
        index = int(torch.randint(len(step_t), (), generator=generator, device=generator_device(generator)))
        return step_t[index], step_states[index], abs(step_dt[index])
