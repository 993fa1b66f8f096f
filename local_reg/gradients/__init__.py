"""Exchangeable gradient methods for :func:`local_reg.odeint` (``gradient=...``): objects that
check their own settings once; the strings are shorthands for the defaults.

| object | string | gradient | memory |
|---|---|---|---|
| :class:`Direct` | ``"direct"`` | exact (backprop through every step) | graph of every step |
| :class:`Checkpoint` | ``"checkpoint"`` | exact (ACA, Zhuang et al. 2020) | step states + one step's graph |
| :class:`Symplectic` | ``"symplectic"`` | exact (Matsubara et al. 2021) | step states + one ``func`` graph |
| :class:`BacksolveAdjoint` | ``"adjoint"`` | approximate (Chen et al. 2018) | one graph of ``func`` |
| :class:`InterpolatingAdjoint` | ``"interpolating_adjoint"`` | approximate | dense record + one graph |

``Checkpoint(checkpoints=C)`` and ``Symplectic(checkpoints=C)`` bound the step states to about
``C + 2N/C`` (:mod:`._checkpoints`). See docs/gradients.md for how to choose.
"""

from __future__ import annotations

from ._function import ForwardSolve, GradientMethod, GraphFreeGradient, StepwiseGradient
from .adjoint import BacksolveAdjoint, InterpolatingAdjoint
from .checkpoint import Checkpoint
from .direct import Direct
from .symplectic import Symplectic

_SHORTHANDS: dict[str, type[GradientMethod]] = {
    "direct": Direct,
    "adjoint": BacksolveAdjoint,
    "checkpoint": Checkpoint,
    "symplectic": Symplectic,
    "interpolating_adjoint": InterpolatingAdjoint,
}
GRADIENT_METHODS: tuple[str, ...] = tuple(_SHORTHANDS)
"""The string shorthands of ``gradient=``."""


def as_gradient_method(gradient: object) -> GradientMethod:
    """``gradient`` itself if it is a :class:`GradientMethod`, else the default object its string
    names. ``TypeError`` for anything else, ``ValueError`` for an unknown string."""
    if isinstance(gradient, GradientMethod):
        return gradient
    if isinstance(gradient, type) and issubclass(gradient, GradientMethod):
        # type(gradient).__name__ would name the classes' metaclass.
        raise TypeError(
            f"gradient must be a GradientMethod object, got the class {gradient.__name__}: pass "
            f"{gradient.__name__}() (with its options, if any)"
        )
    if not isinstance(gradient, str):
        raise TypeError(
            f"gradient must be a str (one of {GRADIENT_METHODS}) or a GradientMethod such as "
            f"Symplectic(checkpoints=32), got {type(gradient).__name__}"
        )
    if gradient not in _SHORTHANDS:
        raise ValueError(f"unknown gradient {gradient!r}; expected one of {GRADIENT_METHODS}")
    return _SHORTHANDS[gradient]()


__all__ = [
    "GRADIENT_METHODS",
    "BacksolveAdjoint",
    "Checkpoint",
    "Direct",
    "ForwardSolve",
    "GradientMethod",
    "GraphFreeGradient",
    "InterpolatingAdjoint",
    "StepwiseGradient",
    "Symplectic",
    "as_gradient_method",
]
