"""What a regularized forward pass reports: the main solve's statistics, the probe's, and the penalty."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from ..solution import Stats
from ._main_solve import BackwardCounter


@dataclass(eq=False)  # identity: a field-wise == would compare the tensor state (and raise)
class RegularizationStats:
    """Cost and diagnostics of one forward pass of a regularized (or plain) model.

    Every evaluation is counted in exactly one of the two :class:`local_reg.Stats`: ``main`` (the
    solve whose outputs the model returns, with whatever it needs to run: the initial-step
    heuristic, an SDE's Brownian motion) and ``probe`` (the local regularizer's extra step: ``f``
    at ``u(t_reg)``, its initial-step heuristic and the step's stages; zero for global
    regularization, whose penalty reuses the main solve's stages, and in eval mode).

    Attributes:
        main: the main solve's :class:`local_reg.Stats` (steps and rejections are zero where the
            backend does not report them: torchsde, and torchdiffeq's fixed grids; its adaptive
            methods report them through its step callbacks).
        probe: the regularization step's evaluations.
        t_reg: the sampled time (local regularization), else ``None``.
        dt_reg: the signed step size of the regularization step, else ``None``.
        state: ``u(t_reg)``, detached, else ``None``.
        error_estimate: ``EEst`` of the regularization step (a float), else ``None``.
        stiffness_estimate: Shampine's ``rho`` of the regularization step, else ``None``.
        penalty: the unweighted penalty ``R`` as a float (``None`` without one).
        penalty_finite: ``False`` if the penalty was non-finite and replaced by 0.
        n_accepted: accepted steps of the main solve when known, else ``None``.
        grad_ratio: the weight's last measured ``||grad reg_loss|| / ||grad task loss||``
            (:class:`local_reg.regularization.RatioWeight` measures it, in an earlier iteration's
            backward pass), else ``None``.
        nfe_measurement: evaluations of a measuring weight's gradient of ``reg_loss``, taken in
            the forward pass: with ``detach_state=False`` it runs the main gradient method's
            backward pass, which :attr:`nfe_backward` then leaves out; else 0.
    """

    main: Stats = field(default_factory=Stats)
    probe: Stats = field(default_factory=Stats)
    t_reg: float | None = None
    dt_reg: float | None = None
    state: Tensor | None = field(default=None, repr=False)
    error_estimate: float | None = None
    stiffness_estimate: float | None = None
    penalty: float | None = None
    penalty_finite: bool = True
    n_accepted: int | None = None
    grad_ratio: float | None = None
    nfe_measurement: int = 0
    backward_counter: BackwardCounter | None = field(default=None, repr=False)

    @property
    def nfe_main(self) -> int:
        """Evaluations of the main solve (``main.nfe``): what test NFE reports."""
        return self.main.nfe

    @property
    def nfe_reg(self) -> int:
        """Evaluations of the regularization step (``probe.nfe``)."""
        return self.probe.nfe

    @property
    def nfe_forward(self) -> int:
        """Every evaluation of the forward pass: main solve, regularizer and a weight's measurement."""
        return self.main.nfe + self.probe.nfe + self.nfe_measurement

    @property
    def nfe_main_drift(self) -> int:
        """Evaluations of the drift in the main solve (``main.nfe_drift``)."""
        return self.main.nfe_drift

    @property
    def nfe_main_diffusion(self) -> int:
        """Evaluations of the diffusion in the main solve (``main.nfe_diffusion``; 0 for an ODE)."""
        return self.main.nfe_diffusion

    @property
    def nfe_reg_drift(self) -> int:
        """Evaluations of the drift in the regularization step (``probe.nfe_drift``)."""
        return self.probe.nfe_drift

    @property
    def nfe_reg_diffusion(self) -> int:
        """Evaluations of the diffusion in the regularization step (``probe.nfe_diffusion``; 0 for an ODE)."""
        return self.probe.nfe_diffusion

    @property
    def nfe_backward(self) -> int | None:
        """Evaluations (calls and vector--Jacobian products) of the main gradient method's backward
        pass, once ``backward`` has run; ``None`` while unknown (before backward, or plain
        backpropagation through torchdiffeq, which makes no calls of its own)."""
        total = self.backward_counter() if self.backward_counter is not None else self.main.nfe_backward
        return None if total is None else total - self.nfe_measurement
