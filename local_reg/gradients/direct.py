"""Direct backpropagation through every step of the solve: the reference gradient.

The forward solve runs under autograd, so ``ys`` carry the graph of every stage of every accepted
step (rejected steps are dropped with their graphs; the step sizes are constants). The gradient is
that of the discrete forward solve, exact to rounding error. Memory grows like ``N s L`` (steps,
stages, layers of ``func``): the most of all methods. The backward pass calls ``func`` zero times;
its cost is one vector--Jacobian product per stage that enters ``y_{n+1}``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._integrate import integrate_ode
from ..solution import Stats, Steps
from ._finite import guard_direct_gradients
from ._function import ForwardSolve, GradientMethod


def count_backpropagation(ys: Tensor, stats: Stats) -> None:
    """``stats.nfe_backward`` is 0 once a backward pass reaches ``ys`` (``None`` before, as every
    method's): backpropagation re-uses the forward graph, it makes no new calls of ``func``."""

    def record_backward(grad: Tensor) -> None:
        stats.nfe_backward = stats.nfe_backward or 0

    ys.register_hook(record_backward)


class Direct(GradientMethod):
    """``gradient="direct"``: backpropagation through every step of the forward solve."""

    name = "direct"
    supports_step_penalty = True
    graph_free = False

    def solve(self, y0: Tensor, solve: ForwardSolve) -> tuple[Tensor, Stats, Steps, Tensor | None]:
        """Solve under the caller's autograd mode. Autograd finds every tensor ``func`` uses;
        ``solve.params`` (when known) only have their gradients checked for finiteness, like
        ``y0``'s."""
        func, times, step_penalty = solve.func, solve.times, solve.step_penalty
        ys, stats, steps, penalties = integrate_ode(
            func,
            y0,
            times,
            solve.options,
            record_states=solve.record_states,
            f0=solve.f0,
            step_penalty=step_penalty,
        )
        if ys.requires_grad:
            count_backpropagation(ys, stats)
            guard_direct_gradients(ys, (y0, *solve.params), times[0], stats.n_steps)
        has_penalties = step_penalty is not None and penalties
        return ys, stats, steps, torch.stack(penalties) if has_penalties else None
