"""How far the adaptive SDE solver's path error lies from its tolerance, against torchsde's.

``local_reg.sdeint``'s embedded estimate (docs/sde.md) has a Milstein part for multiplicative noise
and only the drift's ``h^2`` part for additive noise, which misses Euler--Maruyama's leading
``O(h^{3/2})`` local error there (the drift's response to the noise). This measures what that
means for a user: on additive-noise problems (and on diagonal noise that barely depends on ``y``,
whose Milstein part is small), the mean absolute error at ``t = 2`` over a few
Brownian paths against a fine fixed-step solve on the same path, and the evaluations spent, for
``local_reg.sdeint`` (adaptive Euler--Maruyama) and ``torchsde.sdeint`` (adaptive ``euler``, step
doubling), at equal ``rtol = atol``.

    python benchmarks/sde_tolerance.py [--paths 12] [--method milstein]
"""

from __future__ import annotations

import argparse
from statistics import fmean as mean

import torch
import torchsde

from local_reg import sdeint


class OrnsteinUhlenbeck(torch.nn.Module):
    """``dy = -2 y dt + dW``."""

    noise_type, sde_type = "additive", "ito"

    def f(self, t, y):
        return -2.0 * y

    def g(self, t, y):
        return torch.ones(y.shape[0], 1, 1, dtype=y.dtype)


class ForcedDoubleWell(torch.nn.Module):
    """``dy = (y - y^3 + sin 3t) dt + 0.5 dW``."""

    noise_type, sde_type = "additive", "ito"

    def f(self, t, y):
        return y - y**3 + torch.sin(3.0 * t)

    def g(self, t, y):
        return torch.full((y.shape[0], 1, 1), 0.5, dtype=y.dtype)


class NearlyAdditive(torch.nn.Module):
    """``dy = -2 y dt + (0.5 + 0.05 sin y) dW``: diagonal noise that barely depends on ``y`` (a neural
    SDE's squashed diffusion is often so), whose Milstein term, and with it the estimate's noise
    part, is small."""

    noise_type, sde_type = "diagonal", "ito"

    def f(self, t, y):
        return -2.0 * y

    def g(self, t, y):
        return 0.5 + 0.05 * torch.sin(y)


class Counting(torch.nn.Module):
    """Counts torchsde's drift and diffusion calls."""

    def __init__(self, sde: torch.nn.Module) -> None:
        super().__init__()
        self.sde, self.noise_type, self.sde_type, self.calls = sde, sde.noise_type, sde.sde_type, 0

    def f(self, t, y):
        self.calls += 1
        return self.sde.f(t, y)

    def g(self, t, y):
        self.calls += 1
        return self.sde.g(t, y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paths", type=int, default=12)
    parser.add_argument("--method", default="euler_maruyama", help="local_reg's scheme (or milstein)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dtype, span, y0 = torch.float64, [0.0, 2.0], torch.full((1, 1), 0.5, dtype=torch.float64)
    print(f"mean |error| at t = 2 over {args.paths} paths (float64), and evaluations per solve")
    print(f"local_reg: adaptive {args.method}\n")
    print("| problem | rtol = atol | local_reg error | / tol | NFE | torchsde error | / tol | NFE |")
    print("|---|---|---|---|---|---|---|---|")
    problems = {
        "Ornstein-Uhlenbeck": OrnsteinUhlenbeck(),
        "forced double well": ForcedDoubleWell(),
        "nearly additive (diagonal)": NearlyAdditive(),
    }
    for name, sde in problems.items():
        paths = []
        for seed in range(args.paths):
            bm = torchsde.BrownianInterval(*span, size=(1, 1), dtype=dtype, entropy=seed, dt=1e-3)
            # Milstein (Euler--Maruyama for additive noise) is of strong order 1: 2^-14 is ~1e-4 of the
            # errors below.
            reference = sdeint(sde, y0, span, bm=bm, step_size=2**-14, method="milstein", max_steps=10**6).ys[
                -1
            ]
            paths.append((bm, reference))
        for tol in (1e-2, 1e-3, 1e-4):
            ours, theirs, our_nfe, their_nfe = [], [], [], []
            for bm, reference in paths:
                solution = sdeint(
                    sde, y0, span, bm=bm, rtol=tol, atol=tol, method=args.method, max_steps=10**6
                )
                ours.append(float((solution.ys[-1] - reference).abs()))
                our_nfe.append(solution.stats.nfe)
                counting = Counting(sde)
                ys = torchsde.sdeint(
                    counting, y0, torch.tensor(span, dtype=dtype), bm=bm, method="euler", adaptive=True,
                    rtol=tol, atol=tol, dt=0.1, dt_min=1e-8,
                )  # fmt: skip
                theirs.append(float((ys[-1] - reference).abs()))
                their_nfe.append(counting.calls)
            print(
                f"| {name} | {tol:.0e} | {mean(ours):.1e} | {mean(ours) / tol:.1f} | {mean(our_nfe):.0f} "
                f"| {mean(theirs):.1e} | {mean(theirs) / tol:.1f} | {mean(their_nfe):.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
