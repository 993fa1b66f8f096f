r"""One Euler--Maruyama step with a Lamba-style embedded error estimate, instrumented.

This is the only SDE step in ``local_reg``: :func:`sde_step` checks its arguments, and the SDE
regularizers and :func:`local_reg.sdeint` call its core (the same code, on arguments they have
checked), so the error estimate the regularizer penalizes is the one the solver
accepts and rejects steps with (as :func:`local_reg.step` is for ODEs) under Euler--Maruyama;
under adaptive Milstein the solver's ``E_N`` takes the central difference (below).

Scheme (Ito calculus). From ``(t, y)`` with step ``h`` and Brownian increment
``dW = W(t + h) - W(t)``::

    f0 = f(t, y),  g0 = g(t, y)
    K  = y + h f0                                   (drift predictor)
    y1 = K + g0 dW                                  (Euler--Maruyama: propagated solution)

Euler--Maruyama has strong order 1/2 for multiplicative noise and strong order 1 for additive
noise (Kloeden & Platen 1992, Thms. 10.2.2 and 10.3.5 / 10.6.3).

Error estimate. The embedded partner differs from Euler--Maruyama by the two leading local error
terms, estimated without derivatives (Lamba 2003, "An adaptive timestepping algorithm for
stochastic differential equations", J. Comput. Appl. Math. 161; Rackauckas & Nie 2017, "Adaptive
methods for stochastic differential equations via natural embeddings and rejection sampling with
memory", DCDS-B 22(7); StochasticDiffEq.jl's LambaEM has these two parts, but evaluates ``g`` at
``t + h``, differences it from ``K`` and weights the drift part by ``delta = 1``)::

    E_D = h/2 (f(t + h, K) - f0)                                   (Heun drift correction, O(h^2))
    E_N = (g(t, y + g0 sqrt(h)) - g0)/sqrt(h) * (dW^2 - h)/2       (Milstein correction, O(h))

``E_N`` is the derivative-free Milstein term ``(g . grad) g (dW^2 - h)/2`` (Kloeden & Platen
Sec. 11.1), i.e. the difference between Euler--Maruyama and the strong order-1 Milstein scheme on
*this* Brownian increment. For diagonal noise ``g0`` is used elementwise, for scalar noise its one
column; for additive noise ``E_N = 0`` exactly (no extra diffusion evaluation). Following
Rackauckas & Nie the two parts are weighted, ``delta = 1/6`` on the drift, and scaled like the
ODE solver's estimate (``local_reg.step``)::

    EEst = rms( (delta |E_D| + |E_N|) / (atol + rtol max(|y|, |y1|)) )

and a step is accepted iff ``EEst <= 1``. For multiplicative noise ``EEst = O(h)``, for additive
noise ``O(h^2)``: that is the ``order`` the step-size controller is given (:func:`error_order`).

Cost: an adaptive step evaluates the drift twice and the diffusion twice (once for additive
noise); ``f0``/``g0`` may be passed in to reuse them after a rejected step, which starts from the
same point.

Milstein (``milstein=True``). The propagated solution is Euler--Maruyama plus the signed Milstein
term, ``y1 = K + g0 dW + E_N``: a derivative-free Milstein scheme (Kloeden & Platen Sec. 11.1),
strong order 1 for scalar noise and for diagonal noise whose ``g_i`` depends on ``y_i`` alone
(commutative noise; coupled diagonal noise would need Levy areas, and the scheme is then of order
1/2), with the same error estimate (local extrapolation, as Dormand--Prince propagate the higher
order). On fixed steps ``E_N`` is the forward difference above (one diffusion evaluation more per
step than Euler--Maruyama). With adaptive steps it is the central difference::

    E_N = (g(t, y + g0 sqrt(h)) - g(t, y - g0 sqrt(h)))/(2 sqrt(h)) * (dW^2 - h)/2

(one diffusion evaluation more per step than the estimate alone): the forward difference errs by
``g^2 g'' sqrt(h) (dW^2 - h)/4``, of mean zero on fixed steps, but the accepted steps are those
whose ``|dW^2 - h|`` is small, which gives that error a mean, a bias of ``O(tol^{1/2})`` in the
path where ``g`` is curved (docs/sde.md). It is the
scheme to use adaptively: the error estimate contains ``dW^2 - h``, so the accepted steps are
those with small Milstein terms, and Euler--Maruyama, which drops that term, converges to a
biased limit as the tolerance shrinks (Foster & Jelincic 2024, "On the convergence of adaptive
approximations for stochastic differential equations", arXiv:2311.14201; docs/sde.md has the
measurement). For additive noise the two schemes coincide.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor

from .._errors import SolverError
from .._step import error_scale, min_step_size, rms_norm, stage_time_values, time_tensor
from .._stepper import Stepper
from .._validate import (
    check_bool,
    check_choice,
    check_finite_state,
    check_output,
    finite_float,
    positive_float,
    step_tolerances,
)
from ..solution import Stats
from .problem import (
    SUPPORTED_NOISE_TYPES,
    CheckedSDE,
    batch_state,
    brownian_size,
    check_diffusion_shape,
    diffusion_times_increment,
    noise_vector,
    refuse_sde_class,
)

DRIFT_ERROR_WEIGHT = 1.0 / 6.0
"""``delta`` of Rackauckas & Nie (2017): weight of the drift part of the error estimate
(StochasticDiffEq.jl's default for SRIW1; its other methods, LambaEM among them, take 1)."""


@dataclass
class SDEStepResult:
    """What one SDE step computed.

    Attributes:
        y1: Euler--Maruyama solution at ``t + h``.
        error_estimate: ``EEst`` (0-dim tensor), or ``None`` when not requested (fixed steps).
        f0, g0: drift and diffusion at ``(t, y)`` (reusable after a rejection).
        nfe_drift, nfe_diffusion: evaluations of ``f`` and ``g`` this step made.
    """

    y1: Tensor
    error_estimate: Tensor | None
    f0: Tensor
    g0: Tensor
    nfe_drift: int
    nfe_diffusion: int

    @property
    def nfe(self) -> int:
        """Evaluations of drift and diffusion together."""
        return self.nfe_drift + self.nfe_diffusion


def error_order(noise_type: str) -> int:
    """Power of ``h`` in the local error estimate, the controller's ``order``: 2 for additive noise
    (only ``E_D`` remains), else 1 (``E_N`` dominates for small ``h``)."""
    return 2 if noise_type == "additive" else 1


def sde_step(
    sde: Any,
    noise_type: str,
    t: float,
    y: Tensor,
    dt: float,
    dw: Tensor,
    *,
    rtol: float,
    atol: float,
    f0: Tensor | None = None,
    g0: Tensor | None = None,
    estimate_error: bool = True,
    milstein: bool = False,
) -> SDEStepResult:
    """Take one Euler--Maruyama step (with ``milstein``, the derivative-free Milstein step) of size
    ``dt > 0`` from ``(t, y)`` with increment ``dw``.

    ``f0``/``g0``, if given, are ``sde.f(t, y)``/``sde.g(t, y)`` already evaluated (after a
    rejection, or treated as constants by the regularizer) and are not evaluated again. Gradients
    flow through every evaluation made here.

    Raises:
        TypeError, ValueError: naming the argument, as :func:`local_reg.step` does: an ``sde``
            without callable ``f`` and ``g``, an unknown ``noise_type``, a non-finite ``t`` or one
            that requires grad (it is taken as a number), ``y`` not a float32/float64 tensor of
            shape ``(batch, d)``, a ``dt`` that is not positive and finite, tolerances that are not,
            ``f0``/``g0`` (given or returned by ``sde``) not of the shapes ``noise_type`` implies or
            not of ``y``'s dtype and device, or given and not finite, a ``dw`` not of shape
            ``(batch, m)`` (one increment per row, not one broadcast over the batch) or not finite, and an
            ``estimate_error`` or ``milstein`` that is not a bool.
    """
    sde, t, y = _checked_arguments(sde, noise_type, ("t", t), ("y", y), f0, g0)
    dt = positive_float("dt", dt)
    estimate_error, milstein = check_bool("estimate_error", estimate_error), check_bool("milstein", milstein)
    rtol, atol = step_tolerances(rtol, atol, y.dtype)
    nfe_diffusion = 0
    if g0 is None:  # the increment's shape depends on it (additive noise: its last dimension)
        g0 = sde.g(time_tensor(t, y), y)
        nfe_diffusion = 1
    check_output("dw", dw, y, shape=brownian_size(noise_type, y, g0), returned=False, like_name="y")
    check_finite_state("dw", dw)  # as sdeint's Brownian motion is checked: a NaN state otherwise
    result = _euler_maruyama_step(
        sde, noise_type, t, y, dt, dw, rtol=rtol, atol=atol, f0=f0, g0=g0,
        estimate_error=estimate_error, milstein=milstein,
    )  # fmt: skip
    result.nfe_diffusion += nfe_diffusion
    return result


def _euler_maruyama_step(
    sde: Any,
    noise_type: str,
    t: float,
    y: Tensor,
    dt: float,
    dw: Tensor,
    *,
    rtol: float,
    atol: float,
    f0: Tensor | None = None,
    g0: Tensor | None = None,
    estimate_error: bool = True,
    milstein: bool = False,
    jump_ts: Sequence[float] = (),
    central_difference: bool | None = None,
) -> SDEStepResult:
    """:func:`sde_step` on arguments the caller has checked: the solver's own loop, whose
    increments ``CheckedBrownian`` checks, and its trial step. ``jump_ts``: sorted times where the
    drift or diffusion may jump; at a step's start or end on one, they are evaluated just inside
    the step (:func:`local_reg._step.stage_time_values`). ``central_difference``: whether
    Milstein's term takes the central difference (below), by default where the error is estimated
    (an adaptive step; the checkpoint gradient's re-run of one asks for it without the estimate)."""
    t = float(t)
    dt = float(dt)
    nfe_drift = nfe_diffusion = 0
    start, end = stage_time_values(t, dt, (0.0, 1.0), y.dtype, jump_ts)
    t_now = time_tensor(start, y)
    if f0 is None:
        f0 = sde.f(t_now, y)
        nfe_drift += 1
    if g0 is None:
        g0 = sde.g(t_now, y)
        nfe_diffusion += 1
    drift_predictor = y + dt * f0
    y1 = drift_predictor + diffusion_times_increment(noise_type, g0, dw)
    milstein_term = None
    if noise_type != "additive" and (estimate_error or milstein):
        sqrt_dt = math.sqrt(dt)
        # Derivative-free (g . grad) g: a finite difference along the noise direction with the
        # step sqrt(h) (Kloeden & Platen, Sec. 11.1). The forward difference is O(h^{1/2})-accurate:
        # enough for the error estimate and for fixed steps' strong order 1 (its error term is a
        # multiple of dW^2 - h, of mean zero); but an adaptive solve accepts the steps whose
        # |dW^2 - h| is small, which gives that term a mean, a bias of O(tol^{1/2}) in the path
        # where g is nonlinear. There the propagated term takes the central difference, O(h).
        shift = sqrt_dt * noise_vector(noise_type, g0)
        g_ahead = sde.g(t_now, y + shift)
        nfe_diffusion += 1
        if milstein and (estimate_error if central_difference is None else central_difference):
            g_behind = sde.g(t_now, y - shift)
            nfe_diffusion += 1
            g_dg = noise_vector(noise_type, g_ahead - g_behind) / (2 * sqrt_dt)
        else:
            g_dg = noise_vector(noise_type, g_ahead - g0) / sqrt_dt
        milstein_term = 0.5 * g_dg * (dw * dw - dt)
        if milstein:
            y1 = y1 + milstein_term

    error_estimate = None
    if estimate_error:
        f1 = sde.f(time_tensor(end, y), drift_predictor)
        nfe_drift += 1
        error = (DRIFT_ERROR_WEIGHT * 0.5 * dt) * (f1 - f0).abs()
        if milstein_term is not None:
            error = error + milstein_term.abs()
        error_estimate = rms_norm(error / error_scale(y, y1, rtol, atol))
    return SDEStepResult(y1, error_estimate, f0, g0, nfe_drift, nfe_diffusion)


def sde_initial_step_size(
    sde: Any,
    noise_type: str,
    t0: float,
    y0: Tensor,
    f0: Tensor,
    g0: Tensor,
    rtol: float,
    atol: float,
    safety: float = 0.9,
    max_growth: float = 100.0,
    t_end: float | None = None,
) -> tuple[float, int, int]:
    """Starting step size for an SDE; returns ``(h, nfe_drift, nfe_diffusion)``.

    Hairer--Norsett--Wanner's first guess (Solving ODEs I, II.4) with the diffusion folded into
    the rate as in StochasticDiffEq.jl's ``sde_determine_initdt`` (three standard deviations of
    the noise amplitude): with scaled RMS norms ``d0 = ||y0||``, ``d1 = ||(|f0| + 3|g0|)||``,
    ``h0 = 0.01 d0 / d1`` (``1e-6`` if either is tiny). Then, instead of HNW's second probe,
    one trial step of :func:`sde_step` at ``h0`` measures ``EEst(h0)`` and the step is scaled to
    the tolerance like the controller would, ``h = h0 * min(max_growth, safety *
    EEst(h0) ** (-1 / order))``. Why: HNW's ``h1 = (0.01 / d) ** (1 / (p + 1))`` aims at 1% of the
    tolerance, harmless at order 5 (a factor 0.4) but a factor 100 too small for an order-1
    estimate, and it does not see the Milstein term at all. The trial uses the deterministic
    increment ``dW = sqrt(2 h0)`` in every component, for which ``(dW^2 - h0) / 2 = h0 / 2`` is about
    the mean size of the Milstein term (``E|Z^2 - 1| / 2 ~ 0.48``), so the result does not depend
    on the path. It costs one drift and (except for additive noise) one diffusion evaluation
    besides ``f0`` and ``g0``.

    Raises:
        TypeError, ValueError: naming the argument, as :func:`sde_step` does (``t0``, ``y0``,
            ``f0`` and ``g0`` as its ``t``, ``y``, ``f0`` and ``g0``; ``f0`` and ``g0`` are
            required here), and for a ``safety`` outside ``(0, 1]``, a ``max_growth`` below 1 or
            not finite, or a ``t_end`` that is not finite or lies before ``t0``.
    """
    if f0 is None or g0 is None:
        raise TypeError("f0 and g0 must be sde.f(t0, y0) and sde.g(t0, y0), got None")
    sde, t0, y0 = _checked_arguments(sde, noise_type, ("t0", t0), ("y0", y0), f0, g0)
    safety = positive_float("safety", safety)
    if safety > 1.0:
        raise ValueError(f"safety must be in (0, 1], got {safety}")
    max_growth = positive_float("max_growth", max_growth)
    if max_growth < 1.0:
        raise ValueError(f"max_growth must be at least 1 (a growth factor), got {max_growth}")
    if t_end is not None:
        t_end = finite_float("t_end", t_end)
        if t_end < float(t0):
            # An SDE solve runs forward only (sdeint refuses decreasing times).
            raise ValueError(f"t_end={t_end} lies behind t0={float(t0)}: an SDE solve runs forward")
    return unchecked_initial_step_size(sde, noise_type, t0, y0, f0, g0, rtol, atol, safety, max_growth, t_end)


def _checked_arguments(
    sde: Any,
    noise_type: str,
    t: tuple[str, object],
    y: tuple[str, object],
    f0: object,
    g0: object,
) -> tuple[CheckedSDE, float, Tensor]:
    """The public SDE step functions' shared checks: ``sde`` (wrapped so that every drift and
    diffusion it returns is checked too, as in :func:`local_reg.sdeint`), ``noise_type``, the time
    (a finite number, not a tensor requiring grad) and the state ``(batch, d)``, and ``f0`` /
    ``g0`` where given."""
    check_choice("noise_type", noise_type, SUPPORTED_NOISE_TYPES)
    refuse_sde_class(sde)
    if not (callable(getattr(sde, "f", None)) and callable(getattr(sde, "g", None))):
        raise TypeError(
            "sde must be an object with methods f(t, y) (drift) and g(t, y) (diffusion), as torchsde "
            f"SDEs have; got {type(sde).__name__}"
        )
    (t_name, t_value), (y_name, y_value) = t, y
    if isinstance(t_value, Tensor) and t_value.requires_grad:
        raise ValueError(f"{t_name} requires grad, but it is taken as a number: no gradient would flow to it")
    time = finite_float(t_name, t_value)
    state = batch_state(y_name, y_value)
    if f0 is not None:
        check_output("f0", f0, state, returned=False, like_name=y_name)
    if g0 is not None:
        shape = g0.shape if isinstance(g0, Tensor) else None
        check_output("g0", g0, state, shape=shape, returned=False, like_name=y_name)
        check_diffusion_shape(noise_type, state, cast(Tensor, g0), name="g0", state_name=y_name)
    for name, given in (("f0", f0), ("g0", g0)):
        # As odeint's step and initial step: a NaN here would be a NaN step size or state.
        if given is not None and not bool(torch.isfinite(cast(Tensor, given)).all()):
            raise ValueError(f"{name} is not finite")
    return CheckedSDE(sde, noise_type), time, state


def unchecked_initial_step_size(
    sde: Any,
    noise_type: str,
    t0: float,
    y0: Tensor,
    f0: Tensor,
    g0: Tensor,
    rtol: float,
    atol: float,
    safety: float = 0.9,
    max_growth: float = 100.0,
    t_end: float | None = None,
) -> tuple[float, int, int]:
    """:func:`sde_initial_step_size` on arguments the caller has checked (the solver's and the
    regularizer's own)."""
    rtol, atol = step_tolerances(rtol, atol, y0.dtype)
    with torch.no_grad():
        scale = atol + rtol * y0.abs()
        d0 = float(rms_norm(y0 / scale))
        d1 = float(rms_norm((f0.abs() + 3.0 * noise_vector(noise_type, g0).abs()) / scale))
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        # The trial step stays within the span (``t_end``) and above the loop's underflow threshold.
        if t_end is not None and t_end != t0:
            h0 = min(h0, abs(t_end - t0))
        h0 = max(h0, min_step_size(t0))
        dw = torch.full(
            brownian_size(noise_type, y0, g0), math.sqrt(2.0 * h0), dtype=y0.dtype, device=y0.device
        )
        trial = _euler_maruyama_step(sde, noise_type, t0, y0, h0, dw, rtol=rtol, atol=atol, f0=f0, g0=g0)
        error_estimate = float(cast(Tensor, trial.error_estimate))  # estimated: estimate_error's default
        if error_estimate > 0.0 and math.isfinite(error_estimate):
            factor = min(max_growth, safety * error_estimate ** (-1.0 / error_order(noise_type)))
        else:
            factor = max_growth
    return h0 * factor, trial.nfe_drift, trial.nfe_diffusion


class EulerMaruyamaStepper(Stepper[tuple[Tensor | None, Tensor | None]]):
    """Euler--Maruyama with its embedded estimate (:func:`sde_step`) as a stepper of the one loop
    (:func:`local_reg._integrate.integrate`), on the Brownian motion ``bm``. The carry is the drift
    and diffusion at the step's start when already known: at ``t0``, and after a rejection (the
    retry starts from the same point); the same ``(t, t_next)`` query after a rejection returns the
    same increment, and a shorter retry is drawn from the Brownian bridge of what was sampled."""

    rtol: float  # numbers: the SDE estimate takes no per-element tolerances
    atol: float

    failure = "non-finite state, drift or diffusion"
    # A landing step's error enters the PI memory: an SDE step's estimate is dominated by the noise
    # term, not by the sliver's length.
    landing_keeps_error_memory = False

    def __init__(
        self,
        sde: Any,
        noise_type: str,
        bm: Any,
        rtol: float,
        atol: float,
        f0: Tensor,
        g0: Tensor,
        milstein: bool = False,
        jump_ts: Sequence[float] = (),
    ) -> None:
        super().__init__(error_order(noise_type), rtol, atol)
        self.milstein = milstein
        self.jump_ts = jump_ts
        self.sde = sde
        self.noise_type = noise_type
        self.bm = bm
        self.f0 = f0
        self.g0 = g0

    def begin(self, t0: float, y0: Tensor, stats: Stats) -> tuple[Tensor | None, Tensor | None]:
        if not (bool(torch.isfinite(self.f0).all()) and bool(torch.isfinite(self.g0).all())):
            raise SolverError("non-finite drift or diffusion", t=t0, n_steps=0)
        return self.f0, self.g0

    def initial_step_size(  # type: ignore[override]  # begin's carry only, which has both
        self,
        t0: float,
        y0: Tensor,
        carry: tuple[Tensor, Tensor],
        direction: float,
        stats: Stats,
        t_end: float | None = None,
    ) -> float:
        f0, g0 = carry
        dt, nfe_drift, nfe_diffusion = unchecked_initial_step_size(
            self.sde, self.noise_type, t0, y0, f0, g0, self.rtol, self.atol, t_end=t_end
        )
        stats.add(nfe_drift + nfe_diffusion, diffusion=nfe_diffusion)
        return dt

    def step(
        self,
        t: float,
        t_next: float,
        y: Tensor,
        dt: float,
        carry: tuple[Tensor | None, Tensor | None],
        estimate_error: bool,
    ) -> SDEStepResult:
        f0, g0 = carry
        dw = self.increment(t, t_next)
        return _euler_maruyama_step(
            self.sde,
            self.noise_type,
            t,
            y,
            dt,
            dw,
            rtol=self.rtol,
            atol=self.atol,
            f0=f0,
            g0=g0,
            estimate_error=estimate_error,
            milstein=self.milstein,
            jump_ts=self.jump_ts,
        )

    def increment(self, t: float, t_next: float) -> Tensor:
        """The Brownian increment ``W(t_next) - W(t)`` of the step from ``t`` to ``t_next``."""
        return self.bm(t, t_next)

    def explain_non_finite(self) -> None:
        check_last_finite = getattr(self.bm, "check_last_finite", None)  # a CheckedBrownian's
        if check_last_finite is not None:
            check_last_finite()

    def after_jump(self, carry: tuple[Tensor | None, Tensor | None]) -> tuple[None, None]:
        return None, None  # the next step evaluates the drift and diffusion just after the jump

    def next_carry(
        self, result: SDEStepResult, accepted: bool, carry: tuple[Tensor | None, Tensor | None]
    ) -> tuple[Tensor | None, Tensor | None]:
        return (None, None) if accepted else (result.f0, result.g0)
