"""torchdiffeq 0.2.5's interface on local_reg's solvers: ``import local_reg.compat as torchdiffeq``.

``odeint`` and ``odeint_adjoint`` take torchdiffeq's arguments, defaults (``rtol=1e-7``,
``atol=1e-9``, ``method="dopri5"``), option names and method names, and return what it returns: the
tensor of states at ``t`` (a tuple of tensors for a tuple ``y0``). The vector field's
``callback_step`` / ``callback_accept_step`` / ``callback_reject_step`` are called as torchdiffeq
calls them. ``event_fn=`` and ``odeint_event`` solve until a terminal event, as torchdiffeq does,
returning ``(event_t, solution)``; ``odeint_dense`` returns the solution as a function of time.
``sdeint`` and ``sdeint_adjoint`` are torchsde 0.2.6's (:mod:`local_reg._compat_sde`), and its
Brownian motions and SDE base classes are torchsde's own, read from it on first use, so that
``import local_reg.compat as torchsde`` runs a torchsde script too.
``odeint_adjoint`` differentiates with the continuous backsolve
adjoint (Chen et al., NeurIPS 2018) by default, or, with ``adjoint_method="symplectic"``, with the
exact low-memory symplectic adjoint (Matsubara et al., NeurIPS 2021). Every deliberate difference
from torchdiffeq is listed in docs/compat.md.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast, overload

import numpy as np
import torch
from torch import Tensor, nn

from ._checks import positive_int, refuse_sde
from ._compat_sde import sdeint, sdeint_adjoint
from ._errors import STEP_SIZE_UNDERFLOW, TRIAL_STEPS_NON_FINITE, SolverAssertion, SolverError, warn
from ._events import EVENT_BEYOND_LARGEST_TIME, EVENT_UNREACHED, _solve_until_event, direction_time
from ._integrate import DEFAULT_MAX_STEPS, NO_STEP_LIMIT, StepCallbacks, fixed_step_ends, times_rounding
from ._odeint import odeint as _odeint
from ._step import RKStepper, rms_norm
from ._tuple import ComplexState, TupleState, layout_of, owning_module
from ._validate import (
    Tolerance,
    check_bool,
    check_field_callable,
    check_function_transforms,
    check_output,
    check_times_distinct,
    host_list,
    narrowest_float,
    non_negative_float,
    one_time,
    positive_float,
    relative_tolerance,
    time_direction,
    time_tensors_requiring_grad,
    type_name,
    validate_state,
    validate_times,
)
from .controller import DEFAULT_CONTROLLER, PIController, TimeSet
from .gradients import BacksolveAdjoint, Direct, GradientMethod, Symplectic
from .solution import State
from .tableaus import TABLEAUS, ButcherTableau, method_hint

States = Tensor | tuple[Tensor, ...]
"""The states at the output times: a tensor, or a tuple of tensors for a tuple ``y0``."""

RK4_THREE_EIGHTHS = ButcherTableau(
    name="rk4_3_8",
    c=(0.0, 1 / 3, 2 / 3, 1.0),
    a=((), (1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)),
    b=(1 / 8, 3 / 8, 3 / 8, 1 / 8),
    order=4,
)
"""Kutta's 3/8 rule, the fourth-order method torchdiffeq's ``"rk4"`` takes (Hairer, Norsett,
Wanner I, II.1, Table 1.2 right)."""

HEUN2 = ButcherTableau(name="heun2", c=(0.0, 1.0), a=((), (1.0,)), b=(1 / 2, 1 / 2), order=2)
"""Heun's second-order method (the explicit trapezoidal rule), torchdiffeq's fixed-step ``"heun2"``."""

HEUN3 = ButcherTableau(
    name="heun3", c=(0.0, 1 / 3, 2 / 3), a=((), (1 / 3,), (0.0, 2 / 3)), b=(1 / 4, 0.0, 3 / 4), order=3
)
"""Heun's third-order method (Heun 1900; Hairer, Norsett, Wanner I, II.1), torchdiffeq's fixed-step
``"heun3"``."""

METHODS: dict[str, ButcherTableau] = {
    "dopri5": TABLEAUS["dopri5"],
    "dopri8": TABLEAUS["dopri8"],
    "bosh3": TABLEAUS["bosh3"],
    "fehlberg2": TABLEAUS["fehlberg2"],
    "adaptive_heun": TABLEAUS["heun_euler"],
    "euler": TABLEAUS["euler"],
    "midpoint": TABLEAUS["midpoint"],
    "heun2": HEUN2,
    "heun3": HEUN3,
    "rk4": RK4_THREE_EIGHTHS,
    "tsit5": TABLEAUS["tsit5"],
}
"""torchdiffeq's method names (and our ``tsit5``) and the tableaus they run."""

UNSUPPORTED_METHODS = (
    "explicit_adams",
    "implicit_adams",
    "fixed_adams",
    "adams",
)
_METHOD_NAMES = [*METHODS, "scipy_solver"]
"""The methods compat's solvers take, as torchdiffeq lists its own: the tableaus and scipy's
``solve_ivp``."""
SCIPY_SOLVERS = ("RK23", "RK45", "DOP853", "Radau", "BDF", "LSODA")
"""The ``options["solver"]`` of ``method="scipy_solver"``: scipy's ``solve_ivp`` methods."""
SCIPY_OPTIONS = ("solver", "min_step", "max_step")
CONTROLLER_OPTIONS = {
    "safety": "safety",
    "ifactor": "max_factor",
    "dfactor": "min_factor",
    "max_step": "max_step",
    "min_step": "min_step",
}
"""torchdiffeq's step-size factors and bounds and the :class:`local_reg.PIController` fields they
set (torchdiffeq 0.2.5 accepts every step of at most ``min_step``, as ``force_min_step`` does)."""
LANDING_OPTIONS = ("step_t", "jump_t")
"""Times no step may cross: ``step_t`` where the field is continuous but not smooth, ``jump_t`` where it
jumps (torchdiffeq 0.2.5's options of its adaptive solvers)."""
ADAPTIVE_OPTIONS = ("first_step", "max_num_steps", "norm", *CONTROLLER_OPTIONS, *LANDING_OPTIONS)
"""Options only an adaptive method uses: a fixed-step one ignores them with a warning, as torchdiffeq."""
OPTIONS = ("step_size", "dtype", "interp", *ADAPTIVE_OPTIONS)
UNSUPPORTED_OPTIONS = (
    "grid_points",
    "perturb",
    "eps",
    "grid_constructor",
)
ADJOINT_OPTIONS = ("step_size", "first_step", "max_num_steps", "norm", "dtype", *LANDING_OPTIONS)
_CALLBACKS = (
    ("step", "callback_step"),
    ("accept", "callback_accept_step"),
    ("reject", "callback_reject_step"),
)


_FIXED_GRID_EVENT_STEPS = 20000
"""torchdiffeq 0.2.5's limit on a fixed-grid solve until an event (its ``max_itrs``)."""


def _tableau(method: str | None) -> ButcherTableau:
    if method is None:
        return METHODS["dopri5"]
    if not isinstance(method, str):
        raise TypeError(f"method must be a str, got {type(method).__name__}")
    if method in METHODS:
        return METHODS[method]
    if method in UNSUPPORTED_METHODS:
        adaptive = [name for name, tableau in METHODS.items() if tableau.adaptive]
        fixed_step = [name for name, tableau in METHODS.items() if not tableau.adaptive]
        raise ValueError(
            f"method {method!r} is not available in local_reg.compat; use one of {_METHOD_NAMES} "
            f"(adaptive: {', '.join(adaptive)}; fixed-step: {', '.join(fixed_step)}; scipy's solve_ivp: "
            "scipy_solver)"
        )
    raise ValueError(
        f"unknown method {method!r}; expected one of {_METHOD_NAMES}{method_hint(method, METHODS)}"
    )


def _as_dict(name: str, options: object) -> dict[str, Any]:
    """``options`` (``None`` read as empty) if it is a dict, else a ``TypeError`` naming ``name``."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise TypeError(f"{name} must be a dict, got {type(options).__name__}")
    return options


def _check_keys(name: str, options: object, allowed: Sequence[str]) -> dict[str, Any]:
    options = _as_dict(name, options)
    if options.get("perturb", True) is False:  # torchdiffeq's default, which asks for nothing
        options = {key: value for key, value in options.items() if key != "perturb"}
    unsupported = sorted(set(options) & set(UNSUPPORTED_OPTIONS) - set(allowed))
    if unsupported:
        raise ValueError(
            f"{name}: {unsupported} not supported by local_reg.compat (see docs/compat.md); supported "
            f"keys: {list(allowed)}"
        )
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"{name}: unknown keys {unknown}; expected some of {list(allowed)}")
    return dict(options)


def _without_perturb(
    options: object, where: str, tableau: ButcherTableau, method: str | None
) -> tuple[dict[str, Any], bool]:
    """``options`` without ``perturb``, and whether the fixed-step ``tableau`` perturbs: evaluates
    each step's stages at its ends one representable time inside it (:func:`_perturbed`). The
    adaptive ``tableau`` ignores it with a warning as torchdiffeq 0.2.5's adaptive solvers do
    ("Unexpected arguments"): they take no such option."""
    options = _as_dict(where, options)
    if "perturb" not in options:
        return options, False
    without = {key: value for key, value in options.items() if key != "perturb"}
    if not tableau.adaptive:
        return without, check_bool(f"{where}['perturb']", options["perturb"])
    if options["perturb"] is not False:
        warn(
            f"local_reg.compat: {where}['perturb'] is ignored by the adaptive method "
            f"{method or tableau.name!r} (torchdiffeq ignores it too); for a field that jumps at "
            "known times pass them as options['jump_t']"
        )
    return without, False


def _perturbed(
    controller: PIController | None, times: list[float], step_size: float, t: TimeSet
) -> PIController:
    """``controller`` (``None``: the default) with the ends of the fixed steps through ``times`` as
    its ``jump_ts``: torchdiffeq's ``perturb``, which evaluates a step's stage at its start at the
    next representable time inside it and one at its end at the previous one, so that a field that
    jumps on the grid is read on the step's own side. ``t``: as ``local_reg.odeint`` is given it,
    whose dtype tells how far its times are rounded (the grid's, :func:`times_rounding`)."""
    ends = fixed_step_ends(times, step_size, times_rounding(times, narrowest_float(t)))
    return dataclasses.replace(controller or DEFAULT_CONTROLLER, jump_ts=tuple(ends))


def _wrap_norm(norm: Callable, state: TupleState | ComplexState | None) -> Callable[[Tensor], Tensor]:
    """A torchdiffeq norm (of a tensor, of a tuple for tuple states, of a complex tensor for complex
    ones) as a norm of the real state the solver steps."""
    if not callable(norm):
        raise TypeError(f"options['norm'] must be callable, got {type(norm).__name__}")
    if state is None:
        return norm
    if isinstance(state, ComplexState):
        # Of a complex state, a torchdiffeq norm may return a complex number of the right modulus
        # (x.pow(2).mean().sqrt()): the solver compares its modulus with 1.
        def complex_norm(flat: Tensor) -> Tensor:
            value = norm(state.unflatten(flat))
            return value.abs() if isinstance(value, Tensor) and value.is_complex() else value

        return complex_norm
    return lambda flat: norm(state.unflatten(flat))


def _callbacks(
    func: object, state: TupleState | ComplexState | None, t_dtype: torch.dtype
) -> StepCallbacks | None:
    """The vector field's torchdiffeq step callbacks, called with tensors ``(t0, y0, dt)``."""
    found: dict[str, Callable[[float, Tensor, float], None]] = {}
    for key, name in _CALLBACKS:
        callback = getattr(func, name, None)
        if callable(callback):

            def call(t0: float, y0: Tensor, dt: float, _callback: Callable = callback) -> None:
                y = y0 if state is None else state.unflatten(y0)
                _callback(
                    torch.tensor(t0, dtype=t_dtype, device=y0.device),
                    y,
                    # The step's size: torchdiffeq solves a decreasing t as an increasing -t, and
                    # its callbacks get that solve's positive dt (with t0 mapped back).
                    torch.tensor(abs(dt), dtype=t_dtype, device=y0.device),
                )

            found[key] = call
    if not found:
        return None
    return StepCallbacks(step=found.get("step"), accept=found.get("accept"), reject=found.get("reject"))


def _fixed_step_size(
    tableau: ButcherTableau, step_size: object, where: str, method: str | None
) -> float | None:
    """``step_size`` for a fixed-step tableau; an adaptive one ignores it with a warning, as
    torchdiffeq 0.2.5 does ("Unexpected arguments"), rather than taking fixed steps without error
    control."""
    if step_size is None:
        return None
    if not tableau.adaptive:
        return positive_float(f"{where}['step_size']", step_size)
    warn(
        f"local_reg.compat: {where}['step_size'] is ignored by the adaptive method "
        f"{method or tableau.name!r} (torchdiffeq ignores it too); for fixed steps use 'euler', "
        "'midpoint', 'heun2', 'heun3' or 'rk4'"
    )
    return None


def _first_step(first_step: object, where: str) -> float | None:
    """``first_step`` of the options dict ``where``, checked by that name (``local_reg.odeint`` and
    ``BacksolveAdjoint`` would name it as their own keyword); ``None``: the solve picks it."""
    return None if first_step is None else positive_float(f"{where}['first_step']", first_step)


def _one_step_per_interval(times: list[float]) -> float:
    """torchdiffeq's fixed-grid default: one step per output interval (the longest interval)."""
    return max((abs(b - a) for a, b in itertools.pairwise(times)), default=1.0)


def _max_steps(max_num_steps: object, where: str, t: TimeSet) -> int:
    """torchdiffeq's ``max_num_steps`` caps the steps *per output interval* (its counter restarts at
    each output time); local_reg's ``max_steps`` caps the whole solve: the same cap over every
    interval, so no solve torchdiffeq completes is stopped. The forward solve also counts per
    interval (:func:`_per_interval_limit`); the backsolve adjoint's backward solve has this cap only."""
    n_steps = positive_int(f"{where}['max_num_steps']", max_num_steps)
    return n_steps * max(1, len(t) - 1)


def _per_interval_limit(
    max_num_steps: int, times: list[float], callbacks: StepCallbacks | None
) -> StepCallbacks:
    """``callbacks`` with a step callback that raises a :class:`SolverError` at the attempted step
    past ``max_num_steps`` since the solve passed its last output time, as torchdiffeq's solver stops
    (it counts the steps of each output interval afresh; one step may pass several output times)."""
    direction = time_direction(times)
    given = callbacks.step if callbacks is not None else None
    position = {"next": 1, "in_interval": 0, "total": 0}

    def step(t0: float, y0: Tensor, dt: float) -> None:
        while position["next"] < len(times) - 1 and direction * (t0 - times[position["next"]]) >= 0:
            position["next"] += 1
            position["in_interval"] = 0
        position["in_interval"] += 1
        position["total"] += 1
        if position["in_interval"] > max_num_steps:
            interval = times[position["next"] - 1], times[position["next"]]
            raise SolverError(
                f"{_PER_INTERVAL_LIMIT_REACHED}{max_num_steps} exceeded between the output times "
                f"{interval[0]!r} and {interval[1]!r} (torchdiffeq's limit per output interval; raise "
                "options['max_num_steps'])",
                t=t0,
                n_steps=position["total"] - 1,
            )
        if given is not None:
            given(t0, y0, dt)

    return dataclasses.replace(callbacks or StepCallbacks(), step=step)


def _ignored_by_fixed_steps(opts: dict[str, Any], where: str, method: str | None) -> None:
    """Drop the adaptive-only options a fixed-step method ignores, warning as torchdiffeq does."""
    ignored = sorted(key for key in ADAPTIVE_OPTIONS if opts.pop(key, None) is not None)
    if ignored:
        warn(
            f"local_reg.compat: {where} {ignored} are ignored by the fixed-step method {method!r} "
            "(torchdiffeq ignores them too)"
        )


def _controller(opts: dict[str, Any], where: str) -> PIController | None:
    """A :class:`PIController` with torchdiffeq's ``safety``, ``ifactor`` and ``dfactor`` (its
    ``max_factor`` and ``min_factor``) and step bounds ``max_step`` and ``min_step`` (their
    defaults, ``inf`` and ``0``, are no bound), or ``None`` (local_reg's default) without them."""
    given = {field: opts.pop(key) for key, field in CONTROLLER_OPTIONS.items() if key in opts}
    for name, value in given.items():
        if isinstance(value, Tensor) and value.dim() > 0 and value.numel() == 1:
            given[name] = value.reshape(())  # torchdiffeq takes a one-element tensor too
    for name, no_bound in (("max_step", math.inf), ("min_step", 0.0)):
        value = given.get(name)
        if isinstance(value, Tensor) and value.dim() == 0 and not value.is_meta:
            given[name] = value.item()  # to compare with the no-bound default (others: refused below)
        if name in given and (
            given[name] is None or (isinstance(given[name], float | int) and given[name] == no_bound)
        ):
            del given[name]
    if not given:
        return None
    try:
        return PIController(**given)
    except (TypeError, ValueError) as error:
        keys = [key for key, field in CONTROLLER_OPTIONS.items() if field in given]
        names = ", ".join(f"{where}[{key!r}]" for key in keys)
        fields = ", ".join(CONTROLLER_OPTIONS[key] for key in keys)
        raise type(error)(f"{names} set PIController's {fields}: {error}") from None


def torchdiffeq_bounds(options: dict[str, Any]) -> PIController:
    """A :class:`PIController` with the step bounds (``max_step``, ``min_step``) and landing times
    (``step_t``, ``jump_t``) of torchdiffeq's adaptive ``options``: where a step torchdiffeq's solve
    could take is kept (its step-size factors are torchdiffeq's own, not read here)."""
    bounds: dict[str, Any] = {key: options[key] for key in ("max_step", "min_step") if key in options}
    controller = _controller(bounds, "options") or DEFAULT_CONTROLLER
    step_ts, jump_ts = (_landing_times(key, options.get(key)) for key in LANDING_OPTIONS)
    return _with_landings(controller, step_ts, jump_ts)


def _with_landings(controller: PIController, step_ts: TimeSet, jump_ts: TimeSet) -> PIController:
    """``controller`` with these landing times: itself where neither it nor they have any."""
    none = isinstance(step_ts, tuple) and isinstance(jump_ts, tuple) and not step_ts and not jump_ts
    if none and not controller.lands:
        return controller
    return dataclasses.replace(controller, step_ts=cast(Any, step_ts), jump_ts=cast(Any, jump_ts))


def _interp(opts: dict[str, Any], where: str) -> None:
    """``interp="linear"`` is torchdiffeq's default, which no solve here needs: every output time
    ends a fixed step (docs/compat.md); another choice is refused."""
    interp = opts.pop("interp", "linear")
    if interp != "linear":
        raise ValueError(
            f"{where}['interp']={interp!r} is not supported by local_reg.compat: a fixed-step solve "
            "steps to every output time, so there is nothing to interpolate ('linear' is accepted)"
        )


def _mixed_norm(state: TupleState) -> Callable[[Tensor], Tensor]:
    """torchdiffeq's error norm for a tuple ``y0``: the largest RMS of its tensors, so that a small
    tensor's error is not averaged away among a large one's elements."""

    def norm(flat: Tensor) -> Tensor:
        pieces = [piece for piece in state.unflatten(flat) if piece.numel() > 0]
        if not pieces:
            return flat.new_zeros(())
        return torch.stack([rms_norm(piece) for piece in pieces]).max()

    return norm


def _option_times(name: str, value: object) -> Tensor:
    """The times an option lists (``None``: none) as a flat float64 tensor; a ``TypeError`` naming
    the option if they are not numbers."""
    try:
        times = [] if value is None else value
        return torch.as_tensor(times, dtype=torch.float64, device="cpu").detach().reshape(-1)
    except OverflowError:
        raise ValueError(f"{name} holds a number too large for a float") from None
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"{name} must be numbers (a sequence or tensor of times), got {value!r}") from error


def _time_set(name: str, times: object) -> set[float]:
    return set(host_list(_option_times(name, times)))


def _landings(opts: dict[str, Any], times: list[float]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``options['step_t']`` and ``['jump_t']`` as :class:`PIController`'s ``step_ts`` and
    ``jump_ts``, popped from ``opts``. A time in both lists inside the span is refused, as by
    torchdiffeq (a time repeated in one list is taken once, where torchdiffeq refuses it); times
    outside the span do nothing, as torchdiffeq's solvers never reach them."""
    low, high = min(times[0], times[-1]), max(times[0], times[-1])
    found = {key: _landing_times(key, opts.pop(key, None)) for key in LANDING_OPTIONS}
    shared = {time for time in set(found["step_t"]) & set(found["jump_t"]) if low < time < high}
    if shared:
        raise ValueError("options['step_t'] and ['jump_t'] must not share a time (torchdiffeq's rule)")
    return found["step_t"], found["jump_t"]


def _landing_times(key: str, value: object) -> tuple[float, ...]:
    """``options[key]``, a list of landing times (``None``: none), as finite floats; a refusal names
    the entry (:class:`PIController` would name its own field)."""
    if value is None:
        return ()
    values = _option_times(f"options[{key!r}]", value)
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"options[{key!r}] must be finite times, got {value!r}")
    return tuple(host_list(values))


def _per_tensor_tolerance(value: Tolerance, y0: Sequence[Tensor]) -> Tolerance:
    """A tuple state's tolerance as torchdiffeq reads it, by iterating it, one entry per tensor of
    ``y0``: a numpy array's rows (a 1-D array's numbers, a 2-D array's rows); an entry of several
    numbers (an array, a list, a tensor) is that tensor's flattened elements, as torchdiffeq
    flattens each tensor."""
    if (isinstance(value, np.ndarray) and value.ndim >= 1) or (
        isinstance(value, Tensor) and value.dim() == 2
    ):
        value = list(value)
    if not isinstance(value, (list, tuple)) or len(value) != len(y0):
        return value  # refused by name, or read, by odeint

    def entry(part: float | Tensor, tensor: Tensor) -> float | Tensor:
        if isinstance(part, (np.ndarray, list, tuple)):
            part = torch.as_tensor(part, dtype=torch.float64)
        if isinstance(part, Tensor) and part.dim() == 1 and part.numel() == tensor.numel():
            return part.reshape(tensor.shape)
        return part

    return [entry(part, tensor) for part, tensor in zip(value, y0, strict=True)]


def _listed_tolerance(name: str, value: Tolerance) -> Tolerance:
    """A list or tuple of numbers as torchdiffeq reads it for a tensor ``y0`` (``torch.as_tensor``):
    per-element tolerances broadcasting to the state (``odeint`` checks the shape); a numpy array
    alike."""
    if isinstance(value, np.ndarray):
        return torch.as_tensor(value, dtype=torch.float64)
    if not isinstance(value, (list, tuple)):
        return value
    try:
        return torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(
            f"{name} must be a number, a tensor or a list of numbers for a tensor y0, got {value!r}"
        ) from None


_PER_INTERVAL_LIMIT_REACHED = "max_num_steps="
"""How the reason of a solve stopped by torchdiffeq's per-interval step limit begins."""

_ASSERTED_BY_TORCHDIFFEQ = (
    STEP_SIZE_UNDERFLOW,
    f"{RKStepper.failure}: {TRIAL_STEPS_NON_FINITE}",
    _PER_INTERVAL_LIMIT_REACHED,
)
"""The failures torchdiffeq 0.2.5 raises as ``AssertionError`` s (``underflow in dt``, an adaptive
solve's non-finite state, ``max_num_steps exceeded``: the per-interval limit of
``options['max_num_steps']``), by the start of their reason. local_reg's own default step limit,
which torchdiffeq lacks, stays a plain :class:`SolverError`, as do a fixed step's non-finite state
and a ``scipy_solver`` failure (torchdiffeq returns the NaN, or what scipy reached)."""


def _failures_as_assertions(solve: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(solve)
    def solve_asserting(*args: Any, **kwargs: Any) -> Any:
        try:
            return solve(*args, **kwargs)
        except SolverError as error:
            if isinstance(error, AssertionError) or not error.reason.startswith(_ASSERTED_BY_TORCHDIFFEQ):
                raise
            raise SolverAssertion(error.reason, t=error.t, n_steps=error.n_steps).with_traceback(
                error.__traceback__
            ) from None

    return solve_asserting


@_failures_as_assertions
def _solve(
    func: Callable,
    y0: State,
    t: Tensor,
    rtol: Tolerance,
    atol: Tolerance,
    method: str | None,
    options: dict | None,
    event_fn: Callable | None,
    gradient: GradientMethod,
    adjoint_params: Iterable[Tensor] | None,
    dense: bool = False,
    controller: PIController | None = None,
) -> States | tuple[Tensor, States] | Callable[[Tensor], States]:
    """``controller``: the one a fixed-step solve hands to its adaptive backward solve."""
    events = event_fn is not None
    # Before t is read: a t batched by torch.func.vmap has no values to read, as odeint says (and
    # scipy's solve would drop a transform's or a forward-mode tangent).
    entry = "odeint_event" if events else "odeint_dense" if dense else "odeint"
    check_function_transforms(entry, t=t, y0=y0, differentiable=method != "scipy_solver")
    if method == "scipy_solver":
        refuse_sde(func)  # odeint refuses it in the other branch
        check_field_callable(func)  # odeint checks it in the other branch (a regularized model)
        return _scipy_solve(func, y0, t, rtol, atol, options, event_fn, dense)
    if isinstance(y0, Tensor):
        rtol, atol = _listed_tolerance("rtol", rtol), _listed_tolerance("atol", atol)
    else:
        rtol, atol = _per_tensor_tolerance(rtol, y0), _per_tensor_tolerance(atol, y0)
    # Checked before the fixed grid is read from them (odeint checks them again); an event's two
    # times give the direction, so they too must be finite and distinct.
    times = validate_times(t)
    if events and len(times) != 2:
        raise ValueError(f"event_fn needs len(t) == 2 (t[1] gives the direction), got len(t)={len(times)}")
    kwargs, perturb = _solve_keywords(
        func, y0, t, times, rtol, atol, method, options, events, dense, gradient, adjoint_params, controller
    )
    if event_fn is None:
        return _solve_at_times(func, y0, t, times, perturb, dense, kwargs)
    return _solve_to_event(func, y0, t, event_fn, options, kwargs)


def _solve_keywords(
    func: Callable,
    y0: State,
    t: Tensor,
    times: list[float],
    rtol: Tolerance,
    atol: Tolerance,
    method: str | None,
    options: dict | None,
    events: bool,
    dense: bool,
    gradient: GradientMethod,
    adjoint_params: Iterable[Tensor] | None,
    controller: PIController | None,
) -> tuple[dict[str, Any], bool]:
    """The keywords of local_reg's solve that torchdiffeq's ``method`` and ``options`` ask for
    (``step_size`` ``None`` for an adaptive solve), and whether the fixed steps perturb."""
    tableau = _tableau(method)
    opts, perturb = _without_perturb(options, "options", tableau, method)
    opts = _check_keys("options", opts, OPTIONS)
    dtype = opts.pop("dtype", None)
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise TypeError(f"options['dtype'] must be a torch.dtype, got {type(dtype).__name__}")
    _interp(opts, "options")
    state = layout_of(y0)
    t_dtype = t.dtype if isinstance(t, Tensor) and t.is_floating_point() else torch.float64
    step_size = _fixed_step_size(tableau, opts.pop("step_size", None), "options", method)
    if not tableau.adaptive:
        _ignored_by_fixed_steps(opts, "options", method)
    step_ts, jump_ts = _landings(opts, times)
    if perturb and events:
        raise ValueError(
            f"options['perturb'] with event_fn is not supported by local_reg.compat (the fixed grid "
            f"of {method!r} runs on to an event not known before the solve): drop perturb, or use an "
            "adaptive method with options['jump_t'] at the times the field jumps"
        )
    if step_size is None and not tableau.adaptive:
        if events:
            raise ValueError(f"event_fn with the fixed-step method {method!r} needs options['step_size']")
        if dense:
            # Its one interval is the whole span: one step, interpolated.
            raise ValueError(
                f"odeint_dense with the fixed-step method {method!r} needs options['step_size'] "
                "(without it the whole span is one step)"
            )
        step_size = _one_step_per_interval(times)
    kwargs: dict[str, Any] = {
        "method": tableau,
        "rtol": rtol,
        "atol": atol,
        "step_size": step_size,
        "first_step": _first_step(opts.pop("first_step", None), "options"),
        # Fixed steps take no controller of options' (their adaptive options were dropped above).
        "controller": controller
        if step_size is not None
        else _with_landings(_controller(opts, "options") or DEFAULT_CONTROLLER, step_ts, jump_ts),
        "gradient": gradient,
        "adjoint_params": adjoint_params,
        "callbacks": _callbacks(func, state, t_dtype),
    }
    kwargs.update(_step_limit(opts, events, step_size is not None, t, times, kwargs["callbacks"]))
    if "norm" in opts:
        kwargs["norm"] = _wrap_norm(opts.pop("norm"), state)
    elif isinstance(state, TupleState) and step_size is None:
        kwargs["norm"] = _mixed_norm(state)
    return kwargs, perturb


def _step_limit(
    opts: dict[str, Any],
    events: bool,
    fixed_steps: bool,
    t: Tensor,
    times: list[float],
    callbacks: StepCallbacks | None,
) -> dict[str, Any]:
    """The ``max_steps`` keyword that ``options['max_num_steps']`` (popped from ``opts``) or
    torchdiffeq's fixed grid asks for, with the ``callbacks`` that count steps per output interval
    where they do; none where local_reg's default limit applies."""
    if "max_num_steps" in opts and events:
        # An event solve has one interval, whose end only gives the direction: torchdiffeq counts
        # its steps as a whole, as the loop's own cap does (an event never reached is named so).
        return {"max_steps": _max_steps(opts.pop("max_num_steps"), "options", t)}
    if "max_num_steps" in opts:
        # The per-interval count stops the solve first; the whole-solve cap only backs it up.
        max_steps = _max_steps(opts["max_num_steps"], "options", t) + 1
        return {
            "max_steps": max_steps,
            "callbacks": _per_interval_limit(opts.pop("max_num_steps"), times, callbacks),
        }
    if fixed_steps and events:
        return {"max_steps": _FIXED_GRID_EVENT_STEPS}
    if fixed_steps:
        # torchdiffeq's fixed grids have no step limit: up to its default limit (beyond it odeint
        # refuses the step_size by name, before the first step, rather than run on).
        return {"max_steps": NO_STEP_LIMIT}
    return {}


def _solve_at_times(
    func: Callable,
    y0: State,
    t: Tensor,
    times: list[float],
    perturb: bool,
    dense: bool,
    kwargs: dict[str, Any],
) -> States | Callable[[Tensor], States]:
    """The solution at ``t`` (its dense evaluation where ``dense``), with the time ``func`` is handed
    in ``y0``'s dtype as torchdiffeq hands it."""
    # torchdiffeq 0.2.5 casts the time it hands func to y0's dtype (_PerturbFunc), whatever t's
    # dtype. local_reg.odeint does so for a t no wider than y0; a wider t goes as a sequence of
    # floats (the same values), or where it requires grad stays a tensor, so that ys is
    # differentiable w.r.t. it, and func is handed the time cast. A narrower t stays a tensor:
    # its dtype tells the solve that its times are rounded (fixed steps take no sliver for it).
    plain = isinstance(t, Tensor) and t.dim() == 1 and t.is_floating_point() and not t.requires_grad
    first = y0[0] if isinstance(y0, tuple) and y0 else y0
    # A complex state's times are real, in its parts' dtype (torchdiffeq: y.abs().dtype).
    first_dtype = (
        (first.real.dtype if first.is_complex() else first.dtype) if isinstance(first, Tensor) else None
    )
    wider_t = (
        isinstance(t, Tensor)
        and first_dtype is not None
        and first_dtype.is_floating_point
        and torch.promote_types(t.dtype, first_dtype) != first_dtype
    )
    if wider_t and not plain:
        func = _TimeInStateDtype(func, cast(torch.dtype, first_dtype))
    if wider_t and plain:
        # Before local_reg.odeint's check, whose remedy (a float64 t) is what was given here.
        check_times_distinct(
            host_list(t),
            cast(torch.dtype, first_dtype),
            "(y0's, as in torchdiffeq): solve in float64, or shift t nearer 0",
        )
    t_given = host_list(t) if plain and wider_t else t
    if perturb:
        kwargs["controller"] = _perturbed(
            kwargs["controller"], times, cast(float, kwargs["step_size"]), t_given
        )
    solution = _odeint(func, y0, t_given, dense=dense, **kwargs)
    return solution.evaluate if dense else solution.ys


def _solve_to_event(
    func: Callable, y0: State, t: Tensor, event_fn: Callable, options: dict | None, kwargs: dict[str, Any]
) -> tuple[Tensor, States]:
    """The event time and the solution until it, its failures raised as torchdiffeq's."""
    reverse_time = bool(t[1] < t[0])
    try:
        solution = _solve_until_event(
            func, y0, t[0], event_fn=event_fn, reverse_time=reverse_time, times_in_state_dtype=True, **kwargs
        )
    except SolverError as error:
        step_size = kwargs["step_size"]
        unreached = error.reason.startswith(EVENT_UNREACHED)
        limited = unreached and "max_num_steps" in (options or {})
        if step_size is None and (limited or error.reason == EVENT_BEYOND_LARGEST_TIME):
            # torchdiffeq asserts on its options['max_num_steps'] until an event too, and where the
            # steps grow until the time overflows its step size underflows ("underflow in dt").
            raise SolverAssertion(error.reason, t=error.t, n_steps=error.n_steps) from None
        if step_size is None or not unreached:
            raise
        # The loop's advice (raise max_steps) is not the user's to take here: the limit is fixed.
        raise SolverError(
            f"event_fn did not change sign within {_FIXED_GRID_EVENT_STEPS} fixed steps, torchdiffeq's "
            "limit for a fixed grid until an event (options['max_num_steps'] does not change it): "
            "pass a longer options['step_size']",
            t=error.t,
            n_steps=error.n_steps,
        ) from None
    return solution.ts[-1], solution.ys


class _TimeInStateDtype(nn.Module):
    """``func`` given its time in the state's dtype, as torchdiffeq's solvers give it, where the
    solve keeps a wider ``t`` that requires grad (its outputs are differentiated w.r.t. it). A
    module holding ``func`` (and a bound method's module, as :class:`local_reg._tuple.TupleField`
    does), so that its parameters and layers are found through it."""

    def __init__(self, func: Callable, dtype: torch.dtype) -> None:
        super().__init__()
        self.func = func
        self.owner = None if isinstance(func, nn.Module) else owning_module(func)
        self.state_dtype = dtype

    def forward(self, t: Tensor, y: Any) -> Any:
        return self.func(t.to(self.state_dtype), y)


def _scipy_solve(
    func: Callable,
    y0: State,
    t: Tensor,
    rtol: Tolerance,
    atol: Tolerance,
    options: dict | None,
    event_fn: Callable | None,
    dense: bool,
) -> States:
    """torchdiffeq's ``method="scipy_solver"``: scipy's ``solve_ivp`` (``options["solver"]``, default
    ``"LSODA"``, and its ``min_step``/``max_step``) on a float64 numpy copy of the state, the outputs
    read from its dense output. No gradient flows through it, as in torchdiffeq; a failed solve is a
    :class:`SolverError` (torchdiffeq returns only the outputs it reached, without an error)."""
    where = "method='scipy_solver'"
    if event_fn is not None:
        raise ValueError(
            f"{where} takes no event_fn (scipy's events are not torchdiffeq's): use an adaptive method"
        )
    if dense:
        raise ValueError(f"odeint_dense with {where} is not available: use an adaptive method")
    from scipy.integrate import solve_ivp

    times = validate_times(t)
    opts = _check_keys("options", options, SCIPY_OPTIONS)
    solver = opts.pop("solver", "LSODA")
    if solver not in SCIPY_SOLVERS:
        raise ValueError(f"options['solver'] must be one of scipy's {list(SCIPY_SOLVERS)}, got {solver!r}")
    # scipy's own defaults, 0 and inf, are no bound (as for the adaptive methods' options).
    bounds = {
        name: positive_float(f"options[{name!r}]", opts[name])
        for name, no_bound in (("min_step", 0.0), ("max_step", math.inf))
        if name in opts and not (isinstance(opts[name], float | int) and opts[name] == no_bound)
    }
    # The tolerance checks of the adaptive methods, except that scipy takes atol = 0 beside rtol > 0.
    tolerances = {"rtol": relative_tolerance("rtol", rtol), "atol": non_negative_float("atol", atol)}
    if max(tolerances.values()) == 0:
        raise ValueError("rtol and atol must not both be 0 (scipy's tolerance would be 0)")
    state = layout_of(y0)
    flat0 = validate_state(y0) if state is None else state.flatten(y0)
    dtype, device = flat0.dtype, flat0.device
    parameters = func.parameters() if isinstance(func, nn.Module) else ()
    if torch.is_grad_enabled() and (
        flat0.requires_grad or time_tensors_requiring_grad(t) or any(p.requires_grad for p in parameters)
    ):
        warn(
            f"{where} solves on a numpy copy of the state: no gradient reaches y0, t or func's "
            "parameters (as in torchdiffeq); use an adaptive method to differentiate the solve"
        )

    def rhs(time: float, values: np.ndarray) -> np.ndarray:
        y = torch.from_numpy(values).to(device, dtype)
        with torch.no_grad():
            derivative = func(
                torch.tensor(time, dtype=dtype, device=device),
                y.reshape(flat0.shape) if state is None else state.unflatten(y.reshape(flat0.shape)),
            )
        if state is not None:
            flat = state.flatten(derivative, "func's output")
        else:
            flat = check_output("func", derivative, flat0)
        return flat.detach().reshape(-1).to("cpu", torch.float64).numpy()

    initial = flat0.detach().reshape(-1).to("cpu", torch.float64).numpy()
    if len(times) == 1:
        ys = initial[None].copy()  # a CPU float64 y0 shares its memory with initial's view
    else:
        solution = solve_ivp(
            rhs, (times[0], times[-1]), initial, method=solver, dense_output=True, **tolerances, **bounds
        )
        if not solution.success:
            raise SolverError(
                f"scipy's {solver} failed: {solution.message}",
                t=float(solution.t[-1]),
                n_steps=len(solution.t) - 1,
            )
        ys = solution.sol(times).T
    out = torch.from_numpy(np.ascontiguousarray(ys)).to(device, dtype).reshape(len(times), *flat0.shape)
    return out if state is None else state.unflatten(out)


@overload
def odeint(
    func: Callable,
    y0: State,
    t: TimeSet,
    *,
    rtol: Tolerance = ...,
    atol: Tolerance = ...,
    method: str | None = ...,
    options: dict | None = ...,
    event_fn: None = ...,
) -> State: ...
@overload
def odeint(
    func: Callable,
    y0: State,
    t: TimeSet,
    *,
    rtol: Tolerance = ...,
    atol: Tolerance = ...,
    method: str | None = ...,
    options: dict | None = ...,
    event_fn: Callable,
) -> tuple[Tensor, State]: ...
def odeint(
    func: Callable,
    y0: State,
    t: TimeSet,
    *,
    rtol: Tolerance = 1e-7,
    atol: Tolerance = 1e-9,
    method: str | None = None,
    options: dict | None = None,
    event_fn: Callable | None = None,
) -> State | tuple[Tensor, State]:
    """Solve ``dy/dt = func(t, y)``, ``y(t[0]) = y0`` and return the states at ``t``, shape
    ``(len(t), *y0.shape)`` (a tuple of such tensors for a tuple ``y0``), as torchdiffeq does.

    Gradients flow by backpropagation through the solver's operations (local_reg's ``Direct``).

    Args:
        method: ``"dopri5"`` (default), ``"dopri8"``, ``"tsit5"``, ``"bosh3"``, ``"fehlberg2"``,
            ``"adaptive_heun"``, or fixed-step ``"euler"``, ``"midpoint"``, ``"heun2"``, ``"heun3"``,
            ``"rk4"``; or ``"scipy_solver"``: scipy's ``solve_ivp`` with ``options["solver"]`` (default
            ``"LSODA"``), ``["min_step"]``, ``["max_step"]``, without gradients (docs/compat.md).
        options: ``step_size`` (fixed-step methods: each output interval is divided into equal steps
            no longer than it; default one step per interval), ``first_step``, ``max_num_steps``,
            ``norm`` (callable on the scaled error, a tuple for tuple states), ``dtype`` (accepted;
            times are always handled in float64), ``jump_t`` and ``step_t`` (adaptive methods:
            times where the field jumps, or is not smooth: :class:`PIController`'s ``jump_ts`` and
            ``step_ts``, docs/compat.md), ``perturb`` (fixed-step methods: each step's stages at
            its ends are evaluated one representable time inside it, for a field that jumps on the
            grid; the ends of the steps as ``jump_ts``).
        event_fn: ``event_fn(t, y) -> tensor``: solve from ``t[0]`` in the direction of ``t[1]``
            (``len(t) == 2``) until it changes sign, and return ``(event_t, solution)``, the
            states at ``[t[0], event_t]`` (:func:`local_reg.odeint_event`, differentiable w.r.t.
            ``t[0]``; ``t[1]`` gets no gradient).

    A ``t`` that requires grad is differentiated as by torchdiffeq's ``odeint_adjoint``
    (docs/gradients.md), by ``odeint`` and ``odeint_adjoint`` alike.

    Raises:
        ValueError: a method or option local_reg does not have (naming the alternatives), an
            unknown option key.
    """
    return cast(Any, _solve(func, y0, t, rtol, atol, method, options, event_fn, Direct(), None))


@overload
def odeint_adjoint(
    func: Callable,
    y0: State,
    t: TimeSet,
    *,
    rtol: Tolerance = ...,
    atol: Tolerance = ...,
    method: str | None = ...,
    options: dict | None = ...,
    event_fn: None = ...,
    adjoint_rtol: float | None = ...,
    adjoint_atol: float | None = ...,
    adjoint_method: str | None = ...,
    adjoint_options: dict | None = ...,
    adjoint_params: Iterable[Tensor] | None = ...,
) -> State: ...
@overload
def odeint_adjoint(
    func: Callable,
    y0: State,
    t: TimeSet,
    *,
    rtol: Tolerance = ...,
    atol: Tolerance = ...,
    method: str | None = ...,
    options: dict | None = ...,
    event_fn: Callable,
    adjoint_rtol: float | None = ...,
    adjoint_atol: float | None = ...,
    adjoint_method: str | None = ...,
    adjoint_options: dict | None = ...,
    adjoint_params: Iterable[Tensor] | None = ...,
) -> tuple[Tensor, State]: ...
def odeint_adjoint(
    func: Callable,
    y0: State,
    t: TimeSet,
    *,
    rtol: Tolerance = 1e-7,
    atol: Tolerance = 1e-9,
    method: str | None = None,
    options: dict | None = None,
    event_fn: Callable | None = None,
    adjoint_rtol: float | None = None,
    adjoint_atol: float | None = None,
    adjoint_method: str | None = None,
    adjoint_options: dict | None = None,
    adjoint_params: Iterable[Tensor] | None = None,
) -> State | tuple[Tensor, State]:
    """:func:`odeint` differentiated in constant memory by the backsolve adjoint (Chen et al. 2018),
    or, with ``adjoint_method="symplectic"``, exactly by the symplectic adjoint (Matsubara et al.
    2021), whose memory is the step states plus one graph of ``func``.

    The backward solve uses ``adjoint_rtol`` / ``adjoint_atol`` / ``adjoint_method`` (default the
    forward's) and ``adjoint_options``: ``step_size``, ``first_step``, ``max_num_steps`` and
    ``norm="seminorm"`` (Kidger, Chen, Lyons, ICML 2021); by default it takes ``options`` without
    ``norm``, as torchdiffeq does. It steps with the forward solve's controller; after fixed forward
    steps an adaptive backward solve takes its own (``safety``, ``ifactor``, ``dfactor``,
    ``max_step``, ``min_step``) from ``adjoint_options``. With ``options["jump_t"]``/``["step_t"]`` it
    runs piece by piece in the forward solve's pieces (``adjoint_options`` may repeat those times,
    not change them).
    ``func`` must be an ``nn.Module`` unless ``adjoint_params`` is given.
    With ``event_fn`` it returns ``(event_t, solution)`` as :func:`odeint` does, differentiated by the
    same method.
    """
    _as_dict("options", options)  # read below before the solve checks its keys
    if method == "scipy_solver" or adjoint_method == "scipy_solver":
        raise ValueError(
            "odeint_adjoint with method='scipy_solver' is not available (no gradient flows through "
            "scipy's solvers): use odeint with it for a solve without gradients, or an adaptive method"
        )
    if adjoint_params is None and not isinstance(func, nn.Module):
        raise ValueError(
            "odeint_adjoint: func must be an nn.Module so that its parameters can be found; "
            "otherwise pass adjoint_params=(tensors func depends on), or adjoint_params=() if none"
        )
    for name in ("callback_step_adjoint", "callback_accept_step_adjoint", "callback_reject_step_adjoint"):
        if callable(getattr(func, name, None)):
            warn(f"local_reg.compat does not call func.{name}: the backward pass has no step callbacks")
    backward_controller = None
    if adjoint_method == "symplectic":
        extra = [
            name
            for name, value in (
                ("adjoint_rtol", adjoint_rtol),
                ("adjoint_atol", adjoint_atol),
                ("adjoint_options", adjoint_options),
            )
            if value is not None
        ]
        if extra:
            raise ValueError(
                f"odeint_adjoint: {extra} do not apply to adjoint_method='symplectic', which "
                "retraces the forward steps exactly"
            )
        gradient: GradientMethod = Symplectic()
    else:
        if adjoint_method is not None and adjoint_method != method and options and adjoint_options is None:
            raise ValueError(
                "odeint_adjoint: adjoint_method differs from method, so adjoint_options cannot be taken "
                "from options: pass adjoint_options as well"
            )
        where = "options" if adjoint_options is None else "adjoint_options"
        backward_method = method if adjoint_method is None else adjoint_method
        backward = _tableau(backward_method)
        # The backward solve steps with the controller odeint is given. An adaptive forward solve's
        # is set in options; after fixed forward steps it is the backward solve's own, so it is set
        # here (torchdiffeq's adjoint_options take the backward solver's factors and bounds).
        own_controller = backward.adaptive and not _tableau(method).adaptive
        if adjoint_options is None:
            adjoint = {k: v for k, v in (options or {}).items() if k in ADJOINT_OPTIONS and k != "norm"}
        else:
            factors = sorted(set(CONTROLLER_OPTIONS) & set(_as_dict("adjoint_options", adjoint_options)))
            if factors and not own_controller:
                raise ValueError(
                    f"adjoint_options: {factors} not supported by local_reg.compat: the backward solve "
                    "uses the forward solve's step-size controller (set them in options)"
                )
            allowed = (*ADJOINT_OPTIONS, *CONTROLLER_OPTIONS) if own_controller else ADJOINT_OPTIONS
            adjoint_options, backward_perturb = _without_perturb(
                adjoint_options, "adjoint_options", backward, backward_method
            )
            forward_perturbs = not _tableau(method).adaptive and _as_dict("options", options).get("perturb")
            if backward_perturb and forward_perturbs is not True:
                raise ValueError(
                    "adjoint_options['perturb'] needs options['perturb']: the backward solve reads the "
                    "field on each side of the forward solve's steps' ends where the forward solve does"
                )
            adjoint = _check_keys("adjoint_options", adjoint_options, allowed)
            backward_controller = _controller(adjoint, "adjoint_options")
            landings = sorted(key for key in LANDING_OPTIONS if adjoint.get(key) is not None)
            if own_controller and landings:
                # local_reg.odeint takes no landing times beside fixed forward steps, where
                # torchdiffeq's adaptive backward solve lands on them: it steps across them (the
                # gradient meets the adjoint's tolerance, with more steps), said as for options.
                for key in landings:
                    adjoint.pop(key)
                warn(
                    f"local_reg.compat: adjoint_options {landings} are ignored after the fixed-step "
                    f"forward method {method!r} (torchdiffeq's adaptive backward solve lands on them; "
                    "here it steps across them): use an adaptive method to land on them"
                )
        for key in LANDING_OPTIONS:
            # The backward solve lands on the forward solve's times (its controller's).
            given, forward_times = adjoint.pop(key, None), (options or {}).get(key)
            if given is not None and (
                forward_times is None
                or _time_set(f"{where}[{key!r}]", given) != _time_set(f"options[{key!r}]", forward_times)
            ):
                raise ValueError(
                    f"adjoint_options[{key!r}] must be options[{key!r}]: the backward solve lands where "
                    "the forward solve does"
                )
        norm = adjoint.pop("norm", "default")
        if norm not in ("seminorm", "default"):
            raise ValueError(
                "adjoint_options['norm']: only 'seminorm' and 'default' are supported by local_reg.compat "
                f"(no callable adjoint norm), got {norm!r}"
            )
        if not backward.adaptive and adjoint_options is not None:
            # Given for the backward solve, which cannot use them (from options, the forward's).
            _ignored_by_fixed_steps(adjoint, where, backward_method)
        step_size = _fixed_step_size(backward, adjoint.get("step_size"), where, backward_method)
        max_steps = None  # the forward solve's
        if "max_num_steps" in adjoint and backward.adaptive:
            max_steps = _max_steps(adjoint["max_num_steps"], where, t)
        elif not backward.adaptive:
            max_steps = NO_STEP_LIMIT  # its count is known before it starts, as the forward's
            if step_size is None and _tableau(method).adaptive:
                if event_fn is not None:
                    raise ValueError(
                        f"event_fn with the fixed-step adjoint_method {adjoint_method!r} needs "
                        "adjoint_options['step_size']"
                    )
                step_size = _one_step_per_interval(validate_times(t))
        elif not _tableau(method).adaptive:
            max_steps = DEFAULT_MAX_STEPS  # not the forward grid's exact count
        gradient = BacksolveAdjoint(
            None if adjoint_method is None else backward,
            adjoint_rtol,
            adjoint_atol,
            norm=norm,
            step_size=step_size,
            first_step=_first_step(adjoint.get("first_step"), where) if backward.adaptive else None,
            max_steps=max_steps,
        )
    return cast(
        Any,
        _solve(
            func,
            y0,
            t,
            rtol,
            atol,
            method,
            options,
            event_fn,
            gradient,
            adjoint_params,
            controller=backward_controller,
        ),
    )


def odeint_dense(
    func: Callable,
    y0: State,
    t0: Tensor | float,
    t1: Tensor | float,
    *,
    rtol: Tolerance = 1e-7,
    atol: Tolerance = 1e-9,
    method: str | None = None,
    options: dict | None = None,
) -> Callable[[Tensor | float], State]:
    """Solve from ``t0`` to ``t1`` and return the dense output, a function of the time, as
    torchdiffeq's ``odeint_dense``: ``dense_output_fn(t)`` is the state at any ``t`` in the span (a
    float or a 0-dim tensor; a 1-D tensor of times gives the states stacked), read from the
    method's interpolant (:meth:`local_reg.Solution.evaluate`). torchdiffeq takes only ``dopri5``
    and a tensor ``y0``; here every method (a fixed-step one with ``options['step_size']``) and a
    tuple ``y0`` work. Differentiable w.r.t. ``y0``, the parameters and a ``t0`` or ``t1`` that
    requires grad (torchdiffeq's gives no gradient to them); the function's own ``t`` is not
    differentiated: one that requires grad is refused (``ValueError``)."""
    given = [one_time(name, end) for name, end in (("t0", t0), ("t1", t1))]
    values = [value for value, _ in given]
    # A number beside a tensor end on its device; two numbers on the CPU, whatever the default.
    device = next((tensor.device for _, tensor in given if tensor is not None), torch.device("cpu"))
    ends = [
        torch.tensor(value, dtype=torch.float64, device=device)
        if tensor is None
        else tensor.to(torch.float64)
        for value, tensor in given
    ]
    if values[0] == values[1]:
        raise ValueError(f"t1 must differ from t0, got t0 = t1 = {values[0]}")
    times = torch.stack(ends)
    return cast(Any, _solve(func, y0, times, rtol, atol, method, options, None, Direct(), None, dense=True))


def odeint_event(
    func: Callable,
    y0: State,
    t0: Tensor | float,
    *,
    event_fn: Callable,
    reverse_time: bool = False,
    odeint_interface: Callable = odeint,
    **kwargs: Any,
) -> tuple[Tensor, State]:
    """Solve from ``t0`` until ``event_fn(t, y)`` changes sign, as torchdiffeq's ``odeint_event``:
    ``odeint_interface(func, y0, [t0, t0 +- 1], event_fn=event_fn, **kwargs)``, which returns
    ``(event_t, solution)``, ``solution`` the states at ``[t0, event_t]``.

    ``odeint_interface`` is this module's :func:`odeint` or :func:`odeint_adjoint`. Both already
    differentiate the event time and the final state by the implicit function theorem (see
    :func:`local_reg.odeint_event`), w.r.t. ``y0``, the parameters and ``t0``.
    """
    if odeint_interface is not odeint and odeint_interface is not odeint_adjoint:
        # A function is named by where it lives (torchdiffeq.odeint), anything else by its type.
        given = (
            f"{odeint_interface.__module__}.{odeint_interface.__qualname__}"
            if callable(odeint_interface) and hasattr(odeint_interface, "__qualname__")
            else f"an object of type {type_name(odeint_interface)}"
        )
        raise (ValueError if callable(odeint_interface) else TypeError)(
            "odeint_interface must be local_reg.compat.odeint or local_reg.compat.odeint_adjoint, "
            f"got {given}"
        )
    given_tensor = isinstance(t0, Tensor)
    if isinstance(t0, (list, tuple, np.ndarray, np.generic)):  # [t0], a 0-d array: torchdiffeq's too
        # Checked as a tensor below (a bool or complex one refused by name); on the CPU, as a number is.
        t0 = torch.as_tensor(t0, device="cpu")
    t0_value, t0_tensor = one_time("t0", t0)
    # A t0 given as a number or an array is a float64 time, as it was.
    t0 = (
        t0_tensor
        if given_tensor and t0_tensor is not None
        else torch.tensor(t0_value, dtype=torch.float64, device="cpu")
    ).reshape(1)
    largest = torch.finfo(t0.dtype).max if t0.is_floating_point() else math.inf
    t1 = direction_time(t0_value, reverse_time, largest)
    t = torch.cat([t0, torch.tensor([t1], dtype=t0.dtype, device=t0.device)])
    return odeint_interface(func, y0, t, event_fn=event_fn, **kwargs)


TORCHSDE_NAMES = (
    "BaseBrownian",
    "BaseSDE",
    "BrownianInterval",
    "BrownianPath",
    "BrownianTree",
    "ReverseBrownian",
    "SDEIto",
    "SDEStratonovich",
    "brownian_interval_like",
)
"""torchsde's public names besides its solve functions: taken from torchsde as they are
(``local_reg.sdeint`` takes its Brownian motions and SDEs; a Stratonovich SDE is refused there)."""


def __dir__() -> list[str]:
    # What torchdiffeq and torchsde users reach for (completion lists), not the module's helpers.
    return sorted({*__all__, *TORCHSDE_NAMES, *(name for name in globals() if name.startswith("__"))})


if TYPE_CHECKING:
    # torchsde's names __getattr__ serves, for type checkers: a __getattr__ they saw would make every
    # misspelled name from local_reg.compat Any.
    import torchsde

    BaseBrownian = torchsde.BaseBrownian
    BaseSDE = torchsde.BaseSDE
    BrownianInterval = torchsde.BrownianInterval
    BrownianPath = torchsde.BrownianPath
    BrownianTree = torchsde.BrownianTree
    ReverseBrownian = torchsde.ReverseBrownian
    SDEIto = torchsde.SDEIto
    SDEStratonovich = torchsde.SDEStratonovich
    brownian_interval_like = torchsde.brownian_interval_like
else:

    def __getattr__(name: str) -> Any:
        if name in TORCHSDE_NAMES:
            import torchsde  # a dependency; imported on first use, as local_reg.sdeint's default bm does

            return getattr(torchsde, name)
        raise AttributeError(
            f"module 'local_reg.compat' has no attribute {name!r} (it has {__all__} and torchsde's "
            f"{list(TORCHSDE_NAMES)})"
        )


__all__ = ["METHODS", "odeint", "odeint_adjoint", "odeint_dense", "odeint_event", "sdeint", "sdeint_adjoint"]
