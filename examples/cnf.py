"""A continuous normalizing flow (FFJORD-style) on two moons, with optional regularization.

The flow maps a data point ``x = z(0)`` to ``z(1)`` by ``dz/dt = f(z, t)``; along the way
``d logp/dt = -tr(df/dz)`` (the instantaneous change of variables, Chen et al. 2018), so
``log p(x) = log N(z(1); 0, I) + int_0^1 tr(df/dz) dt``. The trace is estimated without forming the
Jacobian by Hutchinson's estimator ``tr(J) ~ e^T J e`` with Rademacher noise ``e``, drawn once per
solve (Grathwohl et al., FFJORD, ICLR 2019). Training maximizes the likelihood of the data.

``--regularize local`` is local regularization (Pal, Edelman and Rackauckas, ICML 2023) at the
library's default: the field's mean square rate at one random time; ``global`` penalizes the
solver's error estimate at every step (Pal et al., ICML 2021), ``none`` nothing. The script
prints the test-time NFE (eval mode) before and after training, and plots the data, samples from the
flow (the ODE solved backwards from Gaussian noise) and the learned density.

    python examples/cnf.py --regularize local --out cnf_local.png
    python examples/cnf.py --quick
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from sklearn.datasets import make_moons  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from local_reg import Regularized  # noqa: E402

# The examples' shared options and model choice, whatever the working directory.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_run_options, example_parser, make_model, positive_int, save_plot  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = example_parser(
        __doc__.split("\n\n")[0], iterations=500, quick="a few iterations on small batches"
    )
    parser.add_argument("--batch-size", type=positive_int, default=256)
    parser.add_argument("--hidden", type=positive_int, default=64)
    parser.add_argument("--grid", type=positive_int, default=60, help="points per side of the density plot")
    add_run_options(parser, lr=5e-3, tol=1e-5, out="cnf.png")
    args = parser.parse_args(argv)
    if args.quick:
        args.iterations = min(args.iterations, 10)
        args.batch_size, args.grid = min(args.batch_size, 64), min(args.grid, 20)
    return args


class CNFField(nn.Module):
    """The augmented field ``d/dt [z, logp] = [f(z, t), -tr(df/dz)]`` on one flat state ``(N, 3)``.

    The state is one tensor rather than the tuple ``(z, logp)`` (which the regularized models also
    take, solved as this same flat state). The ``logp`` column enters the solver's error norm, as
    it does in torchdiffeq's tuple solve.

    ``noise`` (``(N, 2)``, Rademacher) is fixed for a whole solve, as Hutchinson's estimator of the
    integral requires; ``exact_trace=True`` computes ``tr(df/dz)`` exactly instead (two backward
    passes in 2-D), for the density plot.
    """

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(3, hidden),
            nn.Softplus(),
            nn.Linear(hidden, hidden),
            nn.Softplus(),
            nn.Linear(hidden, 2),
        )
        self.noise: Tensor | None = None
        self.exact_trace = False

    def forward(self, t: Tensor, state: Tensor) -> Tensor:
        # The trace needs df/dz even under torch.no_grad (evaluation); keep the graph only when training.
        keep_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            z = state[:, :2]
            if not z.requires_grad:
                z = z.detach().requires_grad_(True)
            dz = self.net(torch.cat([z, t.expand(len(z), 1)], dim=1))
            if self.exact_trace:
                rows = (
                    torch.autograd.grad(dz[:, i].sum(), z, retain_graph=True, create_graph=keep_graph)[0]
                    for i in range(2)
                )
                trace = torch.stack([row[:, i] for i, row in enumerate(rows)]).sum(0)
            else:
                if self.noise is None:
                    raise ValueError("set CNFField.noise (Rademacher, shape (N, 2)) or exact_trace=True")
                noise_jacobian = torch.autograd.grad(dz, z, self.noise, create_graph=keep_graph)[0]
                trace = (noise_jacobian * self.noise).sum(1)
        derivative = torch.cat([dz, -trace.unsqueeze(1)], dim=1)
        return derivative if keep_graph else derivative.detach()


def log_likelihood(model: Regularized, x: Tensor) -> Tensor:
    """``log p(x)`` per point: solve ``[x, 0]`` from t=0 to 1, then add ``log N(z(1))``."""
    model.func.noise = torch.randint(0, 2, x.shape).to(x.dtype) * 2 - 1
    state = model(torch.cat([x, torch.zeros(len(x), 1)], dim=1), torch.tensor([0.0, 1.0]))[-1]
    z1, delta_logp = state[:, :2], state[:, 2]
    log_normal = -0.5 * (z1**2).sum(1) - math.log(2 * math.pi)
    return log_normal - delta_logp


def sample_moons(n: int, seed: int | None = None) -> Tensor:
    x, _ = make_moons(n, noise=0.05, random_state=seed)
    return torch.as_tensor((x - [0.5, 0.25]) * 2.0, dtype=torch.float32)  # centred, unit-ish scale


def measure_nfe(model: Regularized, x: Tensor) -> tuple[int, float]:
    """Test NFE of the plain solve in eval mode, and the mean log-likelihood of ``x``."""
    model.eval()
    with torch.no_grad():
        loglik = log_likelihood(model, x).mean().item()
    model.train()
    return model.stats.nfe_main, loglik


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)

    model = make_model(CNFField(args.hidden), args.regularize, args.weight, rtol=args.rtol, atol=args.atol)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    test_x = sample_moons(args.batch_size, seed=12345)

    nfe_before, loglik_before = measure_nfe(model, test_x)
    print(f"NFE before training: {nfe_before}")
    start = time.perf_counter()
    for iteration in range(1, args.iterations + 1):
        # make_moons takes seeds in [0, 2**32): any --seed, each iteration its own.
        x = sample_moons(args.batch_size, seed=(args.seed * 100_000 + iteration) % 2**32)
        nll = -log_likelihood(model, x).mean()
        optimizer.zero_grad()
        (nll + model.reg_loss).backward()
        optimizer.step()
        if iteration % max(args.iterations // 10, 1) == 0 or iteration == args.iterations:
            print(
                f"iter {iteration:5d}  nll {nll.item():.3f}  reg {model.reg_loss.item():.2e}  "
                f"train NFE {model.stats.nfe_main}  ({time.perf_counter() - start:.0f} s)"
            )

    nfe_after, loglik_after = measure_nfe(model, test_x)
    print(f"NFE after training: {nfe_after}")
    print(f"test log-likelihood: {loglik_before:.3f} -> {loglik_after:.3f}")

    model.eval()
    with torch.no_grad():
        # Samples: Gaussian noise carried from t=1 back to t=0 (the logp column is not needed).
        noise = torch.randn(1000, 2)
        model.func.noise = torch.ones_like(noise)
        samples = model(torch.cat([noise, torch.zeros(1000, 1)], dim=1), torch.tensor([1.0, 0.0]))[-1, :, :2]
        side = torch.linspace(-4.0, 4.0, args.grid)
        grid = torch.cartesian_prod(side, side)
        model.func.exact_trace = True
        density = log_likelihood(model, grid).exp().reshape(args.grid, args.grid)
        model.func.exact_trace = False

    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    # As numpy arrays: matplotlib's reading of tensors goes through a deprecated numpy protocol.
    data, drawn, image = (x.numpy() for x in (sample_moons(1000, seed=0), samples, density))
    axes[0].scatter(data[:, 0], data[:, 1], s=2)
    axes[0].set_title("data")
    axes[1].scatter(drawn[:, 0], drawn[:, 1], s=2, color="C1")
    axes[1].set_title("samples from the flow")
    axes[2].imshow(image.T, origin="lower", extent=(-4, 4, -4, 4), cmap="viridis")
    axes[2].set_title("learned density")
    for ax in axes[:2]:
        ax.set(xlim=(-4, 4), ylim=(-4, 4), aspect="equal")
    fig.suptitle(
        f"regularize={args.regularize}: test NFE {nfe_before} -> {nfe_after}, "
        f"log-likelihood {loglik_after:.3f}"
    )
    save_plot(fig, args.out)
    return {"nfe_before": nfe_before, "nfe_after": nfe_after, "test_loss": -loglik_after}


if __name__ == "__main__":
    main()
