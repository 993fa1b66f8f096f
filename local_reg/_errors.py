from __future__ import annotations

import os
import sys
import warnings
from types import FrameType
from typing import Any

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
_PASSED_THROUGH = ("torch", "torchdiffeq", "torchsde")
"""Libraries a call of this package's passes through on its way to the user's code (``nn.Module``'s
``__call__``, ``autograd.Function.apply``, torchdiffeq's solvers calling a backend's field)."""


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` attributed to the user's line that led to the warning: the first frame
    neither in this package nor in a library it passes through (:data:`_PASSED_THROUGH`), or a
    ``__main__`` module's (``python -m local_reg.demo``), however deep the warning is raised and
    along whichever path (one function reached from ``local_reg.sdeint``, through
    ``local_reg.compat`` and through a model's ``__call__``, say), where a fixed ``stacklevel``
    points inside a library on all paths but one."""
    files = [getattr(sys.modules.get(name), "__file__", None) for name in _PASSED_THROUGH]
    skipped = (_PACKAGE, *(os.path.dirname(os.path.abspath(file)) + os.sep for file in files if file))
    frame: FrameType | None = sys._getframe(1)
    level = 2  # warnings.warn's stacklevel of the frame that called this function
    while (
        frame is not None
        and frame.f_globals.get("__name__") != "__main__"
        and frame.f_code.co_filename.startswith(skipped)
    ):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)


STEP_LIMIT_REACHED = "max_steps="
"""How the reason of a solve stopped by its step limit begins (``max_steps=N exceeded``): the
advice added to it, and the rewordings of a solve until an event and of an adjoint's backward
solve, are keyed on it."""

STEP_SIZE_UNDERFLOW = "step size underflow"
"""How the reason of a solve whose step size underflowed begins."""

TRIAL_STEPS_NON_FINITE = "the trial steps kept turning non-finite"
"""What follows the stepper's ``failure`` where a step size underflowed while shrinking away from
non-finite trial steps."""


class SolverError(RuntimeError):
    """The solver could not continue: a non-finite state or derivative, a step size that underflowed,
    or more steps than ``max_steps``. The message names the time ``t`` and the step count
    (``n_steps``: the steps attempted, accepted and rejected, as ``Stats.n_steps``; ``None`` where a
    peer backend's solve failed without reporting its steps)."""

    def __init__(self, reason: str, *, t: float, n_steps: int | None) -> None:
        self.reason = reason
        self.t = t
        self.n_steps = n_steps
        after = "" if n_steps is None else f" after {n_steps} steps"
        super().__init__(f"{reason} at t={t!r}{after}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle as type(self)(*args) by default, which the keyword-only t and n_steps
        # break: a failed solve in a worker process (multiprocessing, DataLoader) must come back.
        return _rebuild, (type(self), self.reason, self.t, self.n_steps), self.__dict__


def _rebuild(cls: type[SolverError], reason: str, t: float, n_steps: int | None) -> SolverError:
    return cls(reason, t=t, n_steps=n_steps)


class SolverAssertion(SolverError, AssertionError):
    """A failed solve of a kind torchdiffeq or torchsde asserts on, from ``local_reg.compat``: a
    :class:`SolverError` that is also an ``AssertionError``, so that code catching theirs still
    catches it."""
