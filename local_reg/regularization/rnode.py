"""RNODE: kinetic energy and Jacobian Frobenius norm along the trajectory [RNODE20], a baseline
of [LR23].

[RNODE20] Finlay, Jacobsen, Nurbekyan, Oberman. *How to train your neural ODE: the world of
Jacobian and kinetic regularization.* ICML 2020.

Two running costs are integrated alongside the state ``z`` (shape ``(batch, ...)`` or any shape)::

    R_K = int_{t0}^{t1} 0.5 * mean(f(t, z)^2) dt
    R_J = int_{t0}^{t1} mean((eps^T df/dz)^2) dt,    E_eps[(eps^T J)^2 summed] = ||J||_F^2

``mean`` over all elements of the state (per sample over its features, then over the batch, as in
the authors' code, github.com/cfinlay/ffjord-rnode), ``eps`` Rademacher noise of the state's shape
drawn once per solve (Hutchinson's estimator of the Frobenius norm; ``eps^T J`` is one
vector--Jacobian product, which for a batch of independent samples is each sample's own
``eps_b^T J_b``). The loss adds
``lambda_K R_K + lambda_J R_J``; [RNODE20]'s scripts use ``lambda_K = lambda_J = 0.01``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch
from torch import Tensor
from torch.func import vjp

from .._step import VectorField
from .._validate import checked_field, generator_device
from ..controller import TimeSet
from ..solution import State
from ._augmented import Integrand, mean_square, solve_augmented
from ._baseline import (
    BaselinePenalty,
    BaselineStats,
    call_generator,
    own_generator,
    refuse_running_statistics,
    solution_stats,
)
from ._module import Regularized, functional_settings
from .schedules import WeightSchedule, constant_coefficient

TERMS = ("kinetic", "jacobian")
RATES = ("RNODE's kinetic rate 0.5 * mean(f^2)", "RNODE's Jacobian rate mean((eps^T df/dz)^2)")
"""The rates of :data:`TERMS`, as the messages name them."""


def rademacher(shape: torch.Size, generator: torch.Generator | None, like: Tensor) -> Tensor:
    """Independent ``+-1`` entries, drawn from ``generator`` on its device, cast like ``like``."""
    signs = torch.randint(0, 2, shape, generator=generator, device=generator_device(generator))
    signs = signs.mul_(2).sub_(1)
    return signs.to(dtype=like.dtype, device=like.device)


def rnode_integrand(func: VectorField, eps: Tensor | None) -> Integrand:
    """``(t, z) -> (f, [0.5 mean(f^2), mean((eps^T df/dz)^2)], (f, eps^T df/dz))``; with ``eps=None``
    (a Jacobian term of weight 0) the second rate is 0 (of a 0 squared) and no vector--Jacobian
    product is taken.

    ``torch.func.vjp`` evaluates ``f`` and the product under its own autograd level, so the rates
    are differentiable by the outer pass (the gradient methods' vector--Jacobian products of the
    augmented field) and computable inside a graph-free forward solve alike.
    """

    def integrand(t: Tensor, z: Tensor) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
        if eps is None:
            f = func(t, z)
            unpenalized = f.new_zeros(())
            return f, torch.stack([0.5 * mean_square(f), unpenalized]), (f, unpenalized)
        # Without has_aux vjp returns a pair; its annotation is the union with has_aux's triple.
        f, pullback = vjp(lambda state: func(t, state), z)  # type: ignore[misc]
        (eps_jacobian,) = pullback(eps)
        return f, torch.stack([0.5 * mean_square(f), mean_square(eps_jacobian)]), (f, eps_jacobian)

    return integrand


@dataclass(frozen=True)
class RNODEPenalty(BaselinePenalty):
    """RNODE's training pass: ``kinetic * R_K + jacobian * R_J`` from one augmented solve."""

    draws: ClassVar[bool] = True  # the Rademacher noise
    kinetic: float = 1.0
    jacobian: float = 1.0

    def __post_init__(self) -> None:
        learn = (
            "kinetic and jacobian are constants: to learn the penalty's weight, return it from the "
            "value() of a WeightSchedule of your own"
        )
        for name in ("kinetic", "jacobian"):
            object.__setattr__(self, name, constant_coefficient(name, getattr(self, name), learn))

    def __call__(
        self,
        problem: Any,
        y0: Tensor,
        t: TimeSet,
        generator: torch.Generator | None = None,
        bm: Any = None,
    ) -> tuple[Tensor, Tensor, BaselineStats]:
        times, _, context, _ = problem.prepare(y0, t, generator)
        # A Jacobian term of weight 0 is not computed (no noise drawn, no vector--Jacobian products).
        eps = rademacher(y0.shape, generator, y0) if self.jacobian else None
        if self.jacobian:
            refuse_running_statistics(problem.func, "RNODE's Jacobian term", "torch.func.vjp")
        # Checked output: a wrong shape is named before the vector--Jacobian product meets it.
        integrand = rnode_integrand(checked_field(problem.func), eps)
        ys, integrals, solution = solve_augmented(problem, integrand, RATES, y0, times, context)
        penalty = self.kinetic * integrals[0] + self.jacobian * integrals[1]
        stats = solution_stats(
            solution,
            nfe_reg=solution.stats.nfe if eps is not None else 0,
            penalty=float(penalty.detach()),
            terms=dict(zip(TERMS, integrals.detach().tolist(), strict=True)),
        )
        return ys, penalty, stats


class RNODERegularized(Regularized):
    """A neural ODE ``dy/dt = func(t, y)`` trained with RNODE's kinetic and Jacobian terms [RNODE20].

    ``ys = model(y0, t)``. In training mode ``R_K`` and ``R_J`` are integrated as two extra states
    of one augmented solve (see :mod:`local_reg.regularization.rnode`) and
    ``model.reg_loss = w * (kinetic * R_K + jacobian * R_J)``; ``model.stats.terms`` holds the
    unweighted ``R_K`` and ``R_J`` (``R_J`` 0, not computed, when ``jacobian=0``). In eval mode the
    plain solve of ``func`` and ``reg_loss = 0``.

    Args:
        func: the vector field ``func(t, y)``; it must be differentiable in ``y`` twice (the
            gradient of ``R_J`` differentiates a vector--Jacobian product).
        weight: ``w``, a non-negative float or a :class:`WeightSchedule`; the default 0.01 with
            ``kinetic = jacobian = 1`` is [RNODE20]'s ``lambda_K = lambda_J = 0.01``.
        kinetic, jacobian: the relative weights of ``R_K`` and ``R_J``.
        method, rtol, atol, gradient, adjoint_params, options: of :class:`local_reg.Regularized`,
            for the augmented solve (and the eval solve); every gradient method works. A
            ``norm`` or step ``callbacks`` in ``options`` get the state in ``y0``'s shape. A
            plain-function ``func`` needs ``adjoint_params`` with any gradient but ``"direct"``.
        generator: the CPU ``torch.Generator`` of the Rademacher noise (one draw per solve); by
            default the wrapper's own, seeded from ``torch.initial_seed()`` (so two wrappers made
            without one draw the same noise: give each its own for independent draws). In
            ``state_dict()``.

    ``stats.nfe_main`` counts the augmented field's evaluations, each one evaluation of ``func``;
    ``stats.nfe_reg`` the vector--Jacobian products on top (one per evaluation; none when
    ``jacobian=0``).
    """

    def __init__(
        self,
        func: VectorField,
        *,
        weight: float | WeightSchedule = 0.01,
        kinetic: float = 1.0,
        jacobian: float = 1.0,
        generator: torch.Generator | None = None,
        **solve: Any,
    ) -> None:
        penalty = RNODEPenalty(kinetic, jacobian)
        super().__init__(func, penalty, weight=weight, generator=own_generator(generator), **solve)


def rnode_regularization(
    func: VectorField,
    y0: State,
    t: TimeSet,
    *,
    generator: torch.Generator | None = None,
    **settings: Any,
) -> tuple[State, Tensor, BaselineStats]:
    """One RNODE [RNODE20] training pass without a module: ``(ys, reg, stats)``, ``reg`` the
    *unweighted* ``kinetic * R_K + jacobian * R_J`` of the solve (the module docstring's integrals).
    ``settings`` are :class:`RNODERegularized`'s keywords; ``generator`` (default: one seeded from the
    global stream, so that ``torch.manual_seed`` fixes the call and repeated calls draw anew) draws the
    Hutchinson noise.
    """
    ys, reg, stats = RNODERegularized(
        func, generator=call_generator(generator), **functional_settings("rnode_regularization", settings)
    ).penalize(y0, t)
    # RNODEPenalty makes BaselineStats; penalize is typed for any penalty's stats.
    return ys, reg, cast(BaselineStats, stats)
