"""Global regularization of the solver's heuristics [GR21], the baseline of [LR23].

[GR21] Pal, Ma, Shah, Rackauckas. *Opening the Blackbox: Accelerating Neural Differential Equations
by Regularizing Internal Solver Heuristics.* ICML 2021.

Every accepted step ``j`` of the training solve contributes, differentiated through the whole
solver (discrete sensitivities, which is why it costs training time)::

    R_E = sum_j EEst_j * |dt_j|      (ERNODE)
    R_S = sum_j S_Est_j * |dt_j|     (SRNODE; S_Est = rho / stability_size)

The public code (avik-pal/RegNeuralDE.jl) differs: it takes the *mean* of ``EEst_j * |dt_j|`` and
the *max* of ``S_Est_j`` (no ``dt``). Those are the defaults here; ``reduction="sum"`` gives the
paper's formulas.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..controller import TimeSet
from ..solution import State
from ._module import GlobalPenalty, Regularized, functional_settings
from ._stats import RegularizationStats


def global_regularization(
    func: Any, y0: State, t: TimeSet, *, bm: Any | None = None, **settings: Any
) -> tuple[State, Tensor, RegularizationStats]:
    """Solve at ``t`` and return ``(ys, reg, stats)`` with the unweighted global penalty [GR21],
    without a module. ``settings`` are :class:`GloballyRegularized`'s keywords; ``bm`` is an SDE's
    Brownian motion. ``stats.probe`` is empty: the penalty reuses the stages of the main solve."""
    return GloballyRegularized(func, **functional_settings("global_regularization", settings)).penalize(
        y0, t, bm
    )


class GloballyRegularized(Regularized):
    """A neural ODE trained with global regularization [GR21] (the ERNODE / SRNODE baseline).

    ``ys = model(y0, t)``; in training mode ``model.reg_loss = w * R``: per accepted step ``j``
    ``EEst_j * |dt_j|`` (error) or ``S_Est_j = rho_j / stability_size`` (stiffness), reduced by
    ``reduction``:

    - ``"mean"`` (default for error, the public code), ``"sum"`` (the paper's ``R_E``), ``"max"``;
    - ``"max"`` of ``S_Est_j`` (default for stiffness, the public code); ``"sum"`` / ``"mean"`` of
      ``S_Est_j * |dt_j|`` (the paper's ``R_S``).

    In eval mode the plain solve and ``reg_loss = 0``. The penalty is differentiated through the
    solver, so ``gradient`` must keep a per-step graph: ``"direct"`` or ``"checkpoint"`` (an SDE:
    ``"direct"``). The other keywords (``weight``, ``method``, ``rtol``, ``atol``, ``gradient``,
    ``generator``, ``options``) are :class:`Regularized`'s.

    Coefficients used in [GR21]: MNIST ER 100 -> 10 (exponential decay), SR 0.0285; PhysioNet ER
    1000 -> 100, SR 0.285. The SR coefficients weigh the raw ``rho`` (the public code puts 0.1 on
    ``max_j S_Est_j``, and ``0.1 / 3.5068 = 0.0285``): on this ``S_Est`` they are 0.1 and 1.0.

    The public code reads one value more than the accepted steps: its saving callback also saves
    at ``t0``, before the first step, where (as we read OrdinaryDiffEq's initialization, not run)
    ``EEst = 1``, ``dt = 0`` and the stiffness estimate is 1. Its ``"mean"`` of ``EEst_j * |dt_j|``
    is therefore this one times ``N / (N + 1)`` over ``N`` accepted steps, and its ``"max"`` of
    ``S_Est_j`` has a floor ``1 / stability_size`` (0.285 for Tsit5), with no gradient while every
    step's ``S_Est_j`` is below it. Here both read the accepted steps only.

    ``func`` may also be a torchsde-style SDE module (see :func:`local_reg.sde.is_sde`): the solve
    is then :func:`local_reg.sdeint` (``regularizer="error"``, ``gradient="direct"``; ``method``
    defaults to the SDE solver's; ``generator`` draws its Brownian seeds). An ODE's global penalty
    draws nothing, so ``generator`` must then be ``None`` (``ValueError`` otherwise).
    """

    def __init__(
        self, func: Any, *, regularizer: str = "error", reduction: str | None = None, **solve: Any
    ) -> None:
        super().__init__(func, GlobalPenalty(regularizer, reduction), **solve)
