"""diffrax (JAX) as a peer of the benchmarks, in a child process run by another Python interpreter.

diffrax and JAX are never dependencies of local_reg: give the benchmarks an interpreter that has
them (``python -m venv /tmp/jax && /tmp/jax/bin/pip install jax diffrax``). The child solves with
diffrax's ``Tsit5`` and ``PIDController(rtol, atol)`` under ``jax.jit`` (float64 enabled unless
asked otherwise; each request's state dtype is kept), XLA limited to one thread. For each new
problem, tolerance, span and dtype it first counts the field's evaluations in a run with a host
callback inside the field, then compiles the plain solve (both untimed); every request then
returns ``y(t1)`` and the time of one jitted solve measured in the child (``block_until_ready``),
so no inter-process time is counted.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

CHILD = r"""
import json, sys, time
import jax
jax.config.update("jax_enable_x64", sys.argv[2] == "x64")
import jax.numpy as jnp
import numpy as np
import diffrax

data = np.load(sys.argv[1])

def mlp(dtype):
    weights = [jnp.asarray(data[f"w{i}"], dtype=dtype) for i in range(3)]
    biases = [jnp.asarray(data[f"b{i}"], dtype=dtype) for i in range(3)]
    def field(t, y, args):
        h = jnp.tanh(y @ weights[0].T + biases[0])
        h = jnp.tanh(h @ weights[1].T + biases[1])
        return h @ weights[2].T + biases[2]
    return field

def lotka_volterra(dtype):
    def field(t, y, args):
        x, z = y[..., 0], y[..., 1]
        return jnp.stack([1.5 * x - x * z, -3.0 * z + x * z], axis=-1)
    return field

def van_der_pol(dtype):
    def field(t, y, args):
        x, v = y[..., 0], y[..., 1]
        return jnp.stack([v, (1 - x**2) * v - x], axis=-1)
    return field

FIELDS = {"mlp": mlp, "lotka_volterra": lotka_volterra, "van_der_pol": van_der_pol}
calls = [0]

def count(_):
    calls[0] += 1

def solver(field, rtol, atol, t1):
    @jax.jit
    def solve(y0):
        solution = diffrax.diffeqsolve(
            diffrax.ODETerm(field), diffrax.Tsit5(), t0=0.0, t1=t1, dt0=None, y0=y0,
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
            saveat=diffrax.SaveAt(t1=True), max_steps=1_000_000,
        )
        return solution.ys[-1], solution.stats["num_steps"]
    return solve

cache = {}
for line in sys.stdin:
    request = json.loads(line)
    key = (request["problem"], request["rtol"], request["atol"], request["t1"], request["dtype"])
    y0 = jnp.asarray(request["y0"], dtype=request["dtype"])
    if key not in cache:
        field = FIELDS[request["problem"]](request["dtype"])
        def counted(t, y, args, field=field):
            jax.debug.callback(count, t)
            return field(t, y, args)
        calls[0] = 0
        jax.block_until_ready(solver(counted, request["rtol"], request["atol"], request["t1"])(y0))
        solve = solver(field, request["rtol"], request["atol"], request["t1"])
        start = time.perf_counter()
        jax.block_until_ready(solve(y0))
        cache[key] = (solve, calls[0], time.perf_counter() - start)
    solve, nfe, compile_seconds = cache[key]
    start = time.perf_counter()
    y1, steps = jax.block_until_ready(solve(y0))
    seconds = time.perf_counter() - start
    print(json.dumps({"y1": np.asarray(y1).tolist(), "nfe": nfe, "steps": int(steps), "seconds": seconds,
                      "compile_seconds": compile_seconds}), flush=True)
"""


def check_jax_python(python: str) -> None:
    """Exit naming ``python`` (``--jax-python``) unless it imports jax and diffrax: the JAX process
    would otherwise end at its first request, leaving the benchmark a broken pipe."""
    try:
        check = subprocess.run([python, "-c", "import jax, diffrax"], capture_output=True, text=True)
    except OSError as error:
        raise SystemExit(f"--jax-python {python}: cannot run it ({error})") from None
    if check.returncode != 0:
        lines = check.stderr.strip().splitlines() or ["no message"]
        raise SystemExit(f"--jax-python {python}: it cannot import jax and diffrax ({lines[-1]})")


class Diffrax:
    """The child process. ``mlp`` is the benchmark MLP (``fields.CountingMLP``) whose weights the
    child's ``"mlp"`` problem uses; the others are ``"lotka_volterra"`` and ``"van_der_pol"``
    (mu = 1), as in ``peers.py``. ``x64=False`` leaves JAX in its default 32-bit mode (times and
    the controller's arithmetic in float32 too), for float32 problems only."""

    def __init__(self, python: str, mlp: torch.nn.Module, x64: bool = True) -> None:
        check_jax_python(python)
        self.folder = tempfile.TemporaryDirectory()
        folder = Path(self.folder.name)
        linears = [layer for layer in mlp.net if isinstance(layer, torch.nn.Linear)]
        arrays = {f"w{i}": layer.weight.detach().double().numpy() for i, layer in enumerate(linears)}
        arrays |= {f"b{i}": layer.bias.detach().double().numpy() for i, layer in enumerate(linears)}
        np.savez(folder / "mlp.npz", **arrays)
        (folder / "child.py").write_text(CHILD)
        flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        self.process = subprocess.Popen(
            [python, str(folder / "child.py"), str(folder / "mlp.npz"), "x64" if x64 else "x32"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "XLA_FLAGS": flags},
        )

    def solve(self, problem: str, y0: torch.Tensor, t1: float, rtol: float, atol: float) -> dict:
        """One timed solve: ``y1`` (a tensor of ``y0``'s dtype), ``nfe``, ``steps`` (attempted),
        ``seconds`` and the first solve's ``compile_seconds``."""
        request = {
            "problem": problem,
            "y0": y0.tolist(),
            "t1": t1,
            "rtol": rtol,
            "atol": atol,
            "dtype": str(y0.dtype).removeprefix("torch."),
        }
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        answer = json.loads(self.process.stdout.readline())
        answer["y1"] = torch.tensor(answer["y1"], dtype=y0.dtype)
        return answer

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()
        self.folder.cleanup()
