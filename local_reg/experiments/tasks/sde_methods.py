"""How the SDE tasks wrap a neural SDE for each training method.

``vanilla`` is a plain :class:`local_reg.Regularized` (no penalty); ``local-random`` /
``local-biased`` wrap the SDE in :class:`local_reg.LocallyRegularized` [LR23] and ``global-error`` in
:class:`local_reg.GloballyRegularized` [GR21]. With ``--gradient checkpoint`` the main solve is
``local_reg.sdeint(gradient="checkpoint")``, with ``--gradient adjoint`` ``torchsde.sdeint_adjoint``
(both local and vanilla only: the global penalty is differentiated through every step of the
``local_reg`` solver; biased sampling needs local_reg's step record, so not with ``adjoint``).
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor, nn

from ...regularization import GloballyRegularized, LocallyRegularized, Regularized
from ...sde.problem import METHODS as SDE_SCHEMES
from ..methods import local_options, weight_schedule
from .base import ModelContext

SDE_METHODS: tuple[str, ...] = ("vanilla", "local-random", "local-biased", "global-error")
SDE_SOLVERS: tuple[str, ...] = SDE_SCHEMES
"""What an SDE task's ``solver.method`` may name: the schemes of :func:`local_reg.sdeint`, each
adaptive (``euler_maruyama``, ``milstein``); ``--gradient adjoint`` solves with torchsde's
Euler--Maruyama and refuses another."""
TORCHSDE_FIRST_STEP = 0.05
"""The first step of torchsde's adaptive solve under ``--gradient adjoint`` (no task sets another)."""


class SquashedNoiseSDE(nn.Module):
    """``dy = drift(t, y) dt + sigma_max * sigmoid(W y + b) dW`` (Ito, diagonal noise): the SDE
    tasks' neural SDE, whose diffusion stays in ``(0, sigma_max)``."""

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, drift: nn.Module, dim: int, sigma_max: float) -> None:
        super().__init__()
        self.drift = drift
        self.diffusion = nn.Linear(dim, dim)
        self.sigma_max = sigma_max

    def f(self, t: Tensor, y: Tensor) -> Tensor:
        return self.drift(t, y)

    def g(self, t: Tensor, y: Tensor) -> Tensor:
        return self.sigma_max * torch.sigmoid(self.diffusion(y))


def sde_block(sde: nn.Module, settings: dict[str, Any], context: ModelContext) -> Regularized:
    """The solver block of ``context.method`` around ``sde``; ``settings["solver"]`` holds
    ``method`` (one of :data:`SDE_SOLVERS`), ``rtol`` and ``atol``, ``settings["weights"][method]``
    the weight spec, and ``settings["local"]`` (if present) the local regularizer's options, as for
    ODE tasks."""
    method = context.method
    if method.name not in SDE_METHODS:
        raise ValueError(
            f"method {method.name!r} is not available for neural SDEs: use one of {list(SDE_METHODS)}"
        )
    if context.gradient not in ("direct", "checkpoint", "adjoint"):
        raise ValueError(
            "neural SDEs support --gradient direct, checkpoint (local_reg.sdeint) or adjoint (torchsde), "
            f"got {context.gradient!r}"
        )
    backend = "torchsde" if context.gradient == "adjoint" else "local_reg"
    scheme = settings["solver"]["method"]
    solver: dict[str, Any] = dict(rtol=settings["solver"]["rtol"], atol=settings["solver"]["atol"])
    if backend == "torchsde":
        if scheme != "euler_maruyama":
            raise ValueError(
                f"solver.method={scheme!r} is local_reg.sdeint's: --gradient adjoint solves with "
                "torchsde's Euler--Maruyama; use --gradient direct or checkpoint"
            )
        solver["options"] = {"dt": TORCHSDE_FIRST_STEP}
    else:
        solver["method"] = scheme
    if method.family == "vanilla":
        return Regularized(sde, backend=backend, gradient=context.gradient, **solver)
    weight = weight_schedule(settings["weights"][method.name], context.total_iterations, method.name)
    if method.family == "global":
        if context.gradient != "direct":
            raise ValueError(
                "global regularization differentiates through every step of the local_reg solver: use "
                "--gradient direct"
            )
        return GloballyRegularized(sde, weight=weight, **solver)
    if method.family == "local":
        return LocallyRegularized(
            sde,
            sampling=cast(str, method.sampling),  # Method refuses a local method without one
            weight=weight,
            backend=backend,
            gradient=context.gradient,
            **solver,
            **local_options(weight, settings),
        )
    raise ValueError(f"method {method.name!r}: family {method.family!r} has no neural SDE block")
