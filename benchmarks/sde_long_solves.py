"""Long fixed-step SDE solves: the Brownian interval's step hint against the span's hundredth.

``sdeint`` makes torchsde's ``BrownianInterval`` with a step hint ``dt``: the span's hundredth, or
now a fixed ``step_size`` where it is shorter (``local_reg.sde.brownian.step_hint``). With the
span's hundredth alone the interval has 4 pieces, and consecutive steps in one piece make a chain of
splits one node deeper per step, each new node costing time with its depth (numpy's SeedSequence of
its spawn key): the cost per step grows with the number of steps. Both rows below are ``sdeint``,
one with the interval it makes, one with ``bm=`` an interval made with the span's hundredth; CPU
time per attempted step, median of interleaved pairs.

    python benchmarks/sde_long_solves.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchsde

from local_reg import sdeint


class Decay(torch.nn.Module):
    noise_type, sde_type = "diagonal", "ito"

    def f(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -y

    def g(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 0.1 * torch.ones_like(y)


def cpu_seconds(n_steps: int, hundredth: bool) -> float:
    y0 = torch.ones(16, 4)
    bm = None
    if hundredth:
        bm = torchsde.BrownianInterval(t0=0.0, t1=1.0, size=(16, 4), dtype=y0.dtype, entropy=7, dt=0.01)
    start = time.process_time()
    with torch.no_grad():
        solution = sdeint(
            Decay(),
            y0,
            [0.0, 1.0],
            step_size=1.0 / n_steps,
            max_steps=10**6,
            bm=bm,
            generator=None if hundredth else torch.Generator().manual_seed(7),
        )
    assert solution.stats.n_steps == n_steps
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| fixed steps | us/step, hint span/100 | us/step, hint step_size | ratio (median of pairs) |")
    print("|---|---|---|---|")
    for n_steps in (1000, 4000, 16000):
        old, new, ratios = [], [], []
        for pair in range(args.pairs):
            order = (True, False) if pair % 2 == 0 else (False, True)
            seconds = {hundredth: cpu_seconds(n_steps, hundredth) for hundredth in order}
            old.append(seconds[True])
            new.append(seconds[False])
            ratios.append(seconds[False] / seconds[True])
        print(
            f"| {n_steps} | {statistics.median(old) / n_steps * 1e6:.0f} | "
            f"{statistics.median(new) / n_steps * 1e6:.0f} | {statistics.median(ratios):.2f} |"
        )


if __name__ == "__main__":
    main()
