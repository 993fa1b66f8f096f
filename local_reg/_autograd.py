"""Identities that make autograd refuse a derivative the library cannot give, instead of letting it
read a value computed without a graph as a constant (which would silently drop terms)."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, NoReturn, ParamSpec, TypeVar, cast

import torch
from torch import Tensor

_Params = ParamSpec("_Params")
_Result = TypeVar("_Result")
_Hook = TypeVar("_Hook", bound=Callable[..., Any])


def solve_entry_point(function: Callable[_Params, _Result]) -> Callable[_Params, _Result]:
    """``function``, a solve's entry point (or a dense read, a regularized model's forward), run under
    ``no_grad`` where ``torch.inference_mode`` is on with grad mode nested inside it
    (``torch.enable_grad()``): nothing is recorded there either, but the library's own autograd
    Functions would try to save inference tensors for a backward pass (torch's "Inference tensors
    cannot be saved for backward").

    Where a user's ``torch.compile`` traces the caller, ``function`` runs eagerly, outside the
    trace (docs/solver.md): the solve's loop is Python control flow on the state's values, which
    dynamo would cut into a graph per step (slower than eager), and its numpy tables fail dynamo's
    own guards under inference mode. The vector field runs as the user compiled it (or not)."""
    eager: list[Callable[_Params, _Result]] = []  # made on first use: it loads torch's compiler

    def run(*args: _Params.args, **kwargs: _Params.kwargs) -> _Result:
        if torch.is_inference_mode_enabled() and torch.is_grad_enabled():
            with torch.no_grad():
                return function(*args, **kwargs)
        return function(*args, **kwargs)

    @functools.wraps(function)
    def plain(*args: _Params.args, **kwargs: _Params.kwargs) -> _Result:
        # torch.export traces on: the entry point's own check refuses it, naming why.
        if torch.compiler.is_compiling() and not torch.compiler.is_exporting():
            if not eager:
                eager.append(torch.compiler.disable(run, recursive=True))
            return eager[0](*args, **kwargs)
        return run(*args, **kwargs)

    return plain


def untraced_hook(hook: _Hook) -> _Hook:
    """``hook``, a gradient hook of the library's (or a callback it queues for a backward pass's
    end), run outside a user's ``torch.compile``: a training step compiled whole calls
    ``loss.backward()`` from a frame dynamo runs, and the frames the autograd engine then calls, the
    hooks, are traced too, where their bookkeeping (``weakref.finalize``, autograd's graph task ids
    and end-of-pass callbacks) failed torch's own guards ("Guard failed on the same frame it was
    created"). Without torch's compiler loaded nothing is compiled (and importing it costs about a
    second): ``hook`` as it is."""
    if "torch._dynamo" not in sys.modules:
        return hook
    return cast(_Hook, torch.compiler.disable(hook))


def at_pass_end(callback: Callable[[], None]) -> None:
    """Run ``callback`` when the running backward pass ends (not if it raises: autograd runs no
    callback of a failed pass), outside a user's ``torch.compile`` (:func:`untraced_hook`)."""
    torch.autograd.Variable._execution_engine.queue_callback(untraced_hook(callback))


class _RefusingBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, value: Tensor, message: str, *tied: Tensor) -> Tensor:
        ctx.message = message
        return value.clone()

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> NoReturn:
        raise RuntimeError(ctx.message)


def refusing_backward(value: Tensor, message: str, *tied: Tensor) -> Tensor:
    """A copy of ``value`` (made without a graph) tied to the tensors ``tied`` it depends on, so that
    a backward pass reaching it raises ``RuntimeError(message)``. Without the tie a loss on it would
    get no gradient through it, silently. Tie only where grad mode is on and a ``tied`` tensor
    requires grad (otherwise no backward pass can reach it)."""
    return _RefusingBackward.apply(value, message, *tied)


class _FirstOrderOnly(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, value: Tensor, message: str) -> Tensor:
        ctx.message = message
        return value.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        if torch.is_grad_enabled():
            raise RuntimeError(ctx.message)
        return grad, None


def first_order_only(value: Tensor, message: str) -> Tensor:
    """``value`` as an identity that passes first derivatives through and raises
    ``RuntimeError(message)`` when a backward pass builds a graph (``create_graph=True``: a Hessian),
    for a value whose first derivatives are exact but whose second would miss terms."""
    return _FirstOrderOnly.apply(value, message)
