"""Work-precision: local_reg against torchdiffeq and torchode, compared at equal error.

For each problem and each tolerance ``rtol = atol`` the script records, per solver, the final-time
error (max abs against a scipy ``solve_ivp`` DOP853 reference at rtol = atol = 1e-13 in float64),
the number of vector-field evaluations (counted by the field itself, not read from any solver's
statistics) and the median wall time of a forward solve (no autograd) over interleaved repeats on
one thread. All solvers run in float64.

Problems: Lotka–Volterra (1.5, 1, 3, 1; y0 = (1, 1); t in [0, 10]), van der Pol (mu = 1, non-stiff;
y0 = (2, 0); t in [0, 10]) and the batched benchmark MLP of ``fields.py`` (its ``--dim``, ``--width``,
``--batch``, ``--t1``), whose reference evaluates the same torch field in float64 through a numpy
wrapper.

"At equal error": for each peer solver, log(NFE) and log(time) are interpolated linearly in
log(error) for both solvers, and the ratio ours / theirs is reported at the errors both solvers
reach (the overlap of their error ranges), as its minimum and maximum over that overlap; "n/a"
where the ranges do not overlap or an error is not monotone in the tolerance.

Peers that are not installed are skipped. torchode is an optional peer (``pip install torchode``),
not a dependency of local_reg.

    python benchmarks/peers.py [--quick] [--repeats 7] [--figures docs/figures]
"""

from __future__ import annotations

import importlib.util
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from fields import CallCounter, mlp_problem, mlp_problem_parser
from scipy.integrate import solve_ivp

import local_reg

TOLERANCES = (1e-3, 1e-5, 1e-7, 1e-9)
REFERENCE_TOL = 1e-13


def lotka_volterra(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x, z = y[..., 0], y[..., 1]
    return torch.stack([1.5 * x - x * z, -3.0 * z + x * z], dim=-1)


def van_der_pol(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x, v = y[..., 0], y[..., 1]
    return torch.stack([v, (1.0 - x * x) * v - x], dim=-1)


def reference(f: Callable, y0: torch.Tensor, t1: float) -> torch.Tensor:
    """``y(t1)`` from scipy's DOP853 at rtol = atol = 1e-13, the torch field evaluated in float64."""
    shape = y0.shape

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = f(torch.tensor(t, dtype=torch.float64), torch.from_numpy(y).reshape(shape))
        return out.reshape(-1).numpy()

    sol = solve_ivp(
        rhs, (0.0, t1), y0.reshape(-1).numpy(), method="DOP853", rtol=REFERENCE_TOL, atol=REFERENCE_TOL
    )
    if not sol.success:
        raise RuntimeError(f"reference solve failed: {sol.message}")
    return torch.from_numpy(sol.y[:, -1]).reshape(shape)


def solvers(tol: float) -> dict[str, Callable[[CallCounter, torch.Tensor, float], torch.Tensor]]:
    """Each solver as ``solve(field, y0, t1) -> y(t1)``; ``y0`` is batched ``(batch, dim)``."""

    def ours(method: str) -> Callable:
        def solve(field: CallCounter, y0: torch.Tensor, t1: float) -> torch.Tensor:
            t = torch.tensor([0.0, t1], dtype=y0.dtype)
            return local_reg.odeint(field, y0, t, method=method, rtol=tol, atol=tol).ys[-1]

        return solve

    out = {"local_reg tsit5": ours("tsit5"), "local_reg dopri5": ours("dopri5")}
    if importlib.util.find_spec("torchdiffeq") is not None:
        import torchdiffeq

        def tdiffeq(field: CallCounter, y0: torch.Tensor, t1: float) -> torch.Tensor:
            t = torch.tensor([0.0, t1], dtype=y0.dtype)
            return torchdiffeq.odeint(field, y0, t, method="dopri5", rtol=tol, atol=tol)[-1]

        out["torchdiffeq dopri5"] = tdiffeq
    if importlib.util.find_spec("torchode") is not None:
        import torchode

        def tode(field: CallCounter, y0: torch.Tensor, t1: float) -> torch.Tensor:
            term = torchode.ODETerm(field)
            solver = torchode.AutoDiffAdjoint(
                torchode.Tsit5(term=term), torchode.IntegralController(atol=tol, rtol=tol, term=term)
            )
            t_eval = torch.tensor([0.0, t1], dtype=y0.dtype).expand(y0.shape[0], 2)
            return solver.solve(torchode.InitialValueProblem(y0=y0, t_eval=t_eval)).ys[:, -1]

        out["torchode tsit5"] = tode
    return out


def measure(
    f: Callable, y0: torch.Tensor, t1: float, y_ref: torch.Tensor, repeats: int
) -> dict[tuple[str, float], tuple[float, int, float]]:
    """``(solver, tol) -> (error, NFE, median seconds)``, repeats interleaved across solvers."""
    field = CallCounter(f)
    runs = {(name, tol): solve for tol in TOLERANCES for name, solve in solvers(tol).items()}
    times: dict[tuple[str, float], list[float]] = {key: [] for key in runs}
    result: dict[tuple[str, float], tuple[float, int]] = {}
    for _ in range(repeats):
        for key, solve in runs.items():
            field.calls = 0
            with torch.no_grad():
                start = time.perf_counter()
                y1 = solve(field, y0, t1)
                times[key].append(time.perf_counter() - start)
            result[key] = ((y1.reshape(y_ref.shape) - y_ref).abs().max().item(), field.calls)
    return {key: (err, nfe, statistics.median(times[key])) for key, (err, nfe) in result.items()}


def curve(rows: dict, name: str, column: int) -> tuple[np.ndarray, np.ndarray]:
    """log(error) (increasing) and log of ``column`` (1 = NFE, 2 = time) of one solver."""
    pts = sorted((math.log(v[0]), math.log(v[column])) for (n, _), v in rows.items() if n == name)
    return np.array([p[0] for p in pts]), np.array([p[1] for p in pts])


def equal_error_ratio(rows: dict, ours: str, theirs: str, column: int) -> tuple[float, float] | None:
    """Min and max of ours / theirs at equal error over the error range both reach."""
    xo, yo = curve(rows, ours, column)
    xt, yt = curve(rows, theirs, column)
    # An error curve need not be monotone in the tolerance; np.interp needs increasing abscissae.
    lo, hi = max(xo[0], xt[0]), min(xo[-1], xt[-1])
    if not (np.all(np.diff(xo) > 0) and np.all(np.diff(xt) > 0)) or lo >= hi:
        return None
    grid = np.linspace(lo, hi, 50)
    ratio = np.exp(np.interp(grid, xo, yo) - np.interp(grid, xt, yt))
    return float(ratio.min()), float(ratio.max())


def plot(rows: dict, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(n for n, _ in rows))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name in names:
        keys = [k for k in rows if k[0] == name]
        err = [rows[k][0] for k in keys]
        axes[0].loglog(err, [rows[k][1] for k in keys], "o-", label=name)
        axes[1].loglog(err, [rows[k][2] * 1e3 for k in keys], "o-", label=name)
    for ax, ylabel in zip(axes, ("NFE", "median wall time (ms)"), strict=True):
        ax.set_xlabel("final-time error (max abs)")
        ax.set_ylabel(ylabel)
        ax.invert_xaxis()
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = mlp_problem_parser(__doc__.splitlines()[0], batch=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="2 repeats, MLP batch 16")
    parser.add_argument("--figures", type=Path, default=Path(__file__).parent.parent / "docs" / "figures")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.batch = 2, 16
    field, y_mlp = mlp_problem(args)
    field = field.double()
    problems = {
        "lotka_volterra": ("Lotka–Volterra, t in [0, 10]", lotka_volterra, [[1.0, 1.0]], 10.0),
        "van_der_pol": ("van der Pol mu = 1, t in [0, 10]", van_der_pol, [[2.0, 0.0]], 10.0),
        "mlp": (
            f"MLP {args.dim}->{args.width}->{args.width}->{args.dim} (weights x2), batch {args.batch}, "
            f"t in [0, {args.t1}]",
            lambda t, y: field.net(y),
            y_mlp.double(),
            args.t1,
        ),
    }
    print(f"float64, 1 thread ({torch.get_num_threads()} set), median of {args.repeats} interleaved repeats")
    for key, (title, f, y0, t1) in problems.items():
        y0 = torch.as_tensor(y0, dtype=torch.float64)
        y_ref = reference(f, y0, t1)
        rows = measure(f, y0, t1, y_ref, args.repeats)
        names = list(dict.fromkeys(n for n, _ in rows))
        print(f"\n### {title}\n")
        print("| rtol = atol | " + " | ".join(f"{n}: error / NFE / ms" for n in names) + " |")
        print("|---" * (len(names) + 1) + "|")
        for tol in TOLERANCES:
            cells = [f"{e:.2e} / {nfe} / {s * 1e3:.1f}" for e, nfe, s in (rows[n, tol] for n in names)]
            print(f"| {tol:.0e} | " + " | ".join(cells) + " |")
        print("\nours / peer at equal error (min–max over the errors both reach):\n")
        print("| ours | peer | NFE ratio | time ratio |")
        print("|---|---|---|---|")
        for ours in (n for n in names if n.startswith("local_reg")):
            for peer in (n for n in names if not n.startswith("local_reg")):
                cells = []
                for column in (1, 2):
                    r = equal_error_ratio(rows, ours, peer, column)
                    cells.append("n/a" if r is None else f"{r[0]:.2f}–{r[1]:.2f}")
                print(f"| {ours} | {peer} | {cells[0]} | {cells[1]} |")
        plot(rows, title, args.figures / f"peers_{key}.png")
    skipped = [m for m in ("torchdiffeq", "torchode") if importlib.util.find_spec(m) is None]
    if skipped:
        print(f"\nnot installed, skipped: {', '.join(skipped)}")


if __name__ == "__main__":
    main()
