"""Study options of the local regularization step: where the probe steps, what it penalizes, how
many draws it averages.

[LR23] Pal, Edelman, Rackauckas, ICML 2023 takes one step from ``u(t_reg)`` with the step size of the
initial-step heuristic and penalizes ``EEst * |dt|``. Each function here is one alternative, kept
pure so that the paper's procedure is these options at ``LocalPenalty``'s defaults
(``probe="initial"``, ``probe_scale=1``, ``penalty="error-dt"``, ``n_draws=1``;
``LocallyRegularized``'s own default is the kinetic penalty, without a probe step):

- the probe's step size: the heuristic of Hairer--Norsett--Wanner (Solving ODEs I, II.4) with
  ``h1 = (0.01 / max(d1, d2)) ** (1 / p)`` (``"initial"``: as OrdinaryDiffEq, so the Julia
  reference) or ``** (1 / (p + 1))`` (``"initial-hairer"``: the book's exponent, a longer step since
  ``max(d1, d2) >> 1`` once the norms are divided by the tolerance; torchdiffeq calls the book's
  formula with ``p - 1``, so its first step is ``"initial"``'s), times
  ``probe_scale``; or ``"solver"``: the main solve's accepted step at ``t_reg``;
- the penalty's form: ``"error-dt"`` (the paper's ``EEst * |dt|``); ``"growth"``: ``EEst ** (1/p)``,
  the inverse of an integral controller's step factor ``safety * EEst ** (-1/p)`` (the default
  ``PIController`` applies it to a rejected step and grows an accepted one by
  ``safety * EEst ** -beta1 * EEst_prev ** beta2``, ``beta1 = 0.85 / p``: minimizing either
  lengthens the step the solver would take next); ``"log"``: ``log EEst``; ``"log-hinge"``: ``log EEst``
  where ``EEst >= 0.1`` and a constant below (only errors that limit the step count). ``EEst`` is divided by
  the tolerance, so the paper's form has a gradient that scales like ``1/tol`` at a fixed ``dt``,
  while ``log EEst`` has a gradient that does not depend on the tolerance at all and ``EEst ** (1/p)``
  one that scales like ``tol ** (-1/p)``;
- ``"kinetic"``: no probe step at all, ``mean(f(t_reg, u(t_reg))**2)`` with ``u(t_reg)`` a constant:
  twice RNODE's kinetic-energy rate (Finlay et al., ICML 2020) sampled at the one random time, which is what
  the float32 ``EEst`` of a probe far inside the tolerance mostly measures (about
  ``eps32 |dt| |f| / tol``; docs/results.md);
- ``n_draws`` independent draws of ``t_reg`` per pass, penalties averaged;
- ``probe_dtype``: the probe step computed in another floating dtype (``"float64"`` for a float32
  model: the vector field's parameters are cast differentiably), so that its ``EEst`` is the
  truncation error rather than the float32 rounding of the step (docs/results.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .._checks import positive_int
from .._validate import check_choice, positive_float
from . import _sampling
from ._sampling import insert_time, time_tolerance

PROBES = ("initial", "initial-hairer", "solver")
PENALTIES = ("error-dt", "growth", "log", "log-hinge", "kinetic")
PROBE_DTYPES = ("float32", "float64")
# ``log`` and ``growth`` are guarded below this EEst: a zero error estimate (a locally linear field)
# would otherwise give ``-inf`` or an infinite gradient.
EEST_FLOOR = 1e-12
# ``log-hinge`` ignores a probe whose EEst is under this: the default controller (safety 0.9, beta1
# 0.17 and beta2 0.04 for Tsit5) lengthens such a step by 0.9 * 10**0.13 = 1.2x at a steady EEst
# (0.92-1.33x as the previous EEst ranges from 1e-4 to 1), so its error is not what limits the
# step, and in float32 an EEst that small at rtol 1e-6 is mostly rounding (docs/results.md).
HINGE = 0.1


def check_probe_options(
    probe: object, probe_scale: object, penalty: object, n_draws: object, regularizer: str, step_size: str
) -> tuple[str, float, int]:
    """Validate the study options; returns ``(probe, probe_scale, n_draws)`` as numbers and names.

    ``probe="solver"`` is the same as ``step_size="solver"``; asking for a heuristic probe
    with ``step_size="solver"`` is a contradiction and is refused.
    """
    probe = check_choice("probe", probe, PROBES)
    penalty = check_choice("penalty", penalty, PENALTIES)
    probe_scale = positive_float("probe_scale", probe_scale)
    n_draws = positive_int("n_draws", n_draws)
    if step_size == "solver" and probe != "solver" and probe != "initial":
        raise ValueError(f"probe={probe!r} contradicts step_size='solver'; use probe='solver' alone")
    if penalty != "error-dt" and regularizer != "error":
        raise ValueError(f"penalty={penalty!r} applies to regularizer='error', got {regularizer!r}")
    if penalty == "kinetic" and (probe_scale != 1.0 or probe != "initial" or step_size == "solver"):
        raise ValueError(
            f"penalty='kinetic' takes no probe step: probe_scale, probe={probe!r} and "
            "step_size='solver' do not apply"
        )
    if probe_scale != 1.0 and (probe == "solver" or step_size == "solver"):
        raise ValueError("probe_scale scales the initial-step heuristic; it does not apply to probe='solver'")
    return probe, probe_scale, n_draws


def heuristic_order(order: int, probe: str) -> int:
    """The ``order`` to pass to :func:`local_reg.initial_step_size` so that its exponent is
    ``1/p`` (``"initial"``) or ``1/(p+1)`` (``"initial-hairer"``)."""
    return order + 1 if probe == "initial-hairer" else order


def penalty_form(error_estimate: Tensor, dt: float, order: int, penalty: str) -> Tensor:
    """The penalty of one step's ``EEst`` (0-dim tensor) at step ``dt`` for a propagated order ``p``.

    ``"error-dt"``: ``EEst * |dt|`` [LR23]; ``"growth"``: ``max(EEst, floor) ** (1/p)``;
    ``"log"``: ``log max(EEst, floor)``, ``floor`` = :data:`EEST_FLOOR`; ``"log-hinge"``:
    ``log max(EEst, HINGE)`` (zero gradient below :data:`HINGE`).
    """
    if penalty == "error-dt":
        return error_estimate * abs(dt)
    if penalty == "log-hinge":
        return error_estimate.clamp_min(HINGE).log()
    guarded = error_estimate.clamp_min(EEST_FLOOR)
    if penalty == "growth":
        return guarded ** (1.0 / order)
    return guarded.log()


def sample_output_times(
    times: Sequence[float], n_draws: int, t_dtype: torch.dtype, generator: torch.Generator | None
) -> tuple[list[float], list[float]]:
    """Draw ``n_draws`` times ``t_reg ~ U[t0, t1)`` and add them to the output times.

    Returns ``(solve_times, t_regs)``; a draw within :func:`time_tolerance` of an existing time is
    that time.
    """
    tolerance = time_tolerance(times, t_dtype)
    solve_times = list(times)
    t_regs = []
    for _ in range(n_draws):
        # Looked up on the module at call time, so a test can pin the draw.
        t_reg = _sampling.sample_uniform_time(times, t_dtype, generator)
        solve_times, index, _ = insert_time(solve_times, t_reg, tolerance)
        t_regs.append(solve_times[index])
    return solve_times, t_regs


def split_outputs(
    ys: Tensor, solve_times: Sequence[float], times: Sequence[float], t_regs: Sequence[float]
) -> tuple[Tensor, list[Tensor]]:
    """Undo :func:`sample_output_times`: ``(ys at times, [u(t_reg) for each draw])``."""
    position = {t: i for i, t in enumerate(solve_times)}
    keep = [position[t] for t in times]
    return ys[keep], [ys[position[t]] for t in t_regs]
