"""Vector fields shared by the benchmarks."""

from __future__ import annotations

import torch


def mlp(dim: int, width: int) -> torch.nn.Sequential:
    """``dim -> width -> width -> dim`` with tanh activations."""
    return torch.nn.Sequential(
        torch.nn.Linear(dim, width),
        torch.nn.Tanh(),
        torch.nn.Linear(width, width),
        torch.nn.Tanh(),
        torch.nn.Linear(width, dim),
    )


class CountingMLP(torch.nn.Module):
    """``f(t, y) = mlp(y)``, counting its calls independently of any solver.

    ``weight_scale`` multiplies the default-initialized weights: larger weights make the dynamics
    less trivial to integrate.
    """

    def __init__(self, dim: int, width: int, weight_scale: float = 1.0) -> None:
        super().__init__()
        self.net = mlp(dim, width)
        with torch.no_grad():
            for layer in self.net:
                if isinstance(layer, torch.nn.Linear):
                    layer.weight.mul_(weight_scale)
        self.calls = 0

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(y)
