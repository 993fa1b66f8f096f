"""The SDE entry point: ``sdeint(sde, y0, t)``, adaptive Euler--Maruyama on a kept Brownian path."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .._errors import SolverError
from .._integrate import StepLog, fixed_step_size, next_step_size
from ..controller import PIController
from ..odeint import _positive_float, validate_state, validate_times
from ..solution import Solution
from ..step import time_tensor
from .brownian import make_brownian
from .problem import brownian_size, check_shapes, validate_sde
from .solution import SDEStats
from .step import SDEStepResult, error_order, sde_initial_step_size, sde_step

DEFAULT_RTOL = 1e-2
DEFAULT_ATOL = 1e-2
DEFAULT_MAX_STEPS = 10_000
METHODS = ("euler_maruyama",)

SDEStepPenalty = Callable[[SDEStepResult, float], Tensor]
"""``penalty(result, dt) -> 0-dim tensor`` evaluated on every accepted step (global regularization)."""


def _check_finite(y1: Tensor, error_estimate: float | None, t: float, n_steps: int) -> None:
    finite = error_estimate is None or math.isfinite(error_estimate)
    if not (finite and bool(torch.isfinite(y1).all())):
        raise SolverError("non-finite state, drift or diffusion", t=t, n_steps=n_steps)


def validate_sde_problem(
    sde: Any, y0: Tensor, t: Tensor | Sequence[float], method: str
) -> tuple[str, list[float]]:
    """Shared argument checks of the SDE entry points; returns ``(noise_type, times)``."""
    noise_type, _ = validate_sde(sde)
    y0 = validate_state(y0)
    if y0.dim() != 2:
        raise ValueError(f"y0 must have shape (batch, state) as in torchsde, got shape {tuple(y0.shape)}")
    times = validate_times(t)
    if len(times) < 2:
        raise ValueError("t must hold at least two times (start and end of the solve)")
    if times[-1] < times[0]:
        raise ValueError("t must be strictly increasing: sdeint does not integrate backwards")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return noise_type, times


def sdeint(
    sde: Any,
    y0: Tensor,
    t: Tensor | Sequence[float],
    *,
    method: str = "euler_maruyama",
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    dt0: float | None = None,
    step_size: float | None = None,
    bm: Any | None = None,
    max_steps: int = DEFAULT_MAX_STEPS,
    controller: PIController | None = None,
    generator: torch.Generator | None = None,
    record_states: bool = False,
    step_penalty: SDEStepPenalty | None = None,
) -> Solution:
    """Solve the Ito SDE ``dy = f(t, y) dt + g(t, y) dW`` from ``y(t[0]) = y0``.

    Adaptive Euler--Maruyama with a Lamba / Rackauckas--Nie embedded error estimate (see
    :mod:`local_reg.sde.step` for the formulas), a PI step-size controller
    (:class:`local_reg.PIController`) and a Brownian path kept consistent under rejections (see
    :mod:`local_reg.sde.brownian`).

    Args:
        sde: torchsde-style SDE: ``f(t, y)``, ``g(t, y)``, ``noise_type`` in ``"diagonal"``,
            ``"scalar"``, ``"additive"``; ``sde_type`` (default ``"ito"``) must be ``"ito"``.
        y0: initial state of shape ``(batch, d)``; one step size and one error norm for the batch.
        t: output times, 1-D, strictly increasing. Every output time is the end of an accepted
            step (the step that would pass it is shortened to land on it).
        method: ``"euler_maruyama"`` (the only scheme; strong order 1/2, 1 for additive noise).
        rtol, atol: tolerances of ``EEst``. The defaults ``1e-2`` suit neural SDEs: the scheme is
            low order, the noise itself is O(sqrt(h)) per step, and a trained model's outputs are
            averaged over trajectories, so path accuracy beyond ~1% buys nothing but NFE (the
            paper's neural SDE experiments also solve at loose tolerances).
        dt0: first step size (adaptive mode); by default :func:`sde_initial_step_size` picks it.
        step_size: take fixed steps instead: each interval between output times is divided into
            equal steps no longer than ``step_size``; no error estimate is computed.
        bm: Brownian motion ``bm(ta, tb) -> W(tb) - W(ta)`` of shape ``(batch, m)`` covering
            ``[t[0], t[-1]]`` (e.g. ``torchsde.BrownianInterval``); by default a new
            ``BrownianInterval`` seeded from ``generator`` (or torch's global generator).
        max_steps: attempted steps (accepted + rejected) before a :class:`SolverError`.
        controller: step-size controller (default :class:`PIController`).
        record_states: keep the state at the start of every accepted step in ``solution.steps``.
        step_penalty: ``penalty(step_result, dt)`` on every accepted step, returned stacked as
            ``solution.penalties`` (global regularization); needs the adaptive mode.

    Returns:
        :class:`local_reg.Solution` whose ``stats`` is an :class:`SDEStats` (drift and diffusion
        NFE apart) and whose ``steps`` records the accepted steps (``stiffness_estimate=None``).

    Raises:
        ValueError, TypeError: bad arguments, naming the argument.
        SolverError: non-finite state, step size underflow or ``max_steps`` exceeded.
    """
    noise_type, times = validate_sde_problem(sde, y0, t, method)
    rtol = _positive_float("rtol", rtol)
    atol = _positive_float("atol", atol)
    if dt0 is not None:
        dt0 = _positive_float("dt0", dt0)
    if step_size is not None:
        step_size = _positive_float("step_size", step_size)
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
    if step_penalty is not None and step_size is not None:
        raise ValueError("step_penalty needs the adaptive mode (an error estimate): drop step_size")
    controller = controller or PIController()

    t0 = times[0]
    stats = SDEStats()
    f0 = sde.f(time_tensor(t0, y0), y0)
    g0 = sde.g(time_tensor(t0, y0), y0)
    stats.add(1, 1)
    check_shapes(noise_type, y0, f0, g0)
    bm = make_brownian(bm, t0, times[-1], brownian_size(noise_type, y0, g0), y0, generator)
    if not (bool(torch.isfinite(f0).all()) and bool(torch.isfinite(g0).all())):
        raise SolverError("non-finite drift or diffusion", t=t0, n_steps=0)

    adaptive = step_size is None
    order = error_order(noise_type)
    if adaptive:
        if dt0 is not None:
            dt_abs = dt0
        else:
            dt_abs, nfe_f, nfe_g = sde_initial_step_size(sde, noise_type, t0, y0, f0, g0, rtol, atol)
            stats.add(nfe_f, nfe_g)

    log = StepLog(states=[] if record_states else None)
    y = y0
    t_now = t0
    f_cur: Tensor | None = f0
    g_cur: Tensor | None = g0
    previous_error = 1.0
    after_rejection = False
    outputs = [y0]
    penalties: list[Tensor] = []

    for t_target in times[1:]:
        if not adaptive:
            dt_abs = fixed_step_size(t_now, t_target, step_size)
        while t_target > t_now:
            dt, lands = next_step_size(t_now, t_target, dt_abs, stats.n_steps, max_steps)
            t_next = t_target if lands else t_now + dt
            # The same (t_now, t_next) query after a rejection returns the same increment; a
            # shorter retry is drawn from the Brownian bridge of what was already sampled.
            dw = bm(t_now, t_next)
            result = sde_step(
                sde,
                noise_type,
                t_now,
                y,
                dt,
                dw,
                rtol=rtol,
                atol=atol,
                f0=f_cur,
                g0=g_cur,
                estimate_error=adaptive,
            )
            stats.add(result.nfe_drift, result.nfe_diffusion)
            stats.n_steps += 1
            error_estimate = None if result.error_estimate is None else float(result.error_estimate.detach())
            _check_finite(result.y1, error_estimate, t_now, stats.n_steps)

            if not adaptive or error_estimate <= 1.0:
                stats.n_accepted += 1
                log.t.append(t_now)
                log.dt.append(t_next - t_now)
                log.error_estimate.append(math.nan if error_estimate is None else error_estimate)
                if log.states is not None:
                    log.states.append(y.detach())
                if step_penalty is not None:
                    penalties.append(step_penalty(result, dt))
                t_now = t_next
                y = result.y1
                f_cur = g_cur = None
                if adaptive:
                    factor = controller.accept_factor(error_estimate, previous_error, order, after_rejection)
                    # Landing on an output time shortens a step for reasons other than accuracy:
                    # keep the step the controller wanted before that.
                    dt_abs = max(dt * factor, dt_abs) if lands else dt * factor
                    previous_error = max(error_estimate, 1e-4)
                    after_rejection = False
            else:
                stats.n_rejected += 1
                # Retry from the same point: drift and diffusion there are already known.
                f_cur, g_cur = result.f0, result.g0
                dt_abs = dt * controller.reject_factor(error_estimate, order)
                after_rejection = True
        outputs.append(y)

    ts = torch.tensor(times, dtype=y0.dtype, device=y0.device)
    return Solution(
        ts=ts,
        ys=torch.stack(outputs),
        stats=stats,
        steps=log.to_steps(has_stiffness=False),
        penalties=torch.stack(penalties) if step_penalty is not None and penalties else None,
    )
