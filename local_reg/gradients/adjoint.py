"""The continuous adjoints: approximate gradients, the backsolve's in constant memory, the
interpolating adjoint's (:class:`InterpolatingAdjoint`, at the end) stable where solving ``y``
backwards is not.

Chen, Rubanova, Bettencourt, Duvenaud, "Neural Ordinary Differential Equations", NeurIPS 2018. With
``a(t) = dL/dy(t)``, the augmented system::

    dy/dt = f(t, y),     da/dt = -a^T df/dy (t, y),     dg/dt = -a^T df/dtheta (t, y)

is solved backwards from each output time ``t_i`` to the previous one ``t_{i-1}``, starting from
``y(t_i)`` (the forward output), ``a(t_i)`` (the accumulated cotangent) and ``g = 0`` so far; at
``t_{i-1}`` the output's cotangent ``dL/dy(t_{i-1})`` is added to ``a``. Then ``dL/dy0 = a(t_0)`` and
``dL/dtheta = g(t_0)``. Each evaluation of the augmented field is one evaluation of ``f`` with a
graph and one vector--Jacobian product. The backward solve is the instrumented solver itself, with
its own method, tolerances and step options (:class:`BacksolveAdjoint`'s settings); the gradient is
that of the continuous problem, so it differs from the discrete forward solve's by the two solves' errors.

Seminorm (Kidger, Chen, Lyons, "'Hey, that's not an ODE': Faster ODE Adjoints via Seminorms",
ICML 2021): ``g`` never feeds back into the dynamics, so its local error need not limit the step.
With ``BacksolveAdjoint(norm="seminorm")`` the error norm of the backward solve covers ``(y, a)``
only; ``g`` is still integrated by the same Runge--Kutta steps, but its error does not limit them.

Layout: the one loop integrates ``(y, a)`` only, stacked into one tensor of shape ``(2, *y.shape)``.
``g`` does not enter the field, so its stage values are never needed, only its stage rates
``-a^T df/dtheta``: each evaluation writes them into a row of a preallocated matrix (one row per
stage, the parameters flattened), and :class:`AdjointStepper` advances ``g`` (one flat tensor) across
an accepted step with the step's Runge--Kutta weights in one matrix--vector product. With the default
norm the error estimate still includes ``g``'s local error (one RMS over ``(y, a, g)``), from the same
rows in the same product. The result is the augmented system's solve, step for step, without
concatenating an augmented state per evaluation or running the Runge--Kutta stage combinations and the
error scale over the parameters' entries (the initial-step heuristic of the default norm flattens
``(y, a, g)`` once per restart).

Output times whose cotangent is exactly zero (for example the ``t_reg`` a local regularizer adds to
the save points) do not restart the backward solve: it carries on across them.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from itertools import pairwise
from typing import ClassVar

import torch
from torch import Tensor

from .._checks import positive_int
from .._dense import DenseOutput
from .._diagnose import RAISE_MAX_STEPS, SETTINGS_HINT
from .._errors import STEP_LIMIT_REACHED, SolverError, warn
from .._integrate import SolveOptions, TooManyFixedSteps, integrate, jumps_at_step_ends
from .._step import (
    RKStepper,
    StepResult,
    beside_jump,
    initial_step_size,
    rms_norm,
    time_tensor,
    too_close_to_step,
)
from .._validate import (
    check_adaptive_settings_unset,
    check_span,
    positive_float,
    relative_tolerance,
)
from ..interpolants import get_interpolant
from ..solution import Stats, Steps
from ..tableaus import ButcherTableau, get_tableau
from ._checkpoints import StepStates, replay_steps
from ._finite import all_finite, raise_non_finite_gradient
from ._function import (
    CountingField,
    ForwardSolve,
    GraphFreeGradient,
    checked_checkpoints,
    vector_jacobian_product,
)

NORMS = ("default", "seminorm")


def real_size(param: Tensor) -> int:
    """The number of real entries of ``param``: a complex parameter's real and imaginary parts are
    two, as its real view ``torch.view_as_real(param)``."""
    return param.numel() * (2 if param.is_complex() else 1)


def real_view(tensor: Tensor) -> Tensor:
    """``tensor`` itself, or a complex one's real view ``(*shape, 2)``."""
    return torch.view_as_real(tensor) if tensor.is_complex() else tensor


def parameter_views(flat: Tensor, params: tuple[Tensor, ...]) -> list[Tensor]:
    """``flat`` (the parameters' real entries, one after the other) as views shaped like ``params``:
    a complex parameter's as its real view ``(*shape, 2)`` (:func:`real_size`)."""
    parts = flat.split([real_size(p) for p in params])
    return [part.view(real_view(p).shape) for part, p in zip(parts, params, strict=True)]


_AT_BACKWARD_START = "found where the backward solve starts"


class AdjointStepper(RKStepper):
    """The backward solve's stepper: Runge--Kutta steps of ``(y, a)`` (stacked, shape ``(2, *y.shape)``)
    with the field ``(f, -a^T df/dy)``, or of ``a`` alone with ``y(t)`` read from the forward
    solution (the interpolating adjoint), and ``g`` (:attr:`parameter_gradient`, the parameters
    flattened) advanced by the same steps from the stage rates ``-a^T df/dtheta``.

    A step's stage ``i`` writes its rate into row ``i`` of :attr:`rates` (a first stage carried over
    from the step before is moved to row 0), so that the step's weighted sums of the rates are one
    product with :attr:`rates`. The rows, the step size and ``g`` at the end of the step (when the
    default norm computed it) are those of the attempt in progress, which :meth:`next_carry`
    accepts or rejects. One stepper serves every restart of a backward pass: ``g`` carries over from
    one to the next.

    Its carry is ``(k1, row)``, the carried first stage and the row of :attr:`rates` that holds its
    rate, where a Runge--Kutta stepper's is ``k1`` alone: the methods that take or return the carry
    override the Runge--Kutta stepper's with that wider type (the loop hands each stepper back only
    the carries it made).
    """

    def __init__(
        self,
        solve: ForwardSolve,
        options: SolveOptions,
        seminorm: bool,
        ys: Tensor,
        dense: DenseOutput | ReplayedSolution | None,
    ) -> None:
        """``ys``: the forward outputs (their shape and dtype). ``dense``: the forward solve's dense
        record, from which ``y`` is read (the state is then ``a`` alone), or ``None`` to solve
        ``y`` backwards too."""
        # The backward solve's step record is not returned, and a stiffness hint on failure comes from
        # the forward solve of the same dynamics: no stiffness estimate.
        tableau = dataclasses.replace(options.runge_kutta_tableau, stiffness_stages=None)
        super().__init__(
            self.augmented_field,
            tableau,
            options.rtol,
            options.atol,
            time_dtype=options.time_dtype,
            jump_ts=options.controller.jump_ts,
        )
        self.func_of_y = solve.func
        self.params = solve.params
        self.seminorm = seminorm
        self.overflowed = ys.new_zeros((), dtype=torch.bool) if solve.float16_autocast else None
        """Under float16 autocast, whether a vector-Jacobian product of the backward solve was not
        finite (a GradScaler's overflow): a tensor, read only where the solve fails, so that no
        evaluation waits on the device; ``None`` otherwise."""
        self.dense = dense
        n_parameters = sum(real_size(p) for p in solve.params)
        self.parameter_gradient = ys.new_zeros(n_parameters)
        # One row per stage (the backward solve has no dense output, which would evaluate one more).
        self.rates = ys.new_zeros(tableau.n_stages, n_parameters)
        self.row_views = [parameter_views(row, solve.params) for row in self.rates]
        self.no_rate = [torch.zeros_like(real_view(p)) for p in solve.params]
        # Which parameters func used: one it never touches gets no gradient (None), as with the
        # other methods, not a zero (an optimizer's momentum or weight decay would act on a zero).
        self.used = [False] * len(solve.params)
        self.next_row = 0
        weights = [tableau.b, tableau.error_weights or [0.0] * tableau.n_stages]
        self.weights = torch.tensor(weights, dtype=ys.dtype, device=ys.device)
        # Without parameters the default norm is the RMS over (y, a), as the seminorm is.
        self.norm_includes_parameters = not seminorm and n_parameters > 0 and tableau.adaptive
        # The RMS of the default norm is over every entry of the state ((y, a), or a) and of g.
        self.root_entries = math.sqrt((2 if dense is None else 1) * ys[0].numel() + n_parameters)
        self.dt = 0.0
        self.step_start: float | None = None
        """The start of the step whose stages are being evaluated, else ``None``."""
        self.end_gradient: Tensor | None = None

    def augmented_field(self, t: Tensor, z: Tensor) -> Tensor:
        """``(f, -a^T df/dy)`` at ``z = (y, a)``, or ``-a^T df/dy`` at ``z = a`` with ``y(t)`` read
        from :attr:`dense`; ``-a^T df/dtheta`` goes to the next row of :attr:`rates`."""
        if self.dense is None:
            y, adjoint = z.unbind(0)
        elif self.step_start is not None:
            # A stage of a step: y at its exact place c_i dt into the step, not at its time rounded.
            offset = self.tableau.c[self.next_row] * self.dt
            y, adjoint = self.dense.state_at(self.step_start, offset), z
        else:  # the start of a solve, or the initial-step heuristic's trial
            y, adjoint = self.dense.state_at(float(t)), z
        derivative, state_rate, parameter_vjps = vector_jacobian_product(
            self.func_of_y, t, y, self.params, -adjoint
        )
        if parameter_vjps:
            self.used = [used or g is not None for used, g in zip(self.used, parameter_vjps, strict=True)]
            rates = [
                zero if g is None else real_view(g)
                for zero, g in zip(self.no_rate, parameter_vjps, strict=True)
            ]
            torch._foreach_copy_(self.row_views[self.next_row], rates)
        if self.overflowed is not None:
            finite = torch.isfinite(state_rate).all() & torch.isfinite(self.rates[self.next_row]).all()
            self.overflowed = self.overflowed | ~finite
        self.next_row += 1
        return state_rate if self.dense is not None else torch.stack([derivative, state_rate])

    def begin(  # type: ignore[override]  # the carry is (k1, row)
        self, t0: float, y0: Tensor, stats: Stats
    ) -> tuple[Tensor, int]:
        self.next_row = 0
        try:
            k1 = super().begin(t0, y0, stats)
        except SolverError:
            # f was finite there in the forward solve: -a^T df/dy is what is not.
            raise_non_finite_gradient(t0, 0, found=_AT_BACKWARD_START)
        if self.norm_includes_parameters and not bool(torch.isfinite(self.rates[0]).all()):
            # -a^T df/dtheta, which the default norm reads: every step size would be NaN.
            raise_non_finite_gradient(t0, 0, found=_AT_BACKWARD_START)
        return k1, 0

    def initial_step_size(  # type: ignore[override]  # the carry is (k1, row)
        self,
        t0: float,
        y0: Tensor,
        carry: tuple[Tensor, int],
        direction: float,
        stats: Stats,
        t_end: float | None = None,
    ) -> float:
        f0, row = carry
        if self.seminorm:
            return super().initial_step_size(t0, y0, f0, direction, stats, t_end)

        # The heuristic's norms are over (y, a, g): flatten once per restart, not per evaluation.
        def field(t: Tensor, z: Tensor) -> Tensor:
            derivative = self.augmented_field(t, z[: y0.numel()].reshape(y0.shape))
            return torch.cat([derivative.reshape(-1), self.rates[self.next_row - 1]])

        dt_abs, nfe = initial_step_size(
            field,
            t0,
            torch.cat([y0.reshape(-1), self.parameter_gradient]),
            torch.cat([f0.reshape(-1), self.rates[row]]),
            self.order,
            self.rtol,
            self.atol,
            direction,
            t_end=t_end,
            time_dtype=self.time_dtype,
        )
        stats.add(nfe)
        return dt_abs

    def step(  # type: ignore[override]  # the carry is (k1, row)
        self,
        t: float,
        t_next: float,
        y: Tensor,
        dt: float,
        carry: tuple[Tensor | None, int | None],
        estimate_error: bool,
    ) -> StepResult:
        k1, row = carry
        if k1 is not None and row != 0:
            self.rates[0].copy_(self.rates[row])
        self.next_row = 0 if k1 is None else 1
        self.dt = dt
        self.end_gradient = None
        # The attempt's error norm: over (y, a, g) when it is estimated and includes the parameters.
        self.norm = self.parameter_norm if estimate_error and self.norm_includes_parameters else rms_norm
        self.step_start = t
        try:
            return super().step(t, t_next, y, dt, k1, estimate_error)
        finally:
            self.step_start = None

    def release(self) -> None:
        """Drop the stepper's references to its own bound methods (its field and norm), a cycle
        that would keep the stage-rate matrix (stages x parameters) alive until Python's cycle
        collector runs, not until the backward pass returns."""
        self.func = self.norm = None  # type: ignore[assignment]  # after their last use

    def parameter_norm(self, scaled_state_error: Tensor) -> Tensor:
        """The RMS over ``(y, a, g)`` of the attempt's scaled error, given that of ``(y, a)``; every
        stage has been evaluated (its rate written) before the error estimate."""
        sums = self.weights @ self.rates
        g0 = self.parameter_gradient
        self.end_gradient = torch.add(g0, sums[0], alpha=self.dt)
        scale = torch.maximum(g0.abs(), self.end_gradient.abs()).mul_(self.rtol).add_(self.atol)
        parameter_error = torch.linalg.vector_norm(sums[1].div_(scale)).mul_(abs(self.dt))
        return torch.hypot(torch.linalg.vector_norm(scaled_state_error), parameter_error).div_(
            self.root_entries
        )

    def after_jump(  # type: ignore[override]  # the carry is (k1, row)
        self, carry: tuple[Tensor | None, int | None]
    ) -> tuple[None, None]:
        return None, None

    def next_carry(  # type: ignore[override]  # the carry is (k1, row)
        self, result: StepResult, accepted: bool, carry: tuple[Tensor | None, int | None]
    ) -> tuple[Tensor | None, int | None]:
        if not accepted:
            # The attempt moved a carried first stage's rate to row 0.
            return carry[0], None if carry[0] is None else 0
        if self.end_gradient is not None:
            self.parameter_gradient = self.end_gradient
        else:
            self.parameter_gradient = torch.addmv(
                self.parameter_gradient, self.rates.T, self.weights[0], alpha=self.dt
            )
        k1 = super().next_carry(result, accepted, carry[0])
        # A pair that is FSAL carries its last stage, the last row written.
        return k1, None if k1 is None else self.next_row - 1


class ReplayedSolution:
    """The forward solution between its accepted steps, from the step states kept within a budget
    (:class:`StepStates`, ``InterpolatingAdjoint(checkpoints=C)``): the segment of steps that holds a
    time asked for is re-solved from its kept state, without a graph and with the recorded step
    sizes (:func:`replay_steps`), into a :class:`DenseOutput` of that segment. The two segments read
    last are kept: a backward step straddling a segment's start reads both, and its retry after a
    rejection the later one again. ``func`` counts the evaluations."""

    def __init__(self, func: CountingField, solve: ForwardSolve) -> None:
        steps, self.step_states = solve.replay_records()
        self.func = func
        self.options = solve.options
        self.step_starts = steps.t.tolist()
        self.step_sizes = steps.dt.tolist()
        # Where the last step ended, as the forward landed it (t + dt may round to another float).
        self.t_end = solve.solved_times[-1]
        self.direction = 1.0 if self.step_sizes[0] > 0 else -1.0
        self.keys = [self.direction * start for start in self.step_starts]
        self.interpolant = get_interpolant(self.options.runge_kutta_tableau)
        # (first step, record) of the segments read last, the latest last.
        self.segments: list[tuple[int, DenseOutput]] = []

    def state_at(self, t: float, offset: float = 0.0) -> Tensor:
        """The solution at ``t + offset`` (:meth:`DenseOutput.state_at`)."""
        position = self.direction * (t + offset)
        n = min(max(bisect.bisect_right(self.keys, position) - 1, 0), len(self.keys) - 1)
        start, end, kept = self.step_states.segment_of(n)
        segment = next((segment for segment in self.segments if segment[0] == start), None)
        if segment is None:
            del self.segments[:-1]  # two segments' records alive at most, also while re-solving
            segment = start, self._dense_segment(start, end, kept)
        else:
            self.segments.remove(segment)
        self.segments.append(segment)
        return segment[1].state_at(t, offset)

    def _dense_segment(self, start: int, end: int, kept: Tensor) -> DenseOutput:
        replayed = replay_steps(self.func, self.options, self.step_starts, self.step_sizes, start, end, kept)
        dense = DenseOutput(self.interpolant, self.step_starts[start])
        # Each step is added once the next is solved, whose first stage may be its end derivative.
        n, (state, result) = start, next(replayed)
        for n_next, (state_next, result_next) in enumerate(replayed, start + 1):
            self._add_step(dense, n, state, result, result_next.stages[0])
            n, state, result = n_next, state_next, result_next
        self._add_step(dense, n, state, result, None)
        dense.add_state(result.y1)  # the segment's end, after its last step
        return dense

    def _add_step(
        self, dense: DenseOutput, n: int, state: Tensor, result: StepResult, next_first_stage: Tensor | None
    ) -> None:
        t_next = self.step_starts[n + 1] if n + 1 < len(self.step_starts) else self.t_end
        stages = result.stages
        if self.interpolant.extra_stage:
            # f(t_next, y1), which a pair without a free interpolant needs: the next step's first
            # stage, as the forward's dense output took it, but on the step's side of a jump there.
            options = self.options
            dtype = state.dtype if options.time_dtype is None else options.time_dtype
            end_time = beside_jump(t_next, self.step_starts[n], dtype, options.controller.jump_ts)
            if next_first_stage is None or end_time != t_next:
                with torch.no_grad():
                    next_first_stage = self.func(time_tensor(end_time, state, options.time_dtype), result.y1)
            stages = (*stages, next_first_stage)
        dense.add_step(self.step_starts[n], self.step_sizes[n], t_next, state, stages)


class _ContinuousAdjoint(GraphFreeGradient):
    """What the continuous adjoints share: the backward solve's settings, checked once (the
    forward's where unset), and its restarts at the output times that carry a cotangent.

    Args:
        method: the backward solve's method (a name or a :class:`ButcherTableau`); default the
            forward's.
        rtol, atol: the backward solve's tolerances; default the forward's. ``rtol=0`` is a pure
            absolute tolerance.
        norm: ``"default"`` (RMS over the whole backward state and ``g``) or ``"seminorm"``
            (without ``g``; Kidger, Chen, Lyons, ICML 2021).
        step_size: fixed steps of the backward solve. Default: the forward's (if it had one) when
            the backward method is the forward's or fixed-step; an adaptive ``method`` given here
            steps adaptively.
        first_step, max_steps: of the backward solve (default: the heuristic; the forward's).
    """

    supports_step_penalty = False
    _RENAMED = {"tableau": "method"}  # before 2026-12-06 the backward method was kept as "tableau"
    # Whether y(t) is read from the forward solve's dense record instead of solved backwards.
    reads_forward_solution: ClassVar[bool]
    # What the backward solve's failures call it, and how local_reg.compat spells its settings.
    label: ClassVar[str]
    compat_settings: ClassVar[str] = ""

    def __init__(
        self,
        method: str | ButcherTableau | None = None,
        rtol: float | None = None,
        atol: float | None = None,
        norm: str = "default",
        step_size: float | None = None,
        first_step: float | None = None,
        max_steps: int | None = None,
    ) -> None:
        own = type(self).__name__
        if norm not in NORMS:
            raise ValueError(f"{own}: norm must be one of {NORMS}, got {norm!r}")
        try:
            self.method = None if method is None else get_tableau(method)
        except (TypeError, ValueError) as error:
            raise type(error)(f"{own} method: {error}") from None
        self.rtol = None if rtol is None else relative_tolerance(f"{own} rtol", rtol)
        self.atol = None if atol is None else positive_float(f"{own} atol", atol)
        self.norm = norm
        self.step_size = None if step_size is None else positive_float(f"{own} step_size", step_size)
        self.first_step = None if first_step is None else positive_float(f"{own} first_step", first_step)
        check_adaptive_settings_unset(self.step_size, {f"{own} first_step": self.first_step})
        self.max_steps = None if max_steps is None else positive_int(f"{own} max_steps", max_steps)

    def controls_steps(self, step_size: float | None) -> bool:
        # An adaptive backward solve (this object's own method) takes the forward's controller.
        return super().controls_steps(step_size) or self._backward_step_size(step_size) is None

    def backward_options(self, forward: SolveOptions) -> SolveOptions:
        """The backward solve's options: this object's settings, the forward's where unset."""
        step_size = self._backward_step_size(forward.step_size)
        return SolveOptions(
            rtol=forward.rtol if self.rtol is None else self.rtol,
            atol=forward.atol if self.atol is None else self.atol,
            first_step=self.first_step,
            max_steps=forward.max_steps if self.max_steps is None else self.max_steps,
            step_size=step_size,
            # Fixed backward steps land on no times of their own: their equal steps end on the
            # forward's grid, jumps included, where they restart at every output time
            # (_solve_backwards).
            controller=dataclasses.replace(forward.controller, step_ts=())
            if step_size is not None
            else forward.controller,
            tableau=forward.tableau if self.method is None else self.method,
            time_dtype=forward.time_dtype,
            times_rounding=forward.times_rounding,
        )

    def _backward_step_size(self, forward_step_size: float | None) -> float | None:
        if self.step_size is not None:
            return self.step_size
        own_adaptive_method = self.method is not None and self.method.adaptive
        return None if own_adaptive_method else forward_step_size

    def check(
        self, options: SolveOptions, times: list[float] | None = None, y0: Tensor | None = None
    ) -> None:
        own = type(self).__name__
        tableau = options.runge_kutta_tableau if self.method is None else self.method
        backward_step_size = self._backward_step_size(options.step_size)
        # Fixed backward steps, this object's or the forward's, read no first step.
        check_adaptive_settings_unset(backward_step_size, {f"{own} first_step": self.first_step})
        if backward_step_size is None and not tableau.adaptive:
            raise ValueError(f"{own} method {tableau.name!r} is fixed-step: pass {own}(step_size=...)")
        for name, given, forward in (("rtol", self.rtol, options.rtol), ("atol", self.atol, options.atol)):
            # The backward solve's state holds the parameters' gradient too: the forward's
            # per-element tolerances have no element there to apply to.
            if given is None and isinstance(forward, Tensor):
                compat = f"; in local_reg.compat adjoint_{name}=..." if self.compat_settings else ""
                raise ValueError(
                    f"the forward solve has per-element {name}: the {self.label}'s solve needs its own, "
                    f"one number ({own}({name}=...){compat})"
                )
        backward = self.backward_options(options)
        if backward.step_size is None:
            backward.controller.gains(tableau.order)  # refused now, not in the backward pass
        if times is not None and y0 is not None:
            # The backward solve's own step and tolerances, checked as the forward's are.
            check_span(times, y0.dtype, backward.step_size, backward.tableau)
            backward.for_state(y0)
            if options.callbacks.stop is None:  # after an event: once its time is known (backward)
                self._check_backward_grid(options, backward, times)

    def _check_backward_grid(self, forward: SolveOptions, backward: SolveOptions, times: list[float]) -> None:
        """Fixed backward steps of a ``step_size`` other than the forward's, which run from each of
        ``times`` to the one before, refused where they would not end on every jump among them."""
        if backward.step_size is None or backward.step_size == forward.step_size:
            return  # adaptive backward steps land on the jumps; the forward's grid ends on them
        jumps = backward.controller.within(times[0], times[-1], forward.time_dtype).jump_ts
        if not jumps:
            return
        try:
            jumps_at_step_ends(
                jumps, times[::-1], backward.step_size, forward.times_rounding, forward.time_dtype
            )
        except ValueError:
            own = type(self).__name__
            raise ValueError(
                f"{own}(step_size={backward.step_size:g}): its fixed backward steps do not end on every "
                "one of controller.jump_ts, as the forward's steps do, and a step across a jump would "
                "read the field on both sides: leave its step_size unset (the forward's), or give one "
                "whose steps end on them"
            ) from None

    def backward(
        self, solve: ForwardSolve, ys: Tensor, grad_ys: Tensor, grad_penalties: Tensor | None
    ) -> tuple[Tensor, list[Tensor | None], int]:
        times = solve.solved_times
        if len(times) == 1:
            return grad_ys[0], [None] * len(solve.params), 0
        if not all_finite((grad_ys[1:],)):
            # A non-finite loss (say the overflow a GradScaler skips): the exact methods' gradients
            # are non-finite then, and a backward solve of a non-finite adjoint would only fail
            # (the cotangent at t0 enters no solve: it is added to y0's gradient alone).
            return self._non_finite_gradients(solve, ys[0])
        # For the state's dtype (a tiny atol raised to its smallest normal number, as the forward's).
        options = self.backward_options(solve.options).for_state(ys[0])
        if solve.options.callbacks.stop is not None:  # the backward steps start at the event's time
            self._check_backward_grid(solve.options, options, times)
        forward_solution = self._forward_solution(solve)
        scale = self._cotangent_scale(grad_ys)
        stepper = AdjointStepper(solve, options, self.norm == "seminorm", ys, forward_solution)
        try:
            adjoint, grad_params, calls = self._solve_backwards(
                solve, stepper, options, times, ys, grad_ys if scale == 1.0 else grad_ys / scale
            )
        except SolverError:
            if stepper.overflowed is None or not bool(stepper.overflowed):
                raise
            # float16 overflowed in -a^T df/dy or -a^T df/dtheta, where no step can go on: the
            # gradients are those of an overflow, for a GradScaler to skip (as the exact methods').
            return self._non_finite_gradients(solve, ys[0])
        finally:
            stepper.release()
        if isinstance(forward_solution, ReplayedSolution):
            calls += forward_solution.func.calls
        if scale != 1.0:
            adjoint = adjoint * scale
            grad_params = [None if g is None else g * scale for g in grad_params]
        return adjoint, grad_params, calls

    @staticmethod
    def _non_finite_gradients(solve: ForwardSolve, y0: Tensor) -> tuple[Tensor, list[Tensor | None], int]:
        """NaN gradients for ``y0`` and the parameters ``func`` uses (``None`` for the others, as
        the exact methods give them), found by one vector--Jacobian product at ``t0``."""
        nan = torch.full_like(y0, math.nan)
        t0 = time_tensor(solve.times[0], y0, solve.options.time_dtype)
        _, _, grad_params = vector_jacobian_product(solve.func, t0, y0, solve.params, nan)
        return nan, [None if g is None else torch.full_like(g, math.nan) for g in grad_params], 1

    def _cotangent_scale(self, grad_ys: Tensor) -> float:
        """What the cotangents are divided by before the backward solve (and its results multiplied
        by after it): 1, the backsolve's, whose error norm measures ``a`` beside ``y``."""
        return 1.0

    def _forward_solution(self, solve: ForwardSolve) -> DenseOutput | ReplayedSolution | None:
        """Where the backward solve reads ``y(t)``, or ``None`` if it solves ``y`` itself."""
        return None

    def _solve_backwards(
        self,
        solve: ForwardSolve,
        stepper: AdjointStepper,
        options: SolveOptions,
        times: list[float],
        ys: Tensor,
        grad_ys: Tensor,
    ) -> tuple[Tensor, list[Tensor | None], int]:
        own = type(self).__name__
        adjoint = grad_ys[-1]
        # Restart at every output time that carries a cotangent (and at t0). Fixed steps beside
        # jumps restart at every output time: their equal steps then end where the forward's did,
        # on the jumps too (SolveOptions.over), and read each side of them as the forward's did.
        last = len(times) - 1
        on_forward_grid = options.step_size is not None and bool(options.controller.jump_ts)
        restarts = [0, *(i for i in range(1, last) if on_forward_grid or bool(grad_ys[i].any())), last]
        calls = 0
        for end, start in reversed(list(pairwise(restarts))):
            if too_close_to_step(times[start], times[end]):
                # Output times a few ulps apart, which the forward solve interpolates: no step can
                # cross the span, and the adjoint changes across it by less than its rounding.
                adjoint = adjoint + grad_ys[end]
                continue
            # The backsolve restarts y from the forward output rather than the backsolved y: it is
            # more accurate.
            state = adjoint if self.reads_forward_solution else torch.stack([ys[start], adjoint])
            where = f"{self.label}, backward solve from t={times[start]!r} to t={times[end]!r}"
            try:
                outputs, stats, _, _ = integrate(stepper, state, [times[start], times[end]], options)
            except TooManyFixedSteps as error:
                # Refused before the first step: this solve's settings.
                raise ValueError(f"{where}: {error.spelt(own + '(max_steps={})')}") from None
            except SolverError as error:
                # The loop's hint names the forward solve's settings; this solve has its own.
                settings = f"raise {own}(max_steps=...), or loosen {own}(rtol=..., atol=...)"
                reason = error.reason.replace(SETTINGS_HINT, f"({settings}{self.compat_settings})")
                limit = (
                    "; adjoint_options['max_num_steps'] in local_reg.compat" if self.compat_settings else ""
                )
                reason = reason.replace(RAISE_MAX_STEPS, f"raise {own}(max_steps=...){limit}")
                # The state is (y, a) solved backwards: a blow-up there, or a step count far beyond
                # the forward solve's, is most often y's instability backwards (a contracting
                # forward flow), not the forward solution's.
                limited = reason.startswith(STEP_LIMIT_REACHED)
                many_steps = (error.n_steps or 0) > _MANY_MORE_STEPS * max(solve.stats.n_steps, 1)
                if not self.reads_forward_solution and (not limited or many_steps):
                    reason += f" ({_UNSTABLE_BACKWARDS})"
                raise SolverError(f"{where}: {reason}", t=error.t, n_steps=error.n_steps) from None
            calls += stats.nfe
            if not self.reads_forward_solution:
                _warn_if_drifted(outputs[-1][0], ys[end], (options, solve.options))
            adjoint = (outputs[-1] if self.reads_forward_solution else outputs[-1][1]) + grad_ys[end]
        grad_params: list[Tensor | None] = [
            None
            if not used
            # A complex parameter's gradient accumulated as its real view (torch's convention for a
            # real loss: d/dRe + i d/dIm, as the vector-Jacobian products give it).
            else torch.complex(gradient[..., 0], gradient[..., 1]).to(param.dtype)
            if param.is_complex()
            else gradient
            for gradient, used, param in zip(
                parameter_views(stepper.parameter_gradient, solve.params),
                stepper.used,
                solve.params,
                strict=True,
            )
        ]
        return adjoint, grad_params, calls


_UNSTABLE_BACKWARDS = (
    "solving y backwards (the backsolve adjoint's way) is unstable where the forward flow contracts "
    "(dissipation, a fast decaying mode), which spoils its gradient: use gradient="
    "'interpolating_adjoint', which reads y from the forward solve, or an exact method"
)
_DRIFT = 1e-2
"""The distance between the backsolved ``y`` and the forward solve's output at an output time,
relative to the output's size, beyond which the backsolve's gradient is not to be trusted: a
stable backward solve stays within a few times its tolerance of it."""
_MANY_MORE_STEPS = 10
"""A backward solve that fails its ``max_steps`` after this many times the forward solve's steps
is most likely unstable rather than short of steps."""
_DRIFT_TOLERANCES = 100
"""Backward-solve tolerances (``atol + rtol * max|y|``) that a gap may span without a warning: an
element near zero (a state decayed to the tolerance's scale, y' = -y at t = 20; a rotation's
component at its zero) is known only to that accuracy, and its relative gap says nothing of the
gradient (exact there to 1e-6)."""


def _warn_if_drifted(backsolved: Tensor, forward: Tensor, solves: tuple[SolveOptions, ...]) -> None:
    """Warn where the ``y`` the backsolve adjoint solved backwards to an output time has left the
    forward solve's output there, in some element, by more than :data:`_DRIFT` of its size and
    :data:`_DRIFT_TOLERANCES` of the larger tolerance of the ``solves`` (backward and forward).
    The comparison is free: both are at hand, and the backsolve restarts from the forward's output
    anyway."""
    if forward.numel() == 0:  # an empty batch: nothing to compare (and no maximum to take)
        return
    # Element by element: one large component (an accumulated cost) would hide the others' drift.
    forward = forward.detach()
    size = forward.abs()
    # The gap holds the forward solve's error too: a backward tolerance tighter than the forward's
    # does not make the forward output more accurate.
    scale = float(size.max())
    tolerance = max(
        float(torch.as_tensor(options.atol).max()) + float(torch.as_tensor(options.rtol).max()) * scale
        for options in solves
    )
    allowed = _DRIFT * size + _DRIFT_TOLERANCES * tolerance
    if not bool(((backsolved.detach() - forward).abs() <= allowed).all()):
        backward = solves[0]
        # Fixed steps follow no tolerance: their own error may be the gap, whatever the flow.
        cause = (
            f"the backward solve's fixed steps ({backward.tableau.name}, step_size "
            f"{backward.step_size:g}) may be too coarse: a shorter step_size or a higher-order "
            f"method; else {_UNSTABLE_BACKWARDS}"
            if backward.step_size is not None and backward.tableau is not None
            else _UNSTABLE_BACKWARDS
        )
        warn(
            "the backsolve adjoint's y, solved backwards, has left the forward solution by more than "
            f"{_DRIFT:.0%} of an element's size (and {_DRIFT_TOLERANCES} tolerances): its gradient may "
            "be wrong here (check it against gradient='direct' on one batch: a gap along a fast "
            f"decaying direction can leave it accurate); {cause}"
        )


class BacksolveAdjoint(_ContinuousAdjoint):
    """``gradient="adjoint"``: solve the augmented system ``(y, a, g)`` backwards between output
    times (the module docstring), in memory that does not grow with the number of steps. Its
    arguments set the backward solve, each the forward's where unset (docs/gradients.md);
    ``norm="default"`` is the RMS over ``(y, a, g)``, ``"seminorm"`` over ``(y, a)``. ``y`` restarts
    from the forward solution only at output times with a cotangent (SciMLSensitivity's
    ``BacksolveAdjoint`` resets it at every saved time by default): for a backward solve of ``y``
    that drifts, :class:`InterpolatingAdjoint`."""

    name = "adjoint"
    reads_forward_solution = False
    label = "backsolve adjoint"
    compat_settings = "; in local_reg.compat adjoint_options['max_num_steps'], adjoint_rtol/atol"


class InterpolatingAdjoint(_ContinuousAdjoint):
    """``gradient="interpolating_adjoint"``: the adjoint system without ``y``::

        da/dt = -a^T df/dy (t, y(t)),     dg/dt = -a^T df/dtheta (t, y(t)),

    solved backwards between output times as :class:`BacksolveAdjoint` solves it, with ``y(t)``
    read from the forward solve's dense output (every accepted step's state and stages, the
    interpolant of ``odeint(dense=True)``) instead of being solved backwards too: SciMLSensitivity's
    ``InterpolatingAdjoint`` (Ma, Dixit, Innes, Guo, Rackauckas, "A comparison of automatic
    differentiation and continuous sensitivity analysis for derivatives of differential equation
    solutions", HPEC 2021). Solving ``y`` backwards is unstable where the forward dynamics
    contract (a fast decaying mode grows backwards, and with it every error in ``y``), which
    spoils the backsolve's gradient; here ``y(t)`` is the forward solution itself, to the
    interpolant's accuracy, whatever the dynamics. The cost is the dense record, ``O(steps *
    stages)`` memory, as ``dense=True`` keeps (a method whose interpolant is cubic Hermite and
    whose tableau has no FSAL stage evaluates ``f`` once more per forward solve for it, at the last
    step's end, and once per ``jump_ts`` time crossed); with
    ``checkpoints=C`` the forward keeps at most ``C`` step states instead (as
    ``Checkpoint(checkpoints=C)``, :mod:`._checkpoints`, but also with ``record_states=True``) and
    the backward pass re-solves the segment of steps that holds each time it reads
    (:class:`ReplayedSolution`, the two segments read last kept): the same ``y(t)`` to the bit,
    for one more forward solve and an evaluation per segment. The
    gradient is that of the continuous problem, as the backsolve's. The backward solve starts from
    the cotangents divided by their largest RMS (the system is linear in ``(a, g)``), so that its
    tolerances measure ``a`` and ``g`` at that scale whatever the loss's, and multiplies the result
    back. Its other arguments set the backward solve, as :class:`BacksolveAdjoint`'s; ``norm``:
    ``"default"`` is the RMS over ``(a, g)``, ``"seminorm"`` over ``a``. Not with a stop condition
    (``odeint_event``), whose solve keeps no dense record.
    """

    name = "interpolating_adjoint"
    reads_forward_solution = True
    label = "interpolating adjoint"

    def __init__(
        self,
        method: str | ButcherTableau | None = None,
        rtol: float | None = None,
        atol: float | None = None,
        norm: str = "default",
        step_size: float | None = None,
        first_step: float | None = None,
        max_steps: int | None = None,
        checkpoints: int | None = None,
    ) -> None:
        super().__init__(method, rtol, atol, norm, step_size, first_step, max_steps)
        self.checkpoints = checked_checkpoints(checkpoints)

    def new_step_states(self, record_states: bool) -> StepStates | None:
        if self.checkpoints is None:
            return None  # the dense record holds every state
        # The budget even where the user keeps every state (record_states, which costs it no memory
        # more: the same tensors): the replay needs each step's stages, and a segment of steps
        # replays with its FSAL stages where a step replayed alone evaluates its first stage anew.
        return StepStates(self.checkpoints)

    def _cotangent_scale(self, grad_ys: Tensor) -> float:
        # The adjoint system is linear in (a, g): solved from the cotangents divided by their
        # largest RMS over the output times, its error control measures a and g against tolerances
        # at that scale, whatever the loss's (a mean over many entries gives a tiny a, which the
        # forward's atol would let through at ~100% error), as the backsolve's y keeps its steps.
        # In float64: a float32 sum of squares underflows below cotangents of ~1e-22 (and the scale
        # fell back to 1). The cotangent at t0 enters no solve.
        entered = grad_ys[1:].reshape(len(grad_ys) - 1, -1)
        rms = torch.linalg.vector_norm(entered, dim=1, dtype=torch.float64) / grad_ys[0].numel() ** 0.5
        largest = float(rms.max())
        return largest if 0.0 < largest < math.inf else 1.0

    def _forward_solution(self, solve: ForwardSolve) -> DenseOutput | ReplayedSolution | None:
        if solve.dense_output is not None:
            return solve.dense_output
        return ReplayedSolution(CountingField(solve.func), solve)

    def check(
        self, options: SolveOptions, times: list[float] | None = None, y0: Tensor | None = None
    ) -> None:
        if options.callbacks.stop is not None:
            raise ValueError(
                "gradient='interpolating_adjoint' reads the forward solve's dense record, which a solve "
                "with a stop condition (odeint_event) does not keep: use gradient='adjoint' or an exact "
                "method"
            )
        super().check(options, times, y0)

    def solve(self, y0: Tensor, solve: ForwardSolve) -> tuple[Tensor, Stats, Steps, Tensor | None]:
        asked = solve.options.dense
        if solve.is_differentiated(y0) and not asked and self.checkpoints is None:
            solve.options = solve.options.with_checked(dense=True)
        ys, stats, steps, penalties = super().solve(y0, solve)
        solve.dense_output = steps.dense_output
        if not asked:
            steps.dense_output = None  # the record is this method's, not asked of the solution
        return ys, stats, steps, penalties
