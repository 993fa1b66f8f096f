"""Weights of the regularization term, constant or on a schedule advanced by the training loop.

[LR23] Pal, Edelman, Rackauckas, ICML 2023, section 5: the loss is ``task + w(k) * R`` with either a
constant ``w`` or an exponential decay from ``w0`` to ``w1`` over ``N`` training iterations,

    w(k) = w0 * exp(-k * ln(w0 / w1) / N)       (MNIST 2.5 -> 1.0; PhysioNet 100 -> 10),

so ``w(0) = w0`` and ``w(N) = w1``.
"""

from __future__ import annotations

import math
from typing import Any


def _non_negative(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a non-negative float, got {type(value).__name__}")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be non-negative and finite, got {value}")
    return float(value)


class WeightSchedule:
    """A regularization weight that may change with the training iteration.

    ``schedule()`` is the current weight; ``schedule.step()`` advances one iteration (the training
    loop calls it, typically once per optimizer step). ``state_dict()`` / ``load_state_dict()`` save
    and restore the iteration so that a resumed run continues the schedule.
    """

    def __init__(self) -> None:
        self.iteration = 0

    def value(self, iteration: int) -> float:
        raise NotImplementedError

    def __call__(self) -> float:
        return self.value(self.iteration)

    def step(self) -> float:
        """Advance one iteration and return the new weight."""
        self.iteration += 1
        return self()

    def state_dict(self) -> dict[str, Any]:
        return {"iteration": self.iteration}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        iteration = state["iteration"]
        if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0:
            raise ValueError(f"iteration must be a non-negative int, got {iteration!r}")
        self.iteration = iteration


class ConstantWeight(WeightSchedule):
    """``w(k) = value`` for every iteration (e.g. 1000 for the MNIST neural SDE of [LR23])."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.weight = _non_negative("weight", value)

    def value(self, iteration: int) -> float:
        return self.weight

    def __repr__(self) -> str:
        return f"ConstantWeight({self.weight})"


class ExponentialDecay(WeightSchedule):
    """``w(k) = w0 * exp(-k ln(w0 / w1) / N)`` for ``k <= N``, then ``w1`` ([LR23]).

    ``w0`` and ``w1`` must be positive (the logarithm of their ratio defines the decay rate); past
    ``N`` iterations the weight stays at ``w1`` rather than decaying further.
    """

    def __init__(self, w0: float, w1: float, n_steps: int) -> None:
        super().__init__()
        self.w0 = _non_negative("w0", w0)
        self.w1 = _non_negative("w1", w1)
        if self.w0 == 0 or self.w1 == 0:
            raise ValueError(f"w0 and w1 must be positive for an exponential decay, got {w0}, {w1}")
        if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
            raise ValueError(f"n_steps must be a positive int, got {n_steps!r}")
        self.n_steps = n_steps

    def value(self, iteration: int) -> float:
        k = min(iteration, self.n_steps)
        return self.w0 * math.exp(-k * math.log(self.w0 / self.w1) / self.n_steps)

    def __repr__(self) -> str:
        return f"ExponentialDecay(w0={self.w0}, w1={self.w1}, n_steps={self.n_steps})"


def as_schedule(weight: float | WeightSchedule) -> WeightSchedule:
    """A float becomes a :class:`ConstantWeight`; a schedule is used as is."""
    if isinstance(weight, WeightSchedule):
        return weight
    return ConstantWeight(_non_negative("weight", weight))
