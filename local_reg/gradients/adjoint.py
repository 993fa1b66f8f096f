"""The continuous (backsolve) adjoint: constant memory, approximate gradients.

Chen, Rubanova, Bettencourt, Duvenaud, "Neural Ordinary Differential Equations", NeurIPS 2018. With
``a(t) = dL/dy(t)``, the augmented system::

    dy/dt = f(t, y),     da/dt = -a^T df/dy (t, y),     dg/dt = -a^T df/dtheta (t, y)

is solved backwards from each output time ``t_i`` to the previous one ``t_{i-1}``, starting from
``y(t_i)`` (the forward output), ``a(t_i)`` (the accumulated cotangent) and ``g = 0`` so far; at
``t_{i-1}`` the output's cotangent ``dL/dy(t_{i-1})`` is added to ``a``. Then ``dL/dy0 = a(t_0)`` and
``dL/dtheta = g(t_0)``. Each evaluation of the augmented field is one evaluation of ``f`` with a
graph and one vector--Jacobian product. The backward solve is the instrumented solver itself, with
its own ``adjoint_method``, tolerances and step options; the gradient is that of the continuous
problem, so it differs from the discrete forward solve's by the two solves' errors.

Seminorm (Kidger, Chen, Lyons, "'Hey, that's not an ODE': Faster ODE Adjoints via Seminorms",
ICML 2021): ``g`` never feeds back into the dynamics, so its local error need not limit the step.
With ``adjoint_options={"norm": "seminorm"}`` the error estimate covers ``(y, a)`` only and ``g`` is
accumulated by the same Runge--Kutta quadrature on the accepted steps,
``g += h sum_i b_i g'(stage i)``: exactly the ``g`` component the solver would have computed on the
whole augmented state, without its error limiting the step size.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._integrate import SolveOptions, integrate
from ..step import StepResult, combine
from ..tableaus import ButcherTableau
from ._function import ForwardSolve, GradientMethod, placeholder_penalty, vector_jacobian_product

NORMS = ("default", "seminorm")


class AugmentedDynamics:
    """The augmented field on the flat state ``[y, a]`` (seminorm) or ``[y, a, g]``.

    In seminorm mode the parameter rates ``-a^T df/dtheta`` of every evaluation are kept, keyed by
    the returned tensor, until :meth:`accumulate_parameter_gradient` integrates those of an
    accepted step.
    """

    def __init__(
        self, solve: ForwardSolve, state_shape: torch.Size, tableau: ButcherTableau, seminorm: bool
    ) -> None:
        self.func = solve.func
        self.params = solve.params
        self.state_shape = state_shape
        self.state_size = state_shape.numel()
        self.seminorm = seminorm
        self.tableau = tableau
        self.parameter_rates: dict[int, Tensor] = {}
        self.parameter_gradient: Tensor | None = None

    def __call__(self, t: Tensor, z: Tensor) -> Tensor:
        n = self.state_size
        adjoint = z[n : 2 * n].reshape(self.state_shape)
        y = z[:n].reshape(self.state_shape)
        derivative, state_rate, parameter_vjps = vector_jacobian_product(
            self.func, t, y, self.params, -adjoint
        )
        rates = (
            torch.cat(
                [
                    (torch.zeros_like(p) if g is None else g).reshape(-1)
                    for p, g in zip(self.params, parameter_vjps, strict=True)
                ]
            )
            if self.params
            else z.new_zeros(0)
        )
        parts = [derivative.reshape(-1), state_rate.reshape(-1)]
        if not self.seminorm:
            parts.append(rates)
        out = torch.cat(parts)
        if self.seminorm:
            self.parameter_rates[id(out)] = rates
        return out

    def accumulate_parameter_gradient(self, result: StepResult, dt: float) -> Tensor:
        """Accepted-step hook (seminorm): ``g += dt * sum_i b_i rate_i``; returns a placeholder 0."""
        rates = [self.parameter_rates[id(stage)] for stage in result.stages]
        self.parameter_gradient = combine(self.parameter_gradient, dt, self.tableau.b, rates)
        # Only the last stage can be reused (FSAL) by the next step.
        last = id(result.stages[-1])
        self.parameter_rates = {last: self.parameter_rates[last]}
        return placeholder_penalty(result.y1)


class BacksolveAdjoint(GradientMethod):
    """``gradient="adjoint"``: solve the augmented system backwards between output times."""

    name = "adjoint"
    needs_step_states = False
    supports_step_penalty = False

    def __init__(self, options: SolveOptions, norm: str = "default") -> None:
        if norm not in NORMS:
            raise ValueError(f"adjoint_options['norm'] must be one of {NORMS}, got {norm!r}")
        self.options = options
        self.seminorm = norm == "seminorm"

    def backward(
        self, solve: ForwardSolve, ys: Tensor, grad_ys: Tensor, grad_penalties: Tensor | None
    ) -> tuple[Tensor, list[Tensor | None], int]:
        state_shape = ys.shape[1:]
        n = state_shape.numel()
        n_params = sum(p.numel() for p in solve.params)
        adjoint = grad_ys[-1].reshape(-1)
        parameter_gradient = ys.new_zeros(n_params)
        calls = 0
        for i in range(len(solve.times) - 1, 0, -1):
            dynamics = AugmentedDynamics(solve, state_shape, self.options.tableau, self.seminorm)
            # Restart from the forward output rather than the backsolved y: it is more accurate.
            parts = [ys[i].reshape(-1), adjoint]
            if not self.seminorm:
                parts.append(parameter_gradient)
            else:
                dynamics.parameter_gradient = parameter_gradient
            outputs, stats, _, _ = integrate(
                dynamics,
                torch.cat(parts),
                [solve.times[i], solve.times[i - 1]],
                self.options,
                step_penalty=dynamics.accumulate_parameter_gradient if self.seminorm else None,
            )
            calls += stats.nfe
            z = outputs[-1]
            adjoint = z[n : 2 * n] + grad_ys[i - 1].reshape(-1)
            parameter_gradient = dynamics.parameter_gradient if self.seminorm else z[2 * n :]
        grad_params: list[Tensor | None] = []
        offset = 0
        for p in solve.params:
            grad_params.append(parameter_gradient[offset : offset + p.numel()].reshape(p.shape))
            offset += p.numel()
        if len(solve.times) == 1:
            adjoint = grad_ys[0].reshape(-1)
        return adjoint.reshape(state_shape), grad_params, calls
