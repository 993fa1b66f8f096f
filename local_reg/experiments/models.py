"""Building blocks shared by the ODE tasks: the vanilla solver module and time-concatenated dynamics."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..regularization import RegularizationStats
from ..regularization.local import solve_plain


class ODEBlock(nn.Module):
    """``ys = block(y0, t)``: solve ``dy/dt = func(t, y)``, no regularization.

    The *vanilla* method. It has the call signature and the ``stats`` / ``reg_loss`` attributes of the
    regularized wrappers so the runner treats every method alike.

    Attributes:
        stats: the :class:`RegularizationStats` of the last forward solve (``nfe_reg`` is 0).
        reg_loss: always ``None`` (nothing to add to the loss).
    """

    def __init__(
        self,
        func: nn.Module,
        *,
        method: str = "tsit5",
        rtol: float = 1e-6,
        atol: float = 1e-8,
        gradient: str = "direct",
    ):
        super().__init__()
        self.func = func
        self.method = method
        self.rtol = rtol
        self.atol = atol
        self.gradient = gradient
        self.stats = RegularizationStats()
        self.reg_loss: Tensor | None = None

    def forward(self, y0: Tensor, t: Tensor) -> Tensor:
        # The regularized wrappers' own eval-mode solve: vanilla is exactly their unregularized path.
        ys, self.stats = solve_plain(
            self.func,
            y0,
            t,
            backend="local_reg",
            method=self.method,
            rtol=self.rtol,
            atol=self.atol,
            gradient=self.gradient,
            adjoint_params=None,
            options=None,
        )
        return ys


class ConcatMLP(nn.Module):
    """``f(t, y) = W_L tanh(... tanh(W_1 [y, t]))``: a tanh MLP that sees time as an extra input.

    The dynamics of the paper's MNIST neural ODE (784 -> 100 -> 784 with time concatenated).
    """

    def __init__(self, dim: int, hidden: int, layers: int = 1):
        super().__init__()
        widths = [dim + 1] + [hidden] * layers
        modules: list[nn.Module] = []
        for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
            modules += [nn.Linear(fan_in, fan_out), nn.Tanh()]
        modules.append(nn.Linear(widths[-1], dim))
        self.net = nn.Sequential(*modules)

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        time = t.expand(*y.shape[:-1], 1)
        return self.net(torch.cat([y, time], dim=-1))
