"""``SDEBlock``: a neural SDE as a module, ``ys = block(y0, t)``, plain or regularized.

It has the interface of the ODE wrappers (:class:`local_reg.LocallyRegularized`): ``stats`` after
every call, ``reg_loss`` (already weighted) in training mode, ``weight`` a schedule with
``step()``. In eval mode it is the plain solve with no extra cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .backends import check_backend_gradient, solve_main
from .regularization import (
    SAMPLINGS,
    _brownian,
    _choice,
    sde_global_regularization,
    sde_local_regularization,
)
from .sdeint import DEFAULT_ATOL, DEFAULT_RTOL, validate_sde_problem
from .stats import SDERegularizationStats

REGULARIZATIONS = (None, "local", "global")


class SDEBlock(nn.Module):
    """Solve ``dy = f dt + g dW`` (``sde`` a torchsde-style module) at ``t`` from ``y0``.

    Args:
        sde: the neural SDE (a submodule, so its parameters are the block's).
        regularization: ``None`` (vanilla), ``"local"`` (:func:`sde_local_regularization`) or
            ``"global"`` (:func:`sde_global_regularization`), applied in training mode only.
        sampling, step_size: of local regularization.
        weight: a non-negative float or a :class:`local_reg.regularization.WeightSchedule`;
            ``reg_loss = weight() * R``.
        rtol, atol, method, gradient, backend, options: of the main solve (see
            :func:`sde_local_regularization`); in eval mode the same solver runs unregularized.
        generator: draws ``t_reg`` and the Brownian seeds (torch's global generator by default).
    """

    reg_loss: Tensor | None
    stats: SDERegularizationStats | None

    def __init__(
        self,
        sde: nn.Module,
        *,
        regularization: str | None = None,
        sampling: str = "random",
        step_size: str = "initial",
        weight: Any = 1.0,
        rtol: float = DEFAULT_RTOL,
        atol: float = DEFAULT_ATOL,
        method: str | None = None,
        gradient: str = "direct",
        backend: str = "local_reg",
        generator: torch.Generator | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        from ..regularization.schedules import as_schedule  # noqa: PLC0415  (no import cycle)

        if regularization not in REGULARIZATIONS:
            raise ValueError(
                f"unknown regularization {regularization!r}; expected one of {list(REGULARIZATIONS)}"
            )
        _choice("sampling", sampling, SAMPLINGS)
        check_backend_gradient(backend, gradient)
        if regularization == "global" and (backend != "local_reg" or gradient != "direct"):
            raise ValueError(
                "global regularization differentiates through the local_reg solver: it needs "
                f"backend='local_reg' and gradient='direct', got backend={backend!r}, gradient={gradient!r}"
            )
        self.sde = sde
        self.regularization = regularization
        self.sampling = sampling
        self.step_size = step_size
        self.weight = as_schedule(weight)
        self.solver = dict(method=method, rtol=rtol, atol=atol, gradient=gradient, options=options)
        self.backend = backend
        self.generator = generator
        self.reg_loss = None
        self.stats = None

    def forward(self, y0: Tensor, t: Tensor | Sequence[float]) -> Tensor:
        if self.training and self.regularization == "local":
            ys, reg, self.stats = sde_local_regularization(
                self.sde,
                y0,
                t,
                sampling=self.sampling,
                step_size=self.step_size,
                backend=self.backend,
                generator=self.generator,
                **self.solver,
            )
        elif self.training and self.regularization == "global":
            ys, reg, self.stats = sde_global_regularization(
                self.sde, y0, t, generator=self.generator, **self.solver
            )
        else:
            ys, self.stats = self._plain(y0, t)
            self.reg_loss = None
            return ys
        self.reg_loss = reg * self.weight()
        return ys

    def _plain(self, y0: Tensor, t: Tensor | Sequence[float]) -> tuple[Tensor, SDERegularizationStats]:
        noise_type, times = validate_sde_problem(self.sde, y0, t, "euler_maruyama")
        bm, nfe = _brownian(self.sde, noise_type, y0, times, None, self.generator)
        main = solve_main(self.sde, y0, times, backend=self.backend, bm=bm, **self.solver)
        stats = SDERegularizationStats(
            nfe_main=main.nfe_drift + main.nfe_diffusion + nfe,
            nfe_main_drift=main.nfe_drift,
            nfe_main_diffusion=main.nfe_diffusion + nfe,
            n_accepted=main.n_accepted,
            solver_stats=main.solver_stats,
            backward_counter=main.backward_counter,
        )
        return main.ys, stats

    def get_extra_state(self) -> dict[str, Any]:
        # The weight schedule's position, so a checkpoint resumes a decaying weight where it was.
        return {"weight": self.weight.state_dict()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.weight.load_state_dict(state["weight"])

    def extra_repr(self) -> str:
        return (
            f"regularization={self.regularization!r}, sampling={self.sampling!r}, weight={self.weight!r}, "
            f"backend={self.backend!r}, gradient={self.solver['gradient']!r}"
        )
