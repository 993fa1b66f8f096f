"""Cost of the augmented penalties' mean-square rate: RNODE's training iteration with the library's
``mean_square`` (each square divided by the count before the sum, so that float32's sum of squares
cannot overflow where every square is finite) against the plain ``x.pow(2).mean()`` it replaced.

One RNODE training iteration (forward + backward of an MSE loss plus ``reg_loss``, no optimizer
step) of the benchmark MLP on a ``(batch, dim)`` state; both rates (kinetic and Jacobian) use the
variant. Variants are interleaved in every round, in alternating order, the plain rate twice (the
spread between its two rows is the machine's noise); the ratio is the median over rounds of the
variant's CPU time over the plain one's (same round). The rate alone (forward + backward of one
call on a state-sized tensor) is timed too.

    python benchmarks/kinetic_rate.py [--repeats 21] [--batch 256] [--dim 64]
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from fields import clock, mlp_problem, mlp_problem_parser

import local_reg.regularization.rnode as rnode
from local_reg import RNODERegularized
from local_reg.regularization._augmented import mean_square

Rate = Callable[[torch.Tensor], torch.Tensor]


def plain_mean_square(x: torch.Tensor) -> torch.Tensor:
    """The rate before: float32's mean sums the squares in float32."""
    return x.pow(2).mean() if x.numel() else x.new_zeros(())


def main() -> None:
    parser = mlp_problem_parser(__doc__, batch=256, device=False)
    parser.set_defaults(dim=64, t1=1.0)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--rate-calls", type=int, default=2000)
    args = parser.parse_args()
    field, y0 = mlp_problem(args)
    target = torch.randn_like(y0)
    model = RNODERegularized(field, weight=0.01, rtol=args.rtol, atol=args.atol)
    now = clock("cpu")
    # The plain rate twice: the spread of its two rows is this machine's noise.
    variants: dict[str, Rate] = {
        "plain mean": plain_mean_square,
        "library": mean_square,
        "plain mean, again": plain_mean_square,
    }

    def iteration(rate: Rate) -> float:
        rnode.mean_square = rate  # the integrand reads the module's name at each call
        start = now()
        ys = model(y0, [0.0, args.t1])
        loss = (ys[-1] - target).pow(2).mean() + model.reg_loss
        field.zero_grad(set_to_none=True)
        loss.backward()
        return now() - start

    try:
        for rate in variants.values():  # warm-up
            iteration(rate)
        seconds: dict[str, list[float]] = {name: [] for name in variants}
        for round_ in range(args.repeats):
            order = list(variants.items())
            for name, rate in order if round_ % 2 else reversed(order):  # no variant always first
                seconds[name].append(iteration(rate))
    finally:
        rnode.mean_square = mean_square
    nfe = model.stats.nfe_main

    x = torch.randn_like(y0, requires_grad=True)
    per_call: dict[str, float] = {}
    for name, rate in variants.items():
        start = time.process_time()
        for _ in range(args.rate_calls):
            rate(x).backward()
        per_call[name] = (time.process_time() - start) / args.rate_calls

    print(
        f"    RNODE, MLP {args.dim}->{args.width}->{args.width}->{args.dim}, batch {args.batch}, "
        f"t in [0, {args.t1}], rtol={args.rtol}, atol={args.atol}, {args.threads} thread(s), float32, "
        f"{nfe} forward NFE, median of {args.repeats} interleaved rounds\n"
    )
    print("| rate | CPU s / iteration | CPU ratio to plain mean | rate alone, forward + backward (us) |")
    print("|---|---|---|---|")
    for name in variants:
        ratio = statistics.median(a / b for a, b in zip(seconds[name], seconds["plain mean"], strict=True))
        print(
            f"| {name} | {statistics.median(seconds[name]):.4f} | {ratio:.3f} | {per_call[name] * 1e6:.0f} |"
        )


if __name__ == "__main__":
    main()
