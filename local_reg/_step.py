"""One explicit Runge--Kutta step, instrumented.

This is the only implementation of a step in ``local_reg``: the adaptive solver, the regularizers
and the adjoints all call :func:`step`, so the error estimate the regularizer penalizes is, by
construction, the one the solver uses to accept or reject steps.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, cast

import numpy as np
import torch
from torch import Tensor

from ._errors import SolverError, warn
from ._stepper import Stepper, checked_error
from .interpolants import Interpolant, get_interpolant
from .solution import Stats
from .tableaus import ButcherTableau

VectorField = Callable[[Tensor, Tensor], Tensor]


@dataclasses.dataclass
class StepResult:
    """What one step computed.

    Attributes:
        y1: the propagated solution at ``t + dt``.
        error_estimate: ``EEst = rms(err / (atol + rtol * max(|y0|, |y1|)))`` with
            ``err = dt * sum_i error_weights[i] * k_i``, a 0-dim tensor (``None`` for a fixed-step
            method). The step is acceptable iff ``EEst <= 1``.
        stiffness: :attr:`stiffness_estimate`, or a function that computes it when it is first read
            (most steps are never asked for it).
        stages: the stage derivatives ``k_1 ... k_s``.
        nfe: the number of evaluations of ``func`` this step made.
        end_derivative: ``f(t + dt, y1)`` once dense output of a pair that is not FSAL has
            evaluated it (the next step's first stage), else ``None``.
    """

    y1: Tensor
    error_estimate: Tensor | None
    stiffness: Tensor | Callable[[], Tensor] | None
    stages: tuple[Tensor, ...]
    nfe: int
    end_derivative: Tensor | None = None
    error_check: Tensor | None = None
    """``EEst + 0 * max|y1|`` (:meth:`local_reg._stepper.Stepper.error_check`) when the compiled
    step computed it in its graph, else ``None``."""
    nfe_diffusion: ClassVar[int] = 0

    @functools.cached_property
    def stiffness_estimate(self) -> Tensor | None:
        """Shampine's estimate ``rho = ||k_j - k_i|| / ||Y_j - Y_i||`` of the magnitude of the
        dominant eigenvalue of the Jacobian, from two stages at ``c == 1``; a 0-dim tensor (with a
        graph if the stages have one, under the autograd mode of its first read), or ``None`` for
        tableaus without such stages."""
        return self.stiffness() if callable(self.stiffness) else self.stiffness


def rms_norm(x: Tensor) -> Tensor:
    """Root mean square over all elements, ``sqrt(mean(x**2))``, with a zero (not NaN) gradient at 0."""
    return torch.linalg.vector_norm(x) / cpu_scalar(math.sqrt(max(x.numel(), 1)), x.dtype)


def _rms_of_large(x: Tensor) -> float:
    """:func:`rms_norm` of ``x`` as a float, computed on ``x`` over its largest magnitude where the
    squares of ``x`` itself would overflow."""
    value = float(rms_norm(x))
    if value != math.inf:
        return value
    largest = x.abs().max()
    return float(largest) * float(rms_norm(x / largest)) if bool(torch.isfinite(largest)) else value


def cpu_scalar(value: float, dtype: torch.dtype) -> Tensor | float:
    """``value`` as a 0-dim CPU tensor of ``dtype``, made once. In arithmetic with a tensor of
    ``dtype`` on any device it acts as the Python float would (rounded to ``dtype``, the same
    kernel), without wrapping a new scalar tensor on every call of the per-step arithmetic. While
    ``torch.compile`` traces, or a dispatch mode is active (``FakeTensorMode`` would make the cached
    tensor a fake one, which every later eager call would meet), the float itself."""
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack():
        return value
    return _cached_scalar(value, dtype)


@functools.lru_cache(maxsize=256)
def _cached_scalar(value: float, dtype: torch.dtype) -> Tensor:
    # Made under inference_mode it would be an inference tensor, which every later differentiated
    # step would fail to save for backward; made inside a torch.func transform (jacfwd, jvp) it
    # would be that transform's wrapped tensor, whose level every later transform finds dead; made
    # under a TorchFunctionMode, whatever that mode makes of it, for every later call.
    with torch.inference_mode(False), torch._C._DisableFuncTorch(), torch._C.DisableTorchFunction():
        return torch.tensor(value, dtype=dtype, device="cpu")


def error_scale(y0: Tensor, y1: Tensor, rtol: float | Tensor, atol: float | Tensor) -> Tensor:
    """Elementwise tolerance scale ``atol + rtol * max(|y0|, |y1|)`` (tolerances: numbers, or
    tensors of the state's shape)."""
    # In place on the fresh maximum (whose gradient needs only y0 and y1): one allocation, not three.
    scale = torch.maximum(y0.abs(), y1.abs())
    rtol = rtol if isinstance(rtol, Tensor) else cpu_scalar(rtol, scale.dtype)
    atol = atol if isinstance(atol, Tensor) else cpu_scalar(atol, scale.dtype)
    return scale.mul_(rtol).add_(atol)


def combine(
    base: Tensor | None, dt: float | Tensor, coefficients: Sequence[float], stages: Sequence[Tensor]
) -> Tensor:
    """``base + dt * sum_j coefficients[j] * stages[j]``, skipping zero coefficients.

    ``base=None`` means zero. The increment is summed first and added to ``base`` once, as
    torchdiffeq does: adding each term to ``base`` in turn rounds at ``base``'s scale once per stage,
    which in float32 made fixed-step solves of 4000 steps 4--13x less accurate (docs/solver.md).
    Differentiable: with a float ``dt`` the first term makes a new tensor and the others (and
    ``base``) are added to it in place (the same sums, without an allocation each; autograd records
    in-place additions to a tensor no other operation has saved). A 0-dim tensor ``dt`` (the
    compiled step, whose graph must not depend on the step's value) sums out of place, which the
    compiler fuses into one kernel.
    """
    out = None
    # Which of the two sums is asked once, outside the loop over the stages (a step's hottest).
    if isinstance(dt, Tensor):
        for coefficient, stage in zip(coefficients, stages, strict=True):
            if coefficient != 0.0:
                term = stage * (dt * coefficient)
                out = term if out is None else out + term
        if out is not None and base is not None:
            return base + out
    else:
        for coefficient, stage in zip(coefficients, stages, strict=True):
            if coefficient == 0.0:
                continue
            if out is None:
                out = stage * (dt * coefficient)
            else:
                out.add_(stage, alpha=dt * coefficient)
        if out is not None and base is not None:
            return out.add_(base)
    if out is None:
        return torch.zeros_like(stages[0]) if base is None else base
    return out


def combine_rows(
    base: Tensor | None, dt: float, rows: np.ndarray, stages: Sequence[Tensor] | Tensor
) -> Tensor:
    """``base + dt * sum_j rows[m, j] * stages[j]`` for every row ``m`` at once, stacked: shape
    ``(len(rows), *stages[0].shape)``; ``base=None`` means zero. One matrix product, for many
    outputs inside one step. ``stages`` may come stacked already (one tensor)."""
    stacked = stages if isinstance(stages, Tensor) else torch.stack(tuple(stages))
    weights = torch.from_numpy(rows * dt).to(dtype=stacked.dtype, device=stacked.device)
    combined = torch.tensordot(weights, stacked, dims=1)
    return combined if base is None else base + combined


def time_tensor(t: float, like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """``t`` as the 0-dim tensor ``func`` receives: in ``dtype`` (default ``like``'s) on ``like``'s device."""
    return torch.tensor(t, dtype=like.dtype if dtype is None else dtype, device=like.device)


def stage_times(times: Sequence[float], like: Tensor, dtype: torch.dtype | None = None) -> tuple[Tensor, ...]:
    """:func:`time_tensor` of each of a step's stage ``times`` (the same values), made as one tensor:
    one allocation, and one host-to-device copy, per step instead of one per stage."""
    if not times:
        return ()
    return torch.tensor(times, dtype=like.dtype if dtype is None else dtype, device=like.device).unbind()


def too_close_to_step(a: float, b: float) -> bool:
    """Whether a step from ``a`` to ``b`` would underflow (:func:`underflow_threshold`, the loop's
    own test): two output times this close cannot each end a step."""
    return abs(b - a) <= underflow_threshold(a, abs(b - a))


def within_ulps(a: float, b: float) -> bool:
    """Whether ``a`` and ``b`` are no further apart than the loop's smallest step from the larger
    (:func:`underflow_threshold`, 4 ulps), so that no step can go from one to the other."""
    return abs(a - b) <= underflow_threshold(max(abs(a), abs(b)), 0.0)


def jump_ends(t: float, dt: float, jump_ts: Sequence[float]) -> tuple[float | None, float | None]:
    """The jump times (of the sorted ``jump_ts``) at the start and at the end of the step from ``t``
    by ``dt``, ``None`` where there is none. A jump within 4 ulps of an end is at it (a step that
    lands on a time ends at ``t + dt`` only up to the rounding of the sum, and jumps that close
    cannot each end a step); of several, the start's is the last the step passes and the end's the
    first, so that the step lies between them."""
    end = t + dt
    found = []
    for time in (t, end):
        index = bisect.bisect_left(jump_ts, time)
        near = [jump_ts[i] for i in range(max(index - 4, 0), min(index + 4, len(jump_ts)))]
        found.append([jump for jump in near if within_ulps(jump, time)])
    at_start, at_end = found
    forward = dt > 0
    start = (max(at_start) if forward else min(at_start)) if at_start else None
    finish = (min(at_end) if forward else max(at_end)) if at_end else None
    return start, finish


def _beside(time: float, toward: float, dtype: torch.dtype) -> float:
    """The time of ``dtype`` next to ``time`` (rounded to ``dtype``) in the direction of ``toward``."""
    value = torch.tensor(time, dtype=dtype, device="cpu")
    return float(torch.nextafter(value, torch.tensor(toward, dtype=dtype, device="cpu")))


def beside_jump(time: float, toward: float, dtype: torch.dtype, jump_ts: Sequence[float]) -> float:
    """``time``, or where it is at one of the sorted ``jump_ts`` (:func:`jump_ends`), the time of
    ``dtype`` next to that jump in the direction of ``toward``: the side a solve evaluates there."""
    if jump_ts:
        jump = jump_ends(time, toward - time, jump_ts)[0]
        if jump is not None:
            return _beside(jump, toward, dtype)
    return time


def next_jump(t: float, t_end: float, jump_ts: Sequence[float]) -> float | None:
    """The first of the sorted ``jump_ts`` after ``t`` (not at it, :func:`within_ulps`) on the way
    to ``t_end``, one at ``t_end`` included; ``None`` where there is none."""
    direction = math.copysign(1.0, t_end - t)
    ahead = [
        jump
        for jump in jump_ts
        if direction * (jump - t) > 0
        and not within_ulps(jump, t)
        and (direction * (jump - t_end) <= 0 or within_ulps(jump, t_end))
    ]
    if not ahead:
        return None
    return min(ahead) if direction > 0 else max(ahead)


def trial_end(t0: float, t_end: float, dtype: torch.dtype, jump_ts: Sequence[float]) -> float:
    """How far from ``t0`` toward ``t_end`` the initial-step heuristic's trial evaluation may go
    (its ``t_end``): ``t_end``, or the time of ``dtype`` just before the first jump
    (:func:`next_jump`), so that it measures the field on ``t0``'s side of every jump."""
    jump = next_jump(t0, t_end, jump_ts)
    return t_end if jump is None else _beside(jump, t0, dtype)


def stage_time_values(
    t: float, dt: float, nodes: Sequence[float], dtype: torch.dtype, jump_ts: Sequence[float] = ()
) -> list[float]:
    """The times ``t + c_i dt`` of a step's stages at the ``nodes`` ``c_i``. Where the step starts
    or ends at one of the sorted ``jump_ts`` (:func:`jump_ends`), a stage at that end (``c_i = 0``
    or ``1``) is taken at the time of ``dtype`` (the one the field sees) next to the jump inside
    the step, so that a field that jumps there is evaluated on the step's own side (torchdiffeq's
    perturbation of ``jump_t``); so is any other stage whose time would round onto the jump or
    beyond it (in a step a few ulps of ``dtype`` long)."""
    values = [t + c_i * dt for c_i in nodes]
    if not jump_ts:
        return values
    start, end = jump_ends(t, dt, jump_ts)
    toward = math.copysign(math.inf, dt)
    first = None if start is None else _beside(start, toward, dtype)
    last = None if end is None else _beside(end, -toward, dtype)
    for i, c_i in enumerate(nodes):
        if c_i == 0.0 and first is not None:
            values[i] = first
        elif c_i == 1.0 and last is not None:
            values[i] = last
        elif last is not None and dt * (values[i] - last) > 0:
            # A stage of a step a few ulps (of dtype) long that would round onto the jump or past it.
            values[i] = last
        elif first is not None and dt * (values[i] - first) < 0:
            values[i] = first
    return values


def shampine_stiffness(k_i: Tensor, k_j: Tensor, y_i: Tensor, y_j: Tensor) -> Tensor:
    """``rms(k_j - k_i) / rms(y_j - y_i)`` for two stages ``k = f(Y)`` at the same time
    (Hairer--Wanner II, IV.2); a vanishing denominator is clamped to the dtype's smallest normal."""
    numerator = rms_norm(k_j - k_i)
    denominator = rms_norm(y_j - y_i)
    return numerator / denominator.clamp_min(torch.finfo(y_i.dtype).tiny)


def step(
    func: VectorField,
    t: float,
    y: Tensor,
    dt: float,
    tableau: ButcherTableau,
    *,
    rtol: float | Tensor = 1e-6,
    atol: float | Tensor = 1e-8,
    k1: Tensor | None = None,
    norm: Callable[[Tensor], Tensor] = rms_norm,
    time_dtype: torch.dtype | None = None,
    jump_ts: Sequence[float] = (),
) -> StepResult:
    """Take one step of ``tableau`` from ``(t, y)`` with step size ``dt`` (negative to go backwards).

    ``k1``, if given, is ``func(t, y)`` already evaluated (FSAL reuse or a regularizer that treats it
    as a constant) and is not evaluated again. Gradients flow through every stage that is evaluated.
    ``norm`` replaces the RMS of the scaled error (e.g. a seminorm over part of the state).
    ``func`` gets its time argument in ``time_dtype`` (default ``y``'s dtype). ``jump_ts``: sorted
    times where ``func`` may jump; a stage at the step's start or end that is one of them is
    evaluated just inside the step (:func:`stage_time_values`, :class:`local_reg.PIController`).
    """
    t = float(t)
    dt = float(dt)
    first = 0 if k1 is None else 1
    dtype = y.dtype if time_dtype is None else time_dtype
    times = stage_times(stage_time_values(t, dt, tableau.c[first:], dtype, jump_ts), y, dtype)
    return _step_result(tableau, k1, *_stages(func, times, y, dt, tableau, rtol, atol, k1, norm))


def step_solution(
    func: VectorField,
    t: float,
    y: Tensor,
    dt: float,
    tableau: ButcherTableau,
    *,
    time_dtype: torch.dtype | None = None,
    jump_ts: Sequence[float] = (),
) -> Tensor:
    """``step(func, t, y, dt, tableau).y1``, the same sums to the bit, without the evaluation only
    the error estimate reads: an FSAL tableau's last stage ``f(t + dt, y1)`` (``y1`` is its stage
    state). For a backward pass that differentiates ``y1`` alone (:class:`local_reg.Checkpoint`)."""
    if not tableau.fsal:
        return step(func, t, y, dt, tableau, time_dtype=time_dtype, jump_ts=jump_ts).y1
    t = float(t)
    dt = float(dt)
    dtype = y.dtype if time_dtype is None else time_dtype
    times = stage_times(stage_time_values(t, dt, tableau.c[:-1], dtype, jump_ts), y, dtype)
    stages = [func(times[0], y)]
    _add_stages(func, times[1:], y, dt, tableau.a[1:-1], stages)
    return combine(y, dt, tableau.a[-1], stages)


def _add_stages(
    func: VectorField,
    times: Sequence[Tensor],
    y: Tensor,
    dt: float | Tensor,
    rows: Sequence[Sequence[float]],
    stages: list[Tensor],
    stage_states: list[Tensor] | None = None,
) -> None:
    """Evaluate the stages of ``rows`` (the rows of ``a`` after the stages already in ``stages``) at
    ``times``, appending each to ``stages`` and its stage state to ``stage_states``."""
    for t_i, a_i in zip(times, rows, strict=True):
        y_i = combine(y, dt, a_i, stages)
        stages.append(func(t_i, y_i))
        if stage_states is not None:
            stage_states.append(y_i)


def _stages(
    func: VectorField,
    times: Sequence[Tensor],
    y: Tensor,
    dt: float | Tensor,
    tableau: ButcherTableau,
    rtol: float | Tensor,
    atol: float | Tensor,
    k1: Tensor | None,
    norm: Callable[[Tensor], Tensor],
) -> tuple[Tensor, Tensor | None, tuple[Tensor, ...], tuple[Tensor, ...]]:
    """The arithmetic of :func:`step` at the stage ``times`` (those after ``t`` when ``k1`` is given):
    ``(y1, EEst, stages, the two stage states of the stiffness estimate (or none))``."""
    first = 0 if k1 is None else 1
    if k1 is None:
        k1 = func(times[0], y)
    stages = [k1]
    stage_states = [y]
    _add_stages(func, times[1 - first :], y, dt, tableau.a[1:], stages, stage_states)

    y1 = stage_states[-1] if tableau.fsal else combine(y, dt, tableau.b, stages)

    error_estimate = None
    if tableau.error_weights is not None:
        local_error = combine(None, dt, tableau.error_weights, stages)
        error_estimate = norm(local_error / error_scale(y, y1, rtol, atol))

    stiffness_states: tuple[Tensor, ...] = ()
    if tableau.stiffness_stages is not None:
        stiffness_states = tuple(stage_states[i] for i in tableau.stiffness_stages)
    return y1, error_estimate, tuple(stages), stiffness_states


def _step_result(
    tableau: ButcherTableau,
    k1: Tensor | None,
    y1: Tensor,
    error_estimate: Tensor | None,
    stages: tuple[Tensor, ...],
    stiffness_states: tuple[Tensor, ...],
) -> StepResult:
    stiffness = None
    if tableau.stiffness_stages is not None:
        i, j = tableau.stiffness_stages
        stiffness = functools.partial(shampine_stiffness, stages[i], stages[j], *stiffness_states)
    return StepResult(y1, error_estimate, stiffness, stages, len(stages) - (k1 is not None))


def _tensor_time_step(
    func: VectorField,
    t: Tensor,
    dt: Tensor,
    y: Tensor,
    k1: Tensor | None,
    tableau: ButcherTableau,
    rtol: float | Tensor,
    atol: float | Tensor,
    norm: Callable[[Tensor], Tensor],
    time_dtype: torch.dtype,
) -> StepResult:
    """:func:`step` with ``t`` and ``dt`` 0-dim float64 tensors, the function the compiled path
    compiles: its graph depends on the tableau and the shapes, not on the step's time or size. The
    loop's reads of the step (the error check, the stiffness estimate) are computed in the graph."""
    first = 0 if k1 is None else 1
    nodes = torch.tensor(tableau.c[first:], dtype=torch.float64, device=t.device)
    times = (t + nodes * dt).to(time_dtype).unbind()
    y1, error_estimate, stages, stiffness_states = _stages(func, times, y, dt, tableau, rtol, atol, k1, norm)
    stiffness = None
    if tableau.stiffness_stages is not None:
        i, j = tableau.stiffness_stages
        stiffness = shampine_stiffness(stages[i], stages[j], *stiffness_states)
    result = StepResult(y1, error_estimate, stiffness, stages, len(stages) - first)
    if error_estimate is not None:
        result.error_check = checked_error(error_estimate, y1)
    return result


class CompiledStep:
    """:func:`_tensor_time_step` compiled by ``torch.compile(**options)``.

    Where the compiler cannot build the step (an error of Inductor's or Triton's code generation,
    which torch raises as ``BackendCompilerFailed``) for a state's dtype, device and shape in one
    autograd mode, those steps run eagerly from then on, in this solve and later ones of these
    options, after one ``RuntimeWarning``: the eager step computes the same, and retrying would pay
    the failed compilation again on every step. The other graphs (another autograd mode, shape or
    dtype) still compile. Errors of ``func`` itself are not caught. A failure to compile the
    backward graph, which torch builds at the first ``backward()``, surfaces there."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.function = torch.compile(_tensor_time_step, **options)
        self.failed: set[tuple[torch.dtype, str, torch.Size, bool]] = set()
        # torch's error at its limit of graphs under fullgraph=True, where this torch has one (read
        # here, not at import: importing local_reg does not load torch's compiler).
        self.recompile_limit_errors = tuple(
            getattr(torch._dynamo.exc, name)
            for name in ("FailOnRecompileLimitHit",)
            if hasattr(torch._dynamo.exc, name)
        )
        inductor = options.get("options") or {}
        self.replays_cuda_graphs = options.get("mode") in ("reduce-overhead", "max-autotune") or bool(
            inductor.get("triton.cudagraphs")
        )

    def try_step(self, y: Tensor, *arguments: Any) -> StepResult | None:
        """The compiled step's result, or ``None`` where it cannot be built for ``y``."""
        where = (y.dtype, y.device.type, y.shape, torch.is_grad_enabled())
        if where in self.failed:
            return None
        try:
            result = self.function(*arguments)
        except torch._dynamo.exc.BackendCompilerFailed as error:
            # The compiler's own error (a worker's traceback ends with it), not torch's wrapper.
            cause = getattr(error, "inner_exception", None) or error
            lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
            reason = f"{type(cause).__name__}: {lines[-1]}" if lines else type(cause).__name__
            advice = (
                'compile=False avoids the attempt; another backend may build it, e.g. compile={"backend": '
                '"aot_eager"}'
            )
            self._eager_from_now(where, y, arguments, "could not build the step", f" ({reason})", advice)
            return None
        except self.recompile_limit_errors:
            # fullgraph=True turns torch's fallback at its limit of graphs into this error.
            what = (
                "reached its limit of graphs (torch._dynamo.config.recompile_limit, shared by every "
                "compiled step of the process; fullgraph=True makes that an error)"
            )
            advice = (
                "They stay eager in this process: raise the limit before the solves that compile, or "
                "leave fullgraph unset (torch then falls back to eager itself, with a logged warning)."
            )
            self._eager_from_now(where, y, arguments, what, "", advice)
            return None
        if self.replays_cuda_graphs and y.is_cuda:
            # A CUDA graph's replay writes its outputs into the memory of the last replay's, which the
            # loop still holds (the state, the FSAL stage, dense output's stages): they are copied.
            result = _copied(result)
        return result

    def _eager_from_now(
        self,
        where: tuple[torch.dtype, str, torch.Size, bool],
        y: Tensor,
        arguments: tuple,
        what: str,
        detail: str,
        advice: str,
    ) -> None:
        """Mark ``where``'s steps to run eagerly, with one ``RuntimeWarning`` saying why (``what``
        torch.compile did, the error's ``detail``, the ``advice``)."""
        self.failed.add(where)
        # A tuple or complex state is solved as a real one: describe what the user passed.
        # (Imported here: _validate, which _tuple needs, imports this module.)
        from ._tuple import StateField
        from ._validate import CheckedField

        func = arguments[0].func if isinstance(arguments[0], CheckedField) else arguments[0]
        state = func.state.description if isinstance(func, StateField) else f"state of shape {tuple(y.shape)}"
        warn(
            f"torch.compile {what} for a {y.dtype} {state} on {y.device.type}"
            f"{' with autograd' if torch.is_grad_enabled() else ''}{detail}; these steps run eagerly "
            f"(the same arithmetic). {advice}",
            RuntimeWarning,
        )


def _copied(result: StepResult) -> StepResult:
    """``result`` with each of its tensors cloned (differentiably)."""
    stiffness = result.stiffness.clone() if isinstance(result.stiffness, Tensor) else result.stiffness
    return dataclasses.replace(
        result,
        y1=result.y1.clone(),
        error_estimate=None if result.error_estimate is None else result.error_estimate.clone(),
        stiffness=stiffness,
        stages=tuple(stage.clone() for stage in result.stages),
        error_check=None if result.error_check is None else result.error_check.clone(),
    )


NON_FINITE_DERIVATIVE = "non-finite derivative"
"""The reason of the solve's refusal where ``f(t0, y0)`` is not finite (a caller that knows of
another cause, such as an augmented field's own rate, reads it to name that cause)."""

_COMPILED_STEPS: dict[tuple[tuple[str, str], ...], CompiledStep] = {}


def compiled_step(options: dict[str, Any]) -> CompiledStep:
    """The :class:`CompiledStep` of ``options``, made once per set of options (torch caches the
    graphs per vector field, tableau and shapes). The options are told apart by their ``repr``
    (inductor's ``options`` dict cannot be hashed), a callable backend by its identity: two
    backends may print alike (the cache keeps each alive, so no id is reused)."""
    key = tuple(
        (name, f"callable {id(value)}" if callable(value) else repr(value))
        for name, value in sorted(options.items())
    )
    if key not in _COMPILED_STEPS:
        _COMPILED_STEPS[key] = CompiledStep(options)
    return _COMPILED_STEPS[key]


def underflow_threshold(t: float, dt: float) -> float:
    """The loop's smallest step ``dt`` from ``t``: ``4 ulp(max(|t|, dt))``, a step that moves
    ``t`` by a few ulps. Relative to the times (as scipy's and torchdiffeq's), so a span of 1e-16 s
    solves as one of 1 s does."""
    return 4 * math.ulp(max(abs(t), dt))


def min_step_size(t: float) -> float:
    """A step size safely above the loop's underflow threshold at ``t``: ``100 ulp(|t|)``. Not
    relative to the span: a first step the user chose, or the heuristic's, is kept down to it (a
    floor at the span's scale would step over features near ``t0`` of a long span)."""
    return 100 * math.ulp(abs(t))


def initial_step_size(
    func: VectorField,
    t0: float,
    y0: Tensor,
    f0: Tensor,
    order: int,
    rtol: float | Tensor,
    atol: float | Tensor,
    direction: float = 1.0,
    norm: Callable[[Tensor], Tensor] = rms_norm,
    t_end: float | None = None,
    time_dtype: torch.dtype | None = None,
) -> tuple[float, int]:
    """Hairer--Norsett--Wanner's starting step size (Solving ODEs I, II.4), as torchdiffeq and
    OrdinaryDiffEq use it. Returns ``(|dt|, nfe)``; it costs one evaluation of ``func`` besides
    ``f0``.

    With scaled RMS norms ``d0 = ||y0||``, ``d1 = ||f0||``: ``h0 = 0.01 d0 / d1`` (``1e-6`` if either
    is tiny); one explicit Euler step gives ``d2 = ||f(t0 + h0, y0 + h0 f0) - f0|| / h0``;
    ``h1 = (0.01 / max(d1, d2)) ** (1 / order)``; the result is ``min(100 h0, h1)``. ``direction`` is
    ``+1`` or ``-1`` (backward integration), the sign of the trial Euler step; ``norm`` is the
    solver's error norm. ``t_end``, if given, bounds ``h0`` by the span, so ``f`` is not evaluated
    outside ``[t0, t_end]``; ``func`` gets its time in ``time_dtype`` (default ``y0``'s). The norms
    are taken in float64 (``f0 / scale`` overflows float32 for large derivatives), and ``h0`` and the
    result are kept at least ``min_step_size(t0)``, a step the loop can take.
    """
    with torch.no_grad():
        y0_wide, f0_wide = y0.double(), f0.double()
        scale = atol + rtol * y0_wide.abs()
        d0 = float(norm(y0_wide / scale))
        d1 = float(norm(f0_wide / scale))
        if norm is rms_norm and d1 == math.inf and d0 < math.inf:
            # Squares past 1e308 overflow where the root mean square does not (a span of 1e-150;
            # a state that large over its scale would overflow every error estimate: refused below).
            d1 = _rms_of_large(f0_wide / scale)
        if not (0.0 <= d0 < math.inf and 0.0 <= d1 < math.inf) and bool(
            torch.isfinite(y0_wide).all() & torch.isfinite(f0_wide).all()
        ):
            # A NaN here would make every step size NaN, which no step-size check catches.
            if d0 == math.inf and norm is rms_norm:
                raise ValueError(
                    f"y0 and f(t0, y0) over the tolerance scale atol + rtol * |y0| have norms {d0} and "
                    f"{d1}: the tolerances are too small for this state (raise atol)"
                )
            if d1 == math.inf and norm is rms_norm:
                # A scale too small for the derivative: a tiny atol (at a zero of y0) or a huge f.
                raise ValueError(
                    f"f(t0, y0) over the tolerance scale atol + rtol * |y0| overflows float64 (y0's norm "
                    f"over it is {d0}): raise atol, or rescale time or the state"
                )
            raise ValueError(
                f"norm must return a finite non-negative number for a finite input, got {d0} for y0 and "
                f"{d1} for f(t0, y0) (each over the tolerance scale)"
            )
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        if t_end is not None and t_end != t0:
            h0 = min(h0, abs(t_end - t0))
        h0 = max(h0, min_step_size(t0))
        y_euler = y0 + (direction * h0) * f0
        f_euler = func(time_tensor(t0 + direction * h0, y0, time_dtype), y_euler)
        change = (f_euler.double() - f0_wide) / scale
        d2 = (_rms_of_large(change) if norm is rms_norm else float(norm(change))) / h0
        if not math.isfinite(d2):
            # The trial Euler step overflowed: start from h0 and let the loop reject what is too long.
            return h0, 1
        if max(d1, d2) <= 1e-15:
            h1 = max(1e-6, h0 * 1e-3)
        else:
            h1 = (0.01 / max(d1, d2)) ** (1.0 / order)
    # At large |t0| (1e16) h1 can fall below the smallest step the loop takes from t0.
    return max(min(100 * h0, h1), min_step_size(t0)), 1


class RKStepper(Stepper[Tensor | None]):
    """The explicit Runge--Kutta pair ``tableau`` as a stepper of the one loop
    (:func:`local_reg._integrate.integrate`): each attempt is :func:`step`; the carry is ``k1``, the
    FSAL stage of the last accepted step (or ``f(t0, y0)``), kept across a rejection. ``func`` gets
    its time argument in ``time_dtype`` (default the state's dtype). With ``compile_options`` each
    attempt runs :func:`compiled_step` instead: the same arithmetic, compiled with those
    ``torch.compile`` keywords (eager where the compiler cannot build it, :class:`CompiledStep`).
    ``jump_ts``: sorted times where ``func`` may jump (:func:`stage_time_values`); the steps that
    start or end at one run eagerly."""

    failure = "non-finite state or derivative"
    interpolant: Interpolant

    def __init__(
        self,
        func: VectorField,
        tableau: ButcherTableau,
        rtol: float | Tensor,
        atol: float | Tensor,
        norm: Callable[[Tensor], Tensor] = rms_norm,
        f0: Tensor | None = None,
        time_dtype: torch.dtype | None = None,
        compile_options: dict[str, Any] | None = None,
        jump_ts: Sequence[float] = (),
    ) -> None:
        super().__init__(tableau.order, rtol, atol)
        self.jump_ts = jump_ts
        self.compiled = None if compile_options is None else compiled_step(compile_options)
        self.func = func
        self.time_dtype = time_dtype
        self.tableau = tableau
        self.norm = norm
        self.has_stiffness = tableau.stiffness_stages is not None
        self.f0 = f0
        self.interpolant = get_interpolant(tableau)

    def begin(self, t0: float, y0: Tensor, stats: Stats) -> Tensor:
        f0 = self.f0
        if f0 is None:
            f0 = self.func(time_tensor(t0, y0, self.time_dtype), y0)
            stats.add(1)
        if not bool(torch.isfinite(f0).all()):
            raise SolverError(NON_FINITE_DERIVATIVE, t=t0, n_steps=0)
        return f0

    def initial_step_size(  # type: ignore[override]  # begin's carry only: f(t0, y0)
        self, t0: float, y0: Tensor, carry: Tensor, direction: float, stats: Stats, t_end: float | None = None
    ) -> float:
        dt_abs, nfe = initial_step_size(
            self.func,
            t0,
            y0,
            carry,
            self.order,
            self.rtol,
            self.atol,
            direction,
            norm=self.norm,
            t_end=t_end,
            time_dtype=self.time_dtype,
        )
        stats.add(nfe)
        return dt_abs

    def step(
        self, t: float, t_next: float, y: Tensor, dt: float, carry: Tensor | None, estimate_error: bool
    ) -> StepResult:
        if self.compiled is not None and not (
            self.jump_ts and jump_ends(t, dt, self.jump_ts) != (None, None)
        ):
            t_tensor, dt_tensor = torch.tensor([t, dt], dtype=torch.float64, device=y.device).unbind()
            time_dtype = y.dtype if self.time_dtype is None else self.time_dtype
            result = self.compiled.try_step(
                y,
                self.func,
                t_tensor,
                dt_tensor,
                y,
                carry,
                self.tableau,
                self.rtol,
                self.atol,
                self.norm,
                time_dtype,
            )
            if result is not None:
                return result
        return step(
            self.func,
            t,
            y,
            dt,
            self.tableau,
            rtol=self.rtol,
            atol=self.atol,
            k1=carry,
            norm=self.norm,
            time_dtype=self.time_dtype,
            jump_ts=self.jump_ts,
        )

    def error_check(self, result: StepResult) -> Tensor:
        if result.error_check is not None:  # computed in the compiled step's graph
            return result.error_check
        # Called on attempts that estimated their error only.
        return checked_error(cast(Tensor, result.error_estimate), result.y1)

    def dense_stages(self, result: StepResult, t: float, t_next: float, stats: Stats) -> tuple[Tensor, ...]:
        """The stages the interpolant combines: the step's (from ``t``), and ``f(t_next, y1)`` for a
        pair that is not FSAL (evaluated once, counted in ``stats``, and reused as the next step's
        ``k1``; at a jump time, just inside the step)."""
        if not self.interpolant.extra_stage:
            return result.stages
        if result.end_derivative is None:
            dtype = result.y1.dtype if self.time_dtype is None else self.time_dtype
            end_time = beside_jump(t_next, t, dtype, self.jump_ts)
            end_derivative = self.func(time_tensor(end_time, result.y1, self.time_dtype), result.y1)
            stats.add(1)
            # The step's error estimate never saw this stage: a non-finite one would pass into the
            # outputs read inside the step silently.
            if not bool(torch.isfinite(end_derivative).all()):
                reason = "non-finite derivative f(t, y1) at an accepted step's end (for its dense output)"
                raise SolverError(reason, t=t_next, n_steps=stats.n_steps)
            result.end_derivative = end_derivative
        return (*result.stages, result.end_derivative)

    def interpolate(
        self, t: float, dt: float, y: Tensor, stages: tuple[Tensor, ...], t_outs: Sequence[float]
    ) -> Tensor:
        """The dense output at each of ``t_outs`` inside the accepted step ``(t, y) -> t + dt`` with
        ``stages``, stacked."""
        thetas = [(t_out - t) / dt for t_out in t_outs]
        return combine_rows(y, dt, self.interpolant.weight_matrix(thetas), stages)

    def after_jump(self, carry: Tensor | None) -> None:
        return None  # the next step evaluates its first stage, just after the jump

    def next_carry(self, result: StepResult, accepted: bool, carry: Tensor | None) -> Tensor | None:
        if not accepted:
            # The retry starts from the same (t, y): its first stage is this attempt's.
            return result.stages[0]
        if self.tableau.fsal:
            return result.stages[-1]
        # Dense output may already have evaluated f(t + dt, y1): the next step's first stage.
        return result.end_derivative
