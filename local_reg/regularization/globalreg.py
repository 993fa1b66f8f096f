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

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._penalty import finite_penalty
from .._step import StepResult
from .._validate import check_choice, validate_state, validate_times
from ..sde import is_sde, sde_global_regularization, sde_solve_plain
from ..sde.regularization import check_sde_global_gradient, check_sde_regularizer
from ..solution import RegularizationStats
from ..tableaus import ButcherTableau, get_tableau
from .backends import solve_main
from .local import REGULARIZERS, check_regularizer_tableau, default_tolerances, solve_plain
from .schedules import WeightSchedule, as_schedule

VectorField = Callable[[Tensor, Tensor], Tensor]

GLOBAL_GRADIENTS = ("direct", "checkpoint")
REDUCTIONS = ("mean", "sum", "max")
DEFAULT_REDUCTION = {"error": "mean", "stiffness": "max"}


def _check_global_gradient(gradient: object) -> str:
    if gradient not in GLOBAL_GRADIENTS:
        raise ValueError(
            f"global regularization differentiates through every accepted step of the solver, so it "
            f"needs a gradient method that keeps a per-step graph: gradient must be one of "
            f"{list(GLOBAL_GRADIENTS)}, got {gradient!r} (local regularization, LocallyRegularized, "
            "works with every gradient method)"
        )
    return gradient


def global_regularization(
    func: VectorField,
    y0: Tensor,
    t: Tensor | Sequence[float],
    *,
    regularizer: str = "error",
    reduction: str | None = None,
    method: str | ButcherTableau = "tsit5",
    rtol: float = 1e-6,
    atol: float = 1e-8,
    gradient: str = "direct",
    options: dict[str, Any] | None = None,
) -> tuple[Tensor, Tensor, RegularizationStats]:
    """Solve at ``t`` and return ``(ys, reg, stats)`` with the unweighted global penalty [GR21].

    Per accepted step ``j``: ``EEst_j * |dt_j|`` (error) or ``S_Est_j = rho_j / stability_size``
    (stiffness), reduced by ``reduction``:

    - ``"mean"`` (default for error, the public code), ``"sum"`` (the paper's ``R_E``);
    - ``"max"`` of ``S_Est_j`` (default for stiffness, the public code); ``"sum"`` / ``"mean"`` of
      ``S_Est_j * |dt_j|`` (the paper's ``R_S``).

    ``gradient`` is ``"direct"`` or ``"checkpoint"``: the penalty is differentiated through the
    solver, so the method must keep a per-step graph. ``nfe_reg`` is 0: the penalty reuses the
    stages of the main solve.
    """
    regularizer = check_choice("regularizer", regularizer, REGULARIZERS)
    reduction = DEFAULT_REDUCTION[regularizer] if reduction is None else reduction
    check_choice("reduction", reduction, REDUCTIONS)
    _check_global_gradient(gradient)
    tableau = get_tableau(method)
    check_regularizer_tableau(regularizer, tableau, "method")
    y0 = validate_state(y0)
    times = validate_times(t)
    if len(times) < 2:
        raise ValueError(f"t must hold at least 2 times, got {len(times)}")

    def per_step(result: StepResult, dt: float) -> Tensor:
        if regularizer == "error":
            return result.error_estimate * abs(dt)
        s_est = result.stiffness_estimate / tableau.stability_size
        return s_est if reduction == "max" else s_est * abs(dt)

    main = solve_main(
        func,
        y0,
        times,
        backend="local_reg",
        method=method,
        rtol=rtol,
        atol=atol,
        gradient=gradient,
        adjoint_params=None,
        record_steps=False,
        record_states=False,
        t_dtype=torch.float64,
        options=options,
        step_penalty=per_step,
    )
    penalties = main.penalties
    if reduction == "mean":
        reg = penalties.mean()
    elif reduction == "sum":
        reg = penalties.sum()
    else:
        reg = penalties.max()
    reg, value, finite = finite_penalty(reg, y0)
    stats = main.regularization_stats(
        RegularizationStats,
        nfe_main=main.nfe,
        penalty=value,
        penalty_finite=finite,
    )
    return main.ys, reg, stats


class GloballyRegularized(nn.Module):
    """A neural ODE trained with global regularization [GR21] (the ERNODE / SRNODE baseline).

    ``ys = model(y0, t)``; in training mode ``model.reg_loss = w * R`` with ``R`` from
    :func:`global_regularization` (defaults follow the public code: mean of ``EEst_j |dt_j|``, max
    of ``S_Est_j``); in eval mode the plain solve and ``reg_loss = 0``.

    Coefficients used in [GR21]: MNIST ER 100 -> 10 (exponential decay), SR 0.0285; PhysioNet ER
    1000 -> 100, SR 0.285. Only ``gradient="direct"`` or ``"checkpoint"``.

    ``func`` may also be a torchsde-style SDE module (see :func:`local_reg.sde.is_sde`): the solve
    is then :func:`local_reg.sdeint` and the penalty :func:`local_reg.sde.sde_global_regularization`
    (``regularizer="error"``, ``gradient="direct"``; ``method`` defaults to the SDE solver's).
    """

    reg_loss: Tensor
    stats: RegularizationStats | None

    def __init__(
        self,
        func: VectorField,
        *,
        regularizer: str = "error",
        reduction: str | None = None,
        weight: float | WeightSchedule = 1.0,
        method: str | ButcherTableau | None = None,
        rtol: float | None = None,
        atol: float | None = None,
        gradient: str = "direct",
        generator: torch.Generator | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_choice("regularizer", regularizer, REGULARIZERS)
        if reduction is not None:
            check_choice("reduction", reduction, REDUCTIONS)
        self.is_sde = is_sde(func)
        if self.is_sde:
            check_sde_regularizer(regularizer)
            check_sde_global_gradient(gradient)
        else:
            _check_global_gradient(gradient)
            method = "tsit5" if method is None else method
            check_regularizer_tableau(regularizer, get_tableau(method), "method")
        rtol, atol = default_tolerances(self.is_sde, rtol, atol)
        self.func = func
        self.generator = generator
        self.weight = as_schedule(weight)
        self.regularizer = regularizer
        self.reduction = reduction
        self.method = method
        self.rtol = rtol
        self.atol = atol
        self.gradient = gradient
        self.options = options
        self.reg_loss = torch.zeros(())
        self.stats = None

    def forward(self, y0: Tensor, t: Tensor | Sequence[float]) -> Tensor:
        solver = dict(
            method=self.method, rtol=self.rtol, atol=self.atol, gradient=self.gradient, options=self.options
        )
        if self.is_sde:
            # An SDE's solves draw their Brownian paths from the generator.
            solver["generator"] = self.generator
            plain, regularized = sde_solve_plain, sde_global_regularization
        else:
            plain = functools.partial(solve_plain, backend="local_reg", adjoint_params=None)
            regularized = global_regularization
        if not self.training:
            ys, self.stats = plain(self.func, y0, t, **solver)
            self.reg_loss = torch.zeros((), dtype=y0.dtype, device=y0.device)
            return ys
        ys, reg, self.stats = regularized(
            self.func, y0, t, regularizer=self.regularizer, reduction=self.reduction, **solver
        )
        self.reg_loss = reg * self.weight()
        return ys

    def get_extra_state(self) -> dict[str, Any]:
        return {"weight": self.weight.state_dict()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.weight.load_state_dict(state["weight"])
