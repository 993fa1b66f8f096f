"""What a regularized solve reports about its cost."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor

from ..solution import Stats


@dataclass
class RegularizationStats:
    """Cost and diagnostics of one regularized forward pass.

    Attributes:
        nfe_main: evaluations of the vector field by the main solve (as ``Stats.nfe``).
        nfe_reg: evaluations spent by the regularizer: for local regularization ``k1 = f(u(t_reg))``,
            the initial-step heuristic's extra evaluation and the step's remaining stages; 0 for
            global regularization (its penalty reuses the main solve's stages) and in eval mode.
        t_reg: the sampled time (local regularization), else ``None``.
        dt_reg: the signed step size of the regularization step, else ``None``.
        state: ``u(t_reg)``, detached, else ``None``.
        error_estimate: ``EEst`` of the regularization step (a float), else ``None``.
        stiffness_estimate: Shampine's ``rho`` of the regularization step, else ``None``.
        penalty: the unweighted penalty ``R`` as a float (``None`` in eval mode).
        penalty_finite: ``False`` if the penalty was non-finite and replaced by 0.
        n_accepted: accepted steps of the main solve when known.
        solver_stats: the main solve's :class:`local_reg.Stats` (``local_reg`` backend), else ``None``.
        nfe_backward: evaluations (calls and vector--Jacobian products) of the main gradient method's
            backward pass, read once ``backward`` has run; ``None`` when unknown (before backward,
            or plain backpropagation through torchdiffeq, which makes no calls of its own).
    """

    nfe_main: int = 0
    nfe_reg: int = 0
    t_reg: float | None = None
    dt_reg: float | None = None
    state: Tensor | None = field(default=None, repr=False)
    error_estimate: float | None = None
    stiffness_estimate: float | None = None
    penalty: float | None = None
    penalty_finite: bool = True
    n_accepted: int | None = None
    solver_stats: Stats | None = field(default=None, repr=False)
    backward_counter: Callable[[], int | None] | None = field(default=None, repr=False)

    @property
    def nfe_backward(self) -> int | None:
        if self.solver_stats is not None:
            return self.solver_stats.nfe_backward
        if self.backward_counter is not None:
            return self.backward_counter()
        return None

    @property
    def nfe_forward(self) -> int:
        """Every evaluation of the forward pass: main solve plus regularizer."""
        return self.nfe_main + self.nfe_reg
