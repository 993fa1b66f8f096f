"""What a solve returns: the trajectory, its statistics and the record of accepted steps."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class Stats:
    """Solver statistics (torchode's ``n_f_evals`` etc. under the names of the issue tracker).

    Attributes:
        nfe: every evaluation of the vector field in the forward solve, the initial-step heuristic
            included.
        n_steps: attempted steps, accepted plus rejected.
        n_accepted: accepted steps.
        n_rejected: rejected steps.
        nfe_backward: evaluations (function calls and vector--Jacobian products) spent by the
            backward pass of the gradient method, filled in once ``backward`` has run; ``None``
            before that or when it is not known.
    """

    nfe: int = 0
    n_steps: int = 0
    n_accepted: int = 0
    n_rejected: int = 0
    nfe_backward: int | None = None


@dataclass
class Steps:
    """Record of the accepted steps of a solve (all detached).

    Attributes:
        t: start time of each accepted step, shape ``(n_accepted,)``, float64.
        dt: signed step size of each accepted step, float64.
        error_estimate: the step's ``EEst`` (NaN for a fixed-step method without an embedded pair).
        stiffness_estimate: Shampine's ``rho`` per step, or ``None`` when the tableau has no two
            stages at ``c == 1`` (see :class:`local_reg.ButcherTableau`).
        states: the state at each step start, shape ``(n_accepted, *y0.shape)``, kept only with
            ``record_states=True``, else ``None``.
    """

    t: Tensor
    dt: Tensor
    error_estimate: Tensor
    stiffness_estimate: Tensor | None
    states: Tensor | None


@dataclass
class Solution:
    """Result of :func:`local_reg.odeint`.

    Attributes:
        ts: the output times.
        ys: the solution at ``ts``, shape ``(len(ts), *y0.shape)``; every output time is the end
            of an accepted step (no interpolation).
        stats: see :class:`Stats`.
        steps: see :class:`Steps`.
        penalties: with ``odeint(step_penalty=...)``, the penalty of every accepted step, shape
            ``(n_accepted,)``, differentiable; else ``None``.
    """

    ts: Tensor
    ys: Tensor
    stats: Stats
    steps: Steps
    penalties: Tensor | None = None
