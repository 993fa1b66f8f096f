"""Checkpointed gradients of an SDE solve: each accepted step re-run with a graph, one at a time.

The checkpoint method of :mod:`local_reg.gradients.checkpoint` (Zhuang et al., "Adaptive Checkpoint
Adjoint Method for Gradient Estimation in Neural ODE", ICML 2020) for :func:`local_reg.sdeint`. The
forward solve runs without a graph and keeps, for every accepted step ``n``, its start ``t_n``,
size ``h_n``, state ``y_n`` and Brownian increment ``dW_n`` (rejected steps are forgotten: with
the steps and increments fixed they do not enter the map ``y0 -> y(t_i)``). The backward pass
walks the steps in reverse, re-runs ``y_{n+1} = Phi(y_n; t_n, h_n, dW_n)`` (Euler--Maruyama or
Milstein, exactly as the forward step computed it) under a graph and backpropagates
``lambda_{n+1}`` through it::

    lambda_n = (dPhi/dy_n)^T lambda_{n+1},     dL/dtheta += (dPhi/dtheta)^T lambda_{n+1}

adding the cotangent of an output where a step ends on it. This is backpropagation through the
discrete forward solve, step by step: the gradient equals ``gradient="direct"``'s to rounding
error, for every path (the increments are the forward's own, whatever ``bm`` would answer to a
second query). Memory: ``N`` states and increments plus one step's graph, where ``"direct"``
keeps the graph of every drift and diffusion evaluation; cost: each accepted step's drift and
diffusion evaluated once more (its error estimate is not re-run).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import torch
from torch import Tensor, nn

from .._integrate import SolveOptions, integrate
from .._validate import gradient_hooks_held_back
from ..gradients._function import (
    BufferMarks,
    CapturedTensorCheck,
    GradientMethod,
    ModuleAtSolve,
    add_gradients,
    buffer_marks,
    buffers_as_at_solve,
    finish_backward,
    first_order_backward,
    frozen_parameter_ids,
    naming_a_freed_graph,
    refuse_parametrize_cache,
    release_unless_graph_kept,
    scattered,
    still_trained,
    thread_token,
    warn_if_params_unreached,
    warn_of_updated_buffers,
)
from ..solution import Stats, Steps
from ._step import EulerMaruyamaStepper, SDEStepResult, _euler_maruyama_step


class KeptStep(NamedTuple):
    """What the backward pass needs of one accepted step: its start, signed size and increment."""

    t: float
    dt: float
    dw: Tensor


class RecordingStepper(EulerMaruyamaStepper):
    """:class:`EulerMaruyamaStepper` that keeps each accepted step's start, size and Brownian
    increment (the state the loop keeps itself, with ``record_states``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kept: list[KeptStep] = []
        self._attempt: KeptStep | None = None
        self._increment: Tensor | None = None

    def step(
        self,
        t: float,
        t_next: float,
        y: Tensor,
        dt: float,
        carry: tuple[Tensor | None, Tensor | None],
        estimate_error: bool,
    ) -> SDEStepResult:
        result = super().step(t, t_next, y, dt, carry, estimate_error)
        self._attempt = KeptStep(t, dt, cast(Tensor, self._increment))  # drawn by this step
        return result

    def increment(self, t: float, t_next: float) -> Tensor:
        # A copy: a Brownian motion may answer into one buffer it refills on every query.
        self._increment = super().increment(t, t_next).clone()
        return self._increment

    def next_carry(
        self, result: SDEStepResult, accepted: bool, carry: tuple[Tensor | None, Tensor | None]
    ) -> tuple[Tensor | None, Tensor | None]:
        if accepted and self._attempt is not None:
            self.kept.append(self._attempt)
        self._attempt = None
        return super().next_carry(result, accepted, carry)


class CheckpointedSolve:
    """One :func:`local_reg.sdeint` solve under ``gradient="checkpoint"``: :meth:`outputs` solves
    without a graph and returns ``ys`` differentiable w.r.t. ``y0`` and ``params``."""

    def __init__(
        self,
        stepper: RecordingStepper,
        times: list[float],
        options: SolveOptions,
        params: tuple[Tensor, ...],
        record_states: bool,
        owner: nn.Module | None,
        method: GradientMethod,
        buffers_at_start: BufferMarks | None = None,
        *,
        float16_autocast: bool,
    ) -> None:
        """``buffers_at_start``: ``owner``'s :func:`buffer_marks` before the first evaluations (by
        default now). ``float16_autocast``: whether the drift and diffusion run under float16
        autocast, where a non-finite gradient is handed on (:func:`finish_backward`)."""
        self.stepper = stepper
        self.times = times
        self.options = options
        self.params = params
        self.record_states = record_states
        self.owner = owner
        self.owner_at_solve: ModuleAtSolve | None = None  # when the solve ends (as ForwardSolve's)
        self.buffers_at_start = buffer_marks(owner) if buffers_at_start is None else buffers_at_start
        self.frozen_at_solve = frozen_parameter_ids(owner)
        self.method = method
        self.float16_autocast = float16_autocast
        self.thread = thread_token()
        self.stats = Stats()
        self.steps: Steps | None = None
        self.states: list[Tensor] = []

    def release_records(self) -> None:
        self.states = []
        self.stepper.kept = []
        self.owner_at_solve = None

    def outputs(self, y0: Tensor) -> Tensor:
        ys = _SolveWithoutGraph.apply(self, y0, *self.params)
        if ys.requires_grad:
            warn_of_updated_buffers(self.owner_at_solve, self.owner, self.method.name, "sde")
        return ys

    def solve(self, y0: Tensor) -> Tensor:
        ys, self.stats, steps, _ = integrate(self.stepper, y0, self.times, self.options, record_states=True)
        self.states = steps.state_list or []
        self.owner_at_solve = ModuleAtSolve.of(self.owner, self.buffers_at_start)
        if not self.record_states:
            steps.state_list = None
        self.steps = steps
        return ys

    def backward(self, grad_ys: Tensor, needs: Sequence[bool]) -> tuple[Tensor, list[Tensor | None]]:
        """The gradients of ``y0`` and of ``params`` from the cotangents ``grad_ys`` of the outputs
        (``needs``: which of them autograd asks for, the ones judged finite)."""
        if self.owner_at_solve is not None:
            self.owner_at_solve.check(self.owner, "sde", buffers=False)
        with buffers_as_at_solve(self.owner_at_solve, self.owner), gradient_hooks_held_back(self.params):
            return self._backward(grad_ys, needs)

    def _backward(self, grad_ys: Tensor, needs: Sequence[bool]) -> tuple[Tensor, list[Tensor | None]]:
        stepper = self.stepper
        refuse_parametrize_cache(self.owner, self.method.name, "sde", "backward")
        trained, params = still_trained(self.params)
        # The drift and diffusion of the re-run steps, checked for tensors they capture that
        # require grad but are not params (their gradients would silently be none).
        sde = _CheckedCaptures(stepper.sde, params, self.method.name, self.thread, self.frozen_at_solve)
        grad_params: list[Tensor | None] = [None] * len(params)
        adjoint = grad_ys[-1]
        output = len(self.times) - 1
        calls = 0
        with torch.enable_grad():
            for step, state in zip(reversed(stepper.kept), reversed(self.states), strict=True):
                y = state.detach().requires_grad_(True)
                result = _euler_maruyama_step(
                    sde,
                    stepper.noise_type,
                    step.t,
                    y,
                    step.dt,
                    step.dw,
                    rtol=stepper.rtol,
                    atol=stepper.atol,
                    estimate_error=False,
                    milstein=stepper.milstein,
                    # As the forward step took Milstein's term: central where it estimated the error.
                    central_difference=stepper.milstein and self.options.step_size is None,
                    jump_ts=stepper.jump_ts,
                )
                calls += result.nfe
                with naming_a_freed_graph(self.method.name, "sde"):
                    grad_y, *grads = torch.autograd.grad(
                        result.y1,
                        (y, *params),
                        adjoint,
                        allow_unused=True,
                        retain_graph=sde.keeps_outside_graph,
                    )
                adjoint = torch.zeros_like(y) if grad_y is None else grad_y
                add_gradients(grad_params, grads)
                # Every output time ends a step: a step that starts on one adds its cotangent.
                while output > 0 and self.times[output - 1] == step.t:
                    output -= 1
                    adjoint = adjoint + grad_ys[output]
        warn_if_params_unreached([sde.f, sde.g], grad_params, self.method.name, "sde")
        all_grads = scattered(grad_params, trained, len(self.params))
        asked = [g for g, needed in zip((adjoint, *all_grads), needs, strict=True) if needed]
        finish_backward(
            self.stats,
            [grad_ys],
            asked,
            calls,
            self.times[0],
            "the drift and diffusion",
            float16_autocast=self.float16_autocast,
        )
        return adjoint, all_grads


class _CheckedCaptures:
    """An SDE whose drift and diffusion are each a :class:`CapturedTensorCheck` (their first
    evaluation with a graph is checked for captured tensors, and for a graph made before it)."""

    def __init__(
        self,
        sde: Any,
        params: tuple[Tensor, ...],
        method: str,
        thread: object,
        frozen_at_solve: frozenset[int],
    ) -> None:
        self.f = CapturedTensorCheck(
            sde.f, params, method, thread, name="sde", frozen_at_solve=frozen_at_solve
        )
        self.g = CapturedTensorCheck(
            sde.g, params, method, thread, name="sde", frozen_at_solve=frozen_at_solve
        )

    @property
    def keeps_outside_graph(self) -> bool:
        return self.f.keeps_outside_graph or self.g.keeps_outside_graph


class _SolveWithoutGraph(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, solve: CheckpointedSolve, y0: Tensor, *params: Tensor) -> Tensor:
        ctx.solve = solve
        ctx.method = solve.method
        # What first_order_backward's message calls the function differentiated (not ctx.name,
        # which would hide the backward node's own name(), read by anomaly mode).
        ctx.func_name = "sde"
        ys = solve.solve(y0)
        # y0 and the parameters, for autograd's checks: that they are not changed in place before
        # the backward pass (an optimizer step: the re-run would differentiate another solve), and
        # that a graph freed by one backward pass is not differentiated again.
        ctx.save_for_backward(y0, *params)
        return ys

    @staticmethod
    @first_order_backward
    def backward(ctx: Any, grad_ys: Tensor) -> Any:
        ctx.saved_tensors  # noqa: B018  # autograd's error if this graph's backward already ran
        solve = ctx.solve
        grad_y0, grad_params = solve.backward(grad_ys, ctx.needs_input_grad[1:])
        release_unless_graph_kept(solve.release_records)
        return None, grad_y0, *grad_params
