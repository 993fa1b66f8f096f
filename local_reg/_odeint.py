"""The entry point: ``odeint(func, y0, t)``."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any, cast

import torch
from torch import Tensor

from ._autograd import solve_entry_point
from ._errors import warn
from ._integrate import (
    DEFAULT_MAX_STEPS,
    SolveOptions,
    StepCallbacks,
    StepPenalty,
    check_landing_gaps,
    times_rounding,
)
from ._step import VectorField, beside_jump, time_tensor
from ._tuple import accepts_structured_states, owning_module
from ._validate import (
    ARGS_HINT,
    DT0_HINT,
    SENSEALG_HINT,
    STEP_CONTROL_SPELLINGS,
    T_EVAL_HINT,
    T_SPAN_HINT,
    THROW_HINT,
    Tolerance,
    check_adaptive_settings_unset,
    check_bool,
    check_function_transforms,
    check_penalty_time_gradient,
    check_span,
    check_step_penalty,
    check_times_distinct,
    checked_field,
    explain_unknown_keywords,
    narrowest_float,
    scipy_jacobian_hints,
    time_direction,
    time_dtype,
    validate_state,
    validate_times,
    without_autocast,
)
from .controller import DEFAULT_CONTROLLER, PIController, TimeSet
from .gradients import (
    BacksolveAdjoint,
    Checkpoint,
    ForwardSolve,
    GradientMethod,
    Symplectic,
    as_gradient_method,
)
from .gradients._function import buffer_marks, check_step_penalty_support, first_evaluations
from .gradients._params import known_params, warn_if_reevaluation_differs
from .gradients._times import time_gradient
from .solution import Solution, State
from .tableaus import SCIPY_STIFF_SOLVE, ButcherTableau, get_tableau


def evaluate_first(func: VectorField, t0: float, y0: Tensor, t_dtype: torch.dtype | None = None) -> Tensor:
    """Evaluate ``func(t0, y0)`` once (``t0`` in ``t_dtype``, default ``y0``'s) and check it returns
    a tensor shaped and typed like ``y0``."""
    return checked_field(func)(time_tensor(t0, y0, t_dtype), y0)


def unread_beside_fixed_steps(
    step_size: float | None,
    tableau: ButcherTableau,
    gradient: GradientMethod,
    controller: PIController | None = None,
) -> tuple[str, ...]:
    """Which of ``odeint``'s ``first_step``, ``norm`` and ``controller`` a solve with a fixed
    ``step_size`` leaves unread: ``first_step`` always; ``norm`` where ``tableau`` has no error
    estimate (an embedded pair estimates every fixed step's error, which the records and a step
    penalty read); ``controller`` unless ``gradient`` steps adaptively backwards with it, or it
    sets nothing but ``jump_ts`` (at the ends of the fixed steps, which read each side of a jump)."""
    if step_size is None:
        return ()
    jumps_only = (
        controller is not None
        and bool(controller.jump_ts)
        and dataclasses.replace(controller, jump_ts=()) == DEFAULT_CONTROLLER
    )
    return (
        "first_step",
        *(() if tableau.adaptive else ("norm",)),
        *(() if gradient.controls_steps(step_size) or jumps_only else ("controller",)),
    )


def _legacy_gradient(
    gradient: GradientMethod,
    checkpoints: int | None,
    adjoint_method: str | ButcherTableau | None,
    adjoint_rtol: float | None,
    adjoint_atol: float | None,
    adjoint_options: dict | None,
) -> GradientMethod:
    """The gradient method the deprecated ``checkpoints=`` / ``adjoint_*=`` keywords describe."""
    adjoint_keywords = {
        "adjoint_method": adjoint_method,
        "adjoint_rtol": adjoint_rtol,
        "adjoint_atol": adjoint_atol,
        "adjoint_options": adjoint_options,
    }
    given = [name for name, value in adjoint_keywords.items() if value is not None]
    if checkpoints is None and not given:
        return gradient
    if gradient != type(gradient)():
        # The keywords would replace the object's own settings silently.
        raise ValueError(
            f"gradient={gradient!r} is configured: set its options on the object, not with the "
            f"deprecated {['checkpoints'] if checkpoints is not None else given} keywords"
        )
    warn(
        "odeint's checkpoints= and adjoint_*= keywords are deprecated: pass the gradient method as an "
        "object, e.g. gradient=Symplectic(checkpoints=32) or gradient=BacksolveAdjoint(rtol=..., "
        "norm='seminorm')",
        DeprecationWarning,
    )
    if checkpoints is not None:
        if not isinstance(gradient, (Checkpoint, Symplectic)):
            raise ValueError(
                f"checkpoints only applies to gradient='checkpoint' or 'symplectic', not {gradient.name!r}"
            )
        gradient = type(gradient)(checkpoints)
    if given:
        if not isinstance(gradient, BacksolveAdjoint):
            raise ValueError(
                f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} only to gradient='adjoint', "
                f"not {gradient.name!r}"
            )
        if not isinstance(adjoint_options, (dict, type(None))):
            raise TypeError(f"adjoint_options must be a dict, got {type(adjoint_options).__name__}")
        options = dict(adjoint_options or {})
        keys = ("norm", "step_size", "first_step", "max_steps")
        unknown = sorted(set(options) - set(keys))
        if unknown:
            raise ValueError(f"adjoint_options: unknown keys {unknown}; expected some of {keys}")
        gradient = BacksolveAdjoint(adjoint_method, adjoint_rtol, adjoint_atol, **options)
    return gradient


_SOLVE_TO_AN_EVENT = "local_reg.odeint_event(func, y0, t0, event_fn=...) solves to an event"


@explain_unknown_keywords(
    {
        "options": "torchdiffeq's dict of solver settings: local_reg.odeint takes them as keywords, e.g. "
        "step_size=, first_step=, norm=, max_steps= for max_num_steps, controller=PIController(max_step=) "
        "for max_step; local_reg.compat.odeint takes torchdiffeq's signature",
        "event_fn": _SOLVE_TO_AN_EVENT,
        "event": f"diffrax's Event: {_SOLVE_TO_AN_EVENT}",
        "events": f"scipy's events: {_SOLVE_TO_AN_EVENT} (a terminal one; docs/solver.md, Events)",
        "t_span": T_SPAN_HINT,
        **scipy_jacobian_hints(SCIPY_STIFF_SOLVE.format(solver="Radau")),
        "throw": THROW_HINT,
        "dt": "a fixed step is step_size= here, an adaptive solve's first step first_step=",
        "dt0": DT0_HINT,
        "solver": "diffrax's solver: method= here, a name such as 'tsit5' or a ButcherTableau",
        "stepsize_controller": "diffrax's controller: controller=PIController(...) here, rtol= and atol= "
        "beside it",
        "saveat": "diffrax's saveat: the output times are t here, and dense=True keeps solution.evaluate(t)",
        "args": ARGS_HINT,
        "adjoint": "diffrax's adjoint: gradient= here, e.g. gradient='adjoint'",
        "t_eval": T_EVAL_HINT,
        "dense_output": "scipy's: dense=True here, and solution.evaluate(t) reads it",
        # OrdinaryDiffEq's solve(prob, alg; ...) and SciMLSensitivity's settings.
        "alg": "OrdinaryDiffEq's algorithm: method= here, a name such as 'tsit5' or a ButcherTableau",
        "sensealg": SENSEALG_HINT,
        "callback": f"OrdinaryDiffEq's callback: a ContinuousCallback that terminates is an event here, "
        f"{_SOLVE_TO_AN_EVENT}; callbacks=StepCallbacks(...) calls functions at each step",
        "internalnorm": "OrdinaryDiffEq's error norm: norm= here",
        "adaptive": "OrdinaryDiffEq's adaptive=false: step_size= fixes the step here; without it a solve "
        "is adaptive",
        "save_everystep": "OrdinaryDiffEq's: solution.steps records every accepted step "
        "(record_states=True keeps their states), dense=True keeps solution.evaluate(t)",
        **STEP_CONTROL_SPELLINGS,
    }
)
@accepts_structured_states
@solve_entry_point
def odeint(
    func: Callable[[Tensor, Any], Any],
    y0: State,
    t: TimeSet,
    *,
    method: str | ButcherTableau = "tsit5",
    rtol: Tolerance = 1e-6,
    atol: Tolerance = 1e-8,
    first_step: float | Tensor | None = None,
    max_steps: int = DEFAULT_MAX_STEPS,
    step_size: float | Tensor | None = None,
    controller: PIController | None = None,
    gradient: str | GradientMethod = "direct",
    adjoint_params: Iterable[Tensor] | None = None,
    record_states: bool = False,
    step_penalty: StepPenalty | None = None,
    step_to_outputs: bool = False,
    dense: bool = False,
    norm: Callable[[Tensor], Tensor] | None = None,
    callbacks: StepCallbacks | None = None,
    compile: bool | dict[str, Any] = False,
    checkpoints: int | None = None,
    adjoint_rtol: float | None = None,
    adjoint_atol: float | None = None,
    adjoint_method: str | ButcherTableau | None = None,
    adjoint_options: dict | None = None,
) -> Solution[State]:
    """Solve ``dy/dt = func(t, y)`` from ``y(t[0]) = y0`` and return the solution at every ``t``.

    Args:
        func: the vector field, called as ``func(t, y)`` with ``t`` a 0-dim tensor (in the dtype of
            a floating tensor ``t`` if wider than ``y0``'s, e.g. float64 for a float32 state, else in
            ``y0``'s dtype); it must return a tensor of the shape, dtype and device of ``y``, which
            is checked on every call.
        y0: initial state, any shape (a batch is one state: one step size and one error norm for
            all of it, as in torchdiffeq), float32 or float64 (half precision is refused: it
            cannot resolve the tolerances; integrate in float32 and cast back); or a tuple of such
            tensors (one dtype and device), solved as one flat state, with ``func`` taking and
            returning tuples and ``solution.ys`` a tuple; or a complex64/complex128 tensor, solved
            as its real view ``(*y0.shape, 2)`` (real and imaginary parts two components of the error
            norm) with ``func``, ``ys`` and ``evaluate`` complex (see :mod:`local_reg._tuple`).
        t: output times: a 1-D tensor, numpy array or sequence of real numbers (or 0-dim
            tensors), strictly increasing or decreasing (backward integration); a string is
            refused. ``ys`` is differentiable w.r.t. a ``t`` that requires grad (see ``gradient``).
            ``solution.ts`` holds them in the dtype ``func`` sees times in.
        method: a name from :data:`local_reg.TABLEAUS` or a :class:`ButcherTableau`.
        rtol, atol: tolerances of the error estimate
            ``EEst = rms(err / (atol + rtol * max(|y0|, |y1|)))``; a step is accepted iff ``EEst <= 1``.
            Numbers, or per-element: tensors broadcasting to ``y0``'s shape, or for a tuple ``y0`` a
            sequence with one per tensor (a number or such a tensor each), as torchdiffeq takes
            them. Per-element tolerances need a ``BacksolveAdjoint`` with its own ``rtol``/``atol``.
        first_step: initial step size; by default Hairer's heuristic picks it.
        max_steps: attempted steps (accepted + rejected) before a :class:`SolverError`.
        step_size: take fixed steps of (at most) this size instead of adaptive ones; required for
            ``euler``, ``midpoint`` and ``rk4``. Each interval between output times is divided into
            equal steps no longer than ``step_size`` (times given in float32 or narrower may make
            them up to 1% longer, within their rounding: docs/solver.md). What it would leave
            unread beside it is
            refused: ``first_step``; ``norm`` where the method has no error estimate;
            ``controller`` unless the gradient method's own adaptive backward solve uses it, or
            it sets nothing but ``jump_ts`` at the ends of the fixed steps (docs/solver.md).
        controller: step-size controller (default :class:`PIController`).
        gradient: how ``ys`` are differentiated (see docs/gradients.md): a
            :class:`~local_reg.gradients.GradientMethod` or its string shorthand:
            ``Direct()`` / ``"direct"`` (backpropagation through every step; exact, most memory),
            ``Checkpoint(checkpoints=None)`` / ``"checkpoint"`` (re-run each accepted step with a
            graph in the backward pass; exact), ``Symplectic(checkpoints=None)`` / ``"symplectic"``
            (the symplectic adjoint of Matsubara et al. 2021; exact, least memory of the exact
            methods) and ``BacksolveAdjoint(method, rtol, atol, norm, ...)`` / ``"adjoint"`` (the
            continuous backsolve adjoint of Chen et al. 2018; approximate, constant memory) and
            ``InterpolatingAdjoint(...)`` / ``"interpolating_adjoint"`` (the adjoint solved backwards
            with ``y(t)`` read from the forward's dense output; approximate, keeps the step records).
            ``checkpoints=C`` keeps at most ``C`` step states (evenly spaced) instead of all ``N``;
            the backward pass re-computes the others, for one extra forward solve's evaluations,
            with the same gradient. All of them differentiate w.r.t. ``y0`` and ``adjoint_params``,
            and w.r.t. ``t`` when it requires grad, by one formula for every method, the exact
            solution's derivatives (as torchdiffeq's adjoint): with ``v_i`` the cotangent of
            ``ys[i]``, ``dL/dt_i = <v_i, func(t_i, ys[i])>`` for ``i >= 1`` and
            ``dL/dt_0 = -<dL/dy0 - v_0, func(t_0, y0)>``. It matches the discrete solve's
            derivative to the tolerance (``"direct"`` too does not backpropagate through the step
            sizes; docs/gradients.md) and costs one call of ``func`` per output after ``t[0]``
            with a nonzero cotangent in the backward pass (counted in ``nfe_backward``).
        adjoint_params: the tensors the non-direct methods return gradients for, besides ``y0``;
            default ``func.parameters()`` when ``func`` is a ``torch.nn.Module``. A plain function
            needs it (``()`` if it has no parameters). Under ``"direct"`` autograd finds every
            tensor ``func`` uses; a list given there is still checked (tensors only) and watched
            for non-finite gradients.
        record_states: keep the state at the start of every accepted step in ``solution.steps``.
        step_penalty: ``penalty(step_result, dt) -> 0-dim tensor`` evaluated on every accepted
            step (``dt`` signed: negative where ``t`` decreases) and returned, differentiable, as
            ``solution.penalties`` (global regularization).
            Needs a per-step graph: only with ``gradient="direct"`` or ``"checkpoint"``.
        step_to_outputs: end an accepted step on every output time instead of interpolating
            (diffrax's ``PIDController(step_ts=ts)``, torchdiffeq's ``options=dict(step_t=t)``):
            more steps, but each output is a step's own state. Available with every gradient method.
        dense: keep every accepted step's state and stages so that ``solution.evaluate(t)`` gives
            the solution at any ``t`` in the span (diffrax's ``SaveAt(dense=True)``, torchdiffeq's
            ``odeint_dense``); memory ``O(steps * stages)``.
        norm: ``norm(scaled_error) -> 0-dim tensor`` replacing the RMS in ``EEst`` (and in the
            first-step heuristic), as torchdiffeq's ``options["norm"]``; ``scaled_error`` has the
            shape of the (flat) state.
        callbacks: a :class:`local_reg.StepCallbacks` whose functions the forward loop
            calls with ``(t0, y0, dt)`` on every attempted, accepted and rejected step; its
            ``stop`` condition ends the solve early (then ``t = [t0, t1]``, ``t1`` giving only the
            direction, and ``solution.ts[-1]`` is where it stopped): terminal events are
            :func:`local_reg.odeint_event`.
        compile: ``True`` or a dict of ``torch.compile`` keywords (e.g. ``{"backend":
            "aot_eager"}``; CUDA graphs, ``mode="reduce-overhead"``, on a GPU: docs/solver.md) compiles each
            attempted step of the forward solve (its stages, ``func`` inlined, and its error
            estimate) into one graph whose inputs are
            the step's time and size as tensors, so one compilation serves every step of every
            solve with the same ``func``, tableau and state shape. Same results within round-off;
            the first solve pays the compilation (seconds). The step-size control, dense output
            and the gradient methods' backward passes stay eager. See docs/solver.md.
        checkpoints, adjoint_rtol, adjoint_atol, adjoint_method, adjoint_options: deprecated
            spellings of ``Checkpoint(checkpoints)``, ``Symplectic(checkpoints)`` and
            ``BacksolveAdjoint(method, rtol, atol, **options)``.

    Dense output: the adaptive steps head for the last output time only, as in torchdiffeq,
    torchode and diffrax, and the states at the other output times are read from the method's
    interpolant inside the accepted step that holds them (:mod:`local_reg.interpolants`: Tsit5's,
    Dopri5's and Dopri8's own, cubic Hermite for the other pairs), so the number of steps does not depend on
    the number of output times. Every gradient method differentiates the interpolated outputs
    exactly as it differentiates the steps (docs/gradients.md). With ``step_to_outputs=True`` (or
    a fixed ``step_size``) the step that would pass an output time is shortened to land on it, and
    the controller's proposal is resumed afterwards.
    ``solution.stats.nfe_backward`` counts the calls of ``func`` made by the backward pass once it
    has run.

    Raises:
        ValueError, TypeError: bad arguments, naming the argument.
        SolverError: a step size underflow (also when the trial steps keep turning non-finite: a
            non-finite trial step is rejected and retried shorter), a non-finite derivative at
            ``t[0]``, ``max_steps`` exceeded (with a hint when the problem looks stiff), or, in the
            backward pass of any gradient method, a non-finite gradient from ``func``'s
            vector-Jacobian product. See docs/solver.md.
    """
    # A tuple y0 arrives here flattened into one tensor (accepts_structured_states), and leaves unflattened.
    check_function_transforms("odeint", t=t, y0=y0)
    state = validate_state(y0)
    times = validate_times(t)
    field_time_dtype = time_dtype(t, state)
    options = SolveOptions(
        rtol=rtol,
        atol=atol,
        first_step=first_step,
        max_steps=max_steps,
        step_size=step_size,
        controller=controller,
        tableau=get_tableau(method),
        norm=norm,
        interpolate=not check_bool("step_to_outputs", step_to_outputs),
        dense=dense,
        callbacks=callbacks,
        time_dtype=field_time_dtype,
        compile=compile,
        times_rounding=times_rounding(times, narrowest_float(t)),
    ).for_state(state)
    options.warn_if_below_resolution(state)
    options = options.over(times)
    check_times_distinct(times, field_time_dtype)
    if options.step_size is not None or not options.interpolate:
        check_landing_gaps(
            times,
            "a solve that ends a step at every output time (a fixed step_size, or step_to_outputs=True) "
            "cannot take a step this short (merge them; an adaptive method interpolates them without "
            "step_to_outputs)",
        )
    elif options.callbacks.stop is None and len(times) > 1:
        # Interpolated output times may be close, but the last ends a step: the span must hold one.
        check_landing_gaps(
            [times[0], times[-1]],
            "the solve's span is too short for a step (every solve ends a step at t[-1])",
        )
    check_span(times, state.dtype, options.step_size, options.tableau)
    gradient_method = as_gradient_method(gradient)
    gradient_method = _legacy_gradient(
        gradient_method, checkpoints, adjoint_method, adjoint_rtol, adjoint_atol, adjoint_options
    )
    gradient_method.check(options, times, state)
    settings = {"first_step": first_step, "controller": controller, "norm": norm}
    unread = unread_beside_fixed_steps(
        options.step_size, options.runge_kutta_tableau, gradient_method, controller
    )
    check_adaptive_settings_unset(step_size, {name: settings[name] for name in unread})
    check_function_transforms("odeint", gradient_method.name, y0=y0)  # t was judged above
    check_step_penalty(step_penalty)
    check_step_penalty_support(gradient_method, step_penalty)
    # Every call, in the forward and in any backward pass, returns y's shape and dtype.
    checked = checked_field(func)
    owner = owning_module(func)
    params = known_params(func, adjoint_params, gradient_method)
    if gradient_method.graph_free:
        warn_if_reevaluation_differs(func, gradient_method)
    timing = time_gradient(t, checked, times, options.time_dtype, options.controller.jump_ts)
    if timing is not None:
        check_penalty_time_gradient(step_penalty, "t")
        if options.callbacks.stop is not None:
            raise ValueError(
                "t must not require grad with callbacks.stop, where t[1] only gives the direction: "
                "local_reg.odeint_event differentiates the event time and state w.r.t. t0"
            )
        state = timing.start(state)
    # f(t0, y0) as the first step sees it: at a jump at t0, just after it.
    toward_end = math.copysign(math.inf, time_direction(times))
    start = beside_jump(times[0], toward_end, options.time_dtype or state.dtype, options.controller.jump_ts)
    # A graph-free method's name, and the module its backward pass re-evaluates func with; None both
    # for direct differentiation, which keeps the forward's own graph.
    graph_free_method = gradient_method.name if gradient_method.graph_free else None
    graph_free_owner = owner if gradient_method.graph_free else None
    # Before the first evaluation, which may change them too.
    buffers_at_start = buffer_marks(graph_free_owner)
    (f0,) = first_evaluations(
        graph_free_method,
        lambda: (evaluate_first(checked, start, state, options.time_dtype),),
        state,
        params,
    )
    forward = ForwardSolve(
        checked,
        times,
        options,
        params,
        f0,
        record_states,
        step_penalty,
        owner=graph_free_owner,
        buffers_at_start=buffers_at_start,
    )
    with without_autocast():
        ys, stats, steps, penalties = gradient_method.solve(state, forward)
    stats.nfe += 1
    if timing is not None:
        ys = timing.outputs(ys, f0, stats)
    if steps.stop_time is not None:
        times = [times[0], steps.stop_time]
    ts = torch.tensor(times, dtype=options.time_dtype, device=state.device)
    solution = Solution(
        ts=ts, ys=ys, stats=stats, steps=steps, penalties=penalties, graph_free_method=graph_free_method
    )
    return cast(Solution[State], solution)
