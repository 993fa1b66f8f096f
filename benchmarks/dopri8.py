"""dopri8 (Prince and Dormand's RK8(7)13M) at tight tolerances, read at many output times.

For Lotka--Volterra and van der Pol (mu = 1) on ``[0, 10]`` (the problems of ``peers.py``) and each
``rtol = atol``, every solver returns the state at ``--outputs`` evenly spaced times; the error is the
max abs difference there against scipy's DOP853 at rtol = atol = 1e-13 (its own dense output at those
times), the NFE are counted by the field itself, and the time is the median of ``--repeats``
interleaved forward solves (float64, one thread, no autograd). Solvers: local_reg ``tsit5`` and
``dopri8`` (interpolating between steps with its fifth-order dense output), torchdiffeq's ``dopri8``
(the same tableau, interpolating with a quartic through a fifth-order midpoint), and scipy's DOP853
(another eighth-order pair with a seventh-order dense output; NFE and error only, since it calls a
numpy field).

``--float32`` instead counts the evaluations of one Lotka--Volterra solve to ``t = 10`` (no output
times between) in float32 and float64 at ``--tolerances`` (default 1e-6, 1e-7, 1.4e-8), for local_reg's
``tsit5``, ``dopri5`` and ``dopri8``: near float32's rounding dopri8's estimate measures the stages'
rounding.

``--derive`` instead derives local_reg's dopri8 dense output again (the procedure the docstring of
``local_reg.interpolants`` states) and prints the largest difference from the stored coefficients.

    python benchmarks/dopri8.py [--tolerances 1e-6 1e-8 1e-10 1e-12] [--outputs 201] [--repeats 5]
    python benchmarks/dopri8.py --float32 [--tolerances 1e-6 1e-7 1.4e-8]
    python benchmarks/dopri8.py --derive
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
import torch
from fields import CallCounter
from peers import lotka_volterra, van_der_pol
from scipy.integrate import solve_ivp

import local_reg
from local_reg.interpolants import get_interpolant
from local_reg.tableaus import _density, _rooted_trees, _stage_weights

PROBLEMS = {
    "Lotka-Volterra": (lotka_volterra, (1.0, 1.0)),
    "van der Pol mu = 1": (van_der_pol, (2.0, 0.0)),
}
T1 = 10.0


def derive_dense_output(order: int = 5, degree: int = 7, ridge: float = 1e-12) -> np.ndarray:
    """dopri8's ``B_i(theta)`` coefficients, shape ``(14, degree)``: every order condition up to
    ``order`` for each power of ``theta``, ``B(1) = b``, ``B'(0) = e_1`` and ``B'(1) = e_14`` exactly
    (least squares on that affine set), the rest of the freedom minimizing the order ``order + 1``
    conditions' residual at 41 thetas in ``[0, 1]`` plus ``ridge`` times the coefficients' squared
    norm. Stages 2 to 5, whose weights in ``b`` are 0, get a zero weight at every ``theta`` too."""
    tableau = local_reg.TABLEAUS["dopri8"]
    n = tableau.n_stages
    a = np.zeros((n, n))
    for i, row in enumerate(tableau.a):
        a[i, :i] = row
    c, b = np.array(tableau.c), np.array(tableau.b)
    used = [0, *range(5, n)]
    powers = degree - 1  # theta^1 is fixed: B'(0) = e_1 makes its coefficients e_1

    def unpack(x: np.ndarray) -> np.ndarray:
        beta = np.zeros((degree, n))
        beta[0, 0] = 1.0
        beta[1:, used] = x.reshape(powers, len(used))
        return beta

    trees = [(tree, k) for k in range(1, order + 2) for tree in _rooted_trees(order + 1)[k]]
    weights = {tree: _stage_weights(tree, a, c) for tree, _ in trees}

    def constraints(x: np.ndarray) -> np.ndarray:
        beta = unpack(x)
        conditions = [
            beta[p - 1] @ weights[tree] - (p == k) / _density(tree)[1]
            for p in range(1, degree + 1)
            for tree, k in trees
            if k <= order
        ]
        slopes = (np.arange(1, degree + 1)[:, None] * beta).sum(0)
        return np.concatenate([conditions, beta.sum(0) - b, slopes - np.eye(n)[-1]])

    def next_order(x: np.ndarray) -> np.ndarray:
        beta = unpack(x)
        return np.array(
            [
                sum(beta[p - 1] @ weights[tree] * theta**p for p in range(1, degree + 1))
                - theta**k / _density(tree)[1]
                for theta in np.linspace(0.0, 1.0, 41)
                for tree, k in trees
                if k == order + 1
            ]
        )

    size = powers * len(used)
    zero = np.zeros(size)
    basis = np.eye(size)
    # Both maps are affine in x: their matrices column by column.
    e_matrix = np.stack([constraints(v) - constraints(zero) for v in basis], axis=1)
    m_matrix = np.stack([next_order(v) - next_order(zero) for v in basis], axis=1)
    particular = np.linalg.lstsq(e_matrix, -constraints(zero), rcond=None)[0]
    _, singular, vt = np.linalg.svd(e_matrix)
    null = vt[(singular > 1e-10 * singular[0]).sum() :].T
    stacked = np.vstack([m_matrix @ null, math.sqrt(ridge) * null])
    target = np.concatenate([-next_order(zero) - m_matrix @ particular, -math.sqrt(ridge) * particular])
    beta = unpack(particular + null @ np.linalg.lstsq(stacked, target, rcond=None)[0])
    # Least squares meets the constraints to about 1e-13; the two highest powers are then solved
    # from the end conditions alone, B(1) = b and B'(1) = e_14, so those hold to round-off ...
    low = beta[: degree - 2]
    value_left = b - low.sum(0)
    slope_left = np.eye(n)[-1] - (np.arange(1, degree - 1)[:, None] * low).sum(0)
    beta[degree - 1] = slope_left - (degree - 1) * value_left
    beta[degree - 2] = value_left - beta[degree - 1]
    beta = beta.T.copy()
    # ... and the first stage absorbs the rounding, so each power's weights sum exactly (consistency).
    for power in range(degree):
        beta[0, power] = (power == 0) - math.fsum(beta[1:, power])
    return beta


def solvers(tol: float) -> dict:
    def ours(method: str):
        def solve(field, y0, times):
            return local_reg.odeint(field, y0, times, method=method, rtol=tol, atol=tol).ys

        return solve

    out = {"local_reg tsit5": ours("tsit5"), "local_reg dopri8": ours("dopri8")}
    try:
        import torchdiffeq
    except ImportError:
        return out

    def theirs(field, y0, times):
        return torchdiffeq.odeint(field, y0, times, method="dopri8", rtol=tol, atol=tol)

    out["torchdiffeq dopri8"] = theirs
    return out


def scipy_dop853(field, y0: torch.Tensor, times: np.ndarray, tol: float) -> tuple[np.ndarray, int]:
    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return field(torch.tensor(t, dtype=torch.float64), torch.from_numpy(y)).numpy()

    solution = solve_ivp(
        rhs, (times[0], times[-1]), y0.numpy(), method="DOP853", rtol=tol, atol=tol, t_eval=times
    )
    if not solution.success:
        raise RuntimeError(solution.message)
    return solution.y.T, solution.nfev


def float32_evaluations(tolerances: list[float]) -> None:
    methods = ("tsit5", "dopri5", "dopri8")
    dtypes = (torch.float32, torch.float64)
    print("| rtol = atol | " + " | ".join(f"{str(d)[6:]}: {' / '.join(methods)}" for d in dtypes) + " |")
    print("|---|---|---|")
    for tol in tolerances:
        cells = []
        for dtype in dtypes:
            y0 = torch.tensor([1.0, 1.0], dtype=dtype)
            counts = [
                local_reg.odeint(lotka_volterra, y0, [0.0, T1], method=method, rtol=tol, atol=tol).stats.nfe
                for method in methods
            ]
            cells.append(" / ".join(map(str, counts)))
        print(f"| {tol:g} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tolerances", type=float, nargs="+")
    parser.add_argument("--outputs", type=int, default=201)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--derive", action="store_true", help="derive the dense output again and compare")
    parser.add_argument("--float32", action="store_true", help="count float32 against float64 evaluations")
    args = parser.parse_args()
    if args.float32:
        float32_evaluations(args.tolerances or [1e-6, 1e-7, 1.4e-8])
        return
    args.tolerances = args.tolerances or [1e-6, 1e-8, 1e-10, 1e-12]
    if args.derive:
        stored = np.array(get_interpolant("dopri8")._matrix)
        derived = derive_dense_output()
        print(f"largest |derived - stored| coefficient: {np.abs(derived - stored).max():.3g}")
        print(f"largest |coefficient|: {np.abs(derived).max():.3g}")
        return
    torch.set_num_threads(1)
    times_np = np.linspace(0.0, T1, args.outputs)
    times = torch.from_numpy(times_np)
    print(
        f"float64, 1 thread, {args.outputs} output times on [0, {T1:g}], median of {args.repeats} repeats\n"
    )
    for title, (field, start) in PROBLEMS.items():
        y0 = torch.tensor(start, dtype=torch.float64)
        reference, _ = scipy_dop853(field, y0, times_np, 1e-13)
        names = [*solvers(1e-6), "scipy DOP853"]
        print(f"### {title}\n")
        print("| rtol = atol | " + " | ".join(f"{name}: error / NFE / ms" for name in names) + " |")
        print("|---|" + "---|" * len(names))
        for tol in args.tolerances:
            cells = []
            for solve in solvers(tol).values():
                counter = CallCounter(field)
                with torch.no_grad():
                    ys = solve(counter, y0, times)
                seconds = []
                for _ in range(args.repeats):
                    start_time = time.perf_counter()
                    with torch.no_grad():
                        solve(field, y0, times)
                    seconds.append(time.perf_counter() - start_time)
                error = np.abs(ys.numpy() - reference).max()
                cells.append(f"{error:.2e} / {counter.calls} / {1e3 * statistics.median(seconds):.1f}")
            ys, nfe = scipy_dop853(field, y0, times_np, tol)
            cells.append(f"{np.abs(ys - reference).max():.2e} / {nfe} / –")
            print(f"| {tol:.0e} | " + " | ".join(cells) + " |")
        print()


if __name__ == "__main__":
    main()
