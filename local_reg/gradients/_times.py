"""Gradients with respect to the output times ``t``, the same for every gradient method.

The solve runs on the times as floats (step sizes and stage times are constants of every method),
so the dependence of ``ys`` on ``t`` is added around it, from the derivatives of the exact solution
``y(t; t0, y0)``: with ``y_i = y(t_i)``, ``f_i = f(t_i, y_i)`` and ``v_i = dL/dy_i``::

    dy_i/dt_i = f_i,    dy_i/dt0 = -(dy_i/dy0) f_0   (i >= 1),    y_0 = y0 (independent of t0)

    dL/dt_i = <v_i, f_i>   (i >= 1),    dL/dt0 = -<dL/dy0 - v_0, f_0>

where ``dL/dy0`` is the gradient the method returns for ``y0`` through ``ys`` (``v_0`` included).
This is what torchdiffeq's ``odeint_adjoint`` returns (Chen et al., NeurIPS 2018, appendix B; its
integral of ``a^T df/dt`` equals ``-<a(t0), f_0>`` plus the ``<v_i, f_i>`` because
``d<a, f>/dt = a^T df/dt`` along the solution). For the discrete solve it holds to the solver's
tolerance: the derivative of an adaptive solve w.r.t. its end times differs from ``f`` by the local
error. See docs/gradients.md.

- ``dL/dt_i`` (and the ``+<v_0, f_0>`` of ``t0``): :class:`_OutputTimes`, an identity on ``ys``
  whose backward evaluates ``f_i`` lazily, only for outputs with a nonzero cotangent, without a graph
  (counted in ``stats.nfe_backward``); the forward costs no evaluation.
- ``-<dL/dy0, f_0>``: :class:`StartTime`, an identity on ``y0`` placed before the solve, whose
  backward receives ``dL/dy0`` from the method's own backward pass. ``f_0`` is the solve's first
  evaluation, taken at the output of :class:`StartTime` so that ``"direct"``'s first stage is on
  the same path. :func:`local_reg.odeint_event` differentiates its ``t0`` by the same identity.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import cast

import torch
from torch import Tensor

from .._autograd import refusing_backward
from .._step import VectorField, beside_jump, time_tensor
from .._validate import batched_cotangent, time_tensors_requiring_grad
from ..solution import Stats


class TimeGradient:
    """Differentiates one solve w.r.t. its output times ``t``: :meth:`start` wraps ``y0`` before the
    solve, :meth:`outputs` wraps ``ys`` after it."""

    def __init__(
        self,
        t: Tensor,
        func: VectorField,
        times: list[float],
        time_dtype: torch.dtype | None = None,
        jump_ts: Sequence[float] = (),
    ) -> None:
        self.t = t
        self.func = func
        self.times = times
        self.time_dtype = time_dtype
        self.jump_ts = jump_ts
        # Both set by outputs(), before any backward pass asks for them.
        self.f0: Tensor
        self.stats = Stats()

    def start(self, y0: Tensor) -> Tensor:
        """``y0`` (same value) to start the solve from; ``f0`` is set by :meth:`outputs`."""
        return StartTime.apply(self.initial_rate, self.t, y0)

    def initial_rate(self, y0: Tensor) -> Tensor:
        """``f0 = f(t0, y0)``, set by :meth:`outputs` before any backward pass asks for it."""
        return self.f0

    def outputs(self, ys: Tensor, f0: Tensor, stats: Stats) -> Tensor:
        """``ys`` (same values), differentiable w.r.t. ``t``; ``f0 = func(t[0], y0)``."""
        self.f0 = f0.detach()
        self.stats = stats
        return _OutputTimes.apply(self, self.t, ys)

    def cotangent(self, entries: dict[int, Tensor]) -> Tensor:
        """The cotangent of ``t`` with the given entries, in ``t``'s dtype and device."""
        zero = torch.zeros((), dtype=self.t.dtype, device=self.t.device)
        # Out of place: a batch of cotangents (jacobian(vectorize=True)) makes the entries batched.
        return torch.stack([entries[i].to(zero) if i in entries else zero for i in range(len(self.times))])


class StartTime(torch.autograd.Function):
    """Identity on ``y0``, the state at ``t0``, the first entry of the times ``t``; backward:
    ``dL/dt0 = -<g, f0>`` (``g``: ``y0``'s cotangent) in ``t``'s cotangent, ``f0 = f(t0, y0)`` from
    ``initial_rate(y0)``, called only then (with ``y0`` as saved: autograd refuses one changed in
    place since)."""

    @staticmethod
    def forward(ctx, initial_rate: Callable[[Tensor], Tensor], t: Tensor, y0: Tensor) -> Tensor:
        ctx.initial_rate = initial_rate
        ctx.t_layout = t.shape, t.dtype, t.device
        ctx.save_for_backward(y0)
        # A reference, not saved: t changed in place since (a learned time's optimizer step under a
        # retained graph) would fail a first-order backward pass, which only ties a refusal to it.
        ctx.t = t
        return y0.clone()

    @staticmethod
    def backward(ctx, grad_y0: Tensor):
        (y0,) = ctx.saved_tensors
        t = ctx.t
        shape, dtype, device = ctx.t_layout
        grad_t = None
        if ctx.needs_input_grad[1]:
            with torch.no_grad():
                # Out of place: a batch of cotangents (jacobian(vectorize=True)) batches the entry.
                first = -(grad_y0 * ctx.initial_rate(y0)).sum().to(dtype=dtype, device=device)
                rest = torch.zeros(math.prod(shape) - 1, dtype=dtype, device=device)
                grad_t = torch.cat([first.reshape(1), rest]).reshape(shape)
            # Tied to t as well: a state read from the dense record (not through _OutputTimes) of
            # a field linear in y leaves grad_y0 without a graph, and a second derivative in t
            # would read as zero, not as refused.
            grad_t = _first_order(grad_t, grad_y0, y0, t)
        # y0's cotangent passes through as it came, with its graph under create_graph=True (the
        # identity's derivative is exact to every order), except towards t.
        return None, grad_t, _not_towards_t(grad_y0, t)


class _OutputTimes(torch.autograd.Function):
    """Identity on ``ys``; backward: ``dL/dt_i = <v_i, f(t_i, y_i)>`` for ``i >= 1`` and
    ``+<v_0, f0>`` for ``t0`` (``ys[0]`` is ``y0``, independent of ``t0``)."""

    @staticmethod
    def forward(ctx, timing: TimeGradient, t: Tensor, ys: Tensor) -> Tensor:
        ctx.timing = timing
        ctx.save_for_backward(ys)
        # A copy: the caller may modify the outputs in place, which a returned view forbids.
        return ys.clone()

    @staticmethod
    def backward(ctx, grad_ys: Tensor):
        (ys,) = ctx.saved_tensors
        timing: TimeGradient = ctx.timing
        if not ctx.needs_input_grad[1]:
            return None, None, grad_ys
        calls = 0
        with torch.no_grad():
            entries = {0: (grad_ys[0] * timing.f0).sum()}
            # A batch of cotangents (jacobian(vectorize=True)) cannot be read: every output is evaluated.
            batched = batched_cotangent(grad_ys)
            for i in range(1, len(timing.times)):
                # An output whose cotangent is exactly zero (a regularizer's t_reg) needs no evaluation.
                if batched or bool(grad_ys[i].any()):
                    # At a jump, f on the side the solve reached t_i from (as at t0, the solve's side).
                    dtype = ys.dtype if timing.time_dtype is None else timing.time_dtype
                    t_i = beside_jump(timing.times[i], timing.times[i - 1], dtype, timing.jump_ts)
                    time = time_tensor(t_i, ys[i], timing.time_dtype)
                    entries[i] = (grad_ys[i] * timing.func(time, ys[i])).sum()
                    calls += 1
            grad_t = timing.cotangent(entries)
        timing.stats.nfe_backward = (timing.stats.nfe_backward or 0) + calls
        # ys's cotangent passes through with its graph, as in StartTime.
        return None, _first_order(grad_t, grad_ys, ys, timing.t), _not_towards_t(grad_ys, timing.t)


def _first_order(grad_t: Tensor, *depends_on: Tensor) -> Tensor:
    """``grad_t``, which an attempt to differentiate (under ``create_graph=True``) refuses."""
    if torch.is_grad_enabled() and any(x.requires_grad for x in depends_on):
        message = (
            "the gradient with respect to t is first order only: a second derivative through it "
            "(create_graph=True, then differentiating dL/dt) is not available; derivatives with "
            "respect to y0 and the parameters are (gradient='direct')"
        )
        return refusing_backward(grad_t, message, *depends_on)
    return grad_t


def _not_towards_t(cotangent: Tensor, t: Tensor) -> Tensor:
    """``cotangent``, passed through with its graph (second derivatives in ``y0`` and the parameters
    are exact), plus a zero that refuses a derivative with respect to ``t``. The solve's graph does
    not depend on the times (they are floats in it), so a derivative of ``dL/dy0`` or ``dL/dtheta``
    with respect to ``t`` would reach ``t`` only through the cotangent's own graph (``ys``' identity
    with ``dys/dt = f``) and miss how the solve's sensitivities depend on the times: a silently
    wrong number."""
    if torch.is_grad_enabled() and t.requires_grad:
        message = (
            "a derivative with respect to t of a gradient (create_graph=True, then differentiating "
            "dL/dy0 or dL/dparameters with respect to t) is not available: the gradient with respect "
            "to t is first order only; second derivatives in y0 and the parameters are (gradient='direct')"
        )
        return cotangent + refusing_backward(torch.zeros_like(cotangent), message, t)
    return cotangent


def time_gradient(
    t: object,
    func: VectorField,
    times: list[float],
    time_dtype: torch.dtype | None = None,
    jump_ts: Sequence[float] = (),
) -> TimeGradient | None:
    """A :class:`TimeGradient` if ``ys`` should be differentiated w.r.t. ``t`` (grad mode on and
    ``t``, or one of its 0-dim tensors, requires grad), else ``None``. ``times``: ``t`` validated;
    ``time_dtype``: the dtype of the times ``func`` gets, as in the solve (default the state's);
    ``jump_ts``: the solve's jump times (an output time at one takes ``f`` on the side the solve
    reached it from)."""
    if not torch.is_grad_enabled():
        return None
    tracked = time_tensors_requiring_grad(t)
    if not tracked:
        return None
    if isinstance(t, Tensor):
        return TimeGradient(t, func, times, time_dtype, jump_ts)
    device = tracked[0].device
    values = cast("Sequence[float | Tensor]", t)  # not a tensor, yet holds tensors: a sequence
    stacked = torch.stack(
        [torch.as_tensor(v, dtype=torch.float64, device=device).reshape(()) for v in values]
    )
    return TimeGradient(stacked, func, times, time_dtype, jump_ts)
