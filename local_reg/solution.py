"""What a solve returns: the trajectory, its statistics and the record of accepted steps."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar, cast

import numpy as np
import torch
from torch import Tensor

from ._autograd import refusing_backward

if TYPE_CHECKING:
    from ._dense import DenseOutput

State = TypeVar("State", bound=Tensor | tuple[Tensor, ...])
"""A solve's state: one tensor, or a tuple of tensors solved as one flat state. ``odeint`` returns a
``Solution`` of its ``y0``'s kind, so a type checker knows that ``solution.ys`` of a tensor ``y0`` is
a tensor."""


@dataclass
class Stats:
    """Solver statistics, returned with every solution: ``nfe`` is torchode's ``n_f_evals``,
    ``n_steps``, ``n_accepted`` and ``n_rejected`` are diffrax's ``num_steps``,
    ``num_accepted_steps`` and ``num_rejected_steps`` (torchode's ``n_steps`` and ``n_accepted``).

    Attributes:
        nfe: every evaluation in the forward solve, the initial-step heuristic included: of the
            vector field for an ODE; of the drift and the diffusion together for an SDE.
        nfe_diffusion: of those, the evaluations of an SDE's diffusion ``g`` (0 for an ODE); a
            diffusion network may cost differently from the drift network. See :attr:`nfe_drift`.
        n_steps: attempted steps, accepted plus rejected.
        n_accepted: accepted steps.
        n_rejected: rejected steps.
        nfe_backward: evaluations of the vector field made by the backward pass of the gradient
            method (a vector--Jacobian product evaluates it once with a graph; plain
            backpropagation makes none), filled in once ``backward`` has run; ``None`` before.
    """

    nfe: int = 0
    n_steps: int = 0
    n_accepted: int = 0
    n_rejected: int = 0
    nfe_backward: int | None = None
    nfe_diffusion: int = 0

    @property
    def nfe_drift(self) -> int:
        """Evaluations of the drift (an ODE's vector field): ``nfe - nfe_diffusion``."""
        return self.nfe - self.nfe_diffusion

    def add(self, nfe: int, *, diffusion: int = 0) -> None:
        """Count ``nfe`` evaluations, ``diffusion`` of them of an SDE's diffusion."""
        self.nfe += nfe
        self.nfe_diffusion += diffusion


# eq=False: equality is identity, as for tensors' containers (a field-wise == of tensors raises).
@dataclass(eq=False)
class Steps:
    """Record of the accepted steps of a solve: ``t``, ``dt`` and the estimates detached (safe to
    keep across iterations); ``dense_output`` keeps the solve's graph under ``gradient="direct"``
    (its ``evaluate`` is differentiable), so a kept ``Steps`` of a dense solve holds that graph.

    Attributes:
        t: start time of each accepted step, shape ``(n_accepted,)``, float64.
        dt: signed step size of each accepted step, float64.
        error_estimate: the step's ``EEst`` (NaN for a fixed-step method without an embedded pair).
        stiffness_estimate: Shampine's ``rho`` per step, or ``None`` when the tableau has no two
            stages at ``c == 1`` (see :class:`local_reg.ButcherTableau`).
        state_list: the state at each step start, kept only with ``record_states=True``, else
            ``None``. :attr:`states` stacks it on first access (one copy, only if asked for).
            Its tensors are the solver's own records, which dense output and the gradient
            methods' backward passes read again: change a copy, not them in place.
        dense_output: with ``odeint(dense=True)``, every accepted step's state and stages for
            :meth:`Solution.evaluate`, else ``None``.
        stop_time: where a stop condition (``StepCallbacks.stop``, e.g. the terminal event of
            :func:`local_reg.odeint_event`) ended the solve: inside the last accepted step or at
            its end; ``None`` for a solve that ran to its last output time.
    """

    t: Tensor
    dt: Tensor
    error_estimate: Tensor
    stiffness_estimate: Tensor | None
    state_list: list[Tensor] | None = field(default=None, repr=False)
    dense_output: DenseOutput | None = field(default=None, repr=False)
    stop_time: float | None = None

    def __repr__(self) -> str:
        stiffness = "" if self.stiffness_estimate is None else ", stiffness_estimate"
        return f"Steps({len(self.t)} accepted: t, dt, error_estimate{stiffness})"

    @functools.cached_property
    def states(self) -> Tensor | None:
        """The state at each step start, shape ``(n_accepted, *y0.shape)``; ``None`` unless the
        solve was asked to ``record_states`` and took at least one step. For a tuple or complex
        ``y0`` these are the flat real states the steps advance (shape ``(n_accepted, *batch,
        n)``; ``solution.layout(solution.steps.states)`` gives them in ``y0``'s form)."""
        return torch.stack(self.state_list) if self.state_list else None


_FAILED_SOLVE = "a failed solve raises local_reg.SolverError here, naming t and the step"
_FOREIGN_ATTRIBUTES = {
    "t": "scipy's and OrdinaryDiffEq's sol.t: ts here",
    "u": "OrdinaryDiffEq's sol.u: ys here, of shape (len(ts), *y0.shape)",
    "y": "scipy's sol.y, of shape (n, len(t)): ys here, of shape (len(ts), *y0.shape), time first",
    "sol": "scipy's dense output: odeint(..., dense=True), then solution.evaluate(t)",
    "interp": "OrdinaryDiffEq's interpolation, sol(t): odeint(..., dense=True), then solution.evaluate(t)",
    "retcode": f"OrdinaryDiffEq's return code: {_FAILED_SOLVE}",
    "result": f"diffrax's result: {_FAILED_SOLVE}",
    "status": f"scipy's and torchode's status: {_FAILED_SOLVE}",
    "success": f"scipy's success: {_FAILED_SOLVE}",
    "destats": "OrdinaryDiffEq's statistics: stats here (nfe, n_steps, n_accepted, n_rejected)",
    "nfev": "scipy's count: stats.nfe here",
}
"""What reading another library's solution attribute says (:meth:`Solution.__getattr__`)."""


@dataclass(eq=False)
class Solution(Generic[State]):
    """Result of :func:`local_reg.odeint` and :func:`local_reg.sdeint`: ``Solution[Tensor]`` for a
    tensor ``y0``, ``Solution[tuple[Tensor, ...]]`` for a tuple.

    Attributes:
        ts: the output times.
        ys: the solution at ``ts``, shape ``(len(ts), *y0.shape)`` (a tuple of such tensors for a
            tuple ``y0``): by default the last output time ends the last step and the others are
            read from the method's dense output (:mod:`local_reg.interpolants`); with
            ``step_to_outputs=True`` or a fixed ``step_size`` every output time ends an accepted
            step.
        stats: see :class:`Stats`.
        steps: see :class:`Steps`.
        penalties: with ``odeint(step_penalty=...)``, the penalty of every accepted step, shape
            ``(n_accepted,)``, differentiable; else, or when no step was taken (one output
            time), ``None``.
    """

    ts: Tensor
    ys: State
    stats: Stats
    steps: Steps
    penalties: Tensor | None = None
    layout: Callable[[Tensor], Any] | None = field(default=None, repr=False)
    """How a flat state, or a stack of them (:attr:`Steps.states`), becomes the user's (a tuple
    ``y0``'s tensors, a complex ``y0``'s dtype), or ``None`` for a real tensor ``y0``."""
    graph_free_method: str | None = field(default=None, repr=False)
    """The gradient method's name when it kept no graph of the solve (``evaluate`` then has none)."""

    if not TYPE_CHECKING:  # a type checker would take any attribute as present

        def __getattr__(self, name: str) -> NoReturn:
            # Only for attributes a Solution lacks: a port's reads of another library's solution.
            hint = _FOREIGN_ATTRIBUTES.get(name)
            raise AttributeError(
                f"'Solution' object has no attribute {name!r}" + (f" ({hint})" if hint else "")
            )

    def __repr__(self) -> str:
        # Shapes, not values (diffrax prints f32[10,2]): a batch's states would fill the screen.
        ys = (
            "(" + ", ".join(_shape_text(part) for part in self.ys) + ")"
            if isinstance(self.ys, tuple)
            else _shape_text(self.ys)
        )
        penalties = "" if self.penalties is None else f", penalties={_shape_text(self.penalties)}"
        return (
            f"Solution(ts={_shape_text(self.ts)}, ys={ys}, stats={self.stats}, steps={self.steps}{penalties})"
        )

    def evaluate(self, t: Tensor | float | np.ndarray | Sequence[float | Tensor]) -> State:
        """The solution at any ``t`` in the solved span (a float, a 0-dim or 1-D tensor or numpy array
        of times, or a sequence of them, as ``odeint``'s ``t``), through the method's
        interpolant (diffrax's ``Solution.evaluate``, torchdiffeq's ``odeint_dense``). At a step's
        start or end it is that step's state exactly. Needs ``odeint(dense=True)``; differentiable
        w.r.t. ``y0`` and the parameters only under ``gradient="direct"`` (under a method that keeps
        no graph of the solve, a backward pass through the returned states raises instead of
        silently giving them no gradient; for plotting, ``.detach()`` them or evaluate under
        ``torch.no_grad()``), and never w.r.t. ``t`` (a ``t`` that requires grad is refused: its
        gradient would silently be none; odeint's own output times ``t`` do get gradients)."""
        return self._read_dense("evaluate", t)

    def derivative(self, t: Tensor | float | np.ndarray | Sequence[float | Tensor]) -> State:
        """The time derivative of the interpolant that :meth:`evaluate` reads, ``d/dt
        evaluate(t)``, at any ``t`` in the solved span (diffrax's ``Solution.derivative``); its
        shape is :meth:`evaluate`'s. Its error is one order below the interpolant's
        (:mod:`local_reg.interpolants`). At a step's start or end it is the field at that step's
        state, so it is continuous across steps; between them it approximates ``func(t, y(t))``
        without evaluating ``func``. At a time of the controller's ``jump_ts`` it is the limit from
        the side the solve came from (the step that ends there; at ``t[0]``, the first step), as
        the gradient w.r.t. an output time at a jump takes it: a forward solve's left limit, as
        diffrax's ``derivative(t, left=True)``, and a backward solve's right limit. Needs
        ``odeint(dense=True)`` and at least one step (two output times); differentiable as
        :meth:`evaluate` is."""
        return self._read_dense("derivative", t)

    def _read_dense(self, read: str, t: Tensor | float | np.ndarray | Sequence[float | Tensor]) -> State:
        dense = self.steps.dense_output
        if dense is None:
            if self.stats.nfe_diffusion > 0:  # an sdeint solve
                raise ValueError(
                    f"{read} needs dense output, which sdeint does not keep (docs/sde.md): pass the "
                    "times to sdeint's t"
                )
            raise ValueError(f"{read} needs the step records: solve with odeint(..., dense=True)")
        from ._validate import time_tensors_requiring_grad  # _validate imports this module

        if time_tensors_requiring_grad(t) and torch.is_grad_enabled():
            raise ValueError(
                f"{read} is not differentiable w.r.t. t, and t requires grad: pass t.detach(), or "
                "solve with these times as odeint's t (its output times get gradients)"
            )
        states = getattr(dense, read)(t, times_dtype=self.ts.dtype)
        anchor = self.ys[0] if isinstance(self.ys, tuple) else self.ys
        if self.graph_free_method is not None and torch.is_grad_enabled() and anchor.requires_grad:
            message = (
                f"Solution.{read}'s states have no gradient under gradient={self.graph_free_method!r}, "
                "which keeps no graph of the solve: solve with gradient='direct', or pass these times "
                "in odeint's t (its outputs get gradients under every method)"
            )
            states = refusing_backward(states, message, anchor)
        if self.layout is None:
            return cast(State, states)  # a tensor y0's: the record's flat state is the state
        return self.layout(states)

    def _not_a_tensor(self, *args: object, **kwargs: object) -> NoReturn:
        """A ``Solution`` is not a tensor (torchdiffeq's ``odeint`` and torchsde's ``sdeint`` return
        the states themselves): a ``TypeError`` that says where the states are."""
        raise TypeError(
            "local_reg's odeint and sdeint return a Solution, not a tensor: the states are "
            "solution.ys (the statistics solution.stats); for torchdiffeq's and torchsde's return "
            "types use local_reg.compat (`import local_reg.compat as torchdiffeq`)"
        )

    __getitem__ = __iter__ = to = _not_a_tensor
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _not_a_tensor
    __truediv__ = __rtruediv__ = __pow__ = __neg__ = __matmul__ = _not_a_tensor


def _shape_text(tensor: Tensor) -> str:
    """``float32[10, 128, 2]``: a tensor's dtype and shape."""
    return f"{str(tensor.dtype).removeprefix('torch.')}[{', '.join(map(str, tensor.shape))}]"
