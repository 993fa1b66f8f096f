"""``SDEBlock``: a neural SDE as a module, ``ys = block(y0, t)``, unregularized.

The vanilla counterpart of :class:`local_reg.LocallyRegularized` and
:class:`local_reg.GloballyRegularized`, which accept the same SDE module for regularized training.
It has their interface (``stats`` after every call, ``reg_loss``) so a training loop treats every
method alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ._sdeint import DEFAULT_ATOL, DEFAULT_RTOL
from .backends import check_backend_gradient
from .regularization import sde_solve_plain
from .stats import SDERegularizationStats


class SDEBlock(nn.Module):
    """Solve ``dy = f dt + g dW`` (``sde`` a torchsde-style module) at ``t`` from ``y0``.

    Args:
        sde: the neural SDE (a submodule, so its parameters are the block's).
        rtol, atol, method, gradient, backend, options: of the solve (see
            :func:`local_reg.sde.sde_local_regularization`).
        generator: draws the Brownian seeds (torch's global generator by default).

    Attributes:
        stats: the :class:`SDERegularizationStats` of the last call (``nfe_reg == 0``).
        reg_loss: always ``None`` (nothing to add to the loss).
    """

    reg_loss: Tensor | None
    stats: SDERegularizationStats | None

    def __init__(
        self,
        sde: nn.Module,
        *,
        rtol: float = DEFAULT_RTOL,
        atol: float = DEFAULT_ATOL,
        method: str | None = None,
        gradient: str = "direct",
        backend: str = "local_reg",
        generator: torch.Generator | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_backend_gradient(backend, gradient)
        self.sde = sde
        self.solver = dict(
            method=method, rtol=rtol, atol=atol, gradient=gradient, backend=backend, options=options
        )
        self.generator = generator
        self.reg_loss = None
        self.stats = None

    def forward(self, y0: Tensor, t: Tensor | Sequence[float]) -> Tensor:
        ys, self.stats = sde_solve_plain(self.sde, y0, t, generator=self.generator, **self.solver)
        return ys

    def extra_repr(self) -> str:
        return f"backend={self.solver['backend']!r}, gradient={self.solver['gradient']!r}"
