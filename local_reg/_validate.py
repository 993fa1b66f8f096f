"""Argument checks shared by every public entry point: each names the argument it rejects."""

from __future__ import annotations

import contextlib
import difflib
import functools
import inspect
import math
import numbers
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import pairwise
from typing import Any, ParamSpec, TypeGuard, TypeVar, overload

import numpy as np
import torch
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake
from torch.autograd import forward_ad

from ._checks import check_bool, type_name
from ._step import rms_norm

_Params = ParamSpec("_Params")
_Result = TypeVar("_Result")


_STEP_CONTROL_SETTINGS = {
    # Other libraries' bounds on the step size, times to land on and controller settings, which here
    # are the controller's: {name: (whose setting it is, PIController's keyword, a remark)}. The
    # closest keyword of a solver would be max_steps (a count) or step_size, a fixed step.
    "max_step": ("scipy's and torchdiffeq's largest step", "max_step", "max_steps= counts steps"),
    "dtmax": ("diffrax's and OrdinaryDiffEq's largest step", "max_step", ""),
    "min_step": ("torchdiffeq's smallest step", "min_step", ""),
    # diffrax forces a step of dtmin by default, as this controller does; OrdinaryDiffEq stops.
    "dtmin": (
        "diffrax's and OrdinaryDiffEq's smallest step",
        "min_step",
        "a step of min_step is then accepted whatever its error, as diffrax's force_dtmin=True; "
        "force_min_step=False raises there instead, as OrdinaryDiffEq's default force_dtmin=false stops",
    ),
    "force_dtmin": ("diffrax's and OrdinaryDiffEq's", "force_min_step", ""),
    "step_ts": ("diffrax's times to end a step on", "step_ts", ""),
    "tstops": ("OrdinaryDiffEq's times to end a step on", "step_ts", ""),
    "step_t": ("torchdiffeq's times to end a step on", "step_ts", ""),
    "jump_ts": ("diffrax's times where the field may jump", "jump_ts", ""),
    "d_discontinuities": ("OrdinaryDiffEq's times where the field may jump", "jump_ts", ""),
    "jump_t": ("torchdiffeq's times where the field may jump", "jump_ts", ""),
    "safety": ("the step-size controller's", "safety", ""),
    "gamma": ("OrdinaryDiffEq's safety factor", "safety", ""),
    "ifactor": ("torchdiffeq's largest step growth", "max_factor", ""),
    "qmax": ("OrdinaryDiffEq's largest step growth", "max_factor", ""),
    "dfactor": ("torchdiffeq's smallest step shrink", "min_factor", ""),
    "qmin": ("OrdinaryDiffEq's smallest step shrink", "min_factor", ""),
    "beta1": ("OrdinaryDiffEq's controller gain", "beta1", ""),
    "beta2": ("OrdinaryDiffEq's controller gain", "beta2", ""),
}


def step_control_spellings(controller: str = "controller=PIController({keyword}=)") -> dict[str, str]:
    """What a solver's :func:`explain_unknown_keywords` (or a model's ``options``) says for the
    step-size settings of other libraries that :class:`local_reg.PIController` takes: each names
    the controller's keyword as ``controller`` writes it."""
    return {
        name: f"{whose}: {controller.format(keyword=keyword)} here" + (f"; {remark}" if remark else "")
        for name, (whose, keyword, remark) in _STEP_CONTROL_SETTINGS.items()
    }


STEP_CONTROL_SPELLINGS = step_control_spellings()
"""The hints of :func:`step_control_spellings` for a solver's keywords."""

DT0_HINT = (
    "diffrax's dt0: step_size= here for its default fixed step (ConstantStepSize), first_step= for an "
    "adaptive solve's first step"
)
"""What the solvers, and a regularized model's ``options``, say of diffrax's ``dt0``: a program
ported from diffrax means a fixed step by it, unless it also passed an adaptive controller."""

THROW_HINT = "diffrax's throw: a failed solve raises local_reg.SolverError here; catch it"
"""What the solvers say of diffrax's ``throw=``: they have no mode that returns a failed result."""

ARGS_HINT = (
    "diffrax's and scipy's args: the functions here take (t, y) only; close over the rest, e.g. with "
    "functools.partial"
)
"""What the solvers say of ``args=``, the extra arguments diffrax and scipy pass to the vector field
(and scipy to its event functions)."""

T_EVAL_HINT = (
    "scipy's output times: the output times are t here, and t[0] is the initial time: "
    "t = [t_span[0], *t_eval] (drop ys[0] if t_eval does not start there)"
)
"""What ``odeint`` and ``sdeint`` say of scipy's ``t_eval``: ``t = t_eval`` alone would start the
solve at ``t_eval[0]``, a different solution where that is not ``t_span[0]``."""

T_SPAN_HINT = "scipy's t_span: t = [t0, t1] here, and y0 comes before it: (func, y0, t)"
"""What ``odeint`` and ``sdeint`` say of scipy's ``t_span`` (scipy's order is ``(fun, t_span, y0)``)."""


def sensealg_hint(gradients: str) -> str:
    """What the solvers and models say of SciMLSensitivity's ``sensealg=``, a Julia port's gradient
    method: ``gradients`` names the ``gradient=`` values the entry point takes."""
    return f"SciMLSensitivity's sensealg: gradient= here, {gradients}"


SENSEALG_HINT = sensealg_hint(
    "e.g. 'interpolating_adjoint' (InterpolatingAdjoint), 'adjoint' (BacksolveAdjoint), 'checkpoint' "
    "or 'symplectic' (docs/gradients.md)"
)
""":func:`sensealg_hint` for an ODE solve on local_reg's solver, which takes every gradient method."""
SDE_SENSEALG_HINT = sensealg_hint("'direct' or 'checkpoint' for an SDE")
""":func:`sensealg_hint` for an SDE solve on local_reg's solver."""


def seed_hint(brownian: str) -> str:
    """What ``sdeint`` and the SDE models say of StochasticDiffEq's ``seed=``: ``brownian`` says
    where a Brownian motion is given instead."""
    return (
        f"a seeded noise: generator=torch.Generator().manual_seed(seed) here, or a Brownian motion {brownian}"
    )


def scipy_jacobian_hints(where: str) -> dict[str, str]:
    """What a solver says of scipy's settings of its implicit methods' Jacobian, none of which
    apply to an explicit method: ``where`` says where a stiff solve goes instead."""
    return {
        name: f"scipy's {name}, for its implicit methods' Jacobian: {where}"
        for name in ("jac", "jac_sparsity", "vectorized", "lband", "uband")
    }


def explain_unknown_keywords(
    foreign: dict[str, str],
) -> Callable[[Callable[_Params, _Result]], Callable[_Params, _Result]]:
    """Refuse a keyword the decorated function does not take with a ``TypeError`` that says what to
    write instead: for another library's spelling (a key of ``foreign``) its entry, else the
    closest keyword the function takes. Python's own message names the keyword only, and a
    torchdiffeq or torchsde user's ``options=`` or ``dt=`` is a different spelling, not a typo."""

    def decorate(function: Callable[_Params, _Result]) -> Callable[_Params, _Result]:
        keywords = keyword_parameters(function)
        known = frozenset(keywords)

        @functools.wraps(function)
        def checked(*args: _Params.args, **kwargs: _Params.kwargs) -> _Result:
            if not known.issuperset(kwargs):
                # The qualified name: a class's __init__ is named as Python's own message names it.
                raise unknown_keywords_error(function.__qualname__, set(kwargs) - known, keywords, foreign)
            return function(*args, **kwargs)

        return checked

    return decorate


def keyword_parameters(function: Callable[..., Any]) -> list[str]:
    """The names ``function`` takes as keywords, in order (through ``functools.wraps`` wrappers)."""
    return [
        name
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
    ]


def unknown_keywords_error(
    function: str, unknown: Iterable[str], keywords: Sequence[str], foreign: dict[str, str]
) -> TypeError:
    """The ``TypeError`` of :func:`explain_unknown_keywords` for the ``unknown`` keywords given to
    ``function``, which takes ``keywords``."""
    reasons = []
    for name in sorted(unknown):
        close = difflib.get_close_matches(name, keywords, n=1)
        hint = foreign.get(name) or (f"did you mean {close[0]!r}?" if close else "")
        reasons.append(f"{name!r}" + (f" ({hint})" if hint else ""))
    arguments = "an unexpected keyword argument" if len(reasons) == 1 else "unexpected keyword arguments"
    return TypeError(f"{function}() got {arguments} {'; '.join(reasons)}")


def check_choice(name: str, value: object, choices: Iterable[str]) -> str:
    """``value`` if it is one of ``choices``, else a ``ValueError`` that names ``name`` and lists them
    (a ``TypeError`` naming its type, for a value that is not a string)."""
    choices = tuple(choices)
    if not isinstance(value, str):
        # The type, not the repr: an object's (a tableau's) may run to a page.
        raise TypeError(f"{name} must be one of {list(choices)}, got {type(value).__name__}")
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {list(choices)}")
    return value


def check_not_meta(name: str, value: Tensor, holds: str) -> None:
    """``ValueError`` if ``value`` is on the meta device, which holds no data (torch's own error
    would come from a copy deep inside the solve)."""
    if value.device.type == "meta":
        raise ValueError(f"{name} is on the meta device, which holds no {holds}")


def real_number(name: str, value: object, expected: str) -> float:
    """``value`` as a float: a real number (numpy's scalars and 0-dim arrays included) or a 0-dim
    real tensor (as torchdiffeq takes its tolerances); anything else, a tensor of several values
    (per-element tolerances) too, is a ``TypeError`` naming ``name``."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]  # numpy's scalar of it
    if isinstance(value, Tensor):
        if value.dim() != 0 or value.is_complex() or value.dtype == torch.bool:
            raise TypeError(
                f"{name} must be {expected}: one real number (a float or a 0-dim tensor), got a "
                f"tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
            )
        check_not_meta(name, value, "value")
        return float(value.detach())
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__}")
    return float_of_real(name, value)


def float_of_real(name: str, value: numbers.Real) -> float:
    """``float(value)``, or a ``ValueError`` naming ``name`` for a Python integer (or fraction)
    beyond the largest float, where ``float`` raises an ``OverflowError`` that names nothing."""
    try:
        return float(value)
    except OverflowError:
        largest = torch.finfo(torch.float64).max
        raise ValueError(f"{name} is too large for a float (its magnitude exceeds {largest:.4g})") from None


def positive_float(name: str, value: object) -> float:
    value = real_number(name, value, "a positive float")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be positive and finite, got {value}")
    return value


def non_negative_float(name: str, value: object) -> float:
    value = real_number(name, value, "a non-negative float")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be non-negative and finite, got {value}")
    return value


def relative_tolerance(name: str, value: object) -> float:
    """``value`` as a relative tolerance: positive and finite, or 0 (a pure absolute tolerance, as
    in torchdiffeq; the absolute tolerance beside it must then be positive)."""
    value = real_number(name, value, "a non-negative float")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(
            f"{name} must be non-negative (0: a pure absolute tolerance) and finite, got {value}"
        )
    return value


Tolerance = float | Tensor | Sequence[float | Tensor]
"""A solve's ``rtol`` or ``atol``: one number, a tensor of per-element tolerances, or (for a tuple
state) one of either per tensor."""


def tolerance(name: str, value: object, *, relative: bool) -> float | Tensor:
    """A solve's ``rtol`` (``relative``: 0 allowed) or ``atol`` (positive): one real number, or a
    tensor of per-element tolerances (any floating dtype, detached; each element checked alike),
    whose shape :func:`per_element_tolerance` checks against the state's."""
    if isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.ndim > 0):
        # Lists are read per tensor of a tuple state (before this); a tensor state's per-element
        # tolerances are a tensor.
        raise TypeError(
            f"{name} must be a number or a tensor of per-element tolerances, got {type(value).__name__} "
            f"(a list gives one tolerance per tensor of a tuple state): pass torch.tensor({name})"
        )
    if isinstance(value, Tensor):
        check_strided(name, value)
    if not (isinstance(value, Tensor) and value.dim() > 0):
        return relative_tolerance(name, value) if relative else positive_float(name, value)
    if not value.is_floating_point():
        raise TypeError(
            f"{name} must be a floating tensor of per-element tolerances, got dtype {value.dtype}"
        )
    value = value.detach()
    bad = ~torch.isfinite(value) | (value < 0 if relative else value <= 0)
    if bool(bad.any()):
        index = tuple(int(i) for i in bad.nonzero()[0])
        kind = "non-negative" if relative else "positive"
        raise ValueError(
            f"{name} must be {kind} and finite in every element, got {value[index].item()} at {index}"
        )
    return value


def atol_too_small(atol: float, dtype: torch.dtype) -> str:
    """The message refusing ``atol`` beside ``rtol = 0`` below ``dtype``'s smallest normal number."""
    tiny = torch.finfo(dtype).tiny
    return (
        f"atol={atol:g} with rtol=0 is below what {dtype} holds as a normal number ({tiny:.3g}): "
        "the scaled error would overflow; raise atol"
    )


def absolute_tolerance_for(atol: float, rtol: float, dtype: torch.dtype) -> float:
    """``atol`` for a state of ``dtype``: one below the dtype's smallest normal number is refused
    beside ``rtol = 0`` (the scaled error would overflow) and raised to it beside ``rtol > 0``
    (``rtol * |y|`` keeps the scale, but an element at exactly 0 would get a zero one)."""
    tiny = torch.finfo(dtype).tiny
    if atol >= tiny:
        return atol
    if rtol == 0:
        raise ValueError(atol_too_small(atol, dtype))
    return tiny


def check_step_penalty(step_penalty: object) -> None:
    """A ``TypeError`` naming ``step_penalty`` unless it is callable or ``None``."""
    if step_penalty is not None and not callable(step_penalty):
        raise TypeError(
            "step_penalty must be callable as penalty(step_result, dt) -> 0-dim tensor, or None, "
            f"got {type_name(step_penalty)}"
        )


def check_penalty_time_gradient(step_penalty: object, times: str) -> None:
    """A ``ValueError`` where a ``step_penalty`` meets ``times`` that require grad: the penalties are
    sums over steps whose sizes are numbers and whose ends are not on the graph, so the gradient
    they would pass to the times is wrong (only the start state's share), not merely missing."""
    if step_penalty is not None:
        raise ValueError(
            f"{times} requires grad beside a step_penalty: the penalties' steps are taken at fixed "
            "sizes, so no correct gradient reaches the times through them (the regularized models "
            "refuse such times too); pass detached times (t.detach(), or each 0-dim tensor's), or "
            "solve twice (the penalty with detached times, the outputs with these)"
        )


def check_adaptive_settings_unset(step_size: object, settings: dict[str, object]) -> None:
    """A ``ValueError`` naming the settings of the adaptive steps (``first_step``, ``controller``,
    ``norm``: those of ``settings``, by name, not ``None``) beside a fixed ``step_size``, which
    replaces those steps and leaves the settings unread."""
    if step_size is None:
        return
    given = [name for name, value in settings.items() if value is not None]
    if given:
        names = given[0] if len(given) == 1 else f"{', '.join(given[:-1])} and {given[-1]}"
        raise ValueError(
            f"{names} would go unread beside a fixed step_size={step_size!r} (adaptive steps, an "
            "error estimate or an adaptive backward solve read them): pass one or the other"
        )


def step_tolerances(rtol: object, atol: object, dtype: torch.dtype) -> tuple[float, float]:
    """``(rtol, atol)`` of the one-step functions, checked by name as ``odeint`` checks its own, with
    ``atol`` as :func:`absolute_tolerance_for` ``dtype`` makes it."""
    rtol = relative_tolerance("rtol", rtol)
    return rtol, absolute_tolerance_for(positive_float("atol", atol), rtol, dtype)


@overload
def per_element_tolerance(
    name: str, value: Tensor, shape: torch.Size, device: torch.device, *, what: str = ...
) -> Tensor: ...
@overload
def per_element_tolerance(
    name: str, value: float | Tensor, shape: torch.Size, device: torch.device, *, what: str = ...
) -> float | Tensor: ...
def per_element_tolerance(
    name: str,
    value: float | Tensor,
    shape: torch.Size,
    device: torch.device,
    *,
    what: str = "the state's shape",
) -> float | Tensor:
    """``value`` unchanged if one number; a tensor of per-element tolerances broadcast to ``shape``
    (a ``ValueError`` naming ``name`` and ``what`` that shape is unless it broadcasts without
    growing it) in float64 on ``device`` (the solve casts it to the state's dtype)."""
    if not isinstance(value, Tensor):
        return value
    try:
        broadcast = torch.broadcast_shapes(value.shape, shape)
    except RuntimeError:
        broadcast = None
    if broadcast != shape:
        raise ValueError(
            f"{name} of shape {tuple(value.shape)} does not broadcast to {what} {tuple(shape)}: "
            "per-element tolerances need a shape that does"
        )
    return value.to(device=device, dtype=torch.float64).expand(shape).contiguous()


def check_generator(generator: object) -> None:
    """``TypeError`` unless ``generator`` is a ``torch.Generator`` or ``None``."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


def generator_device(generator: torch.Generator | None) -> torch.device:
    """Where a draw from ``generator`` is made: its device, or for ``None`` (torch's global CPU
    generator) the CPU, whatever the default device (``torch.set_default_device``), whose tensors a
    CPU generator cannot fill: what the library draws for itself does not depend on it."""
    return torch.device("cpu") if generator is None else generator.device


def _time_value(name: str, value: object) -> float:
    """One time of ``name`` as a float; a string, a bool or a complex number is not a time."""
    if isinstance(value, Tensor) and value.dim() == 0:
        if value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{name} must hold real numbers, got a tensor of dtype {value.dtype}")
        return float(value.detach())
    if isinstance(value, Tensor):
        raise TypeError(
            f"{name} must hold real numbers or 0-dim tensors, got a tensor of shape {tuple(value.shape)}: "
            f"pass one 1-D tensor, or index each time ({name}[i] rather than {name}[i:i+1])"
        )
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must hold real numbers, got an element of type {type(value).__name__}")
    return float_of_real(name, value)


def host_list(t: Tensor) -> Any:
    """``t``'s values as Python numbers (``tolist``), also for a tensor made inside a ``torch.func``
    transform's function, which torch 2.9 cannot read there ("a Tensor that doesn't have storage";
    2.13 can): read with the transforms' dispatch off, as the values are the same. A tensor of a
    subclass that dispatches in Python (``LoggingTensor``, ``TwoTensor``), which ``tolist`` refuses,
    is read one element at a time through its own dispatch."""
    with torch._C._DisableFuncTorch():
        values = t.detach().cpu()
        if not torch._C._dispatch_keys(values).has(torch._C.DispatchKey.Python):
            return values.tolist()
        if values.dim() == 0:
            return values.item()
        return [host_list(row) for row in values]


def finite_times(
    name: str, t: Tensor | np.ndarray | Sequence[float | Tensor], output_times: bool = False
) -> list[float]:
    """The finite times of ``name`` as Python floats, in their order: a 1-D real tensor, a 1-D real
    numpy array, or a sequence of real numbers (or 0-dim tensors). A string is refused although it
    is a sequence: ``"12"`` is not two times. ``output_times``: ``t`` holds a solve's output times,
    whose 2-D form (one row per sample) the message explains."""
    if isinstance(t, (str, bytes)):
        raise TypeError(
            f"{name} must be a 1-D tensor, numpy array or sequence of floats, got {type(t).__name__}"
        )
    if isinstance(t, Tensor):
        if t.dim() != 1:
            raise _not_one_dimensional(name, "tensor", tuple(t.shape), output_times)
        check_time_tensor(name, t)
        times = [float(v) for v in host_list(t)]
    elif isinstance(t, np.ndarray):
        if t.ndim != 1:
            raise _not_one_dimensional(name, "array", t.shape, output_times)
        if t.dtype.kind not in "fiu":
            raise TypeError(f"{name} must be a real array, got dtype {t.dtype}")
        times = [float(v) for v in t.tolist()]
    elif isinstance(t, Sequence):
        times = [_time_value(name, v) for v in t]
    else:
        raise TypeError(
            f"{name} must be a 1-D tensor, numpy array or sequence of floats, got {type(t).__name__}"
        )
    if not all(math.isfinite(v) for v in times):
        raise ValueError(f"{name} must be finite")
    return times


def _not_one_dimensional(name: str, kind: str, shape: tuple[int, ...], output_times: bool) -> ValueError:
    message = f"{name} must be a 1-D {kind} of times, got shape {shape}"
    if output_times and len(shape) == 2:
        # torchode's t_eval holds a row of output times per sample; a solve here has one set.
        message += (
            ": per-sample output times (a row per sample, as torchode's t_eval) are not supported; "
            "solve at the sorted union of the rows' times (torch.unique) and index each sample's "
            "times in the outputs, or solve each group of samples that shares its times separately"
        )
    return ValueError(message)


def check_time_tensor(name: str, t: Tensor) -> None:
    """A tensor of times must be real, dense and hold values (not on the meta device): a
    ``TypeError`` / ``ValueError`` naming ``name``, not torch's error from reading it."""
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must be a real tensor, got dtype {t.dtype}")
    check_strided(name, t)
    check_not_meta(name, t, "times")


def validate_times(
    t: Tensor | np.ndarray | Sequence[float | Tensor], name: str = "t", increasing_only: bool = False
) -> list[float]:
    """Output times as Python floats (:func:`finite_times`); ``t`` must hold at least one and be
    strictly increasing or decreasing. ``name``: how the messages name ``t``; ``increasing_only``:
    the caller refuses decreasing times itself (an SDE's), so a message does not offer them."""
    times = finite_times(name, t, output_times=True)
    if len(times) == 0:
        raise ValueError(f"{name} must hold at least one time")
    diffs = [b - a for a, b in pairwise(times)]
    if not (all(d > 0 for d in diffs) or all(d < 0 for d in diffs)):
        repeated = next((a for a, b in pairwise(times) if a == b), None)
        where = "" if repeated is None else f": it holds {repeated!r} twice"
        if repeated is not None and _holds_integers(t):
            where += " as a float (integers beyond 2**53 round to one float: shift them, e.g. t - t[0])"
        directions = "increasing" if increasing_only else "increasing or strictly decreasing"
        raise ValueError(f"{name} must be strictly {directions}{where}")
    return times


def _holds_integers(t: object) -> bool:
    """Whether the times ``t`` were given as integers (a tensor or array of an integer dtype, or
    Python or numpy integers in a sequence)."""
    if isinstance(t, Tensor):
        return not t.is_floating_point()
    if isinstance(t, np.ndarray):
        return t.dtype.kind in "iu"
    return isinstance(t, Sequence) and any(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in t
    )


def time_direction(times: Sequence[float]) -> float:
    """``1.0`` if the monotone ``times`` increase (or are one time), ``-1.0`` if they decrease."""
    return 1.0 if times[-1] >= times[0] else -1.0


def time_tensors_requiring_grad(t: object) -> list[Tensor]:
    """The tensors of ``t`` (itself, or the 0-dim tensors of a sequence) that require grad."""
    if isinstance(t, Tensor):
        return [t] if t.requires_grad else []
    if isinstance(t, Sequence) and not isinstance(t, str):
        return [v for v in t if isinstance(v, Tensor) and v.requires_grad]
    return []


def time_dtype(t: object, state: Tensor) -> torch.dtype:
    """The dtype the vector field gets its time argument in: that of a floating tensor ``t`` where
    it is wider than the state's (a float64 ``t`` with a float32 state keeps its precision), else
    the state's (times given as a sequence or a numpy array, or narrower than the state)."""
    if isinstance(t, Tensor) and t.is_floating_point():
        return torch.promote_types(t.dtype, state.dtype)
    return state.dtype


def check_times_distinct(
    times: list[float],
    dtype: torch.dtype,
    remedy: str = "(y0's, unless t is a wider floating tensor): pass t as a float64 tensor",
) -> None:
    """``times`` (strictly monotone as floats) must stay so in ``dtype``, the dtype ``func`` gets its
    time argument in: a float32 state with times ``[1e8, 1e8 + 1]`` given as a list would otherwise
    solve with both ends at ``1e8`` for ``func`` and in ``ts``, a silently wrong answer. ``remedy``
    ends the message."""
    if dtype == torch.float64:
        return
    rounded = rounded_list(times, dtype)
    for (a, b), (ra, rb) in zip(pairwise(times), pairwise(rounded), strict=True):
        if ra == rb:
            raise ValueError(
                f"t's times {a!r} and {b!r} are one value in {dtype}, the dtype func gets the time "
                f"in {remedy}"
            )


def longest_step(dtype: torch.dtype, tableau: Any = None) -> float:
    """The longest step the state's arithmetic in ``dtype`` takes: a step times each of the
    ``tableau``'s coefficients (up to 12.9 in tsit5) and nodes must stay below the dtype's largest
    value, with a factor 2 to spare; without a tableau, a margin of ``2**-10`` for any of them."""
    if tableau is None:
        return torch.finfo(dtype).max * 2.0**-10
    rows = [*tableau.a, tableau.b, tableau.error_weights or (), tableau.c]
    coefficient = max([1.0, *(abs(float(x)) for row in rows for x in row)])
    return torch.finfo(dtype).max / (2.0 * coefficient)


def check_span(
    times: list[float], dtype: torch.dtype, step_size: float | None = None, tableau: Any = None
) -> None:
    """A ``ValueError`` naming ``t`` if its span exceeds ``dtype``'s largest value, or if the longest
    step it may take (the span, or a fixed ``step_size`` shorter than it) exceeds :func:`longest_step`:
    a step that long cannot enter the state's arithmetic, which torch reports as a bare conversion
    error."""
    span = abs(times[-1] - times[0])
    largest = longest_step(dtype, tableau)
    longest = span if step_size is None else min(span, step_size)
    if span > torch.finfo(dtype).max or longest > largest:
        beyond = span > torch.finfo(dtype).max
        what = f"t spans {span:g}" if beyond or longest == span else f"step_size={longest:g}"
        raise ValueError(
            f"{what}: too long for steps in {dtype} (the state's dtype: its steps times the tableau's "
            f"coefficients must stay below its largest value, so steps up to {largest:.3g}): rescale time"
        )


SUPPORTED_DTYPES = (torch.float32, torch.float64)
"""The state dtypes the solvers integrate in. Half precision (float16, bfloat16) is refused: its
~3 significant digits cannot resolve the default tolerances, and its step increments round to zero
(a solve then "accepts" thousands of steps that do not move the state)."""


def transformed(value: object) -> TypeGuard[Tensor]:
    """Whether ``value`` is a tensor wrapped by a ``torch.func`` transform (vmap, grad), whose values
    cannot be read outside it, nor on the host inside it."""
    return isinstance(value, Tensor) and torch._C._functorch.is_functorch_wrapped_tensor(value)


def batched_cotangent(value: object) -> TypeGuard[Tensor]:
    """Whether ``value`` is one of the batched cotangents that ``torch.autograd.grad(...,
    is_grads_batched=True)`` and ``torch.autograd.functional.jacobian(..., vectorize=True)`` pass
    through a backward pass (torch's older vmap): like a transformed tensor, not readable."""
    return isinstance(value, Tensor) and torch._C._functorch.is_legacy_batchedtensor(value)


def _transform_levels(value: object) -> Iterator[Tensor]:
    """``value`` at each level of the ``torch.func`` transforms that wrap it, outermost first."""
    functorch = torch._C._functorch
    while transformed(value):
        yield value
        value = functorch.get_unwrapped(value)


def _batched(value: object) -> bool:
    """Whether ``value`` is batched by a ``torch.func.vmap`` at any of its transforms' levels (under
    ``jacfwd`` the tangents are batched, not the values)."""
    return any(torch._C._functorch.is_batchedtensor(level) for level in _transform_levels(value))


def _differentiated(value: object) -> bool:
    """Whether a ``torch.func`` transform differentiates ``value`` at any of its levels: it requires
    grad there (``grad``, ``jacrev``) or carries a tangent (``jvp``, ``jacfwd``). A tensor made
    inside the transformed function is wrapped too, but carries neither."""
    return any(
        level.requires_grad or torch.autograd.forward_ad.unpack_dual(level).tangent is not None
        for level in _transform_levels(value)
    )


def refuse_tracing(entry: str) -> None:
    """A ``RuntimeError`` naming ``entry`` under ``torch.jit.trace`` or ``torch.export``: a solve's
    checks and step-size control read the state's values, which a trace keeps as one input's
    constants (other inputs then get that input's steps and output times: wrong values, NaN) and
    export cannot guard on."""
    if torch.jit.is_tracing():
        raise RuntimeError(
            f"{entry} cannot be traced by torch.jit.trace: its steps depend on the state's values, and "
            "the trace would keep one input's step sizes and output times as constants (other inputs "
            "get wrong values): run it eagerly, or compile the vector field (torch.compile)"
        )
    if torch.compiler.is_exporting():
        raise RuntimeError(
            f"{entry} cannot be exported by torch.export: its checks and step-size control read the "
            "state's values: export the vector field alone and solve with it eagerly"
        )


def check_function_transforms(
    entry: str,
    gradient: str | None = None,
    t: object = None,
    y0: object = None,
    differentiable: bool = True,
) -> None:
    """Refuse, naming the way that works, what ``torch.func`` transforms cannot run through ``entry``
    (instead of torch's internal errors from deep inside the solve).

    ``vmap`` of ``y0`` or ``t``: an adaptive solve decides from the state's values (whether a step
    is accepted, how long the next one is), which a batched tensor cannot answer. ``grad``,
    ``jacrev``, ``jacfwd`` and ``hessian`` differentiate the recorded steps (``gradient="direct"``)
    but not the other gradient methods' ``torch.autograd.Function`` s, nor the output times: both
    are ``torch.autograd``'s (``loss.backward()``, ``torch.autograd.grad``).
    ``differentiable=False``: ``entry`` runs under none of them (an event's time is located and
    differentiated by its own rules).

    Forward-mode AD (``torch.autograd.forward_ad``) of a dual ``y0`` runs through ``"direct"`` only,
    as ``jacfwd`` does: the other methods' ``torch.autograd.Function`` s have no ``jvp``. A dual
    ``t`` runs through none (the solve reads the times as floats; its tangent would be dropped).
    ``torch.jit.trace`` and ``torch.export`` are refused too (:func:`refuse_tracing`)."""
    refuse_tracing(entry)
    stack = torch._C._functorch.get_interpreter_stack()
    if not stack:  # torch.autograd's forward mode (jacfwd's tangents are judged below, as its own)
        if carries_tangent(t):
            raise ValueError(
                f"{entry}: t carries forward-mode tangents (torch.autograd.forward_ad), which {entry} "
                "cannot differentiate (it reads the times as floats); differentiate with respect to t "
                "with torch.autograd (t.requires_grad_(), loss.backward())"
            )
        if carries_tangent(y0) and ((gradient is not None and gradient != "direct") or not differentiable):
            how = f"with gradient={gradient!r}" if differentiable else "at all"
            raise ValueError(
                f"{entry}: y0 carries forward-mode tangents (torch.autograd.forward_ad), which {entry} "
                f"cannot differentiate {how}: forward mode runs through gradient='direct' only; or "
                "differentiate with torch.autograd (loss.backward(), torch.autograd.grad)"
            )
        return
    if not differentiable:
        raise ValueError(
            f"{entry} cannot run under torch.func transforms (vmap, grad, jacrev, jacfwd): differentiate it "
            "with torch.autograd (loss.backward(), torch.autograd.grad)"
        )
    if _batched(y0) or _batched(t):
        raise ValueError(
            f"{entry} cannot run under torch.func.vmap: the adaptive solver decides from the state's "
            "values (accept a step or not, how long the next), which a batched tensor cannot answer; "
            "solve the batch as one state instead (y0 with a batch dimension)"
        )
    if gradient is not None and gradient != "direct":
        raise ValueError(
            f"{entry} with gradient={gradient!r} cannot run under torch.func transforms (grad, jacrev, "
            "jacfwd, hessian): they differentiate gradient='direct' only; differentiate the other gradient "
            "methods with torch.autograd (loss.backward(), torch.autograd.grad)"
        )
    if _differentiated(t):
        raise ValueError(
            f"{entry}: t is differentiated by a torch.func transform, which the output times' gradient does "
            "not support; differentiate with respect to t with torch.autograd (t.requires_grad_())"
        )


def check_params_not_dual(gradient: str, params: Sequence[Tensor]) -> None:
    """A ``ValueError`` where one of ``params`` (the tensors a graph-free gradient method
    differentiates, ``adjoint_params``, whether they require grad or not) carries a forward-mode
    tangent: that method's ``torch.autograd.Function`` has no ``jvp``, so the tangent would
    silently be dropped."""
    if any(carries_tangent(param) for param in params):
        raise ValueError(
            "adjoint_params carry forward-mode tangents (torch.autograd.forward_ad), which "
            f"gradient={gradient!r} would drop: forward mode runs through gradient='direct' only; or "
            "differentiate with torch.autograd (loss.backward(), torch.autograd.grad)"
        )


def refuse_captured_tangents(gradient: str, first: Sequence[Tensor], name: str = "func") -> None:
    """A ``ValueError`` where ``first`` (a graph-free method's first evaluations of ``name``)
    carries a forward-mode tangent although ``y0``, ``t`` and ``adjoint_params`` carry none (they
    were judged before): ``name`` uses a dual tensor of its own, whose tangent the method's
    ``torch.autograd.Function`` (no ``jvp``) would drop, silently."""
    if carries_tangent(list(first)):
        raise ValueError(
            f"{name} uses a tensor carrying forward-mode tangents (torch.autograd.forward_ad) that is "
            f"neither y0 nor in adjoint_params, whose tangent gradient={gradient!r} would drop: forward "
            "mode runs through gradient='direct' only; or differentiate with torch.autograd"
        )


def carries_tangent(value: object) -> bool:
    """Whether ``value`` (a tensor, or a sequence holding tensors) carries a forward-mode tangent."""
    values = value if isinstance(value, (list, tuple)) else [value]
    return any(isinstance(v, Tensor) and forward_ad.unpack_dual(v).tangent is not None for v in values)


def check_strided(name: str, value: Tensor, returned: bool = False) -> None:
    """``TypeError`` unless ``value`` is a dense (strided) tensor: a sparse one has little of the
    arithmetic a solve does (torch's own error would name an operator, not ``name``).
    ``returned``: ``name`` is a function whose output ``value`` is."""
    if value.is_nested:
        # A nested tensor of the default layout reports torch.strided: named here, not by an
        # operator it lacks.
        if returned:
            raise TypeError(f"{name} returned a nested tensor: return one padded tensor")
        raise TypeError(
            f"{name} must be a dense tensor, got a nested tensor: pass one padded tensor "
            "(torch.nested.to_padded_tensor)"
        )
    if not returned and not torch.compiler.is_compiling() and is_fake(value):
        raise TypeError(
            f"{name} must be a tensor with values, got a FakeTensor (FakeTensorMode): a solve reads "
            "the state's and the times' values (its checks, its step sizes), which a fake tensor does "
            "not hold; estimate with one call of the vector field"
        )
    if isinstance(value, torch.masked.MaskedTensor):
        what = f"{name} returned" if returned else f"{name} must be a plain tensor, got"
        raise TypeError(
            f"{what} a MaskedTensor, whose masked elements a solve has no arithmetic for: "
            "fill them (value.get_data() where the mask is set, a fill value elsewhere)"
        )
    if value.layout != torch.strided:
        if returned:
            raise TypeError(f"{name} returned a {value.layout} tensor: return a dense one (.to_dense())")
        raise TypeError(f"{name} must be a dense tensor, got layout {value.layout}: pass {name}.to_dense()")


def validate_state(y0: object, name: str = "y0", *, finite: bool = True) -> Tensor:
    """``y0`` if it is a state a solver can integrate: a dense float32/float64 tensor with values
    (``TypeError``/``ValueError`` naming ``name`` otherwise) and, with ``finite``, no non-finite
    entry (:func:`check_finite_state`; left out by a caller whose solver checks it next)."""
    if not isinstance(y0, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(y0).__name__}")
    check_strided(name, y0)
    if y0.dtype not in SUPPORTED_DTYPES:
        if y0.dtype in (torch.float16, torch.bfloat16):
            hint = (
                "half precision cannot resolve the solver's tolerances; integrate in float32 (y0.float() "
                "and a float32 func) and cast back"
            )
        elif y0.is_complex():
            hint = (
                "odeint (and local_reg.compat) solve a complex y0, the regularized modules and sdeint "
                "do not: solve torch.view_as_real(y0) as a real state"
            )
        else:
            hint = f"convert it, e.g. {name}.float()"
        raise TypeError(f"{name} must have a floating dtype (float32 or float64), got {y0.dtype}: {hint}")
    check_not_meta(name, y0, "values to integrate")
    if finite:
        check_finite_state(name, y0)
    return y0


def check_finite_state(name: str, y0: Tensor) -> None:
    """A ``ValueError`` naming the first non-finite entry of ``y0`` (real or complex) by its index:
    a NaN state with a finite derivative makes every step size NaN, so it is refused before the
    first step. A state batched by ``torch.func.vmap`` cannot be read: not checked (the solvers
    refuse ``vmap`` themselves; a single :func:`local_reg.step` runs under it)."""
    if _batched(y0):
        return
    # One reduction over the mask where all is well (every solve); the index only for the message.
    if not bool(torch.isfinite(y0.detach()).all()):
        non_finite = ~torch.isfinite(y0.detach())
        first = tuple(int(i) for i in non_finite.nonzero()[0])
        raise ValueError(
            f"{name} must be finite, got {int(non_finite.sum())} non-finite entries "
            f"(the first at index {first}: {y0[first].item()})"
        )


def check_output(
    name: str,
    value: object,
    like: Tensor,
    shape: tuple[int, ...] | None = None,
    returned: bool = True,
    like_name: str = "y0",
) -> Tensor:
    """``value`` if it is a tensor of ``like``'s dtype and device and of ``shape`` (default
    ``like``'s): ``TypeError`` for another type or dtype, ``ValueError`` for another shape or device.
    ``returned``: ``name`` is a function whose output ``value`` is; else an argument given as such.
    ``like_name``: how the messages name ``like``."""
    if (
        returned
        and type(value) is Tensor
        and not value.is_nested
        and value.layout == torch.strided
        and value.dtype == like.dtype
        and value.shape == (like.shape if shape is None else shape)
        and value.device == like.device
    ):
        # What every call of a vector field returns, checked in one expression: a plain dense tensor
        # that each check below would pass (a subclass, a masked or fake one, goes through them).
        return value
    got = "returned" if returned else "has"
    if not isinstance(value, Tensor):
        raise TypeError(
            f"{name} must {'return' if returned else 'be'} a torch.Tensor, got {type(value).__name__}"
        )
    check_strided(name, value, returned)
    if value.dtype != like.dtype:
        raise TypeError(f"{name} {got} dtype {value.dtype}, expected the dtype of {like_name} {like.dtype}")
    expected = tuple(like.shape) if shape is None else tuple(shape)
    if tuple(value.shape) != expected:
        source = f"{like_name}'s shape" if shape is None else f"{like_name}'s shape and the noise type"
        raise ValueError(f"{name} {got} shape {tuple(value.shape)}, expected {expected} (from {source})")
    if value.device != like.device:
        raise ValueError(
            f"{name} {got} a tensor on {value.device}, expected {like_name}'s device {like.device}"
        )
    return value


def check_field_callable(func: object, name: str = "func") -> None:
    """A ``TypeError`` naming ``name`` unless ``func`` is callable as ``func(t, y)``: a module's class
    (callable, as its constructor) is named, with the instance to pass."""
    if isinstance(func, type) and issubclass(func, torch.nn.Module):
        raise TypeError(
            f"{name} must be a vector field, got the class {func.__name__}: pass an instance, "
            f"{func.__name__}(...)"
        )
    if not callable(func):
        raise TypeError(f"{name} must be callable as {name}(t, y), got {type(func).__name__}")
    from .regularization._module import Regularized  # the library's own models: a cycle at import

    if isinstance(func, Regularized):
        # Its forward(y0, t) is callable as func(t, y): solved, it would take the solve's times for
        # its state and the state for its times, and return another problem's solution.
        raise TypeError(
            f"{name} is a regularized model ({type(func).__name__}), which solves (y0, t) rather than "
            f"being a vector field {name}(t, y): pass its field, {name}.func"
        )


class CheckedField:
    """``func(t, y)`` with its output checked on every call (:func:`check_output`).

    The solvers call ``func`` at states of ``y0``'s shape and dtype, so a later call that returns
    another shape (even a broadcastable one) or dtype (which would silently promote the solution)
    is an error, not a wrong number, as is a ``func`` that changes its input in place. The check reads
    metadata only (no copy, no device
    synchronisation) and returns ``func``'s own tensor, so values, gradients and call counts are
    unchanged. The gradient methods' backward passes call the same wrapper.

    Mixed precision: the ``torch.autocast`` regions active when the wrapper is made (the solve's
    call) are the ones ``func`` runs under on every call, the backward passes' re-evaluations
    included (as ``torch.amp.custom_bwd`` restores them), and an output in an autocast dtype is cast
    back to the state's. The solver's own arithmetic runs without autocast (:func:`without_autocast`).
    """

    def __init__(
        self, func: Callable[[Tensor, Tensor], Tensor], name: str = "func", state_name: str = "y0"
    ) -> None:
        check_field_callable(func, name)
        self.func = func
        self.name = name
        self.state_name = state_name  # how the messages name the state the output must match
        self.autocast = active_autocast()
        self.fresh = FreshOutputs(name)

    def __call__(self, t: Tensor, y: Tensor) -> Tensor:
        return checked_call(self.name, self.autocast, self.func, t, y, self.fresh, self.state_name)


def checked_call(
    name: str,
    regions: tuple[tuple[str, torch.dtype], ...],
    func: Callable[[Tensor, Tensor], Any],
    t: Tensor,
    y: Tensor,
    fresh: FreshOutputs,
    like_name: str = "y0",
) -> Tensor:
    """``func(t, y)`` as :class:`CheckedField` calls it: :func:`call_leaving_input`, its output
    checked like ``y`` (:func:`check_output`, ``like_name`` naming ``y``) and by ``fresh``. Asks once
    whether ``torch.compile`` traces, where the two watches of version counters each asked."""
    if torch.compiler.is_compiling():
        return check_output(name, call_under_autocast(regions, func, t, y), y, like_name=like_name)
    return fresh.check(check_output(name, watched_call(name, regions, func, t, y), y, like_name=like_name))


class FreshOutputs:
    """Refuses a function that writes into the tensor it returned on its previous call (an output
    buffer reused between calls: ``out.copy_(...); return out``, ``torch.matmul(..., out=out)``;
    two buffers used in turn are not seen). The solvers keep
    each output (a Runge--Kutta stage, the first stage of the next step, dense output's stages), so
    a reused buffer would silently replace the earlier stages by the latest. Detected by the
    previous output's version counter, which an in-place write advances; a buffer written without
    it (``.data``, a numpy array under ``torch.from_numpy``) is not seen. Holds the previous output
    by a weak reference, so it keeps no tensor alive; metadata only."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.previous: weakref.ref[Tensor] | None = None
        self.version = 0

    def __call__(self, output: Tensor) -> Tensor:
        # While torch.compile traces, the version counters do not follow the eager ones.
        return output if torch.compiler.is_compiling() else self.check(output)

    def check(self, output: Tensor) -> Tensor:
        """:meth:`__call__` where ``torch.compile`` is known not to trace."""
        earlier = None if self.previous is None else self.previous()
        if earlier is not None and earlier._version != self.version:
            raise ValueError(
                f"{self.name} changed a tensor it returned earlier in place (an output buffer reused "
                "between calls?): the solver keeps each output, so return a new tensor on every "
                "call (e.g. out.clone())"
            )
        if output.is_inference():
            # It keeps no version counter: a later write into it is not checked, and goes unseen.
            self.previous = None
        else:
            self.previous, self.version = weakref.ref(output), output._version
        return output

    def __getstate__(self) -> dict[str, Any]:
        # A weak reference cannot be pickled or copied; the copy starts afresh.
        return {"name": self.name, "previous": None, "version": 0}


def call_leaving_input(
    name: str,
    regions: tuple[tuple[str, torch.dtype], ...],
    func: Callable[[Tensor, Tensor], Any],
    t: Tensor,
    y: Tensor,
) -> Any:
    """``func(t, y)`` under the autocast ``regions`` (:func:`call_under_autocast`); a ``ValueError``
    naming ``name`` if it changed ``y`` in place: the solvers reuse ``y`` (a step's start, a stage
    state) after the call, so a changed one would silently give wrong states."""
    if torch.compiler.is_compiling():
        return call_under_autocast(regions, func, t, y)
    return watched_call(name, regions, func, t, y)


def watched_call(
    name: str,
    regions: tuple[tuple[str, torch.dtype], ...],
    func: Callable[[Tensor, Tensor], Any],
    t: Tensor,
    y: Tensor,
) -> Any:
    """:func:`call_leaving_input` where ``torch.compile`` is known not to trace."""
    if y.is_inference():
        # Inference tensors keep no version counter: a change in place is not checked, and goes
        # unseen (docs/solver.md).
        return call_under_autocast(regions, func, t, y)
    version = y._version
    value = func(t, y) if not regions else call_under_autocast(regions, func, t, y)
    if y._version != version:
        raise ValueError(f"{name} modified its input y in place; compute on a copy or out of place instead")
    return value


_AUTOCAST_DEVICES = ("cpu", "cuda")


def active_autocast() -> tuple[tuple[str, torch.dtype], ...]:
    """``(device_type, dtype)`` of each ``torch.autocast`` region active here."""
    return tuple(
        (device_type, torch.get_autocast_dtype(device_type))
        for device_type in _AUTOCAST_DEVICES
        if torch.is_autocast_enabled(device_type)
    )


def call_under_autocast(
    regions: tuple[tuple[str, torch.dtype], ...], func: Callable[[Tensor, Tensor], Any], t: Tensor, y: Tensor
) -> Any:
    """``func(t, y)`` under the autocast ``regions`` (:func:`active_autocast`, captured when the solve
    began), an output in one of their dtypes cast back to ``y``'s (as torchdiffeq's and torchsde's
    solvers promote it); without regions, ``func(t, y)`` itself."""
    if not regions:
        return func(t, y)
    # Plain nested with-statements (at most one region per device type): torch.compile traces
    # them, where an ExitStack of regions breaks its graph.
    (device_type, dtype), *other = regions
    with torch.autocast(device_type, dtype=dtype):
        if other:
            ((other_type, other_dtype),) = other
            with torch.autocast(other_type, dtype=other_dtype):
                value = func(t, y)
        else:
            value = func(t, y)
    return cast_back_from_autocast(value, y, regions)


def cast_back_from_autocast(
    value: Any, y: Tensor, regions: tuple[tuple[str, torch.dtype], ...] | None = None
) -> Any:
    """``value`` (``func``'s output at ``y``), cast to ``y``'s dtype where it is a tensor in the
    dtype of one of the autocast ``regions`` (by default those active now, read only for an output
    in another dtype than ``y``'s), as torchdiffeq's and torchsde's solvers promote it; else as
    it is (another dtype is refused by the output check). A complex state's ``complex32`` output is
    float16's counterpart (``torch.complex`` of two float16 parts)."""
    if not isinstance(value, Tensor) or value.dtype == y.dtype:
        return value
    lowered = {dtype for _, dtype in (active_autocast() if regions is None else regions)}
    half_complex = value.dtype == torch.complex32 and torch.float16 in lowered and y.is_complex()
    if value.dtype in lowered or half_complex:
        return value.to(y.dtype)
    return value


def without_autocast() -> contextlib.AbstractContextManager:
    """A context without the ``torch.autocast`` regions active here, for the solver's own
    arithmetic: the Runge--Kutta combinations and dense output are matrix products, which autocast
    would run in half precision. A :class:`CheckedField` re-enters its own regions for ``func``."""
    active = active_autocast()
    if not active:
        return contextlib.nullcontext()
    regions = contextlib.ExitStack()
    for device_type, _ in active:
        regions.enter_context(torch.autocast(device_type, enabled=False))
    return regions


_Hooks = dict[int, Callable[[Tensor], Tensor | None]]
"""A tensor's gradient hooks (its ``_backward_hooks``) by handle id."""


def _passed_through(grad: Tensor) -> None:
    """A held-back hook's stand-in: the gradient unchanged."""


@contextlib.contextmanager
def gradient_hooks_held_back(tensors: Iterable[Tensor]) -> Iterator[None]:
    """The gradient hooks (``Tensor.register_hook``: a per-parameter clip, a scale, a multi-gradient
    hook) of ``tensors`` held back while a graph-free backward pass differentiates with respect to
    them step by step, which would run them on each step's part of the gradient (a doubling hook
    gave 4x); put back when the context ends, they run once on the whole gradient, where the
    backward pass reaches the tensor. Each hook's entry in the tensor's own hook dictionary (which
    torch reads on each call, for a non-leaf tensor through its ``grad_fn``) passes the gradient
    through meanwhile: a hook removed by its handle meanwhile stays removed, one registered
    meanwhile stays. A non-leaf tensor that retains its gradient gets back the ``.grad`` it had (the
    steps' parts would add to it). Another thread's backward pass through these tensors meanwhile
    runs without their hooks."""
    held: list[tuple[_Hooks, _Hooks]] = []
    retained: list[tuple[Tensor, Tensor | None]] = []
    for tensor in tensors:
        hooks: _Hooks | None = tensor._backward_hooks
        if hooks:
            kept = {key: hook for key, hook in hooks.items() if hook is not _passed_through}
            hooks.update(dict.fromkeys(kept, _passed_through))
            held.append((hooks, kept))
        if not tensor.is_leaf and tensor.retains_grad:
            retained.append((tensor, tensor.grad))
    try:
        yield
    finally:
        for current, kept in held:
            current.update({key: hook for key, hook in kept.items() if key in current})
        for tensor, grad in reversed(retained):
            tensor.grad = grad


class CheckedNorm:
    """A caller's ``norm(scaled_error)`` with its output checked on every call, as
    :class:`CheckedField` checks ``func``'s: a Python float or a tensor of several values would
    otherwise fail deep in the step-size control. Metadata only; the value is ``norm``'s own."""

    def __init__(self, norm: Callable[[Tensor], Tensor]) -> None:
        self.norm = norm

    def __call__(self, scaled_error: Tensor) -> Tensor:
        value = self.norm(scaled_error)
        if not isinstance(value, Tensor):
            raise TypeError(f"norm must return a 0-dim tensor, got {type(value).__name__}")
        if value.numel() != 1:
            raise ValueError(f"norm must return a 0-dim tensor, got shape {tuple(value.shape)}")
        return value


def checked_norm(norm: object, name: str = "norm") -> Callable[[Tensor], Tensor]:
    """``norm`` as a solve uses it: RMS (also for ``None``, the default) kept as is, any other callable
    wrapped in a :class:`CheckedNorm`; ``name``: what a refusal calls it."""
    if norm is None:
        return rms_norm
    if norm is rms_norm or isinstance(norm, CheckedNorm):
        return norm
    if not callable(norm):
        raise TypeError(
            f"{name} must be callable as norm(scaled_error) -> 0-dim tensor, got {type_name(norm)}"
        )
    return CheckedNorm(norm)


def checked_field(func: Callable[[Tensor, Tensor], Tensor], state_name: str = "y0") -> CheckedField:
    """``func`` wrapped in a :class:`CheckedField` (once); ``state_name`` names its state argument."""
    return func if isinstance(func, CheckedField) else CheckedField(func, state_name=state_name)


def compile_options(compile: object, name: str = "compile") -> dict[str, Any] | None:
    """The ``torch.compile`` keywords of odeint's ``compile`` (``False``: none, ``True``: the defaults);
    ``name``: what a refusal calls it."""
    if isinstance(compile, bool):
        return {} if compile else None
    if not isinstance(compile, dict) or not all(isinstance(key, str) for key in compile):
        raise TypeError(
            f"{name} must be a bool or a dict of torch.compile keywords, got {type_name(compile)}"
        )
    unknown = sorted(set(compile) - (set(inspect.signature(torch.compile).parameters) - {"model"}))
    if unknown:
        raise ValueError(f"{name} has keywords torch.compile does not take: {unknown}")
    # torch.compile would accept several bad values here and fail only at the first compiled step
    # (after the solve has started), with its own RuntimeError or AssertionError.
    backend = compile.get("backend", "inductor")
    if not callable(backend):
        from torch._dynamo import list_backends

        backends = list_backends(exclude_tags=())
        if not isinstance(backend, str) or backend not in backends:
            raise ValueError(f"{name}['backend'] must be a callable or one of {backends}, got {backend!r}")
    for key in ("fullgraph", "disable"):
        if key in compile:
            check_bool(f"{name}[{key!r}]", compile[key])
    if compile.get("dynamic") is not None and not isinstance(compile["dynamic"], bool):
        raise TypeError(f"{name}['dynamic'] must be None or a bool, got {type_name(compile['dynamic'])}")
    mode, inductor_options = compile.get("mode"), compile.get("options")
    if mode is not None and inductor_options is not None:
        raise ValueError(f"{name} takes 'mode' or 'options', not both (as torch.compile)")
    if mode is not None or inductor_options is not None:
        from torch._inductor import list_mode_options, list_options

        modes = list(list_mode_options())
        if mode is not None and mode not in modes:
            raise ValueError(f"{name}['mode'] must be one of {modes}, got {mode!r}")
        if inductor_options is not None:
            if not isinstance(inductor_options, dict):
                kind = type(inductor_options).__name__
                raise TypeError(f"{name}['options'] must be a dict of inductor options, got {kind}")
            bad = sorted(set(inductor_options) - set(list_options()))
            if bad:
                raise ValueError(f"{name}['options'] has keys inductor does not know: {bad}")
    return dict(compile)


def finite_float(name: str, value: object) -> float:
    """``value`` (a real number or a 0-dim real tensor) as a finite float."""
    value = real_number(name, value, "a float")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def one_time(name: str, value: object) -> tuple[float, Tensor | None]:
    """The time ``value`` (a number, or a tensor of one element of any shape) as a finite float,
    and as a 0-dim tensor when it is a tensor (which keeps its graph)."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"{name} must be one time (a float or a one-element tensor), got shape {tuple(value.shape)}"
            )
        value = value.reshape(())
        return finite_float(name, value.detach()), value
    return finite_float(name, value), None


def narrowest_float(times: Tensor | np.ndarray | Sequence[float | Tensor]) -> torch.dtype | None:
    """The narrowest floating dtype below float64 that ``times`` hold (a float32 tensor or array, a
    list of float32 0-dim tensors such as a solution's own ``ts``, or of numpy float32 numbers such
    as ``list(array)``), whose rounded span ends :meth:`DenseOutput.evaluate` takes as the ends, as
    ``make_brownian`` a Brownian motion's ends; ``None`` for float64 times and plain floats."""

    def numpy_float(dtype: np.dtype) -> list[torch.dtype]:
        # Below 64 bits only (float16, float32): torch has no dtype of numpy's longdouble.
        return (
            [torch.from_numpy(np.empty(0, dtype=dtype)).dtype]
            if dtype.kind == "f" and dtype.itemsize < 8
            else []
        )

    if isinstance(times, Tensor):
        dtypes = [times.dtype] if times.is_floating_point() else []
    elif isinstance(times, np.ndarray):
        dtypes = numpy_float(times.dtype)
    else:
        dtypes = [v.dtype for v in times if isinstance(v, Tensor) and v.is_floating_point()]
        dtypes += [dtype for v in times if isinstance(v, np.generic) for dtype in numpy_float(v.dtype)]
    narrow = [dtype for dtype in dtypes if torch.finfo(dtype).bits < 64]
    return min(narrow, key=lambda dtype: torch.finfo(dtype).bits) if narrow else None


def rounded(t: float, dtype: torch.dtype) -> float:
    """``t`` rounded to ``dtype``, on the CPU whatever torch's default device: a rounding on a GPU is
    a tensor made and read back per call, and a meta tensor cannot be read back at all."""
    return float(torch.tensor(t, dtype=dtype, device="cpu"))


def rounded_list(times: Sequence[float], dtype: torch.dtype) -> list[float]:
    """Each of ``times`` rounded to ``dtype`` (:func:`rounded`, all at once), as Python floats."""
    return host_list(torch.tensor(times, dtype=dtype, device="cpu"))


def times_as_given(times: list[float], rounded_to: torch.dtype | None) -> list[float | Tensor]:
    """``times`` (checked floats) for ``odeint`` or ``sdeint`` as they came: each that is a number
    of ``rounded_to``, the narrower float they came in (:func:`narrowest_float`), as a 0-dim tensor
    of it, so that the solve allows for that rounding (fixed steps:
    ``local_reg._integrate.times_rounding``); the others (a time added in a wider float, a
    regularizer's ``t_reg``) as floats. A sequence: the field still gets times in the state's dtype."""
    if rounded_to is None:
        return list(times)
    rounded = rounded_list(times, rounded_to)
    return [
        torch.tensor(a, dtype=rounded_to, device="cpu") if a == b else a
        for a, b in zip(times, rounded, strict=True)
    ]
