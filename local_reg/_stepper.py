"""The interface between a method and the one time-stepping loop (:func:`local_reg._integrate.integrate`).

Each method implements only its step (as in torchsde and diffrax): the explicit Runge--Kutta pairs
(:class:`local_reg._step.RKStepper`) and Euler--Maruyama (:class:`local_reg.sde._step.EulerMaruyamaStepper`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import torch
from torch import Tensor

from .solution import Stats

if TYPE_CHECKING:
    from .interpolants import Interpolant

Carry = TypeVar("Carry")


def checked_error(error_estimate: Tensor, y1: Tensor) -> Tensor:
    """``EEst + 0 * max|y1|``: ``EEst`` exactly when ``y1`` is finite and NaN when it is not (an empty
    ``y1`` has no maximum), so that one read of the device decides a step."""
    check = error_estimate.detach()
    if y1.numel():
        check = check.add(torch.linalg.vector_norm(y1.detach(), ord=math.inf), alpha=0.0)
    return check


class Stepper(ABC, Generic[Carry]):
    """One method's step, as :func:`integrate` drives it.

    A stepper may carry evaluations from one attempted step to the next (``Carry``): the FSAL stage
    of a Runge--Kutta pair, or the drift and diffusion at the start of a rejected SDE step.
    """

    order: int
    """The power of ``dt`` in the local error estimate, the step-size controller's ``order``."""
    has_stiffness: bool = False
    """Whether step results carry a ``stiffness_estimate``."""
    failure: str = "non-finite state"
    """What a non-finite step result means, for the :class:`SolverError` message."""
    interpolant: Interpolant | None = None
    """The weights of the dense output (:meth:`interpolate`), for a stepper that has one."""
    landing_keeps_error_memory: bool = True
    """Whether a step shortened to land on an output time leaves the controller's memory of the
    last error as it was (its own, near zero on a sliver, would shrink the next step through the
    PI term)."""

    def __init__(self, order: int, rtol: float | Tensor, atol: float | Tensor) -> None:
        self.order = order
        self.rtol = rtol
        self.atol = atol

    @abstractmethod
    def begin(self, t0: float, y0: Tensor, stats: Stats) -> Carry:
        """The carry of the first step (evaluations counted in ``stats``); raises
        :class:`SolverError` if what it evaluated is not finite."""

    @abstractmethod
    def initial_step_size(
        self, t0: float, y0: Tensor, carry: Carry, direction: float, stats: Stats, t_end: float | None = None
    ) -> float:
        """The first step size ``|dt|`` when none is given (evaluations counted in ``stats``); a trial
        evaluation stays within ``[t0, t_end]``."""

    @abstractmethod
    def step(self, t: float, t_next: float, y: Tensor, dt: float, carry: Carry, estimate_error: bool) -> Any:
        """Attempt one step from ``(t, y)`` to ``t_next = t + dt`` (``dt`` signed). The result has
        ``y1``, ``error_estimate`` (0-dim tensor, or ``None``), ``nfe`` and ``nfe_diffusion``.
        ``estimate_error``: whether the loop decides on the estimate (an adaptive solve); without it
        a stepper may skip an estimate that costs work (``None``). A Runge--Kutta pair's estimate
        reuses the stages, so it is kept for the step records of a fixed-step solve too."""

    def error_check(self, result: Any) -> Tensor:
        """The 0-dim tensor whose one read decides the attempted step ``result``:
        :func:`checked_error` of its ``EEst`` and ``y1``."""
        return checked_error(result.error_estimate, result.y1)

    def dense_stages(self, result: Any, t: float, t_next: float, stats: Stats) -> Any:
        """What :meth:`interpolate` needs of the accepted step ``result`` from ``t`` to ``t_next``
        (evaluations counted in ``stats``). Only steppers with dense output implement it."""
        raise NotImplementedError(f"{type(self).__name__} has no dense output")

    def interpolate(self, t: float, dt: float, y: Tensor, stages: Any, t_outs: list[float]) -> Tensor:
        """The states at ``t_outs`` inside the accepted step ``(t, y) -> t + dt``, stacked."""
        raise NotImplementedError(f"{type(self).__name__} has no dense output")

    def explain_non_finite(self) -> None:
        """Called when the step just attempted turned non-finite: raise a more specific error than
        the loop's if its cause is known (an SDE's Brownian increment); by default nothing."""

    @abstractmethod
    def next_carry(self, result: Any, accepted: bool, carry: Carry) -> Carry:
        """The carry of the step after ``result``, accepted or rejected."""

    def after_jump(self, carry: Carry) -> Carry:
        """The carry of the step after an accepted step that ended at a jump time of the field
        (:class:`local_reg.PIController`'s ``jump_ts``): nothing evaluated before the jump carries
        over. Only steppers that take jump times implement it."""
        raise NotImplementedError(f"{type(self).__name__} does not take jump times")
