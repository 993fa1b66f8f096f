"""Local regularization of neural ODEs [LR23].

[LR23] Pal, Edelman, Rackauckas. *Locally Regularized Neural Differential Equations: Some Black Boxes
Were Meant to Remain Closed!* ICML 2023.

At each training forward pass, one time ``t_reg`` in ``[t0, t1)`` is sampled, one step of an
embedded Runge--Kutta pair (Tsit5 by default) is taken from the solution ``u(t_reg)`` and its error
estimate is penalized::

    R_E = EEst * |dt|,   EEst = rms(dt * sum_i btilde_i k_i / (atol + rtol * max(|u|, |u_1|)))
    R_S = S_Est = rho / stability_size          (stiffness variant; Shampine's rho)

``u(t_reg)``, ``dt`` and ``k1 = f(t_reg, u(t_reg))`` are constants: only the step's remaining stages
are differentiated, by plain reverse mode through one step, so the main solve may use any gradient
method. The step is :func:`local_reg.step`, the same function the solver uses to accept or reject
steps, so ``EEst`` here is the solver's own error estimate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from ..tableaus import ButcherTableau
from ._module import LocalPenalty, Regularized
from ._stats import RegularizationStats


def local_regularization(
    func: Any, y0: Tensor, t: Tensor | Sequence[float], *, bm: Any | None = None, **settings: Any
) -> tuple[Tensor, Tensor, RegularizationStats]:
    """Solve ``dy/dt = func(t, y)`` (or an SDE) at ``t`` and compute the local regularization
    penalty [LR23] once, without a module.

    Returns ``(ys, reg, stats)``: ``ys`` the solution at ``t`` (as :func:`local_reg.odeint`; never
    at ``t_reg``), ``reg`` the *unweighted* penalty (0-dim tensor) and a
    :class:`RegularizationStats`. Add ``weight * reg`` to the training loss. ``settings`` are
    :class:`LocallyRegularized`'s keywords; ``bm`` is an SDE's Brownian motion
    over ``[t[0], t[-1]]``, shared by the main solve and the step (by default a new
    ``torchsde.BrownianInterval`` seeded from ``generator``).
    """
    return LocallyRegularized(func, **settings).penalize(y0, t, bm)


class LocallyRegularized(Regularized):
    """A neural ODE ``dy/dt = func(t, y)`` (or SDE) trained with local regularization [LR23].

    ``ys = model(y0, t)`` returns the solution at ``t``. In training mode it also sets
    ``model.reg_loss = w * R``, ``R`` the penalty of one regularization step at a sampled ``t_reg``
    from ``u(t_reg)``, ``u(t_reg)``, ``dt`` and ``k1 = f(t_reg, u(t_reg))`` constants, so the main
    solve may use any gradient method; add it to the task loss. In eval mode there is no
    regularization and no extra cost: ``ys`` is exactly the unregularized solution and ``reg_loss``
    is 0. ``model.stats`` describes the last call. Everything is checked at construction.

    ``func`` may be a torchsde-style SDE (``f``, ``g``, ``noise_type``; see :func:`local_reg.sdeint`):
    the probe is then one Euler--Maruyama step with its embedded estimate on the main solve's
    Brownian path, ``R = EEst * dt`` (``regularizer="error"`` only, ``reg_method`` ``None``), and
    ``backend`` is ``"local_reg"`` or ``"torchsde"``.

    A penalty that is not finite (a diverging regularization step) is replaced by a zero that
    carries no gradient, and ``stats.penalty_finite`` is ``False``; a zero ``EEst`` has a zero
    gradient, never NaN.

    Args:
        sampling: ``"random"`` (unbiased, the paper's default): ``t_reg ~ U[t0, t1)``; the main solve
            also stops at ``t_reg`` to obtain ``u(t_reg)``. ``"biased"``: ``t_reg`` is drawn
            uniformly from the start times of the main solve's accepted steps (which cluster where
            the dynamics are hard) and the step restarts from the recorded state.
        regularizer: ``"error"``: ``R = EEst * |dt|``; ``"stiffness"``: ``R = rho / stability_size``
            (not multiplied by ``dt``; [LR23] reports it "did not yield positive results").
        method, rtol, atol, gradient, adjoint_params, backend, options, generator, weight: the
            keywords of :class:`Regularized`, as follows.
        method: the main solver (default ``"tsit5"``; ``"dopri5"`` with torchdiffeq, which has no
            Tsit5; ``"euler_maruyama"`` for an SDE).
        reg_method: the embedded pair of the regularization step (default Tsit5, which the public
            code hard-codes).
        rtol, atol: tolerances of the main solve and of the regularization step's ``EEst``.
        gradient: the main solve's gradient method, passed to ``local_reg.odeint(gradient=...)`` (an
            object such as ``Symplectic(checkpoints=32)``, or ``"direct"``, ``"adjoint"``,
            ``"checkpoint"``, ``"symplectic"``); with torchdiffeq ``"direct"`` is
            ``torchdiffeq.odeint`` and ``"adjoint"`` is ``torchdiffeq.odeint_adjoint`` (a
            ``BacksolveAdjoint``'s settings become its ``adjoint_*`` arguments).
        adjoint_params: parameters for the adjoint-type gradient methods (default: the backend's).
        backend: ``"local_reg"`` or ``"torchdiffeq"``. With torchdiffeq, ``u(t_reg)`` is its dense
            output at ``t_reg`` (adding an output time does not change its steps) and biased sampling
            records steps with torchdiffeq's ``callback_accept_step``.
        step_size: ``"initial"`` (the paper): the initial-step heuristic at ``u(t_reg)``;
            ``"solver"``: the accepted step of the main solve that contains ``t_reg`` (starts at it
            when the main solve lands on it). Either is capped at ``|t1 - t_reg|``.
        detach_state: ``True`` (the paper): ``u(t_reg)`` and ``k1`` are constants. ``False``: the
            penalty's gradient also flows into ``u(t_reg)`` (and from there, through the main
            gradient method, into ``y0`` and the parameters); only with ``sampling="random"``.
        generator: the ``torch.Generator`` (CPU) that draws ``t_reg`` (and an SDE's Brownian seed);
            the global one by default.
        options: extra keyword arguments of the main solve (``local_reg.odeint`` keywords, or
            torchdiffeq's ``options`` dict).
        probe, probe_scale, penalty, n_draws: the probe's step size, a factor on the heuristic's
            step, the penalty's form and the draws averaged (:class:`LocalPenalty`); the defaults
            are the paper's procedure, and ``stats`` describe the last draw.
        weight: a non-negative float or a :class:`WeightSchedule` (e.g. ``ExponentialDecay(2.5, 1.0,
            N)`` as for MNIST in [LR23]); advance it with ``model.weight.step()`` once per iteration.
            Its state (and ``generator``'s) is part of ``model.state_dict()``.
    """

    def __init__(
        self,
        func: Any,
        *,
        sampling: str = "random",
        regularizer: str = "error",
        reg_method: str | ButcherTableau | None = None,
        step_size: str = "initial",
        detach_state: bool = True,
        probe: str = "initial",
        probe_scale: float = 1.0,
        penalty: str = "error-dt",
        n_draws: int = 1,
        **solve: Any,
    ) -> None:
        strategy = LocalPenalty(
            sampling, regularizer, reg_method, step_size, detach_state, probe, probe_scale, penalty, n_draws
        )
        super().__init__(func, strategy, **solve)
