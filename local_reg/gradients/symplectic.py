"""The symplectic adjoint method: exact gradients with near-adjoint memory.

Matsubara, Miyatake, Yaguchi, "Symplectic Adjoint Method for Exact Gradient of Neural ODE with
Minimal Memory", NeurIPS 2021.

The forward solve runs without a graph and keeps only the state ``y_n`` at each accepted step. The
backward pass integrates the adjoint ``lambda`` backwards through every step with the *partner* of
the forward Runge--Kutta method: together they form a symplectic partitioned RK method, whose
quadratic invariant ``lambda^T delta y`` makes the result equal to backpropagation through the
discrete forward solve. For a step ``n`` of size ``h`` from ``t_n`` with ``s`` stages:

1. Recompute the stage states ``Y_i = y_n + h sum_{j<i} a_ij k_j``, ``k_j = f(t_n + c_j h, Y_j)``
   without a graph. Trailing stages with ``b_i = 0`` do not enter ``y_{n+1}`` (the FSAL stage of
   tsit5/dopri5/dopri8/bosh3 only feeds the error estimate) and are dropped.
2. For ``i = s, ..., 1``, with ``btilde_j = b_j`` if ``b_j != 0`` else ``h``::

       Lambda_i = lambda_{n+1} - h sum_{j>i} (btilde_j a_ji / b_i) l_j     if b_i != 0
       Lambda_i = - sum_{j>i} btilde_j a_ji l_j                            if b_i == 0 (scaled)
       l_i = -(df/dy (t_n + c_i h, Y_i))^T Lambda_i
       dL/dtheta += h btilde_i (df/dtheta (t_n + c_i h, Y_i))^T Lambda_i

   ``l_i`` and the parameter term come from ONE vector--Jacobian product through a fresh graph of
   ``f`` at ``Y_i``; it is freed before the next stage, so one network graph is alive at a time.
   The scaled branch keeps ``Lambda_i`` finite where the partner coefficients ``a_ji / b_i`` are not.
3. ``lambda_n = lambda_{n+1} - h sum_i btilde_i l_i``.

Memory: ``N`` states, ``s`` stage states and one graph of ``f``; cost per step: ``s - 1`` plain
evaluations and ``s`` evaluations with a vector--Jacobian product.

Outputs inside a step (dense output, ``y(t_n + theta h) = y_n + h sum_i B_i(theta) k_i`` with
cotangents ``g_o``) enter the same stage recursion: being linear in the stages, the interpolant adds
``h sum_o B_i(theta_o) g_o`` to the cotangent of stage ``i``. With ``kappa_i = h b_i Lambda_i`` the
recursion above reads, for ``i = s', ..., 1`` (``s'`` the last stage any weight uses, the extra stage
``f(t_n + h, y_{n+1})`` of a pair that is not FSAL included, its row of ``a`` being ``b``)::

    kappa_i = h (b_i lambda_{n+1} + sum_o B_i(theta_o) g_o) + h sum_{j>i} a_ji mu_j
    mu_i = (df/dy (t_n + c_i h, Y_i))^T kappa_i,     dL/dtheta += (df/dtheta (t_n + c_i h, Y_i))^T kappa_i
    lambda_n = lambda_{n+1} + sum_o g_o + sum_i mu_i

which needs no division by ``b_i`` (stages with ``b_i = 0`` but ``B_i != 0``, such as Tsit5's
seventh, are covered). Steps without outputs inside keep the scaled form.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .._step import combine, combine_rows, stage_time_values, stage_times
from ..interpolants import get_interpolant
from ..tableaus import ButcherTableau
from ._function import (
    BackwardStep,
    CountingField,
    ForwardSolve,
    OutputsInside,
    StepwiseGradient,
    add_gradients,
    vector_jacobian_product,
)


def stages_entering_solution(tableau: ButcherTableau) -> int:
    """The number of leading stages ``y_{n+1}`` depends on: up to the last one with ``b_i != 0``."""
    return 1 + max(i for i, b_i in enumerate(tableau.b) if b_i != 0.0)


def stage_states_without_graph(
    func: CountingField,
    y: Tensor,
    h: float,
    rows: Sequence[Sequence[float]],
    times: Sequence[Tensor],
) -> list[Tensor]:
    """The stage states ``Y_i = y + h sum_{j<i} rows[i][j] k_j``, ``k_j = f(times[j], Y_j)``, of the
    step from ``y``, one per stage time, evaluated without a graph. The last stage's derivative is
    only needed with a graph, so it is not evaluated here."""
    with torch.no_grad():
        stage_states = [y]
        stage_derivatives: list[Tensor] = []
        for i in range(1, len(times)):
            stage_derivatives.append(func(times[i - 1], stage_states[i - 1]))
            stage_states.append(combine(y, h, rows[i][:i], stage_derivatives))
    return stage_states


class Symplectic(StepwiseGradient):
    """``gradient="symplectic"``: the partner scheme of the forward RK method, step by step.

    ``Symplectic(checkpoints=C)`` keeps at most ``C`` step states (see docs/gradients.md)."""

    name = "symplectic"
    supports_step_penalty = False

    def step_backward(
        self,
        func: CountingField,
        solve: ForwardSolve,
        current: BackwardStep,
        grad_params: list[Tensor | None],
    ) -> Tensor:
        t, dt, y, adjoint, grad_penalty, inside = current
        if inside is not None:
            return step_backward_with_outputs(func, solve, t, dt, y, adjoint, grad_params, inside)
        tableau = solve.options.runge_kutta_tableau
        time_dtype = solve.options.time_dtype
        jump_ts = solve.options.controller.jump_ts
        n_stages = stages_entering_solution(tableau)
        h = dt
        b = tableau.b[:n_stages]
        b_tilde = [b_i if b_i != 0.0 else h for b_i in b]
        # One tensor of the stage times per step, as the forward step makes them.
        times = stage_times(
            stage_time_values(t, h, tableau.c[:n_stages], time_dtype or y.dtype, jump_ts), y, time_dtype
        )

        # 1. Stage states without a graph.
        stage_states = stage_states_without_graph(func, y, h, tableau.a, times)

        # 2. The partner scheme in reverse stage order, one vector--Jacobian product per stage.
        partner_stages: dict[int, Tensor] = {}  # l_i, filled from the last stage
        for i in reversed(range(n_stages)):
            later = range(i + 1, n_stages)
            couplings = [b_tilde[j] * tableau.a[j][i] for j in later]
            later_stages = [partner_stages[j] for j in later]
            if b[i] != 0.0:
                stage_adjoint = (
                    adjoint if not later_stages else combine(adjoint, -h / b[i], couplings, later_stages)
                )
            elif all(coupling == 0.0 for coupling in couplings):
                # Nothing in y_{n+1} depends on this stage: its partner stage is zero.
                partner_stages[i] = torch.zeros_like(adjoint)
                continue
            else:
                stage_adjoint = combine(None, -1.0, couplings, later_stages)
            _, state_vjp, parameter_vjps = vector_jacobian_product(
                func, times[i], stage_states[i], solve.params, stage_adjoint
            )
            partner_stages[i] = -state_vjp
            add_gradients(grad_params, parameter_vjps, scale=h * b_tilde[i])

        # 3. Back across the step.
        return combine(adjoint, -h, b_tilde, [partner_stages[i] for i in range(n_stages)])


def step_backward_with_outputs(
    func: CountingField,
    solve: ForwardSolve,
    t: float,
    h: float,
    y: Tensor,
    adjoint: Tensor,
    grad_params: list[Tensor | None],
    inside: OutputsInside,
) -> Tensor:
    """The stage recursion of a step whose dense output holds outputs (the unscaled form in the
    module docstring): ``lambda_n`` from ``lambda_{n+1}`` and the outputs' ``theta`` and ``g_o``."""
    tableau = solve.options.runge_kutta_tableau
    time_dtype = solve.options.time_dtype
    interpolant = get_interpolant(tableau)
    # The extra stage f(t + h, y_{n+1}) of a pair that is not FSAL is one more stage with a = b.
    rows = [*tableau.a, tableau.b] if interpolant.extra_stage else list(tableau.a)
    c = [*tableau.c, 1.0] if interpolant.extra_stage else list(tableau.c)
    b = [*tableau.b, 0.0] if interpolant.extra_stage else list(tableau.b)
    weights = interpolant.weight_matrix(inside.thetas)  # (outputs, stages)
    cotangents = inside.cotangents
    read = [bool(column.any()) for column in weights.T]  # the stages some output's interpolant reads
    used = [b[i] != 0.0 or read[i] for i in range(len(rows))]
    n_stages = 1 + max(i for i, u in enumerate(used) if u)
    jump_ts = solve.options.controller.jump_ts
    times = stage_times(stage_time_values(t, h, c[:n_stages], time_dtype or y.dtype, jump_ts), y, time_dtype)

    stage_states = stage_states_without_graph(func, y, h, rows, times)
    # sum_o B_i(theta_o) g_o for each stage i: the outputs' cotangents, one product for all of them.
    output_cotangents = combine_rows(None, 1.0, weights[:, :n_stages].T, cotangents)

    state_cotangents: dict[int, Tensor] = {}  # mu_i, filled from the last stage
    for i in reversed(range(n_stages)):
        later = range(i + 1, n_stages)
        coefficients = [b[i], 1.0 if read[i] else 0.0, *(rows[j][i] for j in later)]
        terms = [adjoint, output_cotangents[i], *(state_cotangents[j] for j in later)]
        if all(coefficient == 0.0 for coefficient in coefficients):
            state_cotangents[i] = torch.zeros_like(adjoint)
            continue
        stage_cotangent = combine(None, h, coefficients, terms)
        _, state_vjp, parameter_vjps = vector_jacobian_product(
            func, times[i], stage_states[i], solve.params, stage_cotangent
        )
        state_cotangents[i] = state_vjp
        add_gradients(grad_params, parameter_vjps)
    previous = adjoint + cotangents.sum(0)
    return combine(previous, 1.0, [1.0] * n_stages, [state_cotangents[i] for i in range(n_stages)])
