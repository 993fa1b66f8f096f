"""Building blocks shared by the ODE tasks: time-concatenated dynamics."""

from __future__ import annotations

import torch
from torch import Tensor, nn


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
