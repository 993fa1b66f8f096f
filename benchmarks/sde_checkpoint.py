"""sdeint's gradient methods side by side: peak memory, time, backward evaluations, gradient error.

A neural SDE with diagonal noise, ``dy = MLP_f(y) dt + sigma(y) dW`` (``MLP_f``: ``dim -> width ->
width -> dim`` with tanh; ``sigma(y) = 0.1 sigmoid(MLP_g(y))``, the same shape), batch ``batch``, is
solved by Euler--Maruyama (fixed steps, ``--steps`` of them, on ``[0, 1]`` with outputs at 1/2 and
1) on one Brownian path, and differentiated with ``gradient="direct"`` and ``"checkpoint"``. Loss:
the mean square of both outputs.

Columns:
- peak MB: the peak resident set size of one forward+backward in float32 in a fresh process, above
  the resident size before it (benchmarks/gradients.py's ``peak_growth_mb``: after a 2-step warm-up,
  glibc's mmap threshold at 16 KiB).
- s/iter: median seconds per forward+backward in float32, the methods interleaved in one process.
- bwd evals: drift and diffusion calls of the backward pass (direct re-uses the forward graph).
- grad err: relative error of ``(dL/dy0, dL/dtheta)`` in float64 against ``"direct"`` in float64.

Run: ``.venv/bin/python benchmarks/sde_checkpoint.py`` (``--help`` for options).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torchsde

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fields import mlp  # noqa: E402
from gradients import interleaved, peak_growth_mb, peak_mb_of, relative_error  # noqa: E402

from local_reg.sde import sdeint  # noqa: E402

METHODS = ("direct", "checkpoint")


class NeuralSDE(torch.nn.Module):
    noise_type, sde_type = "diagonal", "ito"

    def __init__(self, dim: int, width: int) -> None:
        super().__init__()
        self.drift = mlp(dim, width)
        self.diffusion = mlp(dim, width)
        self.calls = 0

    def f(self, t, y):
        self.calls += 1
        return self.drift(y)

    def g(self, t, y):
        self.calls += 1
        return 0.1 * torch.sigmoid(self.diffusion(y))


def make_problem(args, dtype: torch.dtype):
    torch.manual_seed(0)
    sde = NeuralSDE(args.dim, args.width).to(dtype)
    y0 = torch.randn(args.batch, args.dim, dtype=dtype)
    bm = torchsde.BrownianInterval(
        0.0, 1.0, size=(args.batch, args.dim), dtype=dtype, levy_area_approximation="none", entropy=0
    )
    return sde, y0, bm


def forward_backward(sde, y0, bm, n_steps: int, gradient: str):
    """One forward+backward; returns (flat gradients, backward evaluations)."""
    y0 = y0.clone().requires_grad_(True)
    params = tuple(sde.parameters())
    solution = sdeint(sde, y0, [0.0, 0.5, 1.0], bm=bm, step_size=1.0 / n_steps, gradient=gradient)
    before = sde.calls
    loss = (solution.ys[1:] ** 2).mean()
    grads = torch.autograd.grad(loss, (y0, *params))
    return torch.cat([g.reshape(-1) for g in grads]).detach(), sde.calls - before


def measure_memory(args) -> None:
    """Child process: print the peak RSS growth (MB) of one forward+backward."""
    torch.set_num_threads(1)
    sde, y0, bm = make_problem(args, torch.float32)
    peak = peak_growth_mb(
        lambda: forward_backward(sde, y0, bm, 2, args.memory_of),
        lambda: forward_backward(sde, y0, bm, args.memory_steps, args.memory_of),
    )
    print(json.dumps({"peak_mb": peak}))


def memory_in_fresh_process(gradient: str, n_steps: int, args) -> float:
    command = [sys.executable, __file__, "--memory-of", gradient, "--memory-steps", str(n_steps)]
    command += ["--dim", str(args.dim), "--width", str(args.width), "--batch", str(args.batch)]
    return peak_mb_of(command)


def table(args) -> None:
    print(
        f"neural SDE, diagonal noise: dim {args.dim}, MLP width {args.width} (drift and diffusion), batch "
        f"{args.batch}; Euler-Maruyama, fixed steps on [0, 1]; torch {torch.__version__}, 1 thread\n"
    )
    for n_steps in args.steps:
        sde64, y064, bm64 = make_problem(args, torch.float64)
        reference, _ = forward_backward(sde64, y064, bm64, n_steps, "direct")
        sde, y0, bm = make_problem(args, torch.float32)
        problem = (sde, y0, bm, n_steps)
        runs = {
            name: (lambda name=name, problem=problem: forward_backward(*problem, name)) for name in METHODS
        }
        forward_backward(sde, y0, bm, 2, "checkpoint")  # warm-up (the first autograd.Function call)
        seconds, results = interleaved(runs, args.repeats)
        print(f"### SDE, {n_steps} steps\n")
        print("| gradient | peak MB | vs direct | s/iter | vs direct | bwd evals | grad err |")
        print("|---|---|---|---|---|---|---|")
        peaks = {name: memory_in_fresh_process(name, n_steps, args) for name in METHODS}
        for name in METHODS:
            error = relative_error(forward_backward(sde64, y064, bm64, n_steps, name)[0], reference)
            print(
                f"| {name} | {peaks[name]:.1f} | {peaks[name] / peaks['direct']:.2f} | {seconds[name]:.3f} | "
                f"{seconds[name] / seconds['direct']:.2f} | {results[name][1]} | {error:.1e} |"
            )
        print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[50, 200, 1000])
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-of", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--memory-steps", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_of is not None:
        measure_memory(args)
        return
    torch.set_num_threads(1)
    table(args)


if __name__ == "__main__":
    main()
