"""TayNODE: the integrated squared K-th total time derivative of the solution [TAY20], a baseline
of [LR23].

[TAY20] Kelly, Bettencourt, Johnson, Duvenaud. *Learning Differential Equations that are Easy to
Solve.* NeurIPS 2020.

An adaptive solver of order ``p`` takes steps whose error is governed by the ``(p+1)``-th
derivative of the solution; [TAY20] penalizes the K-th one along the trajectory::

    R_K = int_{t0}^{t1} mean((d^K z / dt^K)^2) dt,

``mean`` over all elements of the state (per sample, then over the batch, as the authors' code,
github.com/jacobjinkelly/easy-neural-ode). The
total derivatives follow the solution, ``d/dt g(t, z(t)) = dg/dt + dg/dz f``::

    z' = f,    z'' = f_t + f_z f,    z^(k+1) = d/dt z^(k) = jvp(z^(k), (t, z), (1, f)),

computed here by nested forward-mode products (``torch.func.jvp``) where [TAY20] uses Taylor mode
(``jax.experimental.jet``): the same values, from ``K`` evaluations of ``f``, the k-th under k
nested levels of forward mode, so the cost grows like ``2^K`` rather than Taylor mode's ``K^2``;
``order`` stops at 4. [TAY20] uses ``K = 3`` (``r3``) for MNIST classification and the latent ODE;
that code's coefficients are ``lambda = 6e-5`` (MNIST) and ``1e-2`` (PhysioNet latent ODE).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor
from torch.func import jvp

from .._checks import positive_int
from .._step import VectorField
from .._validate import checked_field
from ..controller import TimeSet
from ..solution import State
from ._augmented import Integrand, mean_square, solve_augmented
from ._baseline import BaselinePenalty, BaselineStats, refuse_running_statistics, solution_stats
from ._module import Regularized, functional_settings
from .schedules import WeightSchedule

MAX_ORDER = 4


def check_order(order: object) -> int:
    order = positive_int("order", order)  # numpy's integers too, as every count
    if order > MAX_ORDER:
        raise ValueError(
            f"order must be between 1 and {MAX_ORDER} (nested forward mode costs about 2^order "
            f"evaluations of func; [TAY20] uses 2 or 3), got {order}"
        )
    return order


def total_derivatives(func: VectorField, t: Tensor, z: Tensor, order: int) -> tuple[Tensor, Tensor]:
    """``(f(t, z), d^order z / dt^order)`` along the solution of ``dz/dt = func(t, z)`` through
    ``(t, z)``. Differentiable by reverse mode, and computable under ``torch.no_grad()``."""
    f = func(t, z)
    if order == 1:
        return f, f

    def lower(time: Tensor, state: Tensor) -> Tensor:
        return total_derivatives(func, time, state, order - 1)[1]

    # The direction's own dependence on (t, z) is part of the inner function, so nesting gives the
    # total derivative of every lower order, not only of f.
    # Without has_aux jvp returns a pair; its annotation is the union with has_aux's triple.
    _, derivative = jvp(lower, (t, z), (torch.ones_like(t), f))  # type: ignore[misc]
    return f, derivative


@functools.cache
def _eager_total_derivatives() -> Callable[[VectorField, Tensor, Tensor, int], tuple[Tensor, Tensor]]:
    """:func:`total_derivatives` excluded from ``torch.compile`` (made on first use: the decorator
    imports torch's compiler, which an eager user need not load)."""
    return torch.compiler.disable(total_derivatives, recursive=True)


def taylor_integrand(func: VectorField, order: int) -> Integrand:
    """``(t, z) -> (f, [mean((d^K z/dt^K)^2)], (d^K z/dt^K,))``."""

    def integrand(t: Tensor, z: Tensor) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
        # Inside a user's torch.compile, run eagerly: the nested torch.func.jvp does not trace.
        derivatives = _eager_total_derivatives() if torch.compiler.is_compiling() else total_derivatives
        try:
            f, derivative = derivatives(func, t, z, order)
        except RuntimeError as error:
            if "functorch transform" not in str(error):
                raise
            # torch's message names its own transforms, not the penalty that applied them.
            raise RuntimeError(
                f"TayNODE's order-{order} derivatives differentiate func by torch.func.jvp, and func "
                "calls torch.autograd (requires_grad_, autograd.grad: a Hamiltonian network's "
                "gradient), which torch.func transforms cannot see through: compute that gradient "
                "with torch.func.grad instead, or use another penalty (RNODE, the global or local one "
                "take such a func)"
            ) from error
        return f, mean_square(derivative).reshape(1), (derivative,)

    return integrand


@dataclass(frozen=True)
class TayNODEPenalty(BaselinePenalty):
    """TayNODE's training pass: ``R_K`` from one augmented solve."""

    order: int = 3

    def __post_init__(self) -> None:
        check_order(self.order)

    def check(self, problem: Any) -> None:
        super().check(problem)
        if problem.options.get("compile"):
            # torch.compile cannot trace the nested torch.func.jvp of the augmented field (Dynamo
            # fails inside it), so refuse it here rather than at the first training call.
            raise ValueError(
                "TayNODERegularized cannot compile its solve (options['compile']): its augmented "
                "field's nested forward-mode derivatives do not trace under torch.compile"
            )

    def __call__(
        self,
        problem: Any,
        y0: Tensor,
        t: TimeSet,
        generator: torch.Generator | None = None,
        bm: Any = None,
    ) -> tuple[Tensor, Tensor, BaselineStats]:
        times, _, context, _ = problem.prepare(y0, t, generator)
        if self.order > 1:
            refuse_running_statistics(problem.func, f"TayNODE's order-{self.order} penalty", "torch.func.jvp")
        # Checked output: a wrong shape is named before the forward-mode derivatives meet it.
        integrand = taylor_integrand(checked_field(problem.func), self.order)
        rate = f"TayNODE's rate mean((d^{self.order} z/dt^{self.order})^2)"
        ys, integrals, solution = solve_augmented(problem, integrand, (rate,), y0, times, context)
        penalty = integrals[0]
        value = float(penalty.detach())
        stats = solution_stats(
            solution, nfe_reg=(self.order - 1) * solution.stats.nfe, penalty=value, terms={"taylor": value}
        )
        return ys, penalty, stats


class TayNODERegularized(Regularized):
    """A neural ODE ``dy/dt = func(t, y)`` trained with TayNODE's penalty [TAY20].

    ``ys = model(y0, t)``. In training mode ``R_K`` is integrated as an extra state of one augmented
    solve (see :mod:`local_reg.regularization.taynode`), ``model.reg_loss = w * R_K`` and
    ``model.stats.terms["taylor"]`` is ``R_K``. In eval mode the plain solve and ``reg_loss = 0``.

    Args:
        func: the vector field ``func(t, y)``; forward-mode differentiable in ``t`` and ``y``
            ``order - 1`` times, and once more in reverse mode (every ``torch.nn`` layer is).
        order: ``K``, 1 to 4; default 3 as [TAY20] for MNIST and the latent ODE.
        weight: ``w``, a non-negative float or a :class:`WeightSchedule`; default 6e-5, the public
            code's MNIST coefficient (1e-2 for its PhysioNet latent ODE).
        method, rtol, atol, gradient, adjoint_params, options: of :class:`local_reg.Regularized`;
            every gradient method works. A ``norm`` or step ``callbacks`` in ``options`` get the
            state in ``y0``'s shape.

    ``stats.nfe_main`` counts the augmented field's evaluations; ``stats.nfe_reg`` the ``K - 1``
    forward-mode evaluations of ``func`` each of them adds; ``stats.nfe_backward`` the augmented
    field's evaluations in the backward pass (each of them ``K`` of ``func``'s).
    """

    def __init__(
        self, func: VectorField, *, order: int = 3, weight: float | WeightSchedule = 6e-5, **solve: Any
    ) -> None:
        super().__init__(func, TayNODEPenalty(check_order(order)), weight=weight, **solve)


def taynode_regularization(
    func: VectorField, y0: State, t: TimeSet, **settings: Any
) -> tuple[State, Tensor, BaselineStats]:
    """One TayNODE [TAY20] training pass without a module: ``(ys, reg, stats)``, ``reg`` the
    *unweighted* integral of the squared ``order``-th total time derivative along the solve.
    ``settings`` are :class:`TayNODERegularized`'s keywords.
    """
    ys, reg, stats = TayNODERegularized(
        func, **functional_settings("taynode_regularization", settings)
    ).penalize(y0, t)
    # TayNODEPenalty makes BaselineStats; penalize is typed for any penalty's stats.
    return ys, reg, cast(BaselineStats, stats)
