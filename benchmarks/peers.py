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
not a dependency of local_reg. ``--jax-python PYTHON`` adds diffrax's Tsit5 (``PIDController``,
``jax.jit``, float64) through that interpreter (one with ``jax`` and ``diffrax``, never a
dependency of local_reg), in a child process on one thread: it times its own jitted solve (the
compilation excluded) and counts its evaluations of the field in a separate run with a host
callback in the field.

    python benchmarks/peers.py [--quick] [--repeats 7] [--figures docs/figures] [--jax-python PYTHON]

Neural-ODE throughput (``--throughput``, instead of the work-precision tables): the batched MLP in
float32 on ``[0, --t1]`` at ``--rtol``/``--atol``, dopri5 for every solver; a forward solve without
autograd, and a forward+backward of ``mean(y(t1)^2)`` for every gradient method of local_reg
(direct, checkpoint, symplectic, the backsolve adjoint with both norms), torchdiffeq's ``odeint``
(backprop) and ``odeint_adjoint``, and torchode's ``AutoDiffAdjoint`` (backprop) and
``BacksolveAdjoint``. ``--old FOLDER`` adds the backsolve adjoint of another version of local_reg
(``fields.old_local_reg``). Every configuration runs once per round, rounds interleaved; times are
the process's CPU time (one thread; with ``--device cuda``, wall time with the GPU synchronized),
medians over rounds; a ratio is the median over rounds of the
per-round ratio; glibc serves allocations below 4 MiB from its heap (``mallopt``), so that the bare
calls below allocate as the solvers do. The backward pass's overhead per evaluation subtracts from
its CPU time the cost of its calls of the field as bare calls, timed in the same rounds: a call
without autograd as one evaluation of the MLP, a call with autograd as one evaluation and one
vector--Jacobian product for the state and the parameters (what an adjoint evaluation needs; a
checkpointed step's calls are backpropagated together, about the same work).

    python benchmarks/peers.py --throughput [--rounds 15] [--batch 128] [--old /tmp/oldpkg]

``--instructions`` counts instead the instructions of each backward pass that calls the field
(local_reg's and torchdiffeq's), and of bare calls, under valgrind's callgrind: deterministic, so
independent of the machine's load, but blind to memory traffic (about 30 minutes on a 2-core machine).

    python benchmarks/peers.py --instructions [--old /tmp/oldpkg]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import importlib.util
import json
import math
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from diffrax_peer import Diffrax
from fields import CallCounter, clock, mlp_problem, mlp_problem_parser, old_local_reg
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


def solve_at_tolerance(diffrax: Diffrax, problem: str, y0: torch.Tensor, t1: float, tol: float) -> dict:
    """diffrax's solve at ``rtol = atol = tol``."""
    return diffrax.solve(problem, y0, t1, tol, tol)


def measure(
    f: Callable,
    y0: torch.Tensor,
    t1: float,
    y_ref: torch.Tensor,
    repeats: int,
    external: Callable[[float], dict] | None = None,
) -> dict[tuple[str, float], tuple[float, int, float]]:
    """``(solver, tol) -> (error, NFE, median seconds)``, repeats interleaved across solvers;
    ``external(tol)`` is diffrax's solve, timed and counted by itself (``diffrax_peer``)."""
    field = CallCounter(f)
    runs = {(name, tol): solve for tol in TOLERANCES for name, solve in solvers(tol).items()}
    if external is not None:
        runs |= {("diffrax tsit5", tol): functools.partial(external, tol) for tol in TOLERANCES}
    times: dict[tuple[str, float], list[float]] = {key: [] for key in runs}
    result: dict[tuple[str, float], tuple[float, int]] = {}
    for _ in range(repeats):
        for key, solve in runs.items():
            if key[0] == "diffrax tsit5":
                answer = solve()
                y1, nfe, seconds = answer["y1"], answer["nfe"], answer["seconds"]
            else:
                field.calls = 0
                with torch.no_grad():
                    start = time.perf_counter()
                    y1 = solve(field, y0, t1)
                    seconds = time.perf_counter() - start
                nfe = field.calls
            times[key].append(seconds)
            result[key] = ((y1.reshape(y_ref.shape) - y_ref).abs().max().item(), nfe)
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


Timed = tuple[float, float, int, int, int]
"""One forward(+backward): seconds forward and backward (:func:`fields.clock`), calls of the field
forward, and calls in the backward pass without and with autograd."""


def timed_solve(
    counter: CallCounter,
    solve: Callable[[], torch.Tensor],
    inputs: tuple[torch.Tensor, ...] | None,
    window: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    now: Callable[[], float] = time.process_time,
) -> Timed:
    """Run ``solve() -> y(t1)`` and, if ``inputs`` are given, the gradient of ``mean(y(t1)^2)`` with
    respect to them (inside ``window()``); count and time both (by ``now``)."""
    counter.calls = counter.graph_calls = 0
    start = now()
    if inputs is None:
        with torch.no_grad():
            solve()
        return now() - start, 0.0, counter.calls, 0, 0
    loss = solve().square().mean()
    middle = now()
    forward_calls, forward_graph = counter.calls, counter.graph_calls
    with window():
        torch.autograd.grad(loss, inputs)
    backward_graph = counter.graph_calls - forward_graph
    backward_plain = counter.calls - forward_calls - backward_graph
    return middle - start, now() - middle, forward_calls, backward_plain, backward_graph


def throughput_configurations(
    counter: CallCounter,
    y0: torch.Tensor,
    args,
    old,
    window: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> dict[str, tuple[str, Callable[[], Timed]]]:
    """``label -> (kind, run)``; ``kind`` names the torchdiffeq row a ratio is taken against;
    ``window`` encloses each backward pass."""
    t1, rtol, atol = args.t1, args.rtol, args.atol
    params = tuple(counter.parameters())
    y_in = y0.clone().requires_grad_(True)
    differentiated = (y_in, *params)
    t_pair = torch.tensor([0.0, t1], device=y0.device)
    timed = functools.partial(timed_solve, window=window, now=clock(y0.device))

    def local(lib, gradient, inputs):
        def solve() -> torch.Tensor:
            y = y0 if inputs is None else y_in
            return lib.odeint(
                counter, y, t_pair, method="dopri5", rtol=rtol, atol=atol, gradient=gradient
            ).ys[-1]

        return functools.partial(timed, counter, solve, inputs)

    configurations = {"local_reg forward": ("forward", local(local_reg, "direct", None))}
    gradients = {
        "direct": ("backprop", "direct"),
        "checkpoint": ("backprop", "checkpoint"),
        "symplectic": ("backprop", "symplectic"),
        "adjoint": ("adjoint", "adjoint"),
        "adjoint seminorm": ("adjoint", local_reg.BacksolveAdjoint(norm="seminorm")),
    }
    for name, (kind, gradient) in gradients.items():
        configurations[f"local_reg {name}"] = (kind, local(local_reg, gradient, differentiated))
    if old is not None:
        configurations["local_reg adjoint (old)"] = ("adjoint", local(old, "adjoint", differentiated))
        seminorm = old.BacksolveAdjoint(norm="seminorm")
        configurations["local_reg adjoint seminorm (old)"] = ("adjoint", local(old, seminorm, differentiated))
    if importlib.util.find_spec("torchdiffeq") is not None:
        import torchdiffeq

        def tdq(name: str, inputs, **options):
            def solve() -> torch.Tensor:
                y = y0 if inputs is None else y_in
                return getattr(torchdiffeq, name)(counter, y, t_pair, rtol=rtol, atol=atol, **options)[-1]

            return functools.partial(timed, counter, solve, inputs)

        configurations["torchdiffeq forward"] = ("forward", tdq("odeint", None))
        configurations["torchdiffeq odeint"] = ("backprop", tdq("odeint", differentiated))
        configurations["torchdiffeq odeint_adjoint"] = (
            "adjoint",
            tdq("odeint_adjoint", differentiated, adjoint_params=params),
        )
    if importlib.util.find_spec("torchode") is not None:
        import torchode

        term = torchode.ODETerm(counter)
        controller = torchode.IntegralController(atol=atol, rtol=rtol, term=term)
        autodiff = torchode.AutoDiffAdjoint(torchode.Dopri5(term=term), controller)
        backsolve = torchode.BacksolveAdjoint(term, torchode.Dopri5(term=term), controller)
        t_eval = t_pair.expand(y0.shape[0], 2)

        def tode(solver, inputs):
            def solve() -> torch.Tensor:
                y = y0 if inputs is None else y_in
                return solver.solve(torchode.InitialValueProblem(y0=y, t_eval=t_eval)).ys[:, -1]

            return functools.partial(timed, counter, solve, inputs)

        configurations["torchode forward"] = ("forward", tode(autodiff, None))
        configurations["torchode AutoDiffAdjoint"] = ("backprop", tode(autodiff, differentiated))
        configurations["torchode BacksolveAdjoint"] = ("adjoint", tode(backsolve, differentiated))
    return configurations


def bare_evaluations(
    counter: CallCounter,
    y0: torch.Tensor,
    n: int,
    window: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> dict[str, Callable[[], float]]:
    """Seconds (:func:`fields.clock`) of one call of the field without autograd, and of one with a
    vector--Jacobian product for the state and the parameters, each the mean of ``n`` calls made
    inside ``window()``."""
    t = torch.tensor(0.0, device=y0.device)
    now = clock(y0.device)
    params = tuple(counter.field.parameters())
    cotangent = torch.ones_like(y0)

    def plain() -> float:
        start = now()
        with window(), torch.no_grad():
            for _ in range(n):
                counter.field(t, y0)
        return (now() - start) / n

    def with_vjp() -> float:
        start = now()
        with window():
            for _ in range(n):
                y = y0.detach().requires_grad_(True)
                torch.autograd.grad(counter.field(t, y), (y, *params), cotangent)
        return (now() - start) / n

    return {"plain": plain, "vjp": with_vjp}


@contextlib.contextmanager
def callgrind_window() -> Iterator[None]:
    """Count instructions inside the block and dump them (a process run by valgrind's callgrind with
    ``--collect-atstart=no``; one dump file per block, numbered in order)."""
    torch._C._valgrind_toggle()
    yield
    torch._C._valgrind_toggle_and_dump_stats()


BARE_CALLS = 10
"""Calls of the field per bare measurement of ``--instructions``."""


def instructions_child(args) -> None:
    """Under callgrind: the backward pass of every configuration of local_reg and torchdiffeq whose
    backward calls the field, then the bare calls; prints ``[label, plain calls, calls with
    autograd]`` per dump, in order, as JSON."""
    field, y0 = mlp_problem(args)
    counter = CallCounter(field)
    old = None if args.old is None else old_local_reg(args.old)
    measured = []
    warm = throughput_configurations(counter, y0, args, old)
    counted = throughput_configurations(counter, y0, args, old, callgrind_window)
    for label, (kind, run) in warm.items():
        if kind == "forward" or not label.startswith(("local_reg", "torchdiffeq")):
            continue
        *_, plain, graph = run()  # also the warm-up
        if plain + graph > 0:
            *_, plain, graph = counted[label][1]()
            measured.append([label, plain, graph])
    bare = bare_evaluations(counter, y0, BARE_CALLS, callgrind_window)
    bare["plain"]()
    bare["vjp"]()
    measured += [["bare call", BARE_CALLS, 0], ["bare call with VJP", 0, BARE_CALLS]]
    print(json.dumps(measured))


def instructions(args) -> None:
    """Run :func:`instructions_child` under valgrind's callgrind and tabulate the instructions of each
    backward pass beyond its calls of the field, counted as bare calls."""
    if shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind")
    forwarded = [arg for arg in sys.argv[1:] if arg != "--instructions"]
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "callgrind.out"
        command = [
            "valgrind",
            "--tool=callgrind",
            "--collect-atstart=no",
            f"--callgrind-out-file={out}",
            sys.executable,
            __file__,
            "--instructions-child",
            *forwarded,
        ]
        result = subprocess.run(command, check=True, capture_output=True, text=True)
        measured = json.loads(result.stdout.strip().splitlines()[-1])
        totals = []
        for index in range(1, len(measured) + 1):
            text = Path(f"{out}.{index}").read_text()
            totals.append(int(re.search(r"^summary: (\d+)", text, re.MULTILINE).group(1)))
    counts = {
        label: (plain, graph, total) for (label, plain, graph), total in zip(measured, totals, strict=True)
    }
    plain_cost = counts.pop("bare call")[2] / BARE_CALLS
    vjp_cost = counts.pop("bare call with VJP")[2] / BARE_CALLS
    print(
        f"MLP {args.dim}->{args.width}->{args.width}->{args.dim} (weights x2), batch {args.batch}, float32, "
        f"t in [0, {args.t1}], dopri5, rtol={args.rtol:g}, atol={args.atol:g}, 1 thread; instructions "
        f"counted by callgrind; bare call {plain_cost / 1e3:.0f} k, with VJP {vjp_cost / 1e3:.0f} k\n"
    )
    overhead = {
        label: (total - plain * plain_cost - graph * vjp_cost) / (plain + graph)
        for label, (plain, graph, total) in counts.items()
    }
    print(
        "| configuration | backward instructions (M) | backward NFE (plain + with autograd) "
        "| backward overhead / call (k instructions) | vs local_reg symplectic |"
    )
    print("|---" * 5 + "|")
    for label, (plain, graph, total) in counts.items():
        versus = overhead[label] / overhead["local_reg symplectic"]
        print(
            f"| {label} | {total / 1e6:.1f} | {plain} + {graph} | {overhead[label] / 1e3:.0f} "
            f"| {versus:.2f} |"
        )


def time_kind(device: torch.device) -> str:
    """What :func:`fields.clock` measures on ``device``, for a table's header."""
    return f"CPU time on {device}" if device.type != "cuda" else f"wall time on {device}"


M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameter: allocations at least this large are served by ``mmap``."""


def throughput(args) -> None:
    # Serve activation-sized buffers (128 KiB at batch 512) from the heap: glibc's dynamic threshold
    # otherwise maps and page-faults them afresh in some loops (the bare calls) and not in others.
    if not ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 4 << 20):
        raise RuntimeError("mallopt(M_MMAP_THRESHOLD) failed")
    field, y0 = mlp_problem(args)
    counter = CallCounter(field)
    old = None if args.old is None else old_local_reg(args.old)
    configurations = throughput_configurations(counter, y0, args, old)
    bare = bare_evaluations(counter, y0, 20)
    for _, run in configurations.values():
        run()  # warm-up: lazy initialization out of the timings
    rounds: dict[str, list[Timed]] = {label: [] for label in configurations}
    bare_rounds: dict[str, list[float]] = {key: [] for key in bare}
    for _ in range(args.rounds):
        for key, measure_bare in bare.items():
            bare_rounds[key].append(measure_bare())
        for label, (_, run) in configurations.items():
            rounds[label].append(run())
    plain_s, vjp_s = (statistics.median(bare_rounds[key]) for key in ("plain", "vjp"))
    print(
        f"MLP {args.dim}->{args.width}->{args.width}->{args.dim} (weights x2), batch {args.batch}, float32, "
        f"t in [0, {args.t1}], dopri5, rtol={args.rtol:g}, atol={args.atol:g}, {torch.get_num_threads()} "
        f"thread(s), {time_kind(args.device)}, median of {args.rounds} interleaved rounds; bare call "
        f"{plain_s * 1e6:.0f} us, "
        f"with VJP {vjp_s * 1e6:.0f} us\n"
    )
    baseline = {
        "forward": "torchdiffeq forward",
        "backprop": "torchdiffeq odeint",
        "adjoint": "torchdiffeq odeint_adjoint",
    }

    def ratio(label: str, other: str) -> str:
        if other not in rounds:
            return "n/a"
        totals = [(a[0] + a[1]) / (b[0] + b[1]) for a, b in zip(rounds[label], rounds[other], strict=True)]
        return f"{statistics.median(totals):.2f}"

    print(
        "| configuration | forward ms | backward ms | total ms | vs local_reg direct "
        "| vs torchdiffeq (same kind) | forward NFE | backward NFE (plain + with autograd) "
        "| backward overhead / call (us) |"
    )
    print("|---" * 9 + "|")
    for label, (kind, _) in configurations.items():
        forward_s, backward_s = (statistics.median(r[i] for r in rounds[label]) for i in (0, 1))
        _, _, nfe, plain, graph = rounds[label][-1]
        overhead = "n/a"
        if plain + graph > 0:
            overhead = f"{(backward_s - plain * plain_s - graph * vjp_s) / (plain + graph) * 1e6:.0f}"
        versus_direct = "n/a" if kind == "forward" else ratio(label, "local_reg direct")
        backward_nfe = "0" if plain + graph == 0 else f"{plain} + {graph}"
        print(
            f"| {label} | {forward_s * 1e3:.1f} | {backward_s * 1e3:.1f} "
            f"| {(forward_s + backward_s) * 1e3:.1f} | {versus_direct} | {ratio(label, baseline[kind])} "
            f"| {nfe} | {backward_nfe} | {overhead} |"
        )
    print_skipped_peers()


def print_skipped_peers() -> None:
    """Say which optional peers had no rows because they are not installed."""
    skipped = [m for m in ("torchdiffeq", "torchode") if importlib.util.find_spec(m) is None]
    if skipped:
        print(f"\nnot installed, skipped: {', '.join(skipped)}")


def main() -> None:
    parser = mlp_problem_parser(__doc__.splitlines()[0], batch=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="2 repeats, MLP batch 16")
    parser.add_argument("--figures", type=Path, default=Path(__file__).parent.parent / "docs" / "figures")
    parser.add_argument("--throughput", action="store_true", help="the neural-ODE throughput table only")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds of --throughput")
    parser.add_argument("--old", help="--throughput: folder holding another version as local_reg_old")
    parser.add_argument(
        "--instructions", action="store_true", help="instructions of each backward pass (valgrind)"
    )
    parser.add_argument("--instructions-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--jax-python", help="a Python with jax and diffrax: adds diffrax's Tsit5")
    args = parser.parse_args()
    if args.jax_python is not None and (args.throughput or args.instructions):
        parser.error(
            "--jax-python adds diffrax to the work-precision tables: not with --throughput or --instructions"
        )
    if args.instructions_child:
        instructions_child(args)
        return
    if args.instructions:
        instructions(args)
        return
    if args.throughput:
        throughput(args)
        return
    if args.device.type != "cpu":
        # The work-precision tables compare against a scipy reference through numpy: CPU only.
        parser.error("--device other than cpu needs --throughput")
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
    diffrax = None if args.jax_python is None else Diffrax(args.jax_python, field)
    for key, (title, f, y0, t1) in problems.items():
        y0 = torch.as_tensor(y0, dtype=torch.float64)
        y_ref = reference(f, y0, t1)
        external = None
        if diffrax is not None:
            external = functools.partial(solve_at_tolerance, diffrax, key, y0, t1)
        rows = measure(f, y0, t1, y_ref, args.repeats, external)
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
    if diffrax is not None:
        diffrax.close()
    print_skipped_peers()


if __name__ == "__main__":
    main()
