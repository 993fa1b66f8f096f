"""``local_reg.compat.sdeint`` beside ``torchsde.sdeint`` on fixed Euler steps: cost, memory, values.

compat follows torchsde's grid (``dt`` summed from ``ts[0]``, the outputs interpolated linearly) in
calls of at most ``_GRID_CHUNK`` steps, keeping only the states the interpolation reads. Two
problems, a neural SDE with diagonal noise (``dy = MLP_f(y) dt + 0.1 sigmoid(MLP_g(y)) dW``,
``benchmarks/sde_checkpoint.py``'s, float32, one ``BrownianInterval`` per run):

- ``outputs``: 100 output times over ``[0, 2]`` with ``dt = 1e-2``, whose spacing 0.0202 ``dt``
  does not divide (as in torchsde's ``examples/latent_sde_lorenz.py``: 50 output times over
  ``[0, 1]``, ``dt = 1e-2``);
- ``long``: 3 output times over ``[0, 1]`` with ``dt = 1e-4`` (10,000 steps read at three times:
  sampling).

Columns: ``mode`` (``no_grad``: the solve alone; ``grad``: forward and backward of the mean square
of the outputs), drift evaluations of the forward solve, median seconds (the two libraries
interleaved in one process), the peak resident set size in a fresh process above the size before
it (``benchmarks/gradients.py``'s ``peak_growth_mb``), and the largest difference of the outputs
from torchsde's.

Run: ``.venv/bin/python benchmarks/compat_sde.py`` (``--help`` for options).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torchsde

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gradients import interleaved, peak_growth_mb, peak_mb_of  # noqa: E402
from sde_checkpoint import NeuralSDE  # noqa: E402

from local_reg import compat  # noqa: E402

PROBLEMS = {
    "outputs": (torch.linspace(0.0, 2.0, 100), 1e-2),
    "long": (torch.tensor([0.0, 0.5, 1.0]), 1e-4),
}
LIBRARIES = {"torchsde": torchsde.sdeint, "compat": compat.sdeint}
MODES = ("no_grad", "grad")


def make_problem(args, name: str):
    torch.manual_seed(0)
    sde = NeuralSDE(args.dim, args.width)
    y0 = torch.randn(args.batch, args.dim)
    ts, step = PROBLEMS[name]
    return sde, y0, ts, step


def run(sde, y0, ts, step, library: str, mode: str) -> torch.Tensor:
    bm = torchsde.BrownianInterval(
        float(ts[0]), float(ts[-1]), size=tuple(y0.shape), levy_area_approximation="none", entropy=1, dt=step
    )
    if mode == "no_grad":
        with torch.no_grad():
            return LIBRARIES[library](sde, y0, ts, bm=bm, method="euler", dt=step)
    ys = LIBRARIES[library](sde, y0, ts, bm=bm, method="euler", dt=step)
    ys.square().mean().backward()
    return ys.detach()


def measure_memory(args) -> None:
    """Child process: the peak RSS growth (MB) of one run."""
    torch.set_num_threads(1)
    library, name, mode = json.loads(args.memory_of)
    sde, y0, ts, step = make_problem(args, name)
    peak = peak_growth_mb(
        lambda: run(sde, y0, ts[:2], step, library, mode), lambda: run(sde, y0, ts, step, library, mode)
    )
    print(json.dumps({"peak_mb": peak}))


def memory_in_fresh_process(library: str, name: str, mode: str, args) -> float:
    command = [sys.executable, __file__, "--memory-of", json.dumps([library, name, mode])]
    command += ["--dim", str(args.dim), "--width", str(args.width), "--batch", str(args.batch)]
    return peak_mb_of(command)


def table(args) -> None:
    torch.set_num_threads(1)
    print(
        f"neural SDE, diagonal noise: dim {args.dim}, MLP width {args.width}, batch {args.batch}, float32; "
        f"Euler-Maruyama, fixed steps; torch {torch.__version__}, torchsde {torchsde.__version__}, 1 thread\n"
    )
    print("| problem | mode | library | drift evals | s | vs torchsde | peak MB | max abs diff |")
    print("|---|---|---|---|---|---|---|---|")
    for name in PROBLEMS:
        sde, y0, ts, step = make_problem(args, name)
        for mode in MODES:
            calls, outputs = {}, {}
            for library in LIBRARIES:
                sde.calls = 0
                outputs[library] = run(sde, y0, ts, step, library, mode)
                calls[library] = sde.calls // 2  # f and g are called once each per step
            problem = (sde, y0, ts, step)
            runs = {
                library: (lambda library=library, mode=mode, problem=problem: run(*problem, library, mode))
                for library in LIBRARIES
            }
            seconds, _ = interleaved(runs, args.repeats)
            for library in LIBRARIES:
                peak = memory_in_fresh_process(library, name, mode, args)
                difference = float((outputs[library] - outputs["torchsde"]).abs().max())
                print(
                    f"| {name} | {mode} | {library} | {calls[library]} | {seconds[library]:.3f} | "
                    f"{seconds[library] / seconds['torchsde']:.2f} | {peak:.1f} | {difference:.1e} |"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_of is not None:
        measure_memory(args)
        return
    table(args)


if __name__ == "__main__":
    main()
