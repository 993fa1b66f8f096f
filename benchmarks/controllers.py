"""The default PI controller against an integral one (torchdiffeq's, diffrax's default), at equal error.

For Lotka-Volterra, van der Pol and the batched benchmark MLP (``peers.py``'s problems, float64),
each Runge-Kutta pair is solved at rtol = atol = 1e-3 ... 1e-9 with ``PIController()`` (Hairer's
stabilized PI controller, the default) and ``PIController(beta1=0.2, beta2=0.0)`` (integral
control); the error at the final time is measured against scipy's DOP853 at 1e-13 and the NFE
counted by the field. Prints the NFE per tolerance and the NFE ratio PI / integral at equal error
(min-max over the error range both reach).

    python benchmarks/controllers.py
"""

from __future__ import annotations

import torch
from fields import CallCounter, mlp_problem, mlp_problem_parser
from peers import equal_error_ratio, lotka_volterra, reference, van_der_pol

from local_reg import PIController, odeint

TOLERANCES = (1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9)
CONTROLLERS = {"PI (default)": PIController(), "integral": PIController(beta1=0.2, beta2=0.0)}


def main() -> None:
    args = mlp_problem_parser(__doc__.splitlines()[0], batch=64, device=False).parse_args()
    mlp, y0_mlp = mlp_problem(args)
    problems = {
        "Lotka-Volterra": (lotka_volterra, torch.tensor([[1.0, 1.0]], dtype=torch.float64), 10.0),
        "van der Pol": (van_der_pol, torch.tensor([[2.0, 0.0]], dtype=torch.float64), 10.0),
        f"MLP (batch {args.batch})": (mlp.double(), y0_mlp.double(), args.t1),
    }
    print("| problem | method | NFE, PI (default) | NFE, integral | NFE PI / integral at equal error |")
    print("|---|---|---|---|---|")
    for name, (f, y0, t1) in problems.items():
        field = CallCounter(f)
        exact = reference(field, y0, t1)
        t = torch.tensor([0.0, t1], dtype=torch.float64)
        for method in ("tsit5", "dopri5"):
            rows = {}
            for label, controller in CONTROLLERS.items():
                for tol in TOLERANCES:
                    field.calls = 0
                    with torch.no_grad():
                        ys = odeint(field, y0, t, method=method, rtol=tol, atol=tol, controller=controller).ys
                    rows[(label, tol)] = ((ys[-1] - exact).abs().max().item(), field.calls)
            nfe = {
                label: " / ".join(str(rows[(label, tol)][1]) for tol in TOLERANCES) for label in CONTROLLERS
            }
            span = equal_error_ratio(rows, *CONTROLLERS, 1)
            ratio = "n/a" if span is None else f"{span[0]:.2f}-{span[1]:.2f}x"
            print(f"| {name} | {method} | {nfe['PI (default)']} | {nfe['integral']} | {ratio} |")


if __name__ == "__main__":
    main()
