"""Exchangeable gradient methods for :func:`local_reg.odeint` (``gradient=...``).

| name | module | gradient | memory |
|---|---|---|---|
| ``"direct"`` | :mod:`.direct` | exact (backprop through every step) | graph of every step |
| ``"checkpoint"`` | :mod:`.checkpoint` | exact (ACA, Zhuang et al. 2020) | step states + one step's graph |
| ``"symplectic"`` | :mod:`.symplectic` | exact (Matsubara et al. 2021) | step states + one ``func`` graph |
| ``"adjoint"`` | :mod:`.adjoint` | approximate (Chen et al. 2018) | one graph of ``func`` |

``checkpoints=C`` bounds the step states of "checkpoint" and "symplectic" to about ``C + 2N/C``
(:mod:`._checkpoints`). See docs/gradients.md for how to choose.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from ._function import (
    ForwardSolve,
    GradientMethod,
    StepwiseGradient,
    check_step_penalty_support,
    solve_without_graph,
)
from .adjoint import BacksolveAdjoint
from .checkpoint import CheckpointGradient
from .direct import solve_direct
from .symplectic import SymplecticGradient

GRADIENT_METHODS: tuple[str, ...] = ("direct", "adjoint", "checkpoint", "symplectic")


def resolve_adjoint_params(
    func: object, adjoint_params: Iterable[Tensor] | None, gradient: str
) -> tuple[Tensor, ...]:
    """The tensors a graph-free gradient method returns gradients for, besides ``y0``.

    ``adjoint_params`` if given, else the parameters of ``func`` when it is a ``torch.nn.Module``
    (or a bound method of one). A plain function hides what it closes over, so it needs
    ``adjoint_params`` (an empty tuple if it has no parameters): otherwise its parameters would
    silently get no gradient. Tensors that do not require grad are dropped, duplicates kept once.
    """
    if adjoint_params is None:
        owner = func if isinstance(func, torch.nn.Module) else getattr(func, "__self__", None)
        if not isinstance(owner, torch.nn.Module):
            raise ValueError(
                f"gradient={gradient!r} needs the parameters of func, but func is a plain function "
                f"({type(func).__name__}) and adjoint_params was not given: pass "
                "adjoint_params=(tensors func depends on), or adjoint_params=() if it has none"
            )
        candidates = tuple(owner.parameters())
    else:
        if isinstance(adjoint_params, Tensor) or not isinstance(adjoint_params, Iterable):
            raise TypeError(
                "adjoint_params must be an iterable of tensors (e.g. a tuple or module.parameters()), "
                f"got {type(adjoint_params).__name__}"
            )
        candidates = tuple(adjoint_params)
        for p in candidates:
            if not isinstance(p, Tensor):
                raise TypeError(f"adjoint_params must hold tensors, got a {type(p).__name__}")
    unique: dict[int, Tensor] = {}
    for p in candidates:
        if p.requires_grad:
            unique.setdefault(id(p), p)
    return tuple(unique.values())


__all__ = [
    "GRADIENT_METHODS",
    "BacksolveAdjoint",
    "CheckpointGradient",
    "ForwardSolve",
    "GradientMethod",
    "StepwiseGradient",
    "SymplecticGradient",
    "check_step_penalty_support",
    "resolve_adjoint_params",
    "solve_direct",
    "solve_without_graph",
]
