"""The public :func:`local_reg.step` and :func:`local_reg.initial_step_size`, with their arguments
checked like :func:`local_reg.odeint`'s. The solvers call the unchecked ones of :mod:`local_reg._step`
in their loops, where the arguments were checked once per solve."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ._checks import positive_int, refuse_sde
from ._step import StepResult, VectorField
from ._step import initial_step_size as unchecked_initial_step_size
from ._step import step as unchecked_step
from ._validate import (
    check_output,
    check_span,
    check_times_distinct,
    checked_field,
    checked_norm,
    finite_float,
    finite_times,
    step_tolerances,
    validate_state,
)
from .controller import TimeSet
from .tableaus import ButcherTableau, get_tableau


def step(
    func: VectorField,
    t: float | Tensor,
    y: Tensor,
    dt: float | Tensor,
    tableau: ButcherTableau | str,
    *,
    rtol: float | Tensor = 1e-6,
    atol: float | Tensor = 1e-8,
    k1: Tensor | None = None,
    norm: Callable[[Tensor], Tensor] | None = None,
    jump_ts: TimeSet = (),
) -> StepResult:
    """Take one step of ``tableau`` (a :class:`ButcherTableau` or its name, e.g. ``"tsit5"``) from
    ``(t, y)`` with step size ``dt`` (negative to go backwards).

    Returns the :class:`StepResult`: ``y1``, ``EEst = rms(err / (atol + rtol * max(|y|, |y1|)))``
    (``None`` for a fixed-step tableau), Shampine's stiffness estimate, the stages and the NFE.
    ``norm`` replaces that RMS (``None``: the RMS, as :func:`~local_reg.odeint` reads it).
    ``k1``, if given, is ``func(t, y)`` already evaluated and is not evaluated again. Gradients flow
    through every stage that is evaluated. A step whose stages overflow ``y``'s dtype, or meet a
    ``func`` that returns NaN there, returns them as they are: a non-finite ``y1`` and ``EEst`` (the
    trial step :func:`~local_reg.odeint` rejects and retries shorter), not an error.

    ``jump_ts`` are times where ``func`` may jump, as :class:`~local_reg.PIController`'s: where the
    step starts or ends at one of them (within 4 ulps), its stages there are evaluated at the time of
    ``y``'s dtype next to it inside the step, so the field is read on the step's own side, as
    :func:`~local_reg.odeint` reads it. A given ``k1`` is used as it is.

    Raises:
        TypeError, ValueError: naming the argument: a non-callable ``func``, a non-finite ``t`` or
            ``dt``, ``y`` not a float32/float64 tensor, tolerances that are not positive and finite
            (a negative one would make ``EEst`` accept any step; ``rtol = 0`` is a pure absolute
            tolerance, as in :func:`~local_reg.odeint`), an unknown tableau, a ``func`` / ``k1`` of
            another shape or dtype than ``y``, a ``norm`` that does not return a 0-dim tensor, a
            ``t`` or ``dt`` that requires grad (it would silently get none), or a step whose
            stage times round to ``t`` in ``y``'s dtype, or ``jump_ts`` that are not finite real times.
    """
    refuse_sde(func)
    func = checked_field(func, state_name="y")
    for name, value in (("t", t), ("dt", dt)):
        if isinstance(value, Tensor) and value.requires_grad:
            raise ValueError(
                f"{name} requires grad, but step takes it as a number: no gradient flows to it (odeint's "
                "gradients reach its output times t)"
            )
    t = finite_float("t", t)
    dt = finite_float("dt", dt)
    y = validate_state(y, "y")
    tableau = get_tableau(tableau)
    # As odeint's span: a step times the tableau's coefficients must stay finite in y's dtype, and
    # so must the stage times in it.
    check_span([t, t + dt], y.dtype, tableau=tableau)
    if abs(t) + max([1.0, *map(abs, tableau.c)]) * abs(dt) > torch.finfo(y.dtype).max:
        raise ValueError(f"t={t:g} + dt={dt:g} is beyond {y.dtype} (y's dtype, in which func gets its times)")
    _check_stage_times(t, dt, tableau, y.dtype)
    rtol, atol = step_tolerances(rtol, atol, y.dtype)
    if k1 is not None:
        if not isinstance(k1, Tensor):
            raise TypeError(f"k1 must be a torch.Tensor (func(t, y)) or None, got {type(k1).__name__}")
        check_output("k1", k1, y, returned=False, like_name="y")
        if not bool(torch.isfinite(k1).all()):
            raise ValueError("k1 is not finite")
    jumps = tuple(sorted(set(finite_times("jump_ts", jump_ts))))
    return unchecked_step(
        func, t, y, dt, tableau, rtol=rtol, atol=atol, k1=k1, norm=checked_norm(norm), jump_ts=jumps
    )


def initial_step_size(
    func: VectorField,
    t0: float | Tensor,
    y0: Tensor,
    f0: Tensor,
    order: int,
    rtol: float | Tensor,
    atol: float | Tensor,
    direction: float = 1.0,
    norm: Callable[[Tensor], Tensor] | None = None,
    t_end: float | None = None,
    time_dtype: torch.dtype | None = None,
) -> tuple[float, int]:
    """The starting step size of Hairer--Norsett--Wanner's heuristic (Solving ODEs I, II.4) from
    ``(t0, y0)`` with ``f0 = func(t0, y0)``, heading in ``direction`` (``+1`` or ``-1``) towards
    ``t_end`` (if given; it bounds the trial step). Returns ``(|dt|, nfe)``; it costs one evaluation
    of ``func``. Its exponent is ``1/order``, as torchdiffeq's and OrdinaryDiffEq's, and the one
    every adaptive solve starts with (docs/solver.md): pass a method's order ``p`` for that step,
    ``p + 1`` for the book's ``1/(p+1)``. ``norm``: the solver's error norm (``None``: the RMS).
    This function checks its arguments first.

    Raises:
        TypeError, ValueError: naming the argument, as :func:`step` does, and for an ``order`` that
            is not a positive int, a ``direction`` other than ``+1`` or ``-1``, a ``t_end`` that is
            not finite or lies behind ``t0`` in ``direction``, or a ``time_dtype`` that is not a
            floating dtype.
    """
    refuse_sde(func)
    func = checked_field(func)
    t0 = finite_float("t0", t0)
    y0 = validate_state(y0)
    if not isinstance(f0, Tensor):
        raise TypeError(f"f0 must be a torch.Tensor (func(t0, y0)), got {type(f0).__name__}")
    check_output("f0", f0, y0, returned=False)
    if not bool(torch.isfinite(f0).all()):
        # A NaN step size would follow, which no later check of a step size catches.
        raise ValueError("f0 is not finite")
    order = positive_int("order", order)
    rtol, atol = step_tolerances(rtol, atol, y0.dtype)
    direction = finite_float("direction", direction)
    if direction not in (1.0, -1.0):
        raise ValueError(f"direction must be +1 or -1, got {direction}")
    if t_end is not None:
        t_end = finite_float("t_end", t_end)
        if (t_end - t0) * direction < 0:
            raise ValueError(f"t_end={t_end} lies behind t0={t0} in direction {direction:+g}")
    if time_dtype is not None and not (isinstance(time_dtype, torch.dtype) and time_dtype.is_floating_point):
        raise TypeError(f"time_dtype must be a floating torch.dtype or None, got {time_dtype!r}")
    return unchecked_initial_step_size(
        func, t0, y0, f0, order, rtol, atol, direction, checked_norm(norm), t_end, time_dtype
    )


def _check_stage_times(t: float, dt: float, tableau: ButcherTableau, dtype: torch.dtype) -> None:
    """``func`` gets its times in ``y``'s dtype (``odeint`` may use a wider one; ``step`` cannot):
    a stage time ``t + c_i dt`` that rounds to ``t`` would be silently wrong."""
    nodes = [abs(c) for c in tableau.c if c != 0.0]
    if dt != 0.0 and nodes:
        remedy = f"(y's; the second is the first stage time, t + {min(nodes):g} dt): take the step on a "
        check_times_distinct([t, t + min(nodes) * dt], dtype, remedy + "float64 y, or nearer t = 0")
