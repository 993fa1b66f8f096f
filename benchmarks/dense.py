"""Dense output: NFE against the number of output times, local_reg beside torchdiffeq.

Forward solves of the benchmark MLP (benchmarks/fields.py) at output times ``linspace(0, t1, n)``
for ``n`` in 2, 11, 51, 101: local_reg interpolating (the default) and landing on every output time
(``step_to_outputs=True``), torchdiffeq (which interpolates). Counts are deterministic.

    python benchmarks/dense.py [--dim 16] [--width 64] [--batch 64] [--rtol 1e-6] [--atol 1e-6]
"""

from __future__ import annotations

import torch
import torchdiffeq
from fields import CountingMLP, mlp_problem, mlp_problem_parser

import local_reg


def count(solve, field: CountingMLP) -> int:
    field.calls = 0
    with torch.no_grad():
        solve()
    return field.calls


def main() -> None:
    parser = mlp_problem_parser(__doc__.splitlines()[0], batch=64, atol=1e-06)
    args = parser.parse_args()
    field, y0 = mlp_problem(args)
    tol = dict(rtol=args.rtol, atol=args.atol)
    columns = {
        "local_reg tsit5": lambda t: local_reg.odeint(field, y0, t, method="tsit5", **tol),
        "local_reg tsit5, step_to_outputs": lambda t: local_reg.odeint(
            field, y0, t, method="tsit5", step_to_outputs=True, **tol
        ),
        "local_reg dopri5": lambda t: local_reg.odeint(field, y0, t, method="dopri5", **tol),
        "local_reg bosh3": lambda t: local_reg.odeint(field, y0, t, method="bosh3", **tol),
        "torchdiffeq dopri5": lambda t: torchdiffeq.odeint(field, y0, t, method="dopri5", **tol),
        "torchdiffeq bosh3": lambda t: torchdiffeq.odeint(field, y0, t, method="bosh3", **tol),
    }
    print(f"dim={args.dim} width={args.width} batch={args.batch} t1={args.t1}", end=" ")
    print(f"rtol={args.rtol} atol={args.atol}")
    print("| n | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for n in (2, 11, 51, 101):
        t = torch.linspace(0.0, args.t1, n)
        counts = [count(lambda solve=solve, t=t: solve(t), field) for solve in columns.values()]
        print(f"| {n} | " + " | ".join(str(c) for c in counts) + " |")


if __name__ == "__main__":
    main()
