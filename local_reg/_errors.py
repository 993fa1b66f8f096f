from __future__ import annotations

from typing import Any


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
