"""How strongly a penalty pulls on the parameters, compared with the task: a cheap diagnostic.

``ratio = ||dR_w/dtheta|| / ||dL/dtheta||`` for the weighted penalty ``R_w`` (``model.reg_loss``)
and the task loss ``L``. A ratio far above 1 means the regularizer, not the task, is steering the
training (the weight is too large for this task and tolerance); far below 1, that it does little.
Measuring it costs one vector--Jacobian product of ``R_w`` alone, taken before the usual backward
pass of ``L + R_w``: the task's gradient is then the difference. For local regularization that is a
backward pass through one solver step (``u(t_reg)`` is a constant); for global regularization it
is a backward pass through the whole solve, so measure it only every few iterations.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor


def squared_norm(gradient: Tensor) -> float:
    """``||gradient||^2``, summed in float64: a float32 gradient scaled by AMP's ``GradScaler``
    (whose scale grows without bound where nothing overflows, on a CPU or under bfloat16) squares
    past float32's range long before the gradient itself does. A sparse gradient (an embedding's)
    by its values, which vector_norm takes (it has no sparse kernel)."""
    if gradient.is_sparse:
        gradient = gradient.coalesce().values()
    return float(torch.linalg.vector_norm(gradient, dtype=torch.float64)) ** 2


def trained_parameters(parameters: object) -> list[Tensor]:
    """The tensors of ``parameters`` that require grad, each once (a parameter listed twice, as
    one shared by two concatenated lists, would count twice in a gradient norm); a tensor itself
    (whose rows would be taken as parameters), a non-iterable, an element that is not a tensor, or
    none that requires grad is an error naming ``parameters``."""
    if isinstance(parameters, Tensor) or not isinstance(parameters, Iterable):
        raise TypeError(
            "parameters must be an iterable of tensors (e.g. model.parameters()), got "
            f"{'a tensor' if isinstance(parameters, Tensor) else type(parameters).__name__}"
        )
    parameters = list(parameters)
    if not all(isinstance(p, Tensor) for p in parameters):
        raise TypeError("parameters must be an iterable of tensors (e.g. model.parameters())")
    trained = list({id(p): p for p in parameters if p.requires_grad}.values())
    if not trained:
        raise ValueError("parameters holds no tensor that requires grad")
    return trained


class GradientRatio:
    """``ratio = GradientRatio(model.parameters())``; around one training step::

        ratio.before_backward(model.reg_loss)   # keeps the graph for the backward pass
        (task_loss + model.reg_loss).backward()
        value = ratio.after_backward()           # ||grad of reg_loss|| / ||grad of task_loss||

    ``after_backward`` reads the parameters' ``.grad`` (so call it before ``optimizer.step()``
    and before the gradients are cleared; the backward pass must be of ``task_loss + reg_loss``
    itself, unscaled: what it adds to ``.grad`` (gradients accumulated before ``before_backward``
    are left out), less the penalty's gradient, is taken as the task's, and :class:`RatioWeight`
    with ``parameters`` measures scaled passes instead); it returns ``nan`` if nothing was
    measured and ``inf`` when the task's gradient is zero. It also leaves the two norms it divided
    in ``penalty_norm`` and ``task_norm`` (``nan`` when nothing was measured), which
    :class:`local_reg.regularization.RatioWeight` averages.
    """

    def __init__(self, parameters: Iterable[Tensor]) -> None:
        self.parameters = trained_parameters(parameters)
        self._penalty_grads: list[Tensor | None] | None = None
        self._grads_before: list[Tensor | None] = []
        self.penalty_norm = self.task_norm = math.nan

    def before_backward(self, reg_loss: Tensor) -> None:
        """Before the training loss's backward pass: take ``reg_loss``'s gradient w.r.t. the
        parameters (keeping its graph) and what ``.grad`` holds already."""
        if isinstance(reg_loss, Tensor) and reg_loss.numel() != 1:
            raise ValueError(
                f"reg_loss must be one value (a 0-dim tensor), got shape {tuple(reg_loss.shape)}"
            )
        if not isinstance(reg_loss, Tensor) or not reg_loss.requires_grad:
            self._penalty_grads = None
            return
        # With the parameters' gradient hooks, as .grad gets the training pass's gradient: the task's
        # part, their difference, is then exact for a linear hook (a scale, a mask).
        self._penalty_grads = list(
            torch.autograd.grad(reg_loss, self.parameters, retain_graph=True, allow_unused=True)
        )
        # Micro-batches accumulate into .grad: the pass measured is what the backward adds.
        self._grads_before = [None if p.grad is None else p.grad.detach().clone() for p in self.parameters]

    def after_backward(self) -> float:
        """After it: the ratio of the penalty's gradient norm to the task's (what the backward pass
        added, less the penalty's): ``inf`` where the task's is zero and the penalty's is not, NaN
        where both are zero or ``reg_loss`` had no gradient."""
        self.penalty_norm = self.task_norm = math.nan
        if self._penalty_grads is None:
            return math.nan
        penalty_sq = task_sq = 0.0
        for parameter, penalty, before in zip(
            self.parameters, self._penalty_grads, self._grads_before, strict=True
        ):
            total = parameter.grad
            if total is not None and before is not None:
                total = total - before
            if penalty is not None:
                penalty_sq += squared_norm(penalty)
            if total is not None:
                task = total if penalty is None else total - penalty
                task_sq += squared_norm(task)
        self._penalty_grads, self._grads_before = None, []
        self.penalty_norm, self.task_norm = math.sqrt(penalty_sq), math.sqrt(task_sq)
        if task_sq == 0.0:
            return math.inf if penalty_sq > 0 else math.nan
        return math.sqrt(penalty_sq / task_sq)
