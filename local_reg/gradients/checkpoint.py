"""Checkpointing every accepted step: exact gradients with one step's graph alive at a time.

This is the adaptive checkpoint adjoint (ACA) of Zhuang et al., "Adaptive Checkpoint Adjoint Method
for Gradient Estimation in Neural ODE", ICML 2020. The forward solve runs without a graph and keeps
the state ``y_n`` at the start of every accepted step ``n`` (rejected steps are forgotten: with the
step sizes fixed they do not enter the map ``y0 -> y(t_i)``). The backward pass walks the steps in
reverse; for each it re-runs the step ``y_{n+1} = Phi(y_n; t_n, dt_n)`` with :func:`local_reg.step`
under a graph and backpropagates ``lambda_{n+1}`` through it::

    lambda_n = (dPhi/dy_n)^T lambda_{n+1},     dL/dtheta += (dPhi/dtheta)^T lambda_{n+1}

which is backpropagation through the discrete forward solve, step by step, so the gradient equals
``gradient="direct"``'s to rounding error. Memory: ``N`` states plus one step's graph; cost: each
step is evaluated twice and differentiated once. The re-run evaluates the stages that enter
``y_{n+1}`` only: an FSAL tableau's last stage ``f(t_{n+1}, y_{n+1})`` feeds the error estimate
alone (``s - 1`` evaluations per step for tsit5, dopri5, dopri8, bosh3, where the whole step would
take ``s``).

With ``step_penalty``, the re-run step (all ``s`` stages) also re-evaluates the step's penalty ``P_n`` and
backpropagates its cotangent together with ``lambda_{n+1}``, so global regularization (Pal et al.,
ICML 2021) is differentiated exactly without a graph of the whole solve.

Outputs read from a step's dense output ``y(t_n + theta dt_n) = y_n + dt_n sum_i B_i(theta) k_i``
(:mod:`local_reg.interpolants`) are linear in ``y_n`` and the re-run step's stages (with ``f(t_n +
dt_n, y_{n+1})`` for a pair that is not FSAL): their cotangents ``g_o`` are backpropagated together
with ``lambda_{n+1}`` as ``sum_o g_o`` on ``y_n`` and ``dt_n sum_o B_i(theta_o) g_o`` on stage ``i``,
still the discrete forward's exact gradient.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor

from .._integrate import StepPenalty
from .._step import combine_rows, stage_time_values, step, step_solution, time_tensor
from ..interpolants import get_interpolant
from ._function import (
    BackwardStep,
    CountingField,
    ForwardSolve,
    StepwiseGradient,
    add_gradients,
    differentiate,
)


class Checkpoint(StepwiseGradient):
    """``gradient="checkpoint"``: re-run each accepted step with a graph and backpropagate it.

    ``Checkpoint(checkpoints=C)`` keeps at most ``C`` step states (see docs/gradients.md)."""

    name = "checkpoint"
    supports_step_penalty = True

    def step_backward(
        self,
        func: CountingField,
        solve: ForwardSolve,
        current: BackwardStep,
        grad_params: list[Tensor | None],
    ) -> Tensor:
        t, dt, y, adjoint, grad_penalty, inside = current
        options = solve.options
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            if grad_penalty is None and inside is None:
                # y1 alone is differentiated: an FSAL tableau's last stage is not evaluated.
                outputs = [
                    step_solution(
                        func,
                        t,
                        y,
                        dt,
                        options.runge_kutta_tableau,
                        time_dtype=options.time_dtype,
                        jump_ts=options.controller.jump_ts,
                    )
                ]
                cotangents = [adjoint]
            else:
                outputs, cotangents = _whole_step_outputs(func, solve, current, y)
            grads = differentiate(func, outputs, [y, *solve.params], cotangents)
        add_gradients(grad_params, grads[1:])
        return torch.zeros_like(y) if grads[0] is None else grads[0]


def _whole_step_outputs(
    func: CountingField, solve: ForwardSolve, current: BackwardStep, y: Tensor
) -> tuple[list[Tensor], list[Tensor]]:
    """The re-run step's differentiated outputs from ``y`` (which requires grad) and their
    cotangents: ``y_{n+1}``, the step's penalty and the outputs inside it, on the step's graph."""
    t, dt, _, adjoint, grad_penalty, inside = current
    options = solve.options
    result = step(
        func,
        t,
        y,
        dt,
        options.runge_kutta_tableau,
        rtol=options.rtol,
        atol=options.atol,
        norm=options.norm,
        time_dtype=options.time_dtype,
        jump_ts=options.controller.jump_ts,
    )
    outputs = [result.y1]
    cotangents = [adjoint]
    if grad_penalty is not None:
        penalty = cast(StepPenalty, solve.step_penalty)  # its cotangent means it is set
        outputs.append(penalty(result, dt))
        cotangents.append(grad_penalty)
    if inside is not None:
        interpolant = get_interpolant(options.runge_kutta_tableau)
        stages = result.stages
        if interpolant.extra_stage:
            dtype = y.dtype if options.time_dtype is None else options.time_dtype
            (end,) = stage_time_values(t, dt, [1.0], dtype, options.controller.jump_ts)
            stages = (*stages, func(time_tensor(end, y, options.time_dtype), result.y1))
        # The outputs y + dt sum_i B_i(theta_o) k_i are linear in y and the stages, so their
        # cotangents g_o enter as y's, sum_o g_o, and each stage's, dt sum_o B_i(theta_o) g_o (one
        # product for all outputs): a state per stage, where differentiating the outputs themselves
        # made and held a state per output.
        rows = interpolant.weight_matrix(inside.thetas)
        outputs.extend([y, *stages])
        cotangents.extend([inside.cotangents.sum(0), *combine_rows(None, dt, rows.T, inside.cotangents)])
    return outputs, cotangents
