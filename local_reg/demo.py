"""``make demo``: solve a small neural ODE and print the solver's statistics per method."""

from __future__ import annotations

import torch

from . import odeint


def main() -> None:
    torch.manual_seed(0)
    field = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.Tanh(), torch.nn.Linear(64, 2))
    y0 = torch.randn(256, 2)
    t = torch.linspace(0.0, 1.0, 5)
    print(f"{'method':<12}{'nfe':>6}{'steps':>7}{'accepted':>10}{'rejected':>10}")
    with torch.no_grad():
        for method in ["tsit5", "dopri5", "bosh3"]:
            stats = odeint(lambda t, y: field(y), y0, t, method=method, rtol=1e-6, atol=1e-8).stats
            print(f"{method:<12}{stats.nfe:>6}{stats.n_steps:>7}{stats.n_accepted:>10}{stats.n_rejected:>10}")


if __name__ == "__main__":
    main()
