"""The guard on a regularization penalty, shared by the ODE and SDE regularizers: a penalty that is
not finite (a diverging regularization step) is replaced by a zero that carries no gradient, so one
bad draw does not poison the parameters."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def finite_penalty(penalty: Tensor, like: Tensor) -> tuple[Tensor, float, bool]:
    """``(penalty, value, finite)``: the penalty to train on (a zero of ``like``'s dtype and device
    if it is not finite), its value as a float (0.0 if not finite) and whether it was finite."""
    value = float(penalty.detach())
    if math.isfinite(value):
        return penalty, value, True
    return torch.zeros((), dtype=like.dtype, device=like.device), 0.0, False
