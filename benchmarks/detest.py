"""DETEST: the 25 nonstiff problems of Hull, Enright, Fellen and Sedgwick, "Comparing numerical
methods for ordinary differential equations", SIAM J. Numer. Anal. 9(4), 1972 (classes A to E, every
one on ``t in [0, 20]``), solved by local_reg against scipy's ``solve_ivp`` and torchdiffeq.

Each local_reg method is paired with the peers of the same or a comparable pair: ``tsit5`` and
``dopri5`` with scipy's RK45 and torchdiffeq's ``dopri5``, ``dopri8`` with scipy's DOP853 and
torchdiffeq's ``dopri8``, ``bosh3`` with scipy's RK23 and torchdiffeq's ``bosh3``. Every solver runs
in float64 at ``rtol = atol = tol``, one output time (``t1 = 20``), on one thread. The vector fields are
written once, in torch; scipy calls them through a numpy wrapper. The NFE are counted by the field
itself. Rejected steps: local_reg's ``stats.n_rejected``, torchdiffeq's ``callback_reject_step``,
and for scipy the attempted steps ``(NFE - 2) / stages`` (RK45 6, DOP853 12, RK23 3 evaluations per
attempt; two before the first) less the accepted ones.

The error of a solve is ``max_i |y_i(t1) - ref_i| / (tol * (1 + |ref_i|))``, so 1 means "the error the
tolerance asks for at the end". It is a global error, which no method controls: the tolerance bounds
the local error of each step. The reference ``ref`` is analytic where the solution is known (A1--A4,
D1--D5 by Kepler's equation, E1 as the Bessel function J_1/2, E4, E5), the matrix exponential for the
linear constant-coefficient problems (B2, C1--C4), and otherwise scipy's DOP853 at rtol = atol =
1e-13, all computed at run time. The script prints how far DOP853 at 1e-13 lies from each analytic
or matrix-exponential reference, relative to ``1 + |ref|``, as a check of both.

Per tolerance it prints, for each (local_reg method, peer): the median and max over the 25 problems
of both solvers' error / tol (with the problem of the max), the median and max of the NFE ratio
local_reg / peer, and the rejected steps summed over the problems; then the median error / tol of
every solver per problem class. A solve that fails is listed and left out of the statistics.

The default set (four methods, three tolerances, ten solvers, 25 problems) took 157 and 197 s wall
(about 100 s of CPU) in two runs on one thread of this project's 2-core machines, 127 s of the first
at 1e-9, mostly torchdiffeq's bosh3: well inside 10 minutes, so no combination is dropped.

    python benchmarks/detest.py [--methods tsit5 dopri5 dopri8 bosh3] [--tols 1e-3 1e-6 1e-9]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import scipy.linalg
import torch
from scipy.integrate import solve_ivp

import local_reg

T1 = 20.0
REFERENCE_TOL = 1e-13
MAX_STEPS = 1_000_000
TOLERANCES = (1e-3, 1e-6, 1e-9)
PEERS = {
    "tsit5": ("RK45", "dopri5"),
    "dopri5": ("RK45", "dopri5"),
    "dopri8": ("DOP853", "dopri8"),
    "bosh3": ("RK23", "bosh3"),
}
"""local_reg method -> (scipy method, torchdiffeq method)."""
SCIPY_STAGES = {"RK45": 6, "DOP853": 12, "RK23": 3}
"""Evaluations per attempted step of scipy's explicit pairs (FSAL; DOP853 without dense output)."""

Field = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Problem(NamedTuple):
    field: Field
    y0: tuple[float, ...]
    exact: Callable[[float], Sequence[float]] | None = None
    """``y(t)``, where the solution is known in closed form."""
    linear: bool = False
    """``y' = A y`` with a constant ``A``: the reference is ``expm(A t1) y0``."""


def s(*components: torch.Tensor) -> torch.Tensor:
    return torch.stack(components)


def e1(n: int) -> tuple[float, ...]:
    return (1.0,) + (0.0,) * (n - 1)


def chain(y: torch.Tensor) -> torch.Tensor:
    """C1: ``y_1' = -y_1``, ``y_i' = y_{i-1} - y_i`` (i = 2..9), ``y_10' = y_9``."""
    return torch.cat([-y[:1], y[:-2] - y[1:-1], y[-2:-1]])


C2_RATES = torch.arange(1.0, 10.0, dtype=torch.float64)


def weighted_chain(y: torch.Tensor) -> torch.Tensor:
    """C2: ``y_1' = -y_1``, ``y_i' = (i - 1) y_{i-1} - i y_i`` (i = 2..9), ``y_10' = 9 y_9``."""
    return torch.cat([-y[:1], C2_RATES[:-1] * y[:-2] - C2_RATES[1:] * y[1:-1], 9.0 * y[8:9]])


def tridiagonal(y: torch.Tensor) -> torch.Tensor:
    """C3, C4: ``y_i' = y_{i-1} - 2 y_i + y_{i+1}``, zero beyond the ends."""
    zero = torch.zeros_like(y[:1])
    return torch.cat([zero, y[:-1]]) - 2.0 * y + torch.cat([y[1:], zero])


# C5: the five outer planets around the sun (and the inner planets' mass), positions in AU, time in
# days, from the DETEST paper.
K2 = 2.95912208286e-4
SUN = 1.00000597682
PLANETS = torch.tensor(
    [0.000954786104043, 0.000285583733151, 0.0000437273164546, 0.0000517759138449, 0.00000277777777778],
    dtype=torch.float64,
)
POSITIONS = (
    (3.42947415189, 3.35386959711, 1.35494901715),
    (6.64145542550, 5.97156957878, 2.18231499728),
    (11.2630437207, 14.6952576794, 6.27960525067),
    (-30.1552268759, 1.65699966404, 1.43785752721),
    (-21.1238353380, 28.4465098142, 15.3882659679),
)
VELOCITIES = (
    (-0.557160570446, 0.505696783289, 0.230578543901),
    (-0.415570776342, 0.365682722812, 0.169143213293),
    (-0.325325669158, 0.189706021964, 0.0877265322780),
    (-0.0240476254170, -0.287659532608, -0.117219543175),
    (-0.176860753121, -0.216393453025, -0.0148647893090),
)


def five_body(y: torch.Tensor) -> torch.Tensor:
    """``x_i'' = k2 (-(m0 + m_i) x_i / r_i^3 + sum_{k != i} m_k ((x_k - x_i) / d_ik^3 - x_k / r_k^3))``."""
    x = y[:15].reshape(5, 3)
    r3 = x.square().sum(1) ** 1.5
    diff = x[None, :, :] - x[:, None, :]  # diff[i, k] = x_k - x_i
    eye = torch.eye(5, dtype=y.dtype)
    d3 = diff.square().sum(2) ** 1.5 + eye  # the diagonal (0 / 1) is masked out below
    pull = diff / d3[:, :, None] - (x / r3[:, None])[None, :, :]
    others = torch.einsum("ik,k,ikj->ij", 1.0 - eye, PLANETS, pull)
    acceleration = K2 * (-(SUN + PLANETS)[:, None] * x / r3[:, None] + others)
    return torch.cat([y[15:], acceleration.reshape(-1)])


def orbit(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r3 = (y[0] ** 2 + y[1] ** 2) ** 1.5
    return s(y[2], y[3], -y[0] / r3, -y[1] / r3)


def kepler(e: float) -> Callable[[float], Sequence[float]]:
    """The D problems' orbit of eccentricity ``e`` (period 2 pi), through Kepler's equation."""

    def exact(t: float) -> Sequence[float]:
        mean = math.remainder(t, 2.0 * math.pi)
        anomaly = mean + math.copysign(0.85 * e, math.sin(mean))  # Danby's start
        for _ in range(100):
            step = (anomaly - e * math.sin(anomaly) - mean) / (1.0 - e * math.cos(anomaly))
            anomaly -= step
            if abs(step) < 1e-16:
                break
        sin, cos = math.sin(anomaly), math.cos(anomaly)
        root, radius = math.sqrt(1.0 - e * e), 1.0 - e * cos
        return (cos - e, root * sin, -sin / radius, root * cos / radius)

    return exact


def bessel_half(t: float) -> Sequence[float]:
    """E1: ``J_1/2(x) = sqrt(2 / (pi x)) sin x`` and its derivative, ``x = t + 1``."""
    x = t + 1.0
    scale = math.sqrt(2.0 / math.pi)
    return (
        scale * math.sin(x) / math.sqrt(x),
        scale * (math.cos(x) / math.sqrt(x) - math.sin(x) / (2.0 * x**1.5)),
    )


def falling(t: float) -> Sequence[float]:
    """E4: ``y'' = a - b y'^2`` from rest: ``y' = sqrt(a / b) tanh(sqrt(a b) t)``."""
    a, b = 0.032, 0.4
    rate = math.sqrt(a * b)
    return (30.0 + math.log(math.cosh(rate * t)) / b, math.sqrt(a / b) * math.tanh(rate * t))


def pursuit(t: float) -> Sequence[float]:
    """E5: ``asinh(y') = log(25 / (25 - t))``."""
    u = 25.0 / (25.0 - t)
    return (0.5 * (25.0 * math.log(u) + ((25.0 - t) ** 2 - 625.0) / 50.0), 0.5 * (u - 1.0 / u))


PROBLEMS: dict[str, Problem] = {
    # A: single equations
    "A1": Problem(lambda t, y: -y, (1.0,), lambda t: (math.exp(-t),)),
    "A2": Problem(lambda t, y: -0.5 * y**3, (1.0,), lambda t: (1.0 / math.sqrt(t + 1.0),)),
    "A3": Problem(lambda t, y: y * torch.cos(t), (1.0,), lambda t: (math.exp(math.sin(t)),)),
    "A4": Problem(
        lambda t, y: y / 4.0 * (1.0 - y / 20.0), (1.0,), lambda t: (20.0 / (1.0 + 19.0 * math.exp(-t / 4.0)),)
    ),
    "A5": Problem(lambda t, y: (y - t) / (y + t), (4.0,)),
    # B: small systems
    "B1": Problem(lambda t, y: s(2.0 * (y[0] - y[0] * y[1]), -(y[1] - y[0] * y[1])), (1.0, 3.0)),
    "B2": Problem(
        lambda t, y: s(-y[0] + y[1], y[0] - 2.0 * y[1] + y[2], y[1] - y[2]), (2.0, 0.0, 1.0), linear=True
    ),
    "B3": Problem(lambda t, y: s(-y[0], y[0] - y[1] ** 2, y[1] ** 2), (1.0, 0.0, 0.0)),
    "B4": Problem(
        lambda t, y: (lambda r: s(-y[1] - y[0] * y[2] / r, y[0] - y[1] * y[2] / r, y[0] / r))(
            torch.sqrt(y[0] ** 2 + y[1] ** 2)
        ),
        (3.0, 0.0, 0.0),
    ),
    "B5": Problem(lambda t, y: s(y[1] * y[2], -y[0] * y[2], -0.51 * y[0] * y[1]), (0.0, 1.0, 1.0)),
    # C: larger systems
    "C1": Problem(lambda t, y: chain(y), e1(10), linear=True),
    "C2": Problem(lambda t, y: weighted_chain(y), e1(10), linear=True),
    "C3": Problem(lambda t, y: tridiagonal(y), e1(10), linear=True),
    "C4": Problem(lambda t, y: tridiagonal(y), e1(51), linear=True),
    "C5": Problem(lambda t, y: five_body(y), tuple(np.ravel([POSITIONS, VELOCITIES]).tolist())),
    # D: two-body orbits of eccentricity 0.1, 0.3, 0.5, 0.7, 0.9
    **{
        f"D{k}": Problem(orbit, (1.0 - e, 0.0, 0.0, math.sqrt((1.0 + e) / (1.0 - e))), kepler(e))
        for k, e in enumerate((0.1, 0.3, 0.5, 0.7, 0.9), start=1)
    },
    # E: second-order equations
    "E1": Problem(
        lambda t, y: s(y[1], -(y[1] / (t + 1.0) + (1.0 - 0.25 / (t + 1.0) ** 2) * y[0])),
        (0.6713967071418030, 0.09540051444747446),
        bessel_half,
    ),
    "E2": Problem(lambda t, y: s(y[1], (1.0 - y[0] ** 2) * y[1] - y[0]), (2.0, 0.0)),
    "E3": Problem(lambda t, y: s(y[1], y[0] ** 3 / 6.0 - y[0] + 2.0 * torch.sin(2.78535 * t)), (0.0, 0.0)),
    "E4": Problem(lambda t, y: s(y[1], 0.032 - 0.4 * y[1] ** 2), (30.0, 0.0), falling),
    "E5": Problem(lambda t, y: s(y[1], torch.sqrt(1.0 + y[1] ** 2) / (25.0 - t)), (0.0, 0.0), pursuit),
}


class Counted:
    """A field that counts its calls and torchdiffeq's accepted and rejected steps."""

    def __init__(self, field: Field) -> None:
        self.field = field
        self.calls = self.rejected = 0

    def __call__(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.field(t, y)

    def callback_accept_step(self, t0: torch.Tensor, y0: torch.Tensor, dt: torch.Tensor) -> None:
        pass

    def callback_reject_step(self, t0: torch.Tensor, y0: torch.Tensor, dt: torch.Tensor) -> None:
        self.rejected += 1


def numpy_field(field: Field) -> Callable[[float, np.ndarray], np.ndarray]:
    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return field(torch.tensor(t, dtype=torch.float64), torch.from_numpy(y)).numpy()

    return rhs


def dop853(problem: Problem) -> np.ndarray:
    sol = solve_ivp(
        numpy_field(problem.field),
        (0.0, T1),
        np.array(problem.y0),
        method="DOP853",
        rtol=REFERENCE_TOL,
        atol=REFERENCE_TOL,
    )
    if not sol.success:
        raise RuntimeError(f"reference solve failed: {sol.message}")
    return sol.y[:, -1]


def reference(problem: Problem) -> tuple[np.ndarray, str, float | None]:
    """``(y(t1), source, deviation)``: ``deviation`` is DOP853 at 1e-13 against an analytic or
    matrix-exponential reference, ``max |dop853 - ref| / (1 + |ref|)``."""
    numerical = dop853(problem)
    if problem.exact is not None:
        ref, source = np.array(problem.exact(T1)), "analytic"
    elif problem.linear:
        n = len(problem.y0)
        with torch.no_grad():
            columns = [
                problem.field(torch.tensor(0.0, dtype=torch.float64), e)
                for e in torch.eye(n, dtype=torch.float64)
            ]
        matrix = torch.stack(columns, dim=1).numpy()
        ref, source = scipy.linalg.expm(matrix * T1) @ np.array(problem.y0), "expm"
    else:
        return numerical, "DOP853", None
    return ref, source, float(np.max(np.abs(numerical - ref) / (1.0 + np.abs(ref))))


class Run(NamedTuple):
    y1: np.ndarray | None
    nfe: int
    rejected: int | None
    failure: str | None = None


def solve(library: str, method: str, problem: Problem, tol: float) -> Run:
    field = Counted(problem.field)
    y0 = torch.tensor(problem.y0, dtype=torch.float64)
    t = torch.tensor([0.0, T1], dtype=torch.float64)
    try:
        if library == "local_reg":
            with torch.no_grad():
                sol = local_reg.odeint(field, y0, t, method=method, rtol=tol, atol=tol, max_steps=MAX_STEPS)
            return Run(sol.ys[-1].numpy(), field.calls, sol.stats.n_rejected)
        if library == "torchdiffeq":
            import torchdiffeq

            with torch.no_grad():
                ys = torchdiffeq.odeint(field, y0, t, method=method, rtol=tol, atol=tol)
            return Run(ys[-1].numpy(), field.calls, field.rejected)
        sol = solve_ivp(
            numpy_field(field), (0.0, T1), np.array(problem.y0), method=method, rtol=tol, atol=tol
        )
        if not sol.success:
            raise RuntimeError(sol.message)
        attempts, leftover = divmod(field.calls - 2, SCIPY_STAGES[method])
        rejected = attempts - (len(sol.t) - 1) if leftover == 0 else None
        return Run(sol.y[:, -1], field.calls, rejected)
    except Exception as error:  # a failed solve is reported, not fatal
        return Run(None, field.calls, None, f"{type(error).__name__}: {str(error)[:120]}")


def scaled_error(y1: np.ndarray, ref: np.ndarray, tol: float) -> float:
    return float(np.max(np.abs(y1 - ref) / (tol * (1.0 + np.abs(ref)))))


def median_max(values: dict[str, float], spec: str = ".3g") -> str:
    """``median / max (problem)`` of ``problem -> value``."""
    if not values:
        return "n/a"
    worst = max(values, key=values.__getitem__)
    return f"{statistics.median(values.values()):{spec}} / {values[worst]:{spec}} ({worst})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(PEERS), choices=list(PEERS))
    parser.add_argument("--tols", nargs="+", type=float, default=list(TOLERANCES))
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()

    refs = {}
    print("References at t1 = 20 (deviation: DOP853 at 1e-13 against it, max |diff| / (1 + |ref|)):\n")
    print("| problem | n | reference | deviation of DOP853 |")
    print("|---|---|---|---|")
    for name, problem in PROBLEMS.items():
        refs[name], source, deviation = reference(problem)
        cell = "" if deviation is None else f"{deviation:.1e}"
        print(f"| {name} | {len(problem.y0)} | {source} | {cell} |")
    print(f"\nreferences: {time.perf_counter() - start:.1f} s")

    solvers = [("local_reg", m) for m in args.methods]
    solvers += list(dict.fromkeys(("scipy", PEERS[m][0]) for m in args.methods))
    solvers += list(dict.fromkeys(("torchdiffeq", PEERS[m][1]) for m in args.methods))
    failures = []
    for tol in args.tols:
        tol_start = time.perf_counter()
        error: dict[tuple[str, str], dict[str, float]] = {}
        nfe: dict[tuple[str, str], dict[str, int]] = {}
        rejected: dict[tuple[str, str], dict[str, int | None]] = {}
        for solver in solvers:
            error[solver], nfe[solver], rejected[solver] = {}, {}, {}
            for name, problem in PROBLEMS.items():
                run = solve(*solver, problem, tol)
                if run.failure is not None:
                    failures.append(f"{solver[0]} {solver[1]}, {name}, tol {tol:.0e}: {run.failure}")
                    continue
                error[solver][name] = scaled_error(run.y1, refs[name], tol)
                nfe[solver][name], rejected[solver][name] = run.nfe, run.rejected
        seconds = time.perf_counter() - tol_start

        print(f"\n### rtol = atol = {tol:.0e} ({seconds:.0f} s)\n")
        print(
            "| method | peer | error / tol: ours, median / max | peer, median / max "
            "| NFE ours / peer: median / max | rejected steps: ours / peer |"
        )
        print("|---|---|---|---|---|---|")
        for method in args.methods:
            ours = ("local_reg", method)
            for peer in (("scipy", PEERS[method][0]), ("torchdiffeq", PEERS[method][1])):
                both = nfe[ours].keys() & nfe[peer].keys()
                ratios = {p: nfe[ours][p] / nfe[peer][p] for p in sorted(both)}
                sums = []
                for solver in (ours, peer):
                    counts = [rejected[solver][p] for p in both]
                    sums.append("n/a" if None in counts else str(sum(counts)))
                cells = [median_max(error[ours]), median_max(error[peer]), median_max(ratios, ".2f")]
                print(
                    f"| {method} | {peer[0]} {peer[1]} | " + " | ".join(cells) + f" | {sums[0]} / {sums[1]} |"
                )
        classes = sorted({name[0] for name in PROBLEMS})
        print(f"\nmedian error / tol by problem class, rtol = atol = {tol:.0e}:\n")
        print("| solver | " + " | ".join(classes) + " |")
        print("|---" * (len(classes) + 1) + "|")
        for solver in solvers:
            cells = []
            for c in classes:
                values = [v for p, v in error[solver].items() if p[0] == c]
                cells.append(f"{statistics.median(values):.3g}" if values else "n/a")
            print(f"| {solver[0]} {solver[1]} | " + " | ".join(cells) + " |")
    print("\nfailed solves (left out above): " + ("none" if not failures else ""))
    for failure in failures:
        print(f"- {failure}")
    print(f"\ntotal: {time.perf_counter() - start:.0f} s, {torch.get_num_threads()} thread(s)")


if __name__ == "__main__":
    main()
