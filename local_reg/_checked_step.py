"""The public :func:`local_reg.step`: one instrumented Runge--Kutta step with its arguments checked
like :func:`local_reg.odeint`'s. The solvers call the unchecked :func:`local_reg._step.step` in
their loops, where the arguments were checked once per solve."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from ._step import StepResult, VectorField, rms_norm
from ._step import step as unchecked_step
from ._validate import check_output, checked_field, finite_float, positive_float, validate_state
from .tableaus import ButcherTableau, get_tableau


def step(
    func: VectorField,
    t: float,
    y: Tensor,
    dt: float,
    tableau: ButcherTableau | str,
    *,
    rtol: float = 1e-6,
    atol: float = 1e-8,
    k1: Tensor | None = None,
    norm: Callable[[Tensor], Tensor] = rms_norm,
) -> StepResult:
    """Take one step of ``tableau`` (a :class:`ButcherTableau` or its name, e.g. ``"tsit5"``) from
    ``(t, y)`` with step size ``dt`` (negative to go backwards).

    Returns the :class:`StepResult`: ``y1``, ``EEst = rms(err / (atol + rtol * max(|y|, |y1|)))``
    (``None`` for a fixed-step tableau), Shampine's stiffness estimate, the stages and the NFE.
    ``k1``, if given, is ``func(t, y)`` already evaluated and is not evaluated again. Gradients flow
    through every stage that is evaluated.

    Raises:
        TypeError, ValueError: naming the argument: a non-callable ``func``, a non-finite ``t`` or
            ``dt``, ``y`` not a float32/float64 tensor, tolerances that are not positive and finite
            (a negative one would make ``EEst`` accept any step), an unknown tableau, or a ``func``
            / ``k1`` of another shape or dtype than ``y``.
    """
    func = checked_field(func)
    t = finite_float("t", t)
    dt = finite_float("dt", dt)
    y = validate_state(y, "y")
    tableau = get_tableau(tableau)
    rtol = positive_float("rtol", rtol)
    atol = positive_float("atol", atol)
    if k1 is not None:
        if not isinstance(k1, Tensor):
            raise TypeError(f"k1 must be a torch.Tensor (func(t, y)) or None, got {type(k1).__name__}")
        check_output("k1", k1, y)
    if not callable(norm):
        raise TypeError(f"norm must be callable, got {type(norm).__name__}")
    return unchecked_step(func, t, y, dt, tableau, rtol=rtol, atol=atol, k1=k1, norm=norm)
