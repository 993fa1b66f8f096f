from __future__ import annotations

import os
import sys
import warnings
from types import FrameType
from typing import Any

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` attributed to the first caller outside this package: the user's line that
    led to the warning, however deep in the library it is raised and along whichever path (one
    function reached from ``local_reg.sdeint`` and through ``local_reg.compat``, say), where a fixed
    ``stacklevel`` points inside the library on all paths but one."""
    frame: FrameType | None = sys._getframe(1)
    level = 2  # warnings.warn's stacklevel of the frame that called this function
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)


class SolverError(RuntimeError):
    """The solver could not continue: a non-finite state or derivative, a step size that underflowed,
    or more steps than ``max_steps``. The message names the time ``t`` and the step count."""

    def __init__(self, reason: str, *, t: float, n_steps: int) -> None:
        self.reason = reason
        self.t = t
        self.n_steps = n_steps
        super().__init__(f"{reason} at t={t!r} after {n_steps} steps")

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle as type(self)(*args) by default, which the keyword-only t and n_steps
        # break: a failed solve in a worker process (multiprocessing, DataLoader) must come back.
        return _rebuild, (type(self), self.reason, self.t, self.n_steps), self.__dict__


def _rebuild(cls: type[SolverError], reason: str, t: float, n_steps: int) -> SolverError:
    return cls(reason, t=t, n_steps=n_steps)
