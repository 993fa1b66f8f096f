"""The dense solution: every accepted step's start, size, state and stages, evaluated anywhere in the
span through the method's interpolant (:mod:`local_reg.interpolants`)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ._step import combine
from .interpolants import Interpolant


@dataclass
class DenseOutput:
    """The record behind :meth:`local_reg.Solution.evaluate` (``odeint(dense=True)``).

    Attributes:
        interpolant: the method's dense output.
        t, dt: start time and signed size of each accepted step.
        states: the state at each step start, and the final state last.
        stages: the stages the interpolant combines, per step.
    """

    interpolant: Interpolant
    t: list[float] = field(default_factory=list)
    dt: list[float] = field(default_factory=list)
    states: list[Tensor] = field(default_factory=list)
    stages: list[tuple[Tensor, ...]] = field(default_factory=list)

    def add_step(self, t: float, dt: float, y: Tensor, stages: tuple[Tensor, ...]) -> None:
        self.t.append(t)
        self.dt.append(dt)
        self.states.append(y)
        self.stages.append(stages)

    def evaluate_one(self, t: float) -> Tensor:
        if not self.t:
            return self.states[0]
        direction = 1.0 if self.dt[0] > 0 else -1.0
        t_start = self.t[0]
        t_end = self.t[-1] + self.dt[-1]
        if direction * (t - t_start) < 0 or direction * (t - t_end) > 0:
            lo, hi = sorted((t_start, t_end))
            raise ValueError(f"t={t} is outside the solved span [{lo}, {hi}]")
        keys = [direction * s for s in self.t]
        # The step that starts at or last before t; a step start is returned exactly as recorded.
        index = max(bisect.bisect_right(keys, direction * t) - 1, 0)
        if t == self.t[index]:
            return self.states[index]
        if index == len(self.t) - 1 and t == t_end:
            return self.states[-1]
        dt = self.dt[index]
        weights = self.interpolant.weights((t - self.t[index]) / dt)
        return combine(self.states[index], dt, weights, self.stages[index])

    def evaluate(self, t: Tensor | float) -> Tensor:
        """The solution at ``t`` (a float, a 0-dim or a 1-D tensor of times)."""
        if isinstance(t, Tensor):
            if t.dim() > 1:
                raise ValueError(f"t must be a float, a 0-dim or a 1-D tensor, got shape {tuple(t.shape)}")
            values = t.detach().reshape(-1).tolist()
            out = torch.stack([self.evaluate_one(float(v)) for v in values])
            return out[0] if t.dim() == 0 else out
        if isinstance(t, bool) or not isinstance(t, (int, float)):
            raise TypeError(f"t must be a float or a tensor of times, got {type(t).__name__}")
        return self.evaluate_one(float(t))
