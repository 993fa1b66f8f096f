"""Fit a neural ODE to a spiral: torchdiffeq's ``ode_demo.py`` task, with optional regularization.

The true dynamics are ``dy/dt = (y**3) A`` with ``A = [[-0.1, 2], [-2, -0.1]]`` from ``y(0) = (2, 0)``
on ``[0, 25]``. The model ``f(y) = MLP(y**3)`` is trained on random short segments of the trajectory,
each integrated from its own first point, by mean absolute error (as in the torchdiffeq demo).

``--regularize local`` adds the local regularizer of Pal, Edelman and Rackauckas (ICML 2023) at the
library's default: the field's mean square rate at one randomly sampled time (the paper penalizes
the solver's error estimate ``EEst * |dt|`` of one step there); ``global`` the global one of
Pal et al. (ICML 2021), the error estimates summed over every step; ``none`` trains the plain model.
The script prints the test-time NFE (a solve of the whole trajectory in eval mode) before and after
training, and saves a plot of the true and learned trajectories.

    python examples/ode_demo.py --regularize local --out spiral_local.png
    python examples/ode_demo.py --quick
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from local_reg import Regularized, odeint  # noqa: E402

# The examples' shared options and model choice, whatever the working directory.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_run_options, example_parser, make_model, positive_int, save_plot  # noqa: E402

TRUE_A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = example_parser(
        __doc__.split("\n\n")[0],
        iterations=1000,
        quick="a few iterations on a coarser sampling (200 points) of the trajectory",
    )
    parser.add_argument("--data-size", type=positive_int, default=1000, help="points on the true trajectory")
    parser.add_argument("--batch-time", type=positive_int, default=10, help="points per training segment")
    parser.add_argument("--batch-size", type=positive_int, default=20, help="segments per batch")
    parser.add_argument("--hidden", type=positive_int, default=50)
    add_run_options(parser, lr=1e-3, tol=1e-6, out="ode_demo.png")
    args = parser.parse_args(argv)
    if args.quick:
        args.iterations, args.data_size = min(args.iterations, 20), min(args.data_size, 200)
    if args.batch_time < 2:
        parser.error(
            f"--batch-time must be at least 2 (a segment's start and one later point), got {args.batch_time}"
        )
    if args.data_size <= args.batch_time:
        parser.error(f"--data-size ({args.data_size}) must exceed --batch-time ({args.batch_time})")
    return args


class ODEFunc(nn.Module):
    """``f(t, y) = MLP(y**3)``: the demo's network, which sees the cubic features of the truth."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, 2))
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=0.1)
                nn.init.zeros_(layer.bias)

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return self.net(y**3)


def measure_nfe(model: Regularized, y0: Tensor, t: Tensor) -> tuple[int, Tensor]:
    """Evaluations of the plain solve of the whole trajectory (eval mode: no regularization)."""
    model.eval()
    with torch.no_grad():
        ys = model(y0, t)
    model.train()
    return model.stats.nfe_main, ys


def get_batch(true_y: Tensor, t: Tensor, batch_time: int, batch_size: int) -> tuple[Tensor, Tensor, Tensor]:
    start = torch.randint(len(t) - batch_time, (batch_size,))
    batch_y0 = true_y[start]  # (M, 2)
    batch_t = t[:batch_time] - t[0]  # the dynamics are autonomous: every segment starts at 0
    batch_y = torch.stack([true_y[start + i] for i in range(batch_time)])  # (T, M, 2)
    return batch_y0, batch_t, batch_y


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)

    true_y0 = torch.tensor([[2.0, 0.0]])
    t = torch.linspace(0.0, 25.0, args.data_size)
    with torch.no_grad():
        truth = odeint(lambda t, y: (y**3) @ TRUE_A, true_y0, t, method="dopri5", rtol=1e-7, atol=1e-9)
    true_y = truth.ys[:, 0]  # (data_size, 2)

    model = make_model(ODEFunc(args.hidden), args.regularize, args.weight, rtol=args.rtol, atol=args.atol)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    nfe_before, _ = measure_nfe(model, true_y0, t)
    print(f"NFE before training: {nfe_before}")
    start = time.perf_counter()
    for iteration in range(1, args.iterations + 1):
        batch_y0, batch_t, batch_y = get_batch(true_y, t, args.batch_time, args.batch_size)
        pred_y = model(batch_y0, batch_t)
        loss = (pred_y - batch_y).abs().mean()
        optimizer.zero_grad()
        (loss + model.reg_loss).backward()
        optimizer.step()
        if iteration % max(args.iterations // 10, 1) == 0 or iteration == args.iterations:
            print(
                f"iter {iteration:5d}  loss {loss.item():.4f}  reg {model.reg_loss.item():.2e}  "
                f"train NFE {model.stats.nfe_main}  ({time.perf_counter() - start:.0f} s)"
            )

    nfe_after, pred_y = measure_nfe(model, true_y0, t)
    test_loss = (pred_y[:, 0] - true_y).abs().mean().item()
    print(f"NFE after training: {nfe_after}")
    print(f"test MAE (whole trajectory): {test_loss:.4f}")

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    axes[0].plot(t, true_y[:, 0], "g-", label="true x")
    axes[0].plot(t, pred_y[:, 0, 0], "b--", label="learned x")
    axes[0].plot(t, true_y[:, 1], "g-", alpha=0.5, label="true y")
    axes[0].plot(t, pred_y[:, 0, 1], "b--", alpha=0.5, label="learned y")
    axes[0].set(xlabel="t", title="trajectories")
    axes[0].legend(fontsize="small")
    axes[1].plot(true_y[:, 0], true_y[:, 1], "g-", label="true")
    axes[1].plot(pred_y[:, 0, 0], pred_y[:, 0, 1], "b--", label="learned")
    axes[1].set(xlabel="x", ylabel="y", title="phase portrait")
    axes[1].legend(fontsize="small")
    fig.suptitle(f"regularize={args.regularize}: test NFE {nfe_before} -> {nfe_after}, MAE {test_loss:.3f}")
    save_plot(fig, args.out)
    return {"nfe_before": nfe_before, "nfe_after": nfe_after, "test_loss": test_loss}


if __name__ == "__main__":
    main()
