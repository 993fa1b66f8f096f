"""Gradient methods on fields with kinks: each method's gradient against the exact flow's.

``dy/dt = MLP(y)``, an MLP ``dim -> width -> width -> dim`` (20-128-128-20 by default, the default
initialization, seeded), with tanh, ReLU or softplus after each hidden layer: the same weights in
each (one seed), so the ReLU field has kinks wherever a hidden unit's input changes sign, tanh is
the smooth field the other gradient benchmarks use and softplus the smooth twin of the ReLU one.
A batch of ``batch`` states is solved with the default tableau (tsit5) over ``[0, t1]`` with
outputs at ``t1 / 2`` and ``t1``; loss: the mean square of both outputs; gradient: of the loss
with respect to ``(y0, theta)``, in float64.

Reference, the gradient of the exact flow: the interpolating adjoint (``InterpolatingAdjoint``) at
``rtol = atol = 1e-10`` on a forward solve at ``1e-12``. The flow of a continuous field that is
smooth on either side of its kinks is differentiable where the trajectories cross the kinks (no
jump term: the field is continuous), and its derivative solves the adjoint equation
``da/dt = -a^T df/dy`` with a Jacobian that jumps at each crossing. The interpolating adjoint
integrates that equation with the local error of ``a`` under the tolerance's control, along the
forward's dense output, whose error the forward's tolerance controls; so it converges to the
flow's gradient as both tighten. ``"direct"`` at a tight tolerance does not serve: it is the exact
derivative of the discrete solve, and in a step whose stages straddle a kink the stages weight the
Jacobian's two sides by the tableau's weights instead of by the time spent on each side, an error
of the order of that step's size which no error estimate sees (the step size there shrinks only
like the square root of the tolerance). The script prints, per field, how far from the reference
are: the reference with both tolerances loosened ten times (forward 1e-11, adjoint 1e-9); the
backsolve adjoint at ``1e-11`` on the same forward, an independent computation of the same limit
(it solves ``y`` backwards instead of reading the dense output); and ``"direct"`` at
``rtol = atol = 1e-12``.

Rows: every name of ``local_reg.GRADIENT_METHODS``, and the two continuous adjoints with
``norm="seminorm"``, at the library's default tolerances (``rtol = 1e-6, atol = 1e-8``) and at
one tighter pair (``rtol = 1e-8, atol = 1e-10``); a continuous adjoint takes the forward's.
Columns: the relative error ``|g - g_ref| / |g_ref|``, ``1 - cosine(g, g_ref)`` (as
``|g / |g| - g_ref / |g_ref||^2 / 2``, which round-off leaves non-negative), the forward
solve's calls of the field (``stats.nfe``) and the backward pass's (``stats.nfe_backward``).

    python benchmarks/nonsmooth_gradients.py [--activations tanh relu softplus] [--batch 4]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fields import mlp  # noqa: E402

from local_reg import GRADIENT_METHODS, BacksolveAdjoint, GradientMethod, InterpolatingAdjoint, odeint  # noqa: E402

DTYPE = torch.float64
ACTIVATIONS = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU, "softplus": torch.nn.Softplus}
DEFAULT_TOLERANCES = (1e-6, 1e-8)  # odeint's rtol and atol
REFERENCE = (1e-12, 1e-10)  # forward rtol = atol, interpolating adjoint rtol = atol
REFERENCE_CHECK = (1e-11, 1e-9)
BACKSOLVE_CHECK = 1e-11  # its rtol = atol, on the reference's forward


class MLPField(torch.nn.Module):
    def __init__(self, dim: int, width: int, activation: type[torch.nn.Module]) -> None:
        super().__init__()
        self.net = mlp(dim, width, activation)

    def forward(self, t, y):
        return self.net(y)


def gradient_methods() -> dict[str, str | GradientMethod]:
    methods: dict[str, str | GradientMethod] = {name: name for name in GRADIENT_METHODS}
    methods["adjoint, seminorm"] = BacksolveAdjoint(norm="seminorm")
    methods["interpolating_adjoint, seminorm"] = InterpolatingAdjoint(norm="seminorm")
    return methods


def loss_gradient(
    field: MLPField, y0: torch.Tensor, t1: float, gradient: str | GradientMethod, rtol: float, atol: float
) -> tuple[torch.Tensor, int, int]:
    """The flattened gradient of the loss w.r.t. ``(y0, theta)``, and the forward and backward NFE."""
    y0 = y0.clone().requires_grad_(True)
    solution = odeint(field, y0, [0.0, t1 / 2, t1], rtol=rtol, atol=atol, gradient=gradient)
    loss = (solution.ys[1:] ** 2).mean()
    grads = torch.autograd.grad(loss, (y0, *field.parameters()))
    flat = torch.cat([g.reshape(-1) for g in grads])
    return flat, solution.stats.nfe, solution.stats.nfe_backward or 0


def reference_gradient(field: MLPField, y0: torch.Tensor, t1: float, tolerances: tuple[float, float]):
    forward, adjoint = tolerances
    gradient = InterpolatingAdjoint(rtol=adjoint, atol=adjoint)
    return loss_gradient(field, y0, t1, gradient, forward, forward)


def relative_error(g: torch.Tensor, reference: torch.Tensor) -> float:
    return float((g - reference).norm() / reference.norm())


def one_minus_cosine(g: torch.Tensor, reference: torch.Tensor) -> float:
    return float((g / g.norm() - reference / reference.norm()).norm() ** 2 / 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--activations", nargs="+", choices=list(ACTIVATIONS), default=list(ACTIVATIONS))
    parser.add_argument("--dim", type=int, default=20)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--t1", type=float, default=2.0)
    parser.add_argument(
        "--tighter", type=float, default=100.0, help="the second row set's tolerances: the defaults / this"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rtol, atol = DEFAULT_TOLERANCES
    tolerances = [(rtol, atol), (rtol / args.tighter, atol / args.tighter)]
    shape = f"{args.dim}-{args.width}-{args.width}-{args.dim}"
    print(
        f"dy/dt = MLP(y), {shape}, batch {args.batch}, [0, {args.t1:g}], tsit5, float64, "
        f"seed {args.seed}; torch {torch.__version__}, 1 thread\n"
    )
    rows = []
    for activation in args.activations:
        torch.manual_seed(args.seed)
        field = MLPField(args.dim, args.width, ACTIVATIONS[activation]).to(DTYPE)
        y0 = torch.randn(args.batch, args.dim, dtype=DTYPE)
        reference, reference_nfe, reference_nfe_backward = reference_gradient(field, y0, args.t1, REFERENCE)
        check, _, _ = reference_gradient(field, y0, args.t1, REFERENCE_CHECK)
        backsolve = BacksolveAdjoint(rtol=BACKSOLVE_CHECK, atol=BACKSOLVE_CHECK)
        backsolved, _, _ = loss_gradient(field, y0, args.t1, backsolve, REFERENCE[0], REFERENCE[0])
        tight_direct, _, _ = loss_gradient(field, y0, args.t1, "direct", REFERENCE[0], REFERENCE[0])
        print(
            f"{activation}: reference {reference_nfe} forward + {reference_nfe_backward} backward NFE; "
            f"relative differences from it: loosened (forward {REFERENCE_CHECK[0]:g}, adjoint "
            f"{REFERENCE_CHECK[1]:g}) {relative_error(check, reference):.1e}, backsolve adjoint at "
            f"{BACKSOLVE_CHECK:g} {relative_error(backsolved, reference):.1e}, direct at rtol = atol = "
            f"{REFERENCE[0]:g} {relative_error(tight_direct, reference):.1e}",
            flush=True,
        )
        for row_rtol, row_atol in tolerances:
            for name, gradient in gradient_methods().items():
                g, nfe, nfe_backward = loss_gradient(field, y0, args.t1, gradient, row_rtol, row_atol)
                cells = [
                    activation,
                    f"{row_rtol:g}, {row_atol:g}",
                    name,
                    f"{relative_error(g, reference):.1e}",
                    f"{one_minus_cosine(g, reference):.1e}",
                    str(nfe),
                    str(nfe_backward),
                    f"{nfe_backward / nfe:.1f}",
                ]
                rows.append(f"| {' | '.join(cells)} |")
    columns = ["field", "rtol, atol", "gradient", "relative error", "1 - cosine", "forward NFE"]
    columns += ["backward NFE", "backward / forward"]
    print(f"\n| {' | '.join(columns)} |")
    print("|---" * len(columns) + "|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
