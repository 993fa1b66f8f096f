"""Complex states: local_reg's real-view error norm against torchdiffeq's modulus, at equal tolerances.

``odeint`` solves a complex ``y0`` as its real view (docs/solver.md, "Inputs and the error contract"):
the real and imaginary parts of each element are two components of the error norm, each scaled by
``atol + rtol * |part|``; torchdiffeq (and diffrax) scale a complex element by its modulus. On the
Schrödinger equation ``dpsi/dt = -i H psi`` (``H`` a random Hermitian ``--levels`` x ``--levels``
matrix, seed 0; ``psi0`` random with ``|psi0| = 1``) over ``[0, --span]``, for each ``rtol`` (``atol =
rtol / 100``) and each of dopri5 and tsit5 (torchdiffeq has no tsit5: its row is dopri5's), the table
gives each solver's NFE (counted by the field) and its largest error at the end against
``matrix_exp(-i H t) psi0``, float64 (complex128), one thread, no autograd. The column "torchdiffeq,
real view" is torchdiffeq's dopri5 on ``torch.view_as_real(psi0)`` (the norm local_reg uses), which
separates the norm's share of the NFE ratio from the solvers' other conventions (docs/benchmarks.md,
"Work-precision against peers").

    python benchmarks/complex_states.py [--levels 8] [--span 10] [--tolerances 1e-4 1e-6 1e-8]
"""

from __future__ import annotations

import argparse

import torch
import torchdiffeq

import local_reg


def problem(levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    h = torch.randn(levels, levels, dtype=torch.complex128, generator=generator)
    psi0 = torch.randn(levels, dtype=torch.complex128, generator=generator)
    return (h + h.conj().T) / 2, psi0 / torch.linalg.vector_norm(psi0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--levels", type=int, default=8)
    parser.add_argument("--span", type=float, default=10.0)
    parser.add_argument("--tolerances", type=float, nargs="+", default=[1e-4, 1e-6, 1e-8])
    args = parser.parse_args()
    torch.set_num_threads(1)
    h, psi0 = problem(args.levels)
    exact = torch.linalg.matrix_exp(-1j * h * args.span) @ psi0
    times = torch.tensor([0.0, args.span], dtype=torch.float64)
    calls = [0]

    def field(t: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        return -1j * (h @ psi)

    print(f"Schrödinger equation, {args.levels} levels, t in [0, {args.span:g}], atol = rtol / 100")
    print()
    print(
        "| rtol | method | local_reg NFE | torchdiffeq NFE | NFE ratio | torchdiffeq, real view: NFE ratio | "
        "local_reg error | torchdiffeq error |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for rtol in args.tolerances:
        atol = rtol / 100
        calls[0] = 0
        theirs = torchdiffeq.odeint(field, psi0, times, rtol=rtol, atol=atol, method="dopri5")[-1]
        their_nfe = calls[0]
        their_error = float((theirs - exact).abs().max())
        calls[0] = 0

        def real_view_field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return torch.view_as_real(field(t, torch.view_as_complex(y)))

        torchdiffeq.odeint(
            real_view_field, torch.view_as_real(psi0), times, rtol=rtol, atol=atol, method="dopri5"
        )
        real_view_ratio = calls[0] / their_nfe
        for method in ("dopri5", "tsit5"):
            calls[0] = 0
            with torch.no_grad():
                ours = local_reg.odeint(field, psi0, times, rtol=rtol, atol=atol, method=method).ys[-1]
            our_error = float((ours - exact).abs().max())
            print(
                f"| {rtol:g} | {method} | {calls[0]} | {their_nfe} | {calls[0] / their_nfe:.2f} | "
                f"{real_view_ratio:.2f} | {our_error:.1e} | {their_error:.1e} |"
            )


if __name__ == "__main__":
    main()
