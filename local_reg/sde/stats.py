"""What a regularized SDE forward pass reports about its cost."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor

from .solution import SDEStats


@dataclass
class SDERegularizationStats:
    """Cost and diagnostics of one regularized SDE forward pass.

    It has the attributes of :class:`local_reg.regularization.RegularizationStats` (so code that
    reads ``nfe_main``, ``nfe_reg``, ``nfe_forward``, ``t_reg``, ``penalty`` ... works for ODEs and
    SDEs alike; it is not a subclass so that ``local_reg.sde`` does not import the ODE
    regularization package, which will import this one) plus drift and diffusion counted apart.

    Attributes:
        nfe_main: evaluations of drift plus diffusion by the main solve.
        nfe_main_drift, nfe_main_diffusion: the same, apart.
        nfe_reg: evaluations spent by the regularizer (``f`` and ``g`` at ``u(t_reg)``, the
            initial-step heuristic's probe and the step's own); 0 for global regularization.
        nfe_reg_drift, nfe_reg_diffusion: the same, apart.
        t_reg, dt_reg: the sampled time and the regularization step size (local only).
        state: ``u(t_reg)``, detached (local only).
        error_estimate: ``EEst`` of the regularization step (local only).
        penalty: the unweighted penalty as a float; ``penalty_finite`` is ``False`` if it was
            non-finite and replaced by 0.
        n_accepted: accepted steps of the main solve, when known.
        solver_stats: the main solve's :class:`SDEStats` (``local_reg`` backend), else ``None``.
    """

    nfe_main: int = 0
    nfe_reg: int = 0
    nfe_main_drift: int = 0
    nfe_main_diffusion: int = 0
    nfe_reg_drift: int = 0
    nfe_reg_diffusion: int = 0
    t_reg: float | None = None
    dt_reg: float | None = None
    state: Tensor | None = field(default=None, repr=False)
    error_estimate: float | None = None
    stiffness_estimate: float | None = None
    penalty: float | None = None
    penalty_finite: bool = True
    n_accepted: int | None = None
    solver_stats: SDEStats | None = field(default=None, repr=False)
    backward_counter: Callable[[], int | None] | None = field(default=None, repr=False)

    @property
    def nfe_backward(self) -> int | None:
        """Drift/diffusion calls of torchsde's adjoint backward pass, once it has run; else None."""
        return None if self.backward_counter is None else self.backward_counter()

    @property
    def nfe_forward(self) -> int:
        """Every evaluation of the forward pass: main solve plus regularizer."""
        return self.nfe_main + self.nfe_reg
