"""Gradient methods side by side: peak memory, time, backward NFE and gradient error.

A neural ODE ``dy/dt = S y + MLP(y)`` (``S`` a fixed skew-symmetric matrix that makes the state
rotate, so the adaptive solver keeps stepping; MLP ``dim -> width -> width -> dim`` with tanh; batch
``batch``) is solved with adaptive dopri5 on ``[0, T]`` with outputs at ``T/2`` and ``T``; ``T`` is set
from ``--steps`` (about 25 accepted steps per unit time at the default tolerance). Loss: the mean
square of both outputs. Methods: ``local_reg.odeint`` with every ``gradient=`` (the two exact
low-memory ones also with a budget of ``checkpoints`` kept step states), and ``torchdiffeq.odeint``
(backprop) and ``torchdiffeq.odeint_adjoint`` on the same problem.

Columns:
- peak MB: the peak resident set size (VmHWM, reset through /proc/self/clear_refs) of a fresh process
  during one forward+backward in float32, above the resident size before it (after a 2-step
  warm-up of the same method, whose freed heap is returned with malloc_trim; glibc's mmap threshold
  fixed at 16 KiB so that every state-sized tensor is its own mapping and the resident size follows
  the live tensors, not heap fragmentation). It covers forward and backward.
- s/iter: median seconds per forward+backward in float32, methods interleaved in one process.
- bwd NFE: calls of the vector field made by the backward pass (backprop re-uses the forward graph
  and makes none; each adjoint call also takes a vector--Jacobian product).
- grad err: relative error of (dL/dy0, dL/dtheta) in float64 against ``gradient="direct"`` in
  float64 on the same problem (torchdiffeq rows: against torchdiffeq backprop, its own discretization).

The second table compares, in float64 (where tolerances below float32 round-off mean something),
the symplectic adjoint with the continuous adjoints (backsolve and interpolating) at tightening
adjoint tolerances on a tighter forward solve: their error against the discrete gradient cannot fall
below the forward solve's own discretization error, the symplectic adjoint's is round-off.

A third table (``--budget-sweep``) runs the symplectic adjoint at one step count with several
``checkpoints=`` budgets of kept step states, with the backsolve adjoint's peak memory for scale.

A fourth (``--loop-table``) measures two iterations of a training loop that keeps the first
iteration's loss (``losses.append(loss)``, or a loss still bound while the next solve runs), against
one iteration: what a method's graph holds once its backward pass has run.

Run: ``.venv/bin/python benchmarks/gradients.py`` (the first two tables; ``--help`` for options).
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchdiffeq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fields import CallCounter, mlp  # noqa: E402

from local_reg import (  # noqa: E402
    BacksolveAdjoint,
    Checkpoint,
    Direct,
    GradientMethod,
    InterpolatingAdjoint,
    Symplectic,
    odeint,
)

STEPS_PER_UNIT_TIME = 25.0  # dopri5 at rtol = atol = 1e-5 on this field (measured)


class NeuralField(torch.nn.Module):
    def __init__(self, dim: int, width: int, omega: float = 10.0) -> None:
        super().__init__()
        self.net = mlp(dim, width)
        a = torch.randn(dim, dim)
        self.register_buffer("skew", omega * (a - a.T) / (2 * dim**0.5))

    def forward(self, t, y):
        return y @ self.skew.T + self.net(y)


CHECKPOINTS = 32  # the budget of kept step states of the budgeted rows: ~sqrt(2 N) at N = 500

METHODS = {
    "direct": {"gradient": "direct"},
    "checkpoint": {"gradient": "checkpoint"},
    f"checkpoint, checkpoints={CHECKPOINTS}": {"gradient": "checkpoint", "checkpoints": CHECKPOINTS},
    "symplectic": {"gradient": "symplectic"},
    f"symplectic, checkpoints={CHECKPOINTS}": {"gradient": "symplectic", "checkpoints": CHECKPOINTS},
    "adjoint": {"gradient": "adjoint"},
    "adjoint seminorm": {"gradient": "adjoint", "norm": "seminorm"},
    "interpolating adjoint": {"gradient": "interpolating_adjoint"},
    "interpolating adjoint seminorm": {"gradient": "interpolating_adjoint", "norm": "seminorm"},
    f"interpolating adjoint, checkpoints={CHECKPOINTS}": {
        "gradient": "interpolating_adjoint",
        "checkpoints": CHECKPOINTS,
    },
    "torchdiffeq backprop": {"torchdiffeq": "odeint"},
    "torchdiffeq adjoint": {"torchdiffeq": "odeint_adjoint"},
}


def make_problem(args, dtype: torch.dtype):
    torch.manual_seed(0)
    field = NeuralField(args.dim, args.width).to(dtype)
    y0 = torch.randn(args.batch, args.dim, dtype=dtype)
    return field, y0


def gradient_method(spec: dict, tolerance: float | None) -> GradientMethod:
    """The gradient object a (JSON) spec names: ``{"gradient": name, "checkpoints": C, "norm": ...}``;
    ``tolerance`` is a continuous adjoint's (default the forward's)."""
    name = spec["gradient"]
    if name == "interpolating_adjoint":
        norm = spec.get("norm", "default")
        return InterpolatingAdjoint(
            rtol=tolerance, atol=tolerance, norm=norm, checkpoints=spec.get("checkpoints")
        )
    if name == "adjoint":
        return BacksolveAdjoint(rtol=tolerance, atol=tolerance, norm=spec.get("norm", "default"))
    if name in ("checkpoint", "symplectic"):
        return {"checkpoint": Checkpoint, "symplectic": Symplectic}[name](spec.get("checkpoints"))
    return Direct()


def forward_backward(
    field,
    y0,
    n_steps: float,
    args,
    spec: dict,
    tolerance: float | None = None,
    rtol: float | None = None,
    keep: list | None = None,
):
    """One forward+backward; returns (gradients, n_accepted forward, backward NFE). ``keep``: a list
    the loss is appended to (kept alive after the call)."""
    counter = CallCounter(field)
    end = n_steps / STEPS_PER_UNIT_TIME
    y0 = y0.clone().requires_grad_(True)
    params = tuple(field.parameters())
    rtol = args.rtol if rtol is None else rtol
    if "torchdiffeq" in spec:
        ts = torch.tensor([0.0, end / 2, end], dtype=y0.dtype)
        solve = getattr(torchdiffeq, spec["torchdiffeq"])
        extra = {"adjoint_params": params} if spec["torchdiffeq"] == "odeint_adjoint" else {}
        ys = solve(counter, y0, ts, method="dopri5", rtol=rtol, atol=rtol, **extra)
        n_accepted = None
    else:
        gradient = gradient_method(spec, tolerance)
        solution = odeint(
            counter, y0, [0.0, end / 2, end], method="dopri5", rtol=rtol, atol=rtol, gradient=gradient
        )
        ys = solution.ys
        n_accepted = solution.stats.n_accepted
    forward_calls = counter.calls
    loss = (ys[1:] ** 2).mean()
    grads = torch.autograd.grad(loss, (y0, *params))
    if keep is not None:
        keep.append(loss)
    flat = torch.cat([g.reshape(-1) for g in grads]).detach()
    return flat, n_accepted, counter.calls - forward_calls


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def peak_growth_mb(warm_up: Callable[[], object], measured: Callable[[], object]) -> float:
    """The peak resident set size (VmHWM) of ``measured()`` above the resident size before it, in
    MB, after ``warm_up()`` (lazy initialization) and handing its freed heap back to the OS. Run it
    in a fresh process under ``MALLOC_MMAP_THRESHOLD_`` (:func:`fresh_process_environment`)."""
    warm_up()
    # Memory that stays resident after being freed would be reused without showing in the peak.
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    base = _status_kb("VmRSS")
    measured()
    return (_status_kb("VmHWM") - base) / 1024


def fresh_process_environment() -> dict[str, str]:
    """Every tensor of 16 KiB or more (a state of these problems is 32 KiB) gets its own mmap, so
    that the resident size follows the live tensors instead of glibc's heap fragmentation."""
    return {**os.environ, "MALLOC_MMAP_THRESHOLD_": "16384"}


def measure_memory(args) -> None:
    """Child process: print the peak RSS growth (MB) of one forward+backward (after a 2-step warm-up
    of the same method, :func:`peak_growth_mb`)."""
    torch.set_num_threads(1)
    field, y0 = make_problem(args, torch.float32)
    spec = json.loads(args.memory_of)
    kept: list = []

    def measured() -> None:
        for _ in range(args.memory_iterations):
            forward_backward(field, y0, args.memory_steps, args, spec, keep=kept)

    peak = peak_growth_mb(lambda: forward_backward(field, y0, 2, args, spec), measured)
    print(json.dumps({"peak_mb": peak}))


def memory_in_fresh_process(spec: dict, n_steps: int, args, iterations: int = 1) -> float:
    command = [
        sys.executable,
        __file__,
        "--memory-of",
        json.dumps(spec),
        "--memory-steps",
        str(n_steps),
        "--memory-iterations",
        str(iterations),
        "--dim",
        str(args.dim),
        "--width",
        str(args.width),
        "--batch",
        str(args.batch),
        "--rtol",
        str(args.rtol),
    ]
    return peak_mb_of(command)


def peak_mb_of(command: list[str]) -> float:
    """Run ``command`` (a child that prints ``{"peak_mb": ...}`` last) in a fresh process under
    :func:`fresh_process_environment`; its peak."""
    environment = fresh_process_environment()
    output = subprocess.run(command, check=True, capture_output=True, text=True, env=environment).stdout
    return json.loads(output.strip().splitlines()[-1])["peak_mb"]


def interleaved(runs: dict, repeats: int) -> tuple[dict, dict]:
    """Call every ``runs[key]()`` ``repeats`` times, the keys interleaved in each round, so that a
    change in the machine's load hits every run alike. Returns the median seconds and the last
    result of each key."""
    times = {key: [] for key in runs}
    results = {}
    for _ in range(repeats):
        for key, run in runs.items():
            start = time.perf_counter()
            results[key] = run()
            times[key].append(time.perf_counter() - start)
    return {key: statistics.median(values) for key, values in times.items()}, results


def relative_error(x, reference) -> float:
    return float((x - reference).norm() / reference.norm())


def main_table(args) -> None:
    print(
        f"neural ODE: dim {args.dim}, MLP width {args.width} (2 hidden layers), batch {args.batch}; "
        f"dopri5 rtol = atol = {args.rtol}; torch {torch.__version__}, 1 thread\n"
    )
    for n_steps in args.steps:
        field32, y32 = make_problem(args, torch.float32)
        field64, y64 = make_problem(args, torch.float64)
        reference, n_accepted, _ = forward_backward(field64, y64, n_steps, args, METHODS["direct"])
        reference_tdq, _, _ = forward_backward(field64, y64, n_steps, args, METHODS["torchdiffeq backprop"])
        rows = {}
        for name, spec in METHODS.items():
            grads, _, _ = forward_backward(field64, y64, n_steps, args, spec)
            ref = reference_tdq if "torchdiffeq" in spec else reference
            rows[name] = {"error": relative_error(grads, ref)}
        runs = {
            name: functools.partial(forward_backward, field32, y32, n_steps, args, spec)
            for name, spec in METHODS.items()
        }
        seconds, results = interleaved(runs, args.repeats)
        for name in METHODS:
            rows[name]["nfe_backward"] = results[name][2]
            rows[name]["seconds"] = seconds[name]
            rows[name]["peak_mb"] = memory_in_fresh_process(METHODS[name], n_steps, args)
        end = n_steps / STEPS_PER_UNIT_TIME
        print(f"### about {n_steps} steps (T = {end:g}; {n_accepted} accepted in float64)\n")
        print("| method | peak MB | vs adjoint | vs direct | s/iter | bwd NFE | grad err |")
        print("|---|---|---|---|---|---|---|")
        for name, row in rows.items():
            print(
                f"| {name} | {row['peak_mb']:.1f} | {row['peak_mb'] / rows['adjoint']['peak_mb']:.2f} | "
                f"{row['peak_mb'] / rows['direct']['peak_mb']:.3f} | {row['seconds']:.2f} | "
                f"{row['nfe_backward']} | {row['error']:.1e} |"
            )
        print(flush=True)


def tuned_table(args) -> None:
    n_steps = args.tuned_time * STEPS_PER_UNIT_TIME  # forward_backward's unit: T * 25
    rtol = args.tuned_rtol
    field, y0 = make_problem(args, torch.float64)
    reference, n_accepted, _ = forward_backward(field, y0, n_steps, args, METHODS["direct"], rtol=rtol)
    budgeted = f"symplectic, checkpoints={CHECKPOINTS}"
    configurations = [("symplectic", METHODS["symplectic"], None), (budgeted, METHODS[budgeted], None)]
    for tolerance in args.adjoint_tolerances:
        configurations.append((f"adjoint, tol {tolerance:g}", METHODS["adjoint"], tolerance))
        configurations.append(
            (f"adjoint seminorm, tol {tolerance:g}", METHODS["adjoint seminorm"], tolerance)
        )
        configurations.append(
            (f"interpolating adjoint, tol {tolerance:g}", METHODS["interpolating adjoint"], tolerance)
        )
    runs = {
        label: functools.partial(forward_backward, field, y0, n_steps, args, spec, tolerance, rtol=rtol)
        for label, spec, tolerance in configurations
    }
    seconds, results = interleaved(runs, args.repeats)
    print(
        f"### accuracy against speed, float64: T = {args.tuned_time:g}, forward dopri5 rtol = atol = "
        f"{rtol:g} ({n_accepted} accepted steps)\n"
    )
    print("| method | s/iter | vs symplectic | bwd NFE | grad err |")
    print("|---|---|---|---|---|")
    for label, _, _ in configurations:
        grads, _, nfe_backward = results[label]
        print(
            f"| {label} | {seconds[label]:.2f} | {seconds[label] / seconds['symplectic']:.2f} | "
            f"{nfe_backward} | {relative_error(grads, reference):.1e} |"
        )
    print(flush=True)


def budget_table(args) -> None:
    """The symplectic adjoint at one step count with budgets of kept step states, side by side."""
    n_steps = args.budget_steps
    field, y0 = make_problem(args, torch.float32)
    budgets = [None, *args.budgets]
    specs = {budget: {"gradient": "symplectic", "checkpoints": budget} for budget in budgets}
    forward_backward(field, y0, 2, args, specs[None])  # warm-up: lazy initialization out of the timings
    runs = {
        budget: functools.partial(forward_backward, field, y0, n_steps, args, spec)
        for budget, spec in specs.items()
    }
    seconds, results = interleaved(runs, args.repeats)
    n_accepted = results[None][1]
    adjoint_mb = memory_in_fresh_process(METHODS["adjoint"], n_steps, args)
    print(f"### symplectic adjoint, budgets of kept states: about {n_steps} steps ({n_accepted} accepted)\n")
    print("| checkpoints | peak MB | vs adjoint | s/iter | vs all states | bwd NFE |")
    print("|---|---|---|---|---|---|")
    for budget in budgets:
        peak = memory_in_fresh_process(specs[budget], n_steps, args)
        label = "all (None)" if budget is None else str(budget)
        print(
            f"| {label} | {peak:.1f} | {peak / adjoint_mb:.2f} | {seconds[budget]:.2f} | "
            f"{seconds[budget] / seconds[None]:.2f} | {results[budget][2]} |"
        )
    print(f"\n(backsolve adjoint in the same conditions: {adjoint_mb:.1f} MB)\n", flush=True)


def loop_table(args) -> None:
    """Peak memory of one iteration against two whose first loss is kept, per method."""
    n_steps = args.budget_steps
    print(f"### a training loop that keeps each loss: about {n_steps} steps, float32\n")
    print("| method | 1 iteration, peak MB | 2 iterations, the first loss kept | ratio |")
    print("|---|---|---|---|")
    for name in ("direct", "checkpoint", "symplectic", "adjoint", "interpolating adjoint"):
        one = memory_in_fresh_process(METHODS[name], n_steps, args)
        two = memory_in_fresh_process(METHODS[name], n_steps, args, iterations=2)
        print(f"| {name} | {one:.1f} | {two:.1f} | {two / one:.2f} |")
    print(flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[50, 200, 1000])
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rtol", type=float, default=1e-5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tuned-time", type=float, default=1.0)
    parser.add_argument("--tuned-rtol", type=float, default=1e-8)
    parser.add_argument("--adjoint-tolerances", type=float, nargs="+", default=[1e-6, 1e-8, 1e-10, 1e-12])
    parser.add_argument("--budgets", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    parser.add_argument("--budget-steps", type=int, default=1000)
    parser.add_argument("--budget-sweep", action="store_true", help="only the table of checkpoints= budgets")
    parser.add_argument("--skip-main", action="store_true")
    parser.add_argument("--skip-tuned", action="store_true")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)  # a method's spec, as JSON
    parser.add_argument("--memory-steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--memory-iterations", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument(
        "--loop-table", action="store_true", help="only the table of a loop that keeps losses"
    )
    args = parser.parse_args()
    if args.memory_of is not None:
        measure_memory(args)
        return
    torch.set_num_threads(1)
    if args.budget_sweep:
        budget_table(args)
        return
    if args.loop_table:
        loop_table(args)
        return
    if not args.skip_main:
        main_table(args)
    if not args.skip_tuned:
        tuned_table(args)


if __name__ == "__main__":
    main()
