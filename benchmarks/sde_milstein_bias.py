"""Path accuracy of adaptive ``sdeint(method="milstein")`` where the diffusion is curved.

``dX = X/2 dt + sqrt(1 + X^2) dW``, ``X(0) = 0`` has the solution ``X = sinh(W)`` on the same
Brownian path. One path per solve (each its own steps), ``rtol = atol = tol``: the signed mean
error at ``t = 1`` with its standard error, the RMS error, and the evaluations per solve. A bias
that does not fall with ``tol`` shows in the signed mean (docs/sde.md, "Adaptive steps need
``method="milstein"`` for path accuracy").

    OMP_NUM_THREADS=1 python benchmarks/sde_milstein_bias.py
"""

from __future__ import annotations

import argparse
import math

import torch
import torchsde

from local_reg import sdeint


class Sinh(torch.nn.Module):
    noise_type = "diagonal"
    sde_type = "ito"

    def f(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 0.5 * y

    def g(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(1 + y * y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", type=int, default=48)
    parser.add_argument("--tols", type=float, nargs="+", default=[1e-3, 1e-4])
    args = parser.parse_args()
    y0 = torch.zeros(1, 1, dtype=torch.float64)
    print("| `rtol = atol` | signed mean error | RMS error | evaluations per solve |")
    print("|---|---|---|---|")
    for tol in args.tols:
        errors, evaluations = [], 0
        for seed in range(args.paths):
            bm = torchsde.BrownianInterval(
                0.0, 1.0, size=(1, 1), dtype=torch.float64, entropy=1000 + seed, dt=2**-12
            )
            with torch.no_grad():
                solution = sdeint(
                    Sinh(), y0, [0.0, 1.0], rtol=tol, atol=tol, bm=bm, method="milstein", max_steps=10**7
                )
            errors.append(float(solution.ys[-1] - torch.sinh(bm(0.0, 1.0))))
            evaluations += solution.stats.nfe
        error = torch.tensor(errors)
        standard_error = float(error.std()) / math.sqrt(args.paths)
        print(
            f"| {tol:.0e} | {float(error.mean()):+.2e} ± {standard_error:.1e} | "
            f"{float(error.pow(2).mean().sqrt()):.2e} | {evaluations // args.paths} |"
        )


if __name__ == "__main__":
    main()
