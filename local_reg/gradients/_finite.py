"""One error for a non-finite gradient, whatever the gradient method.

A vector field whose vector--Jacobian product is not finite somewhere on the trajectory (``sqrt``
or ``log`` at 0, an overflow in a layer's backward) would otherwise give NaN gradients silently
with the exact methods, while the backsolve adjoint's backward solve stops with a
:class:`~local_reg.SolverError`. Every method therefore checks, once per backward pass, the
gradients it hands back for ``y0`` and the parameters, and raises :class:`SolverError` when they are
not finite although the cotangents that came in were: then the NaN came from the solve. One check
of the gradients costs one reduction per input, not one per evaluation of ``func``.

Under float16 autocast the gradients are handed on as they are: the fp16 recipe scales the loss by
a ``torch.amp.GradScaler``, whose scale overflows float16 (largest number 65504) in ``func``'s
backward pass now and then by design, and the scaler reads the inf in ``.grad`` to skip that step
and lower its scale. An overflow there cannot be told from a NaN of ``func``'s own, so neither is
an error (as in plain torch); bfloat16 has float32's range, and its check stays.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor

from .._autograd import at_pass_end, untraced_hook
from .._errors import SolverError
from .._validate import active_autocast, batched_cotangent, transformed


def in_float16_autocast(regions: tuple[tuple[str, torch.dtype], ...] | None = None) -> bool:
    """Whether one of the ``torch.autocast`` ``regions`` (by default those active here,
    :func:`~local_reg._validate.active_autocast`) lowers to float16: a solve whose ``func`` runs
    there hands a non-finite gradient on instead of raising (a GradScaler's overflow)."""
    return any(dtype == torch.float16 for _, dtype in (active_autocast() if regions is None else regions))


def all_finite(tensors: Iterable[Tensor | None]) -> bool:
    """Whether every entry of ``tensors`` is finite. An infinite or NaN entry makes the sum infinite
    or NaN, so a finite sum answers in one pass, where ``torch.isfinite`` makes a mask and an ``abs``
    of the whole tensor (the backward pass's largest allocation on a large state with many outputs);
    a sum that overflowed is checked entry by entry."""
    return all(
        bool(torch.isfinite(g.sum())) or bool(torch.isfinite(g).all()) for g in tensors if g is not None
    )


FOUND_IN_RESULTS = (
    "found in the gradients the backward pass hands back, so anywhere on the span: t is the solve's start"
)
"""Where the methods that check their results once (:func:`guard_direct_gradients`,
``finish_backward``) find a non-finite gradient: they do not know the step it arose in."""


def raise_non_finite_gradient(
    t: float, n_steps: int | None, func: str = "func", found: str = FOUND_IN_RESULTS
) -> None:
    raise SolverError(
        f"non-finite gradient in the backward pass: the vector-Jacobian product of {func} is not "
        f"finite on the trajectory (e.g. sqrt or log at 0; {found})",
        t=t,
        n_steps=n_steps,
    )


_NON_FINITE_COTANGENT_PASSES: set[int] = set()
"""The backward passes (autograd's graph task ids) in which a solve's outputs got a non-finite
cotangent (a guarded solve's, or one's with no input of its own to check): the inputs' gradients
are then the sum of that solve's and others' (a shared parameter), whose NaN may have come from the
loss, not from ``func``. A pass's entry goes when the pass ends (or, for a pass that failed, when its
graph goes)."""


def note_non_finite_cotangents(cotangents: Sequence[Tensor | None]) -> None:
    """Where the cotangents a backward pass brings to a solve's outputs (a graph-free method's, a
    direct one's with no input to check) or to a tensor beside them (:func:`passing_cotangents_on`)
    are not finite, mark the pass (:data:`_NON_FINITE_COTANGENT_PASSES`) until it ends: a guarded
    solve sharing an input then does not blame ``func`` for the NaN the loss put there."""
    readable = [g for g in cotangents if g is not None and not (transformed(g) or batched_cotangent(g))]
    if all_finite(readable):
        return
    task = torch._C._current_graph_task_id()
    _NON_FINITE_COTANGENT_PASSES.add(task)
    at_pass_end(lambda: _NON_FINITE_COTANGENT_PASSES.discard(task))


def passing_cotangents_on(x: Tensor) -> Tensor:
    """``x`` as returned beside a guarded solve's outputs that it does not pass through (an event
    solve's ``ys[0]``, its ``y0`` itself): a non-finite cotangent the loss puts on it marks the pass
    (:func:`note_non_finite_cotangents`), as on a guarded output."""
    if not x.requires_grad:
        return x
    view = x.view_as(x)
    view.register_hook(untraced_hook(lambda grad: note_non_finite_cotangents([grad])))
    return view


def guard_direct_gradients(
    inputs: Sequence[Tensor], t0: float, n_steps: int | None, func: str = "func", *, float16_autocast: bool
) -> Callable[[Tensor], None]:
    """``guard(output)`` for each output of one solve that a loss may read (its ``ys``, its stacked
    step penalties, a read of its dense record): a backward pass through any of them raises
    :class:`SolverError` if the gradient of one of ``inputs`` (``y0`` and the known parameters) is
    not finite while the cotangents of the guarded outputs were (and, in that pass, every other
    guarded solve's too: an input shared with a solve whose cotangent was NaN gets their sum).
    ``n_steps``: the solve's, for the error (``None`` where a peer backend does not count them).
    Without ``inputs`` to check, or for a solve whose ``func`` ran under float16 autocast
    (``float16_autocast``: its overflow is a GradScaler's to skip, :func:`in_float16_autocast`), a
    guarded output only marks a pass whose cotangent on it is not finite
    (:func:`note_non_finite_cotangents`).

    A hook on each output records, for the backward pass that runs (a nested one, a reentrant
    checkpoint's say, is another pass), whether its cotangent was finite; the first of them in a
    pass hooks each input for that pass only, so a pass through several outputs checks each input
    once. The input's hook checks the gradient that reaches it in the same pass, after every
    output's (the inputs are upstream of them all), so a later pass that does not reach the outputs
    (through an input shared with another computation) is not judged by an earlier record, and no
    hook stays on a parameter after a pass that ends (hooks that lived as long as the graph piled
    up on the parameters of a loop that keeps its losses, every later pass running them all). A
    pass that fails runs no end-of-pass callback: its hooks go with its graph (while a loop keeps
    that graph, they stay).
    """
    # Held by the hooks on the outputs (no cycle: the inputs are upstream of them): an input the
    # caller does not keep, y0 = encoder(x) passed inline, would otherwise be gone when the pass comes.
    inputs = () if float16_autocast else tuple(x for x in inputs if x.requires_grad)
    # Lives exactly as long as the hooks on the outputs, that is as the graph: a pass that fails
    # runs no end-of-pass callback, so its hooks on the inputs also go when its graph does (a
    # training loop that catches such failures piled them up on the parameters, every later pass
    # running them).
    graph_alive = _GraphAnchor()
    # Per backward pass that has hooked the inputs: whether every guarded cotangent in it so far
    # was readable and finite.
    cotangents_finite: dict[int, bool] = {}

    def record_cotangent(grad: Tensor | None) -> None:
        task = torch._C._current_graph_task_id()
        # Under torch.func transforms (jacrev's vmap over cotangents) or batched cotangents
        # (jacobian(vectorize=True)) a tensor's value cannot be read: the check is skipped there.
        readable = grad is not None and not transformed(grad) and not batched_cotangent(grad)
        finite = readable and all_finite((grad,))
        if readable and not finite:
            _NON_FINITE_COTANGENT_PASSES.add(task)
        if task in cotangents_finite:  # another output of this solve: the inputs are hooked
            cotangents_finite[task] = cotangents_finite[task] and finite
            return
        cotangents_finite[task] = finite

        def end_pass() -> None:
            for handle in handles:
                handle.remove()
            _NON_FINITE_COTANGENT_PASSES.discard(task)
            cotangents_finite.pop(task, None)

        def check(gradient: Tensor) -> None:
            unreadable = transformed(gradient) or batched_cotangent(gradient)
            if unreadable or torch._C._current_graph_task_id() != task:
                return
            checked = cotangents_finite.get(task, False) and task not in _NON_FINITE_COTANGENT_PASSES
            if checked and not all_finite((gradient,)):
                ended()  # the pass ends here, before its end-of-pass callback
                raise_non_finite_gradient(t0, n_steps, func)

        # An input frozen since the solve (requires_grad_(False), as plain torch allows) gets no
        # gradient in this pass, so nothing to check, and torch refuses a hook on it.
        handles = [x.register_hook(untraced_hook(check)) for x in inputs if x.requires_grad]
        ended = weakref.finalize(graph_alive, end_pass)  # runs once: at the pass's end, or the graph's
        at_pass_end(ended)

    def guard(output: Tensor) -> None:
        if not output.requires_grad:
            return
        if inputs:
            output.register_hook(untraced_hook(record_cotangent))
        else:
            # Nothing of this solve's own to check (a plain function from a y0 that asks for no
            # gradient), but what it closes over may be a guarded solve's parameter: a NaN the loss
            # puts here must still read as the loss's there.
            output.register_hook(untraced_hook(lambda grad: note_non_finite_cotangents([grad])))

    return guard


class _GraphAnchor:
    """An object held only by a guarded solve's hooks on its outputs (:func:`guard_direct_gradients`)
    and by what may still hook one (the dense record)."""
