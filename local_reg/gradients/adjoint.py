"""The continuous (backsolve) adjoint: constant memory, approximate gradients.

Chen, Rubanova, Bettencourt, Duvenaud, "Neural Ordinary Differential Equations", NeurIPS 2018. With
``a(t) = dL/dy(t)``, the augmented system::

    dy/dt = f(t, y),     da/dt = -a^T df/dy (t, y),     dg/dt = -a^T df/dtheta (t, y)

is solved backwards from each output time ``t_i`` to the previous one ``t_{i-1}``, starting from
``y(t_i)`` (the forward output), ``a(t_i)`` (the accumulated cotangent) and ``g = 0`` so far; at
``t_{i-1}`` the output's cotangent ``dL/dy(t_{i-1})`` is added to ``a``. Then ``dL/dy0 = a(t_0)`` and
``dL/dtheta = g(t_0)``. Each evaluation of the augmented field is one evaluation of ``f`` with a
graph and one vector--Jacobian product. The backward solve is the instrumented solver itself, with
its own method, tolerances and step options (:class:`BacksolveAdjoint`'s settings); the gradient is
that of the continuous problem, so it differs from the discrete forward solve's by the two solves' errors.

Seminorm (Kidger, Chen, Lyons, "'Hey, that's not an ODE': Faster ODE Adjoints via Seminorms",
ICML 2021): ``g`` never feeds back into the dynamics, so its local error need not limit the step.
With ``BacksolveAdjoint(norm="seminorm")`` the error norm of the backward solve covers ``(y, a)``
only; ``g`` is still integrated by the same Runge--Kutta steps, but its error does not limit them.

Output times whose cotangent is exactly zero (for example the ``t_reg`` a local regularizer adds to
the save points) do not restart the backward solve: it carries on across them.
"""

from __future__ import annotations

import dataclasses
import functools
from itertools import pairwise

import torch
from torch import Tensor

from .._integrate import SolveOptions, integrate_ode
from .._step import rms_norm
from .._validate import positive_float, positive_int, relative_tolerance
from ..tableaus import ButcherTableau, get_tableau
from ._function import ForwardSolve, GraphFreeGradient, vector_jacobian_product

NORMS = ("default", "seminorm")


def seminorm(scaled_error: Tensor, n_included: int) -> Tensor:
    """RMS over the first ``n_included`` entries of the flat augmented state: ``(y, a)``."""
    return rms_norm(scaled_error[:n_included])


class AugmentedDynamics:
    """The augmented field ``(f, -a^T df/dy, -a^T df/dtheta)`` on the flat state ``[y, a, g]``."""

    def __init__(self, solve: ForwardSolve, state_shape: torch.Size) -> None:
        self.func = solve.func
        self.params = solve.params
        self.state_shape = state_shape
        self.state_size = state_shape.numel()

    def __call__(self, t: Tensor, z: Tensor) -> Tensor:
        n = self.state_size
        y = z[:n].reshape(self.state_shape)
        adjoint = z[n : 2 * n].reshape(self.state_shape)
        derivative, state_rate, parameter_vjps = vector_jacobian_product(
            self.func, t, y, self.params, -adjoint
        )
        rates = [
            (torch.zeros_like(p) if g is None else g).reshape(-1)
            for p, g in zip(self.params, parameter_vjps, strict=True)
        ]
        return torch.cat([derivative.reshape(-1), state_rate.reshape(-1), *rates])


class BacksolveAdjoint(GraphFreeGradient):
    """``gradient="adjoint"``: solve the augmented system backwards between output times.

    Args:
        method: the backward solve's method (a name or a :class:`ButcherTableau`); default the
            forward's.
        rtol, atol: the backward solve's tolerances; default the forward's. ``rtol=0`` is a pure
            absolute tolerance.
        norm: ``"default"`` (RMS over ``(y, a, g)``) or ``"seminorm"`` (over ``(y, a)`` only; Kidger,
            Chen, Lyons, ICML 2021).
        step_size: fixed steps of the backward solve. Default: the forward's (if it had one) when
            the backward method is the forward's or fixed-step; an adaptive ``method`` given here
            steps adaptively.
        first_step, max_steps: of the backward solve (default: the heuristic; the forward's).
    """

    name = "adjoint"
    supports_step_penalty = False

    def __init__(
        self,
        method: str | ButcherTableau | None = None,
        rtol: float | None = None,
        atol: float | None = None,
        norm: str = "default",
        step_size: float | None = None,
        first_step: float | None = None,
        max_steps: int | None = None,
    ) -> None:
        if norm not in NORMS:
            raise ValueError(f"BacksolveAdjoint: norm must be one of {NORMS}, got {norm!r}")
        try:
            self.tableau = None if method is None else get_tableau(method)
        except (TypeError, ValueError) as error:
            raise type(error)(f"BacksolveAdjoint method: {error}") from None
        self.rtol = None if rtol is None else relative_tolerance("BacksolveAdjoint rtol", rtol)
        self.atol = None if atol is None else positive_float("BacksolveAdjoint atol", atol)
        self.norm = norm
        self.step_size = (
            None if step_size is None else positive_float("BacksolveAdjoint step_size", step_size)
        )
        self.first_step = (
            None if first_step is None else positive_float("BacksolveAdjoint first_step", first_step)
        )
        self.max_steps = None if max_steps is None else positive_int("BacksolveAdjoint max_steps", max_steps)

    def backward_options(self, forward: SolveOptions) -> SolveOptions:
        """The backward solve's options: this object's settings, the forward's where unset."""
        return SolveOptions(
            rtol=forward.rtol if self.rtol is None else self.rtol,
            atol=forward.atol if self.atol is None else self.atol,
            first_step=self.first_step,
            max_steps=forward.max_steps if self.max_steps is None else self.max_steps,
            step_size=self._backward_step_size(forward),
            controller=forward.controller,
            tableau=forward.tableau if self.tableau is None else self.tableau,
            time_dtype=forward.time_dtype,
        )

    def _backward_step_size(self, forward: SolveOptions) -> float | None:
        if self.step_size is not None:
            return self.step_size
        own_adaptive_method = self.tableau is not None and self.tableau.adaptive
        return None if own_adaptive_method else forward.step_size

    def check(self, options: SolveOptions) -> None:
        backward = self.backward_options(options)
        if backward.step_size is None and not backward.tableau.adaptive:
            raise ValueError(
                f"BacksolveAdjoint method {backward.tableau.name!r} is fixed-step: pass "
                "BacksolveAdjoint(step_size=...)"
            )

    def backward(
        self, solve: ForwardSolve, ys: Tensor, grad_ys: Tensor, grad_penalties: Tensor | None
    ) -> tuple[Tensor, list[Tensor | None], int]:
        state_shape = ys.shape[1:]
        n = state_shape.numel()
        times = solve.solved_times
        if len(times) == 1:
            return grad_ys[0], [None] * len(solve.params), 0
        options = self.backward_options(solve.options)
        if self.norm == "seminorm":
            options = dataclasses.replace(options, norm=functools.partial(seminorm, n_included=2 * n))
        dynamics = AugmentedDynamics(solve, state_shape)
        adjoint = grad_ys[-1].reshape(-1)
        parameter_gradient = ys.new_zeros(sum(p.numel() for p in solve.params))
        # Restart at every output time that carries a cotangent (and at t0).
        last = len(times) - 1
        restarts = [0, *(i for i in range(1, last) if bool(grad_ys[i].any())), last]
        calls = 0
        for end, start in reversed(list(pairwise(restarts))):
            # Restart from the forward output rather than the backsolved y: it is more accurate.
            z_start = torch.cat([ys[start].reshape(-1), adjoint, parameter_gradient])
            outputs, stats, _, _ = integrate_ode(dynamics, z_start, [times[start], times[end]], options)
            calls += stats.nfe
            z = outputs[-1]
            adjoint = z[n : 2 * n] + grad_ys[end].reshape(-1)
            parameter_gradient = z[2 * n :]
        grad_params: list[Tensor | None] = []
        offset = 0
        for p in solve.params:
            grad_params.append(parameter_gradient[offset : offset + p.numel()].reshape(p.shape))
            offset += p.numel()
        return adjoint.reshape(state_shape), grad_params, calls
