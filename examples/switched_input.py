"""Identify a plant driven by a switched input: a neural ODE whose field jumps at known times.

The true plant is a damped oscillator driven by a square wave, ``x'' = -x - 0.5 x' + u(t)`` with
``u(t) = +1`` or ``-1``, switching every ``--period / 2`` (a bang-bang control, a thermostat, a
sampled-and-held input: the switching times are known). The model ``f(t, y) = MLP([y, u(t)])`` is
trained on trajectories from random starts, observed at regular times, by mean square error. The
field jumps wherever ``u`` does; ``--jumps`` (the default) passes the switching times to the solver as
``PIController(jump_ts=...)`` (docs/solver.md), so that no step crosses a switch and each step sees
one side of it; ``--no-jumps`` lets the step-size controller find them by rejecting steps. The
script prints the test solve's NFE before and after training, and the test MSE, and plots one
trajectory.

    python examples/switched_input.py                      # jump_ts and local regularization
    python examples/switched_input.py --no-jumps --quick   # the same, stepping across the switches
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

from local_reg import PIController, Regularized, odeint  # noqa: E402

# The examples' shared options and model choice, whatever the working directory.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    add_run_options,
    example_parser,
    make_model,
    positive_float,
    positive_int,
    save_plot,
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = example_parser(
        __doc__.split("\n\n")[0], iterations=1000, quick="a few iterations on a shorter horizon"
    )
    parser.add_argument(
        "--jumps",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="pass the switching times to the solver (PIController(jump_ts=...))",
    )
    parser.add_argument("--period", type=positive_float, default=2.0, help="period of the square-wave input")
    parser.add_argument("--horizon", type=positive_float, default=10.0, help="length of each trajectory")
    parser.add_argument("--n-times", type=positive_int, default=41, help="observed times per trajectory")
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument("--hidden", type=positive_int, default=32)
    add_run_options(parser, lr=3e-3, tol=1e-6, out="switched_input.png")
    args = parser.parse_args(argv)
    if args.quick:
        args.iterations, args.horizon = min(args.iterations, 20), min(args.horizon, 4.0)
    if args.n_times < 2:
        parser.error(
            f"--n-times must be at least 2 (a trajectory's start and one observation), got {args.n_times}"
        )
    return args


class SquareWave:
    """``u(t)``: ``+1`` on ``[0, period / 2)``, ``-1`` on ``[period / 2, period)``, and so on."""

    def __init__(self, period: float) -> None:
        self.period = period

    def __call__(self, t: Tensor) -> Tensor:
        return torch.where(torch.remainder(t, self.period) < self.period / 2, 1.0, -1.0).to(t.dtype)

    def switches(self, horizon: float) -> list[float]:
        """The switching times inside ``(0, horizon)``."""
        half = self.period / 2
        return [k * half for k in range(1, int(horizon / half) + 1) if k * half < horizon]


class Plant(nn.Module):
    """The true dynamics: ``(x, v)' = (v, -x - 0.5 v + u(t))``."""

    def __init__(self, u: SquareWave) -> None:
        super().__init__()
        self.u = u

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        x, v = y.unbind(-1)
        return torch.stack([v, -x - 0.5 * v + self.u(t).to(y.dtype)], dim=-1)


class InputField(nn.Module):
    """``f(t, y) = MLP([y, u(t)])``: the network sees the state and the input."""

    def __init__(self, u: SquareWave, hidden: int) -> None:
        super().__init__()
        self.u = u
        self.net = nn.Sequential(nn.Linear(3, hidden), nn.Tanh(), nn.Linear(hidden, 2))

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        u = self.u(t).to(y.dtype).expand(*y.shape[:-1], 1)
        return self.net(torch.cat([y, u], dim=-1))


def measure(model: Regularized, y0: Tensor, t: Tensor, true_y: Tensor) -> tuple[int, float, Tensor]:
    """NFE and MSE of the plain solve of the test trajectories (eval mode: no regularization)."""
    model.eval()
    with torch.no_grad():
        ys = model(y0, t)
    model.train()
    return model.stats.nfe_main, (ys - true_y).square().mean().item(), ys


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)

    u = SquareWave(args.period)
    # The controller carries the switching times: the data and the model are solved with them.
    controller = PIController(jump_ts=u.switches(args.horizon) if args.jumps else ())
    t = torch.linspace(0.0, args.horizon, args.n_times)
    train_y0, test_y0 = torch.randn(256, 2), torch.randn(64, 2)
    with torch.no_grad():
        truth = PIController(jump_ts=u.switches(args.horizon))
        train_y = odeint(Plant(u), train_y0, t, rtol=1e-7, atol=1e-9, controller=truth).ys
        test_y = odeint(Plant(u), test_y0, t, rtol=1e-7, atol=1e-9, controller=truth).ys

    model = make_model(
        InputField(u, args.hidden),
        args.regularize,
        args.weight,
        rtol=args.rtol,
        atol=args.atol,
        options={"controller": controller},
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    nfe_before, _, _ = measure(model, test_y0, t, test_y)
    print(f"NFE before training: {nfe_before}")
    start = time.perf_counter()
    for iteration in range(1, args.iterations + 1):
        batch = torch.randint(len(train_y0), (args.batch_size,))
        pred_y = model(train_y0[batch], t)
        loss = (pred_y - train_y[:, batch]).square().mean()
        optimizer.zero_grad()
        (loss + model.reg_loss).backward()
        optimizer.step()
        if iteration % max(args.iterations // 10, 1) == 0 or iteration == args.iterations:
            stats = model.stats.main
            print(
                f"iter {iteration:5d}  loss {loss.item():.4f}  train NFE {stats.nfe} "
                f"(rejected steps {stats.n_rejected})  ({time.perf_counter() - start:.0f} s)"
            )

    nfe_after, test_mse, pred_y = measure(model, test_y0, t, test_y)
    print(f"NFE after training: {nfe_after}")
    print(f"test MSE: {test_mse:.4f}")

    fig, ax = plt.subplots(figsize=(8, 4))
    for switch in u.switches(args.horizon):
        ax.axvline(switch, color="0.85", lw=0.8)
    ax.plot(t, test_y[:, 0, 0], "g-", label="true x")
    ax.plot(t, pred_y[:, 0, 0], "b--", label="learned x")
    ax.set(xlabel="t", title=f"jumps={args.jumps}, regularize={args.regularize}: test NFE {nfe_after}")
    ax.legend(fontsize="small")
    save_plot(fig, args.out)
    return {"nfe_before": nfe_before, "nfe_after": nfe_after, "test_loss": test_mse}


if __name__ == "__main__":
    main()
