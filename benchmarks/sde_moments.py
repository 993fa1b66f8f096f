"""Weak accuracy of ``sdeint``: the mean and variance at ``t = 1`` over many paths, against their
closed forms, for geometric Brownian motion (multiplicative noise) and Ornstein--Uhlenbeck
(additive noise), at the default tolerance, a tighter one and fixed steps.

The paths are one batch, which shares one step size (as the bundled SDE tasks solve their
batches): the adaptive solve's steps are few at the default ``rtol = atol = 1e-2``.

    OMP_NUM_THREADS=1 python benchmarks/sde_moments.py
"""

from __future__ import annotations

import argparse
import math

import torch

from local_reg import sdeint

MU, SIGMA = 0.5, 0.3  # geometric Brownian motion dy = MU y dt + SIGMA y dW
THETA, NOISE = 2.0, 0.7  # Ornstein--Uhlenbeck dy = -THETA y dt + NOISE dW


class GeometricBrownianMotion(torch.nn.Module):
    noise_type = "diagonal"
    sde_type = "ito"

    def f(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return MU * y

    def g(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return SIGMA * y


class OrnsteinUhlenbeck(torch.nn.Module):
    noise_type = "additive"
    sde_type = "ito"

    def f(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -THETA * y

    def g(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return NOISE * torch.ones(y.shape[0], 1, 1, dtype=y.dtype)


def exact_moments(name: str, t: float) -> tuple[float, float]:
    if name == "geometric Brownian motion":
        return math.exp(MU * t), math.exp(2 * MU * t) * (math.exp(SIGMA**2 * t) - 1)
    return math.exp(-THETA * t), NOISE**2 / (2 * THETA) * (1 - math.exp(-2 * THETA * t))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paths", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    y0 = torch.ones(args.paths, 1, dtype=torch.float64)
    settings = {
        "default (1e-2)": {},
        "rtol = atol = 1e-3": {"rtol": 1e-3, "atol": 1e-3},
        "milstein, default": {"method": "milstein"},
        "fixed step 0.01": {"step_size": 0.01},
    }
    print(f"{args.paths} paths in one batch, t in [0, 1], y0 = 1, float64, seed {args.seed}\n")
    print("| SDE | solve | steps | mean (rel. error) | variance (rel. error) | standard error of the mean |")
    print("|---|---|---|---|---|---|")
    for name, sde in (
        ("geometric Brownian motion", GeometricBrownianMotion()),
        ("Ornstein-Uhlenbeck", OrnsteinUhlenbeck()),
    ):
        mean, variance = exact_moments(name, 1.0)
        for label, keywords in settings.items():
            generator = torch.Generator().manual_seed(args.seed)
            solution = sdeint(sde, y0, [0.0, 1.0], generator=generator, **keywords)
            y = solution.ys[-1].squeeze(-1)
            got_mean, got_variance = float(y.mean()), float(y.var())
            print(
                f"| {name} | {label} | {solution.stats.n_accepted} | {got_mean:.4f} "
                f"({got_mean / mean - 1:+.1%}) | {got_variance:.4f} ({got_variance / variance - 1:+.1%}) "
                f"| {float(y.std()) / math.sqrt(args.paths):.4f} |"
            )


if __name__ == "__main__":
    main()
