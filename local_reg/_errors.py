class SolverError(RuntimeError):
    """The solver could not continue: a non-finite state or derivative, a step size that underflowed,
    or more steps than ``max_steps``. The message names the time ``t`` and the step count."""

    def __init__(self, reason: str, *, t: float, n_steps: int) -> None:
        self.reason = reason
        self.t = t
        self.n_steps = n_steps
        super().__init__(f"{reason} at t={t!r} after {n_steps} steps")
