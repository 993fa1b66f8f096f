"""A field that jumps at a known time, solved with and without torchdiffeq's ``options['jump_t']``, by
``local_reg.compat`` and torchdiffeq 0.2.5, and by ``local_reg.odeint`` with ``PIController``'s
``jump_ts`` and ``step_ts``: calls of the field and the largest error against the analytic solution
(counts are deterministic).

    python benchmarks/landings.py

``--scaling``: instead, the cost of long lists of landing times: ``PIController.within`` (what every
solve calls to keep the times of its span) with ``n`` step times and ``n`` jump times, and a float32
solve over a short window ``[0, 0.01]`` of ``n`` step times all beyond it; the fastest of three.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torchdiffeq

import local_reg.compat as compat
from local_reg import PIController, odeint

JUMP = 1.0


def jump_table() -> None:
    y0 = torch.tensor([0.5, 2.0], dtype=torch.float64)
    t = torch.linspace(0.0, 3.0, 7, dtype=torch.float64)

    def exact(s: float) -> torch.Tensor:
        at_jump = y0 * math.exp(-JUMP)
        return y0 * math.exp(-s) if s <= JUMP else 1 + (at_jump - 1) * math.exp(-(s - JUMP))

    reference = torch.stack([exact(s) for s in t.tolist()])
    print(
        "y' = -y + [t >= 1] (or [t > 1]), y0 = (0.5, 2), t = linspace(0, 3, 7), dopri5, rtol 1e-7, atol 1e-9"
    )
    print("| field's switch | library | options | NFE | max error |")
    print("|---|---|---|---|---|")
    for switch in (">=", ">"):
        for name, library in (("local_reg.compat", compat), ("torchdiffeq", torchdiffeq)):
            for options in (None, {"jump_t": torch.tensor([JUMP])}):
                calls = [0]

                def field(s, y, switch=switch, calls=calls):
                    calls[0] += 1
                    on = s >= JUMP if switch == ">=" else s > JUMP
                    return -y + on.to(y.dtype)

                ys = library.odeint(field, y0, t, options=options)
                error = (ys - reference).abs().max().item()
                label = "jump_t=[1]" if options else "none"
                print(f"| t {switch} 1 | {name} | {label} | {calls[0]} | {error:.1e} |")
    native()


def native() -> None:
    """docs/solver.md's example: y' = 1 before t = 0.5 and -2 after, tsit5 at the defaults."""

    def switched(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.where(t < 0.5, 1.0, -2.0).to(y.dtype) * torch.ones_like(y)

    y0 = torch.zeros(1, dtype=torch.float64)
    print()
    print(
        "y' = 1 for t < 0.5, -2 after, y0 = 0, t = [0, 1] (or [1, 0] from y = -0.5), local_reg.odeint, tsit5"
    )
    print("| direction | controller | NFE | rejected | error |")
    print("|---|---|---|---|---|")
    for label, start, span, exact in (
        ("forward", y0, [0.0, 1.0], -0.5),
        ("backward", y0 - 0.5, [1.0, 0.0], 0.0),
    ):
        for name, controller in (
            ("PIController()", PIController()),
            ("step_ts=[0.5]", PIController(step_ts=[0.5])),
            ("jump_ts=[0.5]", PIController(jump_ts=[0.5])),
        ):
            solution = odeint(switched, start, span, controller=controller)
            error = abs(solution.ys[-1].item() - exact)
            print(f"| {label} | {name} | {solution.stats.nfe} | {solution.stats.n_rejected} | {error:.1e} |")


def scaling() -> None:
    def fastest(call) -> float:
        best = math.inf
        for _ in range(3):
            start = time.perf_counter()
            call()
            best = min(best, time.perf_counter() - start)
        return best * 1e3

    print("| n | within, n step_ts + n jump_ts, ms | float32 solve on [0, 0.01], n step_ts beyond it, ms |")
    print("|---|---|---|")
    y0 = torch.ones(2, dtype=torch.float32)
    for n in (2000, 4000, 8000, 16000):
        times = torch.linspace(0.0, 10.0, 2 * n, dtype=torch.float64).tolist()
        both = PIController(step_ts=times[::2], jump_ts=times[1::2])
        beyond = PIController(step_ts=torch.linspace(1.0, 10.0, n, dtype=torch.float64).tolist())
        within = fastest(lambda both=both: both.within(0.0, 10.0))
        window = fastest(lambda beyond=beyond: odeint(lambda t, y: -y, y0, [0.0, 0.01], controller=beyond))
        print(f"| {n} | {within:.1f} | {window:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scaling", action="store_true", help="instead, the cost of long lists of step and jump times"
    )
    scaling() if parser.parse_args().scaling else jump_table()


if __name__ == "__main__":
    main()
