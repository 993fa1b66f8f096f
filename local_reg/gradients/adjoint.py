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

Layout: the one loop integrates ``(y, a)`` only, stacked into one tensor of shape ``(2, *y.shape)``.
``g`` has as many entries as the parameters, so it is kept as one tensor per parameter and advanced
by :class:`AdjointStepper` with the Runge--Kutta weights of the ``(y, a)`` step (``g`` does not enter
the field, so its stage values are never needed, only the stage rates ``-a^T df/dtheta``), in
multi-tensor (``torch._foreach_*``) operations. The result is the augmented system's solve, step for
step: with the default norm the error estimate still includes ``g``'s local error (one RMS over
``(y, a, g)``), computed from the same stage rates. No parameter-sized tensor is concatenated per
evaluation (the initial-step heuristic of the default norm flattens ``(y, a, g)`` once per restart).

Output times whose cotangent is exactly zero (for example the ``t_reg`` a local regularizer adds to
the save points) do not restart the backward solve: it carries on across them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import Tensor

from .._integrate import SolveOptions, integrate
from .._step import RKStepper, StepResult, initial_step_size, rms_norm, step
from .._validate import positive_float, positive_int
from ..solution import Stats
from ..tableaus import ButcherTableau, get_tableau
from ._function import ForwardSolve, GraphFreeGradient, vector_jacobian_product

NORMS = ("default", "seminorm")

ParameterTensors = list[Tensor]
"""One tensor per parameter: ``g`` or one stage's rate ``-a^T df/dtheta``."""


def combine_parameters(
    base: ParameterTensors | None,
    dt: float,
    coefficients: Sequence[float],
    stages: Sequence[ParameterTensors],
) -> ParameterTensors:
    """:func:`local_reg._step.combine` on lists of per-parameter tensors: ``base + dt * sum_j
    coefficients[j] * stages[j]`` (``base=None`` means zero), one multi-tensor operation per stage."""
    out = base
    fresh = False
    for coefficient, stage in zip(coefficients, stages, strict=False):
        if coefficient == 0.0 or not stage:
            continue
        if out is None:
            out = torch._foreach_mul(stage, dt * coefficient)
        elif fresh:
            torch._foreach_add_(out, stage, alpha=dt * coefficient)
        else:
            out = torch._foreach_add(out, stage, alpha=dt * coefficient)
        fresh = True
    if out is None:
        return [torch.zeros_like(rate) for rate in stages[0]]
    return out


@dataclasses.dataclass
class AdjointStepResult(StepResult):
    """A step of ``(y, a)`` with what advances ``g`` across it."""

    dt: float = 0.0
    parameter_stages: list[ParameterTensors] = dataclasses.field(default_factory=list)
    """The stage rates ``-a^T df/dtheta``, one list per stage."""
    parameter_gradient: ParameterTensors | None = None
    """``g`` at the step's end, when the error estimate already computed it."""


class AdjointStepper(RKStepper):
    """The backward solve's stepper: Runge--Kutta steps of ``(y, a)`` (stacked, shape ``(2, *y.shape)``)
    with the field ``(f, -a^T df/dy)``, and ``g`` (:attr:`parameter_gradient`, one tensor per
    parameter) advanced by the same steps from the stage rates ``-a^T df/dtheta`` that each
    evaluation records.

    One stepper serves every restart of a backward pass: ``g`` carries over from one to the next.
    """

    def __init__(self, solve: ForwardSolve, options: SolveOptions, seminorm: bool, ys: Tensor) -> None:
        """``ys``: the forward outputs (their shape and dtype)."""
        # The backward solve's step record is not returned: its stiffness estimate is not computed.
        tableau = dataclasses.replace(options.tableau, stiffness_stages=None)
        super().__init__(self.augmented_field, tableau, options.rtol, options.atol)
        self.func_of_y = solve.func
        self.params = solve.params
        self.state_size = ys[0].numel()
        self.seminorm = seminorm
        self.parameter_gradient: ParameterTensors = [ys.new_zeros(p.shape) for p in solve.params]
        self.no_rate = [torch.zeros_like(p) for p in solve.params]
        # The RMS of the default norm is over every entry of (y, a, g).
        self.n_entries = 2 * self.state_size + sum(p.numel() for p in solve.params)
        self.recorded: list[ParameterTensors] = []

    def augmented_field(self, t: Tensor, z: Tensor) -> Tensor:
        """``(f, -a^T df/dy)`` at ``z = (y, a)``; ``-a^T df/dtheta`` goes to :attr:`recorded`."""
        y, adjoint = z.unbind(0)
        derivative, state_rate, parameter_vjps = vector_jacobian_product(
            self.func_of_y, t, y, self.params, -adjoint
        )
        self.recorded.append(
            [zero if g is None else g for zero, g in zip(self.no_rate, parameter_vjps, strict=True)]
        )
        return torch.stack([derivative, state_rate])

    def begin(self, t0: float, y0: Tensor, stats: Stats) -> tuple[Tensor, ParameterTensors]:
        self.recorded = []
        f0 = super().begin(t0, y0, stats)
        return f0, self.recorded[-1]

    def initial_step_size(
        self,
        t0: float,
        y0: Tensor,
        carry: tuple[Tensor, ParameterTensors],
        direction: float,
        stats: Stats,
        t_end: float | None = None,
    ) -> float:
        f0, parameter_rate = carry
        if self.seminorm:
            return super().initial_step_size(t0, y0, f0, direction, stats, t_end)

        # The heuristic's norms are over (y, a, g): flatten once per restart, not per evaluation.
        def flat(state: Tensor, parameters: ParameterTensors) -> Tensor:
            return torch.cat([state.reshape(-1), *(part.reshape(-1) for part in parameters)])

        def field(t: Tensor, z: Tensor) -> Tensor:
            derivative = self.augmented_field(t, z[: 2 * self.state_size].reshape(y0.shape))
            return flat(derivative, self.recorded[-1])

        dt_abs, nfe = initial_step_size(
            field,
            t0,
            flat(y0, self.parameter_gradient),
            flat(f0, parameter_rate),
            self.order,
            self.rtol,
            self.atol,
            direction,
            t_end=t_end,
        )
        stats.add(nfe)
        return dt_abs

    def step(
        self,
        t: float,
        t_next: float,
        y: Tensor,
        dt: float,
        carry: tuple[Tensor | None, ParameterTensors | None],
        estimate_error: bool,
    ) -> AdjointStepResult:
        k1, k1_parameter_rate = carry
        self.recorded = [] if k1 is None else [k1_parameter_rate]
        # Without parameters the default norm is the RMS over (y, a), as the seminorm is.
        with_parameters = (
            estimate_error
            and not self.seminorm
            and bool(self.params)
            and self.tableau.error_weights is not None
        )
        end_gradient: list[ParameterTensors] = []

        def norm(scaled_state_error: Tensor) -> Tensor:
            # Every stage has been evaluated (and recorded) before the error estimate.
            g0 = self.parameter_gradient
            g1 = self.advance(g0, dt, self.recorded)
            end_gradient.append(g1)
            scaled = combine_parameters(None, dt, self.tableau.error_weights, self.recorded)
            scale = torch._foreach_maximum(torch._foreach_abs(g0), torch._foreach_abs(g1))
            torch._foreach_mul_(scale, self.rtol)
            torch._foreach_add_(scale, self.atol)
            torch._foreach_div_(scaled, scale)
            norms = torch._foreach_norm([scaled_state_error, *scaled])
            return torch.linalg.vector_norm(torch.stack(norms)) / math.sqrt(self.n_entries)

        result = step(
            self.func,
            t,
            y,
            dt,
            self.tableau,
            rtol=self.rtol,
            atol=self.atol,
            k1=k1,
            norm=norm if with_parameters else rms_norm,
        )
        return AdjointStepResult(
            **{field.name: getattr(result, field.name) for field in dataclasses.fields(result)},
            dt=dt,
            parameter_stages=self.recorded,
            parameter_gradient=end_gradient[0] if end_gradient else None,
        )

    def advance(self, g: ParameterTensors, dt: float, stages: list[ParameterTensors]) -> ParameterTensors:
        """``g`` across a step with the stage rates ``stages``, weighted as the step's ``y1`` is."""
        weights = self.tableau.a[-1] if self.tableau.fsal else self.tableau.b
        return combine_parameters(g, dt, weights, stages)

    def next_carry(
        self,
        result: AdjointStepResult,
        accepted: bool,
        carry: tuple[Tensor | None, ParameterTensors | None],
    ) -> tuple[Tensor | None, ParameterTensors | None]:
        if not accepted:
            return carry
        if result.parameter_gradient is not None:
            self.parameter_gradient = result.parameter_gradient
        else:
            self.parameter_gradient = self.advance(
                self.parameter_gradient, result.dt, result.parameter_stages
            )
        k1 = super().next_carry(result, accepted, carry[0])
        return k1, result.parameter_stages[-1] if k1 is not None else None


class BacksolveAdjoint(GraphFreeGradient):
    """``gradient="adjoint"``: solve the augmented system backwards between output times.

    Args:
        method: the backward solve's method (a name or a :class:`ButcherTableau`); default the
            forward's.
        rtol, atol: the backward solve's tolerances; default the forward's.
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
        self.rtol = None if rtol is None else positive_float("BacksolveAdjoint rtol", rtol)
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
        if len(solve.times) == 1:
            return grad_ys[0], [None] * len(solve.params), 0
        options = self.backward_options(solve.options)
        stepper = AdjointStepper(solve, options, self.norm == "seminorm", ys)
        adjoint = grad_ys[-1]
        # Restart at every output time that carries a cotangent (and at t0).
        last = len(solve.times) - 1
        restarts = [0, *(i for i in range(1, last) if bool(grad_ys[i].any())), last]
        calls = 0
        for end, start in reversed(list(pairwise(restarts))):
            # Restart from the forward output rather than the backsolved y: it is more accurate.
            state = torch.stack([ys[start], adjoint])
            outputs, stats, _, _ = integrate(stepper, state, [solve.times[start], solve.times[end]], options)
            calls += stats.nfe
            adjoint = outputs[-1][1] + grad_ys[end]
        grad_params: list[Tensor | None] = list(stepper.parameter_gradient)
        return adjoint, grad_params, calls
