"""The compiled path (``odeint(compile=...)``) beside the eager one, and beside jitted diffrax.

The batched benchmark MLP of ``fields.py`` in float32, Tsit5 on ``[0, --t1]`` at ``--rtol`` /
``--atol``, one thread. Configurations, one run of each per round, rounds interleaved, medians:

- local_reg eager, compiled (``compile=True``: the inductor backend) and compiled with inductor's
  C++ wrapper (``compile={"options": {"cpp_wrapper": True}}``), a forward solve without autograd,
  and a forward + backward of ``mean(y(t1)^2)`` with ``gradient="direct"``; and the two compiled
  forward solves with an integral controller, ``PIController(beta1=1/6, beta2=0)``, which takes
  diffrax's step count on the batched MLP (not its algorithm: diffrax's ``PIDController(rtol, atol)``
  is an integral controller with exponent ``1 / order``, whose step never shrinks after an accepted
  one; no ``PIController`` takes its steps exactly, docs/benchmarks.md);
- with ``--jax-python PYTHON`` (an interpreter that has ``jax`` and ``diffrax``; never a dependency
  of local_reg), diffrax's ``Tsit5`` with ``PIDController(rtol, atol)`` under ``jax.jit``, forward
  only, on the same weights and initial states, in a child process that times one solve per round
  itself (``diffrax_peer.py``); XLA limited to one thread.

Times are wall-clock (JAX's work is not all on the calling thread; every process is pinned to one
thread). With ``--device cuda`` the GPU is synchronized around each run, a configuration with CUDA
graphs (``compile={"mode": "reduce-overhead"}``) is added, and diffrax (JAX on the CPU) is not
run. The table gives each configuration's steps (a compiled step rounds differently, so that a
compiled solve may take other steps than the eager one), the median per solve, the median per
step, and each configuration's median per-round ratio to eager local_reg and to diffrax.
Compilation (the first call) is timed separately, as is the largest difference between the
compiled and eager solutions.

    python benchmarks/compiled.py [--rounds 15] [--batch 128] [--jax-python /path/to/python]
    python benchmarks/compiled.py --dim 2 --width 64 --batch 16   # the tiny-state profile
    python benchmarks/compiled.py --device cuda --rounds 5
"""

from __future__ import annotations

import statistics
import sys
import time
import warnings
from collections.abc import Callable

import torch
from diffrax_peer import Diffrax, check_jax_python
from fields import clock, mlp_problem, mlp_problem_parser

import local_reg


class Field(torch.nn.Module):
    """``f(t, y) = net(y)``."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)


def timed(run: Callable[[], object], now: Callable[[], float] = time.perf_counter) -> float:
    start = now()
    run()
    return now() - start


def main() -> None:
    parser = mlp_problem_parser(__doc__.splitlines()[0], batch=128)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--jax-python", default=None, help="a Python with jax and diffrax")
    args = parser.parse_args()
    if args.jax_python is not None:
        check_jax_python(args.jax_python)  # before the minutes of compilations, not after
    counting, y0 = mlp_problem(args)
    # The counting field's ``calls += 1`` would be a constant of the graph that changes on every call
    # (a recompilation each time): the compiled path solves the same MLP without it.
    field = Field(counting.net)
    times = [0.0, args.t1]
    tolerances = {"rtol": args.rtol, "atol": args.atol}

    # inductor's C++ wrapper: the compiled graph's buffer set-up and kernel calls in C++ instead of
    # generated Python, a second or so more compilation for less overhead per step.
    cpp_wrapper = {"options": {"cpp_wrapper": True}}

    # An integral controller that takes diffrax's 24 steps on the default MLP (diffrax's own has
    # exponent 1 / order and never shrinks the step after an accepted one, which ours may).
    integral = local_reg.PIController(beta1=1 / 6, beta2=0.0)

    def forward(
        compile: bool | dict, controller: local_reg.PIController | None = None
    ) -> Callable[[], local_reg.Solution]:
        def run() -> local_reg.Solution:
            with torch.no_grad():
                return local_reg.odeint(
                    field, y0, times, compile=compile, controller=controller, **tolerances
                )

        return run

    def forward_backward(compile: bool | dict) -> Callable[[], local_reg.Solution]:
        def run() -> local_reg.Solution:
            solution = local_reg.odeint(field, y0, times, compile=compile, **tolerances)
            solution.ys[-1].pow(2).mean().backward()
            return solution

        return run

    configurations: dict[str, Callable[[], local_reg.Solution | float]] = {
        "local_reg eager, forward": forward(False),
        "local_reg compiled, forward": forward(True),
        "local_reg compiled (cpp_wrapper), forward": forward(cpp_wrapper),
        "local_reg compiled, integral controller, forward": forward(True, integral),
        "local_reg compiled (cpp_wrapper), integral controller, forward": forward(cpp_wrapper, integral),
        "local_reg eager, forward+backward": forward_backward(False),
        "local_reg compiled, forward+backward": forward_backward(True),
        "local_reg compiled (cpp_wrapper), forward+backward": forward_backward(cpp_wrapper),
    }
    on_gpu = args.device.type == "cuda"
    if on_gpu:
        # CUDA graphs: each compiled step replayed as one graph launch.
        graphs = {"mode": "reduce-overhead"}
        configurations["local_reg compiled (CUDA graphs), forward"] = forward(graphs)
        configurations["local_reg compiled (CUDA graphs), forward+backward"] = forward_backward(graphs)
    now = clock(args.device, wall=True)
    # A step the compiler cannot build runs eagerly after a warning (local_reg._step.CompiledStep):
    # its configuration is marked, so that no eager time is read as a compiled one.
    first_call: dict[str, float] = {}
    not_built: dict[str, str] = {}
    for label, run in configurations.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            first_call[label] = timed(run, now)
        failures = [str(w.message) for w in caught if "could not build the step" in str(w.message)]
        if failures:
            not_built[label] = failures[0]
    # Each configuration's own steps, for its time per step (see the module's docstring).
    solutions = {label: run() for label, run in configurations.items()}
    steps = {label: solution.stats.n_steps for label, solution in solutions.items()}
    eager = solutions["local_reg eager, forward"]
    compiled = solutions["local_reg compiled, forward"]
    wrapped = solutions["local_reg compiled (cpp_wrapper), forward"]
    with_controller = solutions["local_reg compiled, integral controller, forward"]
    difference = float((eager.ys[-1] - compiled.ys[-1]).abs().max())
    wrapped_difference = float((wrapped.ys[-1] - compiled.ys[-1]).abs().max())
    print(
        f"MLP {args.dim}->{args.width}->{args.width}->{args.dim} (weights x2), batch {args.batch}, float32, "
        f"Tsit5, t in [0, {args.t1}], rtol={args.rtol:g}, atol={args.atol:g}, {args.device}, "
        f"{torch.get_num_threads()} thread(s), wall time, median of {args.rounds} interleaved rounds"
    )
    print(
        f"local_reg forward: {eager.stats.n_steps} steps ({eager.stats.nfe} NFE) eager, "
        f"{compiled.stats.n_steps} compiled, {wrapped.stats.n_steps} compiled (cpp_wrapper), "
        f"{with_controller.stats.n_steps} compiled with the integral controller; "
        "max |compiled - eager| at t1: "
        f"{difference:.2e}; max |cpp_wrapper - compiled| {wrapped_difference:.2e}; first call (compilation) "
        + ", ".join(f"{label} {seconds:.1f} s" for label, seconds in first_call.items())
    )
    for label, message in not_built.items():
        print(f"not compiled, ran eagerly: {label}: {message}")
    diffrax = None
    if args.jax_python is not None and not on_gpu:
        diffrax = Diffrax(args.jax_python, counting, x64=False)
        first = diffrax.solve("mlp", y0, args.t1, args.rtol, args.atol)
        configurations["diffrax jitted, forward"] = lambda: diffrax.solve(
            "mlp", y0, args.t1, args.rtol, args.atol
        )["seconds"]
        steps["diffrax jitted, forward"] = first["steps"]
        print(
            f"diffrax: {first['steps']} steps ({first['nfe']} NFE); jit {first['compile_seconds']:.1f} s; "
            f"max |diffrax - local_reg eager| at t1: {float((first['y1'] - eager.ys[-1]).abs().max()):.2e}"
        )
    rounds: dict[str, list[float]] = {label: [] for label in configurations}
    for _ in range(args.rounds):
        for label, run in configurations.items():
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", RuntimeWarning)
                rounds[label].append(run() if label.startswith("diffrax") else timed(run, now))
            if any("could not build the step" in str(w.message) for w in caught):
                not_built.setdefault(label, "in a timed round")
    if diffrax is not None:
        diffrax.close()

    def ratio(label: str, other: str) -> str:
        if other not in rounds:
            return "n/a"
        return f"{statistics.median(a / b for a, b in zip(rounds[label], rounds[other], strict=True)):.2f}"

    print(
        "\n| configuration | steps | ms / solve | us / step | vs local_reg eager (same kind) "
        "| vs diffrax jitted forward |"
    )
    print("|---" * 6 + "|")
    for label, values in rounds.items():
        kind = "forward+backward" if "backward" in label else "forward"
        median = statistics.median(values)
        shown = f"{label} (not built: eager)" if label in not_built else label
        print(
            f"| {shown} | {steps[label]} | {median * 1e3:.2f} | {median / steps[label] * 1e6:.0f} "
            f"| {ratio(label, f'local_reg eager, {kind}')} | {ratio(label, 'diffrax jitted, forward')} |"
        )


if __name__ == "__main__":
    sys.exit(main())
