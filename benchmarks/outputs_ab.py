"""Whether this checkout's solves give the same bits as another version's (see loop_ab.py for how
to make the package ``local_reg_old``)::

    python benchmarks/outputs_ab.py --old /tmp/oldpkg

A time-dependent MLP field; for each method (adaptive, fixed-step, landing on output times, dense
output), dtype and gradient method, one solve and the gradient of a loss with each version:
``ys``, ``ts``, the step record, the statistics and the gradients are compared with
``torch.equal`` (NaN equal to NaN). Prints every difference, or that there is none.
"""

from __future__ import annotations

import argparse

import torch
from fields import old_local_reg

import local_reg

CASES = (
    ("tsit5", {}),
    ("dopri5", {}),
    ("bosh3", {}),
    ("heun_euler", {}),
    ("rk4", {"step_size": 0.3}),
    ("tsit5", {"step_to_outputs": True}),
    ("dopri5", {"dense": True}),
)
GRADIENTS = ("direct", "checkpoint", "symplectic", "adjoint")
RECORD = ("t", "dt", "error_estimate", "stiffness_estimate", "states")


def same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.dtype == b.dtype and torch.equal(a.nan_to_num(nan=12345.0), b.nan_to_num(nan=12345.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old", required=True, help="folder holding the package local_reg_old")
    args = parser.parse_args()
    local_reg_old = old_local_reg(args.old)

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.Tanh(), torch.nn.Linear(64, 2))

    def field(t, y):
        return net(y) * torch.cos(t)

    differences = []
    for dtype in (torch.float32, torch.float64):
        net.to(dtype)
        y0 = torch.randn(16, 2, dtype=dtype)
        ts = torch.linspace(0, 5, 7, dtype=dtype)
        for method, options in CASES:
            for gradient in GRADIENTS:
                results = []
                for odeint in (local_reg_old.odeint, local_reg.odeint):
                    y = y0.clone().requires_grad_(True)
                    solution = odeint(
                        field,
                        y,
                        ts,
                        method=method,
                        gradient=gradient,
                        adjoint_params=tuple(net.parameters()),
                        record_states=True,
                        **options,
                    )
                    grads = torch.autograd.grad(solution.ys.square().sum(), [y, *net.parameters()])
                    results.append((solution, grads))
                (old, old_grads), (new, new_grads) = results
                case = f"{dtype} {method} {options} {gradient}:"
                compared = [("ys", old.ys, new.ys), ("ts", old.ts, new.ts)]
                compared += [(f"steps.{n}", getattr(old.steps, n), getattr(new.steps, n)) for n in RECORD]
                pairs = enumerate(zip(old_grads, new_grads, strict=True))
                compared += [(f"gradient {i}", a, b) for i, (a, b) in pairs]
                differences += [f"{case} {name}" for name, a, b in compared if not same(a, b)]
                if vars(old.stats) != vars(new.stats):
                    differences.append(f"{case} stats")
    solves = 2 * len(CASES) * len(GRADIENTS)
    print("\n".join(differences) if differences else f"no difference in {solves} solves and their gradients")


if __name__ == "__main__":
    main()
