"""A latent ODE on irregularly sampled periodic series, with optional regularization.

Data: noisy three-channel sinusoids with random amplitude, frequency and phase; each series is
observed at its own random times in ``[0, 5]`` (and at each time only some channels). Model (Rubanova
et al. 2019, with a GRU encoder): a GRU reads each series' observations backwards and gives a
Gaussian posterior over the latent state ``z0``; the latent ODE ``dz/dt = MLP([z, t])`` is solved once
per batch at the union of the batch's observation times (the solver interpolates there, so many
output times cost no extra steps) and a linear map decodes each series at its own times. Loss:
masked MSE plus a small KL term.

``--regularize local`` is local regularization (Pal, Edelman and Rackauckas, ICML 2023) at the
library's default: the field's mean square rate at one random time; ``global`` penalizes the
solver's error estimate at every step (Pal et al., ICML 2021), ``none`` nothing. The script
prints the test-time NFE of the latent solve (eval mode) before and after training, and plots a few
test series with the model's reconstruction on a fine grid.

    python examples/latent_ode.py --regularize local --out latent_local.png
    python examples/latent_ode.py --quick
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
from torch import Tensor  # noqa: E402

from local_reg import Regularized  # noqa: E402
from local_reg.experiments.models import ConcatMLP  # noqa: E402
from local_reg.experiments.tasks.latent_ode import LatentODE, irregular_series, masked_mse  # noqa: E402

# The examples' shared options and model choice, whatever the working directory.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_run_options, example_parser, make_model, positive_int, save_plot  # noqa: E402

T_MAX = 5.0
N_CHANNELS = 3


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = example_parser(
        __doc__.split("\n\n")[0], iterations=300, quick="a few iterations on a few series"
    )
    parser.add_argument("--n-train", type=positive_int, default=1000)
    parser.add_argument("--n-test", type=positive_int, default=100)
    parser.add_argument(
        "--n-times", type=positive_int, default=25, help="candidate observation times per series"
    )
    parser.add_argument("--batch-size", type=positive_int, default=50)
    parser.add_argument("--latent", type=positive_int, default=8)
    parser.add_argument("--hidden", type=positive_int, default=40)
    parser.add_argument("--rec-hidden", type=positive_int, default=32)
    add_run_options(parser, lr=1e-2, tol=1e-6, out="latent_ode.png")
    args = parser.parse_args(argv)
    if args.quick:
        args.iterations = min(args.iterations, 10)
        args.n_train, args.n_test = min(args.n_train, 100), min(args.n_test, 20)
    return args


def evaluate(
    model: LatentODE, block: Regularized, values: Tensor, mask: Tensor, times: Tensor
) -> tuple[int, float]:
    """Test NFE of the latent solve (``block``, the model's) and masked MSE, with ``z0`` the
    posterior mean (eval mode)."""
    model.eval()
    with torch.no_grad():
        prediction, _ = model(values, mask, times)
    model.train()
    return block.stats.nfe_main, masked_mse(prediction, values, mask).item()


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)

    # values, mask: (n, n_times, channels); times: (n, n_times), each series' observed times first.
    values, mask, times = irregular_series(
        args.n_train + args.n_test, args.n_times, T_MAX, N_CHANNELS, 0.6, 0.6, 0.01, seed=0
    )
    train = (values[: args.n_train], mask[: args.n_train], times[: args.n_train])
    test = (values[args.n_train :], mask[args.n_train :], times[args.n_train :])

    # Default weights: local regularization's own (it tunes itself); global: [GR21]'s PhysioNet one.
    block = make_model(
        ConcatMLP(args.latent, args.hidden),
        args.regularize,
        args.weight,
        global_weight=1000.0,
        rtol=args.rtol,
        atol=args.atol,
    )
    grid = torch.linspace(0.0, T_MAX, args.n_times)  # only used by the model without per-series times
    model = LatentODE(block, N_CHANNELS, args.latent, args.rec_hidden, grid, kl_weight=1e-3)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    nfe_before, mse_before = evaluate(model, block, *test)
    print(f"NFE before training: {nfe_before}")
    start = time.perf_counter()
    for iteration in range(1, args.iterations + 1):
        index = torch.randint(args.n_train, (args.batch_size,))
        batch_values, batch_mask, batch_times = (x[index] for x in train)
        prediction, kl = model(batch_values, batch_mask, batch_times)
        mse = masked_mse(prediction, batch_values, batch_mask)
        optimizer.zero_grad()
        (mse + kl + block.reg_loss).backward()
        optimizer.step()
        if iteration % max(args.iterations // 10, 1) == 0 or iteration == args.iterations:
            print(
                f"iter {iteration:5d}  mse {mse.item():.4f}  reg {block.reg_loss.item():.2e}  "
                f"train NFE {block.stats.nfe_main}  ({time.perf_counter() - start:.0f} s)"
            )

    nfe_after, mse_after = evaluate(model, block, *test)
    print(f"NFE after training: {nfe_after}")
    print(f"test MSE: {mse_before:.4f} -> {mse_after:.4f}")

    # Reconstruct a few test series on a fine grid from their posterior means.
    n_plot = min(3, args.n_test)
    fine = torch.linspace(0.0, T_MAX, 200)
    model.eval()
    with torch.no_grad():
        z0, _ = model.encode(*(x[:n_plot] for x in test))
        curves = model.decoder(block(z0, fine)).numpy()  # (200, n_plot, channels)
    fig, axes = plt.subplots(1, n_plot, figsize=(4 * n_plot, 3.5), squeeze=False)
    for i, ax in enumerate(axes[0]):
        for c in range(N_CHANNELS):
            seen = test[1][i, :, c] > 0
            (line,) = ax.plot(fine, curves[:, i, c], label=f"channel {c}")
            ax.plot(
                test[2][i, seen].numpy(),
                test[0][i, seen, c].numpy(),
                "o",
                color=line.get_color(),
                markersize=4,
            )
        ax.set(xlabel="t", title=f"test series {i}")
    axes[0, 0].legend(fontsize="small")
    fig.suptitle(
        f"regularize={args.regularize}: test NFE {nfe_before} -> {nfe_after}, MSE {mse_after:.4f}"
        " (dots: observations)"
    )
    save_plot(fig, args.out)
    return {"nfe_before": nfe_before, "nfe_after": nfe_after, "test_loss": mse_after}


if __name__ == "__main__":
    main()
