"""The record of a regularizer's main (unregularized) solve, whatever its backend, and what local
regularization reads from it. The ODE backends (:mod:`local_reg.regularization.backends`) and the
SDE backends (:mod:`local_reg.sde.backends`) fill it, each adding its own evaluation counts."""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor

from .solution import RegularizationStats, Solution, Stats

_Record = TypeVar("_Record", bound="MainSolve")
_Stats = TypeVar("_Stats", bound=RegularizationStats)


@dataclass(kw_only=True)
class MainSolve:
    """The main solve of a regularizer.

    Attributes:
        ys: the solution at the solve's output times.
        n_accepted: accepted steps, when known.
        step_t, step_dt: start time and signed step size of each accepted step, when recorded.
        step_states: the state at each step start, when recorded.
        solver_stats: the ``local_reg`` solver's statistics, else ``None``.
        penalties: the per-step penalties of ``step_penalty`` (``local_reg`` backend), else ``None``.
        backward_counter: reads the evaluations of the backend's backward pass (``None`` while
            unknown); ``None`` when the backend reports them in ``solver_stats``.
    """

    ys: Tensor
    n_accepted: int | None = None
    step_t: list[float] | None = None
    step_dt: list[float] | None = None
    step_states: Tensor | None = None
    solver_stats: Stats | None = None
    penalties: Tensor | None = None
    backward_counter: Callable[[], int | None] | None = None

    @classmethod
    def from_solution(
        cls: type[_Record], solution: Solution, *, record_steps: bool = True, **counts: int
    ) -> _Record:
        """The record of a ``local_reg`` solve (:func:`local_reg.odeint` or :func:`local_reg.sdeint`);
        ``counts`` are the subclass's evaluation counts."""
        steps = solution.steps
        return cls(
            ys=solution.ys,
            n_accepted=solution.stats.n_accepted,
            step_t=steps.t.tolist() if record_steps else None,
            step_dt=steps.dt.tolist() if record_steps else None,
            step_states=steps.states,
            solver_stats=solution.stats,
            penalties=solution.penalties,
            **counts,
        )

    def step_containing(self, t_reg: float, direction: float) -> float:
        """``|dt|`` of the accepted step that contains ``t_reg`` (starts at it, if one does)."""
        starts = [direction * v for v in self.step_t]
        index = max(bisect.bisect_right(starts, direction * t_reg) - 1, 0)
        return abs(self.step_dt[index])

    def sample_step(self, generator: torch.Generator | None) -> tuple[float, Tensor, float]:
        """An accepted step drawn uniformly [LR23, biased sampling]: ``(t_reg, u(t_reg), |dt|)``,
        its start time, recorded start state and step size."""
        index = int(torch.randint(len(self.step_t), (), generator=generator))
        return self.step_t[index], self.step_states[index], abs(self.step_dt[index])

    def regularization_stats(self, cls: type[_Stats], **fields: Any) -> _Stats:
        """The ``cls`` (:class:`local_reg.RegularizationStats` or a subclass) of a pass around this
        solve: ``fields``, and the solve's ``n_accepted``, ``solver_stats`` and ``backward_counter``."""
        return cls(
            n_accepted=self.n_accepted,
            solver_stats=self.solver_stats,
            backward_counter=self.backward_counter,
            **fields,
        )
