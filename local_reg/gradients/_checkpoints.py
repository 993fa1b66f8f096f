"""The step states a stepwise backward pass restarts from, kept within a memory budget.

``"checkpoint"`` and ``"symplectic"`` walk the accepted steps in reverse and need the state ``y_n``
at the start of every step ``n`` (``InterpolatingAdjoint(checkpoints=C)`` re-solves the forward's
segments from the same kept states). Keeping all ``N`` of them costs ``O(N)`` states, which dominates
their memory on long solves of small states. With a budget of ``C`` checkpoints (``checkpoints=C``)
the forward pass keeps only every ``stride``-th state, ``stride`` the smallest power of two that
fits ``N`` states into ``C`` (it doubles, and every other kept state is dropped, whenever the budget
runs out; ``N`` is not known in advance). The backward pass takes the segments between kept states
from last to first, re-solves each segment forward from its kept state without a graph, with the
recorded step sizes, and hands the re-computed states to the method in reverse.

Re-solving repeats the forward's own arithmetic (same steps, same stages, the first one of a
segment evaluated where the forward's FSAL stage was), so the states and the gradient are unchanged
to the bit. This is the two-level checkpointing of Griewank and Walther,
"Evaluating Derivatives" (2008), Ch. 12, with uniform spacing: at most ``C`` plus one segment
(``stride <= 2N/C``) states are alive at a time, for one extra graph-free forward solve
(``s - 1`` evaluations per step for FSAL tableaus, ``s`` otherwise, plus one per segment).
``C`` about ``sqrt(2N)`` minimizes the peak.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from .._integrate import SolveOptions
from .._step import StepResult, VectorField, jump_ends, step, time_tensor


class StepStates:
    """The states at the start of accepted steps, all of them or evenly spaced within a budget.

    Args:
        capacity: the most states kept at once; ``None`` keeps every state.
    """

    def __init__(self, capacity: int | None = None) -> None:
        self.capacity = capacity
        self.stride = 1
        self.states: list[Tensor] = []
        """The kept states: those of steps ``0, stride, 2 stride, ...``."""
        self._count = 0

    def __len__(self) -> int:
        """The number of states appended (one per accepted step), kept or not."""
        return self._count

    @property
    def indices(self) -> list[int]:
        """The steps whose states are kept."""
        return list(range(0, self._count, self.stride))

    def append(self, state: Tensor) -> None:
        index = self._count
        self._count += 1
        if index % self.stride:
            return
        self.states.append(state)
        if self.capacity is not None and len(self.states) > self.capacity:
            # Kept steps are the multiples of the stride: those of twice the stride are every other one.
            self.stride *= 2
            self.states = self.states[::2]

    def segment_of(self, n: int) -> tuple[int, int, Tensor]:
        """``(start, end, state)``: the kept segment holding step ``n`` (steps ``start .. end - 1``)
        and the kept state at the start of step ``start``."""
        index = n // self.stride
        start = index * self.stride
        return start, min(start + self.stride, self._count), self.states[index]

    def reversed_states(
        self, func: VectorField, options: SolveOptions, step_starts: list[float], step_sizes: list[float]
    ) -> Iterator[Tensor]:
        """Yield the state at the start of step ``N - 1``, then ``N - 2``, ..., then ``0``.

        States that were not kept are re-computed segment by segment with ``func`` (without a
        graph). The record itself is left as it is: a graph kept with ``retain_graph=True`` may be
        differentiated again.
        """
        if self._count != len(step_starts):
            raise RuntimeError(f"{self._count} step states recorded for {len(step_starts)} accepted steps")
        starts = self.indices
        segment_ends = [*starts[1:], self._count]
        for start, end, kept in reversed(list(zip(starts, segment_ends, self.states, strict=True))):
            # The segment's last state is the result of the step before it: its own step is not re-run.
            replayed = replay_steps(func, options, step_starts, step_sizes, start, end - 1, kept)
            segment = [kept, *(result.y1 for _, result in replayed)]
            while segment:
                yield segment.pop()


def replay_steps(
    func: VectorField,
    options: SolveOptions,
    step_starts: list[float],
    step_sizes: list[float],
    start: int,
    stop: int,
    state: Tensor,
) -> Iterator[tuple[Tensor, StepResult]]:
    """Re-solve the accepted steps ``start .. stop - 1`` from ``state`` (the state at the start of step
    ``start``) without a graph, as the forward solved them, with the recorded step sizes: yield each
    step's start state and result, one at a time (a caller that keeps only the states holds no
    step's stages longer than the step)."""
    tableau = options.runge_kutta_tableau
    jump_ts = options.controller.jump_ts

    def ends_at_jump(n: int) -> bool:
        # After a jump the forward evaluated the next step's first stage afresh, just inside it.
        return bool(jump_ts) and jump_ends(step_starts[n], step_sizes[n], jump_ts)[1] is not None

    k1 = None
    if tableau.fsal and start > 0 and stop > start and not ends_at_jump(start - 1):
        # The forward reused the previous step's last stage, evaluated at that step's
        # t + c_s dt, which after a step landing on an output time may differ from the
        # recorded start time by rounding: evaluate it there to repeat the forward's bits.
        fsal_time = step_starts[start - 1] + tableau.c[-1] * step_sizes[start - 1]
        with torch.no_grad():
            k1 = func(time_tensor(fsal_time, state, options.time_dtype), state)
    for n in range(start, stop):
        # No graph, entered per step: the caller's autograd mode between the steps is its own.
        with torch.no_grad():
            result = step(
                func,
                step_starts[n],
                state,
                step_sizes[n],
                tableau,
                rtol=options.rtol,
                atol=options.atol,
                k1=k1,
                norm=options.norm,
                time_dtype=options.time_dtype,
                jump_ts=jump_ts,
            )
        yield state, result
        state = result.y1
        k1 = result.stages[-1] if tableau.fsal and not ends_at_jump(n) else None
