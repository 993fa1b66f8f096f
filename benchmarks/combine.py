"""The stage combinations of one Tsit5 step, ``y + dt * sum_j a_ij k_j`` for every stage and the
error ``dt * sum_j e_j k_j``, five ways, for small and large states.

- ``chain`` (``local_reg._step.combine``): the first term a new tensor, the others added in place.
- ``chain, out of place``: a new tensor per term (``combine`` before it added in place).
- ``stack + addmm``: per stage, the stages stacked and one matrix product with the tableau row.
- ``buffer + addmm``: the stages copied into one preallocated buffer, one matrix product per row
  (in-place writes that autograd would have to track across the step).
- ``broadcast addcmul``: every row of the step at once, one ``addcmul`` per stage on a
  ``(rows, *state)`` tensor (bit-identical to the chain on CPU).

No autograd, one thread, process CPU time, methods interleaved in every round, medians::

    python benchmarks/combine.py [--rounds 9]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from local_reg._step import combine
from local_reg.tableaus import get_tableau

SHAPES = ((16, 2), (512, 16), (64, 1024), (1000, 1000))
TABLEAU = get_tableau("tsit5")


def chain(y, dt, ks, rows, error_row):
    for i in range(1, len(ks)):
        combine(y, dt, TABLEAU.a[i], ks[:i])
    combine(None, dt, TABLEAU.error_weights, ks)


def chain_out_of_place(y, dt, ks, rows, error_row):
    for coefficients, base, stages in [
        *((TABLEAU.a[i], y, ks[:i]) for i in range(1, len(ks))),
        (TABLEAU.error_weights, None, ks),
    ]:
        out = base
        for c, k in zip(coefficients, stages, strict=True):
            if c != 0.0:
                out = k * (dt * c) if out is None else torch.add(out, k, alpha=dt * c)


def stack_addmm(y, dt, ks, rows, error_row):
    flat = y.reshape(1, -1)
    for i in range(1, len(ks)):
        torch.addmm(flat, rows[i][:, :i], torch.stack(ks[:i]).reshape(i, -1), alpha=dt).view_as(y)
    torch.mm(error_row, torch.stack(ks).reshape(len(ks), -1)).mul_(dt)


def buffer_addmm(y, dt, ks, rows, error_row):
    buffer = torch.empty(len(ks), y.numel(), dtype=y.dtype)
    flat = y.reshape(1, -1)
    buffer[0] = ks[0].reshape(-1)
    for i in range(1, len(ks)):
        torch.addmm(flat, rows[i][:, :i], buffer[:i], alpha=dt).view_as(y)
        buffer[i] = ks[i].reshape(-1)
    torch.mm(error_row, buffer).mul_(dt)


def broadcast_addcmul(y, dt, ks, rows, error_row):
    s = len(ks)
    matrix = np.zeros((s, s))  # column j: the coefficients of k_j in stages 2..s and the error
    for i in range(1, s):
        matrix[: len(TABLEAU.a[i]), i - 1] = TABLEAU.a[i]
    matrix[:, s - 1] = TABLEAU.error_weights
    columns = torch.tensor((matrix * dt).reshape(s, s, *([1] * y.dim())), dtype=y.dtype).unbind()
    mask = torch.ones((s, *([1] * y.dim())), dtype=y.dtype)
    mask[-1] = 0.0
    rows_now = torch.addcmul(y * mask, columns[0], ks[0])
    stage_states = []
    for j in range(1, s):
        stage_states.append(rows_now[j - 1])
        rows_now = torch.addcmul(rows_now, columns[j], ks[j])


METHODS = {
    "chain (in place)": chain,
    "chain, out of place": chain_out_of_place,
    "stack + addmm": stack_addmm,
    "buffer + addmm": buffer_addmm,
    "broadcast addcmul": broadcast_addcmul,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    s = len(TABLEAU.c)
    print(f"tsit5, the {s - 1} stage combinations and the error of one step, us (median of {args.rounds})")
    print("| state | " + " | ".join(METHODS) + " |")
    print("|---" * (len(METHODS) + 1) + "|")
    with torch.no_grad():
        for shape in SHAPES:
            y = torch.randn(*shape)
            ks = [torch.randn(*shape) for _ in range(s)]
            rows = [torch.tensor([list(a) + [0.0] * (s - len(a))]) for a in TABLEAU.a]
            error_row = torch.tensor([TABLEAU.error_weights])
            repeats = min(300, max(1, 2_000_000 // y.numel()))
            times: dict[str, list[float]] = {name: [] for name in METHODS}
            for _ in range(args.rounds):
                for name, method in METHODS.items():
                    start = time.process_time()
                    for _ in range(repeats):
                        method(y, 0.01, ks, rows, error_row)
                    times[name].append((time.process_time() - start) / repeats)
            cells = " | ".join(f"{1e6 * statistics.median(times[name]):.0f}" for name in METHODS)
            print(f"| {'x'.join(map(str, shape))} | {cells} |")


if __name__ == "__main__":
    main()
