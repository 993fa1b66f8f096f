"""Direct backpropagation through every step of the solve: the reference gradient.

The forward solve runs under autograd, so ``ys`` carry the graph of every stage of every accepted
step (rejected steps are dropped with their graphs; the step sizes are constants). The gradient is
that of the discrete forward solve, exact to rounding error. Memory grows like ``N s L`` (steps,
stages, layers of ``func``): the most of all methods. The backward pass calls ``func`` zero times;
its cost is one vector--Jacobian product per stage that enters ``y_{n+1}``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .._autograd import untraced_hook
from .._integrate import integrate_ode
from ..solution import Stats, Steps
from ._finite import guard_direct_gradients
from ._function import ForwardSolve, GradientMethod


def count_backpropagation(output: Tensor, stats: Stats) -> None:
    """``stats.nfe_backward`` is 0 once a backward pass reaches ``output`` (``None`` before, as every
    method's): backpropagation re-uses the forward graph, it makes no new calls of ``func``."""

    def record_backward(grad: Tensor) -> None:
        stats.nfe_backward = stats.nfe_backward or 0

    output.register_hook(untraced_hook(record_backward))


def watch_backpropagation(
    inputs: Sequence[Tensor], stats: Stats, t0: float, func: str = "func", *, float16_autocast: bool
) -> Callable[[Tensor], None]:
    """``watch(output)`` for each output of a solve differentiated by backpropagation that a loss
    may read (``ys``, the stacked step penalties, a read of the dense record): a backward pass that
    reaches the solve through any of them counts (:func:`count_backpropagation`) and has the
    gradients of ``inputs`` checked (:func:`guard_direct_gradients`, which ``float16_autocast``
    goes to)."""
    guard = guard_direct_gradients(inputs, t0, stats.n_steps, func, float16_autocast=float16_autocast)

    def watch(output: Tensor) -> None:
        if output.requires_grad:
            count_backpropagation(output, stats)
            guard(output)

    return watch


def watched_outputs(
    ys: Tensor,
    penalties: list[Tensor],
    inputs: Sequence[Tensor],
    stats: Stats,
    t0: float,
    func: str = "func",
    *,
    float16_autocast: bool,
) -> tuple[Tensor | None, Callable[[Tensor], None] | None]:
    """The step ``penalties`` of a solve differentiated by backpropagation, stacked (``None``
    without any), with ``ys`` and them watched (:func:`watch_backpropagation`): the loss may read
    the penalties without ``ys``, each a way into the graph of the solve. Returns them and the
    watch, for the outputs read later (``None`` where ``ys`` has no graph)."""
    stacked_penalties = torch.stack(penalties) if penalties else None
    if not ys.requires_grad:
        return stacked_penalties, None
    watch = watch_backpropagation(inputs, stats, t0, func, float16_autocast=float16_autocast)
    watch(ys)
    if stacked_penalties is not None:
        watch(stacked_penalties)
    return stacked_penalties, watch


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
        stacked_penalties, watch = watched_outputs(
            ys, penalties, (y0, *solve.params), stats, times[0], float16_autocast=solve.float16_autocast
        )
        if watch is not None and steps.dense_output is not None:
            # The loss may read the dense output without ys: another way into the graph of the solve.
            steps.dense_output.on_read = watch
        return ys, stats, steps, stacked_penalties
