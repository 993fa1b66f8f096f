"""The continuous adjoints' backward cost under a scaled loss, as AMP's ``GradScaler`` scales it.

A 2-32-2 tanh MLP field (seed 0), a batch of 16 states, ``t = [0, 1]``, the default tolerances,
float32, loss ``s * mean((y(1) - 1)^2)`` for ``s`` in ``--scales``. Columns: the backward pass's
calls of the field, and the relative error of ``grad / s`` against ``"direct"``'s unscaled gradient.
The backsolve measures ``a`` and ``g`` against the forward's absolute tolerance, so a larger ``s``
shortens its steps; the interpolating adjoint divides the cotangents by their largest RMS first.
torchdiffeq's ``odeint_adjoint`` is run beside them when installed.

    python benchmarks/adjoint_loss_scale.py [--scales 1 65536 16777216]
"""

from __future__ import annotations

import argparse

import torch

from local_reg import BacksolveAdjoint, odeint


class CountingMLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2))
        self.calls = 0

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0**16, 2.0**24])
    args = parser.parse_args()
    torch.manual_seed(0)
    field = CountingMLP()
    y0 = torch.randn(16, 2)
    t = torch.tensor([0.0, 1.0])

    def gradient_and_calls(solve, scale: float) -> tuple[torch.Tensor, int]:
        field.zero_grad()
        ys = solve()
        field.calls = 0
        ((ys[-1] - 1).pow(2).mean() * scale).backward()
        flat = torch.cat([p.grad.flatten() for p in field.parameters()])
        return flat / scale, field.calls

    methods = {
        "adjoint": lambda: odeint(field, y0, t, gradient="adjoint").ys,
        "adjoint (seminorm)": lambda: odeint(field, y0, t, gradient=BacksolveAdjoint(norm="seminorm")).ys,
        "interpolating_adjoint": lambda: odeint(field, y0, t, gradient="interpolating_adjoint").ys,
    }
    try:
        import torchdiffeq

        # local_reg's default tolerances, given to torchdiffeq.
        methods["torchdiffeq odeint_adjoint"] = lambda: torchdiffeq.odeint_adjoint(
            field, y0, t, rtol=1e-6, atol=1e-8
        )
    except ImportError:
        pass
    exact, _ = gradient_and_calls(lambda: odeint(field, y0, t).ys, 1.0)
    print("| gradient | " + " | ".join(f"s = {s:.0f}" for s in args.scales) + " |")
    print("|---|" + "---|" * len(args.scales))
    for name, solve in methods.items():
        cells = []
        for scale in args.scales:
            gradient, calls = gradient_and_calls(solve, scale)
            error = float((gradient - exact).norm() / exact.norm())
            cells.append(f"{calls} NFE, {error:.1e}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
