"""The two kinds of problem a regularized model solves, chosen once when it is made.

:class:`ODEProblem` and :class:`SDEProblem` know how to check their inputs, run the main solve on
their backends, and take the local regularizer's probe step from a point of the solution: one
:func:`local_reg.step` of an embedded Runge--Kutta pair, or one instrumented Euler--Maruyama step
(:func:`local_reg.sde.sde_step`) on the main solve's Brownian path. The penalty strategies
(:mod:`._penalties`) are written once against this interface.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from .._step import initial_step_size, step, time_tensor
from .._validate import checked_field, validate_state, validate_times
from ..sde._sdeint import DEFAULT_ATOL as SDE_DEFAULT_ATOL
from ..sde._sdeint import DEFAULT_RTOL as SDE_DEFAULT_RTOL
from ..sde._sdeint import METHODS as SDE_METHODS
from ..sde._sdeint import validate_sde_problem
from ..sde._step import sde_initial_step_size, sde_step
from ..sde.brownian import make_brownian
from ..sde.problem import CheckedSDE, brownian_size, check_brownian_increment, validate_sde
from ..solution import Stats
from ..tableaus import ButcherTableau, get_tableau
from . import _ode_backends, _sde_backends
from ._main_solve import MainSolve
from ._options import check_ode_settings, check_sde_settings
from ._probe import heuristic_order

REGULARIZERS = ("error", "stiffness")


def check_regularizer_tableau(regularizer: str, tableau: ButcherTableau, argument: str) -> None:
    """The tableau must carry what the penalty reads: an embedded pair, and for ``"stiffness"`` two
    stages at ``c == 1`` and a stability size."""
    if not tableau.adaptive:
        raise ValueError(f"{argument}={tableau.name!r} has no embedded error estimate; use an adaptive pair")
    if regularizer == "stiffness" and (tableau.stiffness_stages is None or tableau.stability_size is None):
        raise ValueError(
            f"regularizer='stiffness' needs a {argument} with a stiffness estimate (two stages at c == 1 "
            f"and a stability size, e.g. 'tsit5' or 'dopri5'); {tableau.name!r} has none"
        )


def step_penalty_value(result: Any, dt: float, regularizer: str, tableau: ButcherTableau | None) -> Tensor:
    """``EEst * |dt|`` (error) or ``rho / stability_size`` (stiffness) of one step."""
    if regularizer == "error":
        return result.error_estimate * abs(dt)
    return result.stiffness_estimate / tableau.stability_size


class ODEProblem:
    """``dy/dt = func(t, y)``, solved by ``local_reg.odeint`` or torchdiffeq (``backend``)."""

    default_tolerances = (1e-6, 1e-8)

    def __init__(
        self,
        func: Callable[[Tensor, Tensor], Tensor],
        *,
        backend: str,
        method: str | ButcherTableau | None,
        rtol: float,
        atol: float,
        gradient: object,
        adjoint_params: Iterable[Tensor] | None,
        options: dict[str, Any] | None,
    ) -> None:
        if not callable(func):
            raise TypeError(f"func must be callable as func(t, y), got {type(func).__name__}")
        self.gradient = _ode_backends.check_backend_gradient(backend, gradient)
        options = check_ode_settings(backend, method, rtol, atol, options)
        self.func = func
        self.backend = backend
        self.method = method
        self.rtol, self.atol = float(rtol), float(atol)
        self.adjoint_params = adjoint_params
        self.options = options

    def check_regularizer(self, regularizer: str, reg_method: str | ButcherTableau | None) -> ButcherTableau:
        """The tableau of the probe step, checked against the penalty."""
        tableau = get_tableau("tsit5" if reg_method is None else reg_method)
        check_regularizer_tableau(regularizer, tableau, "reg_method")
        return tableau

    def prepare(self, y0: Tensor, t: Tensor | Sequence[float], generator, bm=None):
        """``(times, t_dtype, context, stats)``: the checked times, the dtype the backend sees them
        in, what the main solve and the probe share (nothing for an ODE) and its cost."""
        validate_state(y0)
        times = validate_times(t)
        t_dtype = t.dtype if isinstance(t, Tensor) else torch.float64
        return times, t_dtype, None, Stats()

    def solve(
        self,
        y0: Tensor,
        times: list[float],
        t_dtype: torch.dtype,
        context: None,
        *,
        record_steps: bool = False,
        record_states: bool = False,
        step_penalty: Callable | None = None,
    ) -> MainSolve:
        return _ode_backends.solve_main(
            self.func,
            y0,
            times,
            backend=self.backend,
            method=self.method,
            rtol=self.rtol,
            atol=self.atol,
            gradient=self.gradient,
            adjoint_params=self.adjoint_params,
            record_steps=record_steps,
            record_states=record_states,
            t_dtype=t_dtype,
            options=self.options,
            step_penalty=step_penalty,
        )

    def probe(
        self,
        context: None,
        tableau: ButcherTableau,
        t_reg: float,
        state: Tensor,
        dt_abs: float | None,
        t1: float,
        direction: float,
        detach_state: bool,
        *,
        scale: float = 1.0,
        hairer: bool = False,
    ) -> tuple[Any, float, Stats]:
        """One step of ``tableau`` from ``(t_reg, state)``: ``(result, dt, stats)``. ``dt_abs=None``
        asks the initial-step heuristic for the step size (times ``scale``; exponent ``1/(p+1)``
        with ``hairer``, else ``1/p``); either is capped at ``|t1 - t_reg|``. ``k1`` is a constant
        when ``detach_state``."""
        stats = Stats()
        func = checked_field(self.func)
        if detach_state:
            with torch.no_grad():
                k1 = func(time_tensor(t_reg, state), state)
        else:
            k1 = func(time_tensor(t_reg, state), state)
        stats.add(1)
        if dt_abs is None:
            order = heuristic_order(tableau.order, "initial-hairer" if hairer else "initial")
            dt_abs, extra = initial_step_size(
                func,
                t_reg,
                state.detach(),
                k1.detach(),
                order,
                self.rtol,
                self.atol,
                direction,
                t_end=t1,
            )
            dt_abs *= scale
            stats.add(extra)
        dt = direction * min(dt_abs, abs(t1 - t_reg))
        result = step(func, t_reg, state, dt, tableau, rtol=self.rtol, atol=self.atol, k1=k1)
        stats.add(result.nfe)
        return result, dt, stats


class SDEProblem:
    """``dy = f dt + g dW`` (a torchsde-style module), solved by ``local_reg.sdeint`` or torchsde.

    The main solve and the probe share one Brownian motion, so the penalty is measured on the path
    the model was trained on. Finding its size for additive noise costs one evaluation of ``g``,
    counted in the main solve's statistics.
    """

    default_tolerances = (SDE_DEFAULT_RTOL, SDE_DEFAULT_ATOL)

    def __init__(
        self,
        sde: Any,
        *,
        backend: str,
        method: str | None,
        rtol: float,
        atol: float,
        gradient: object,
        adjoint_params: Iterable[Tensor] | None,
        options: dict[str, Any] | None,
    ) -> None:
        self.gradient = _sde_backends.check_backend_gradient(backend, gradient)
        validate_sde(sde)
        options = check_sde_settings(backend, method, rtol, atol, options)
        self.sde = sde
        self.backend = backend
        self.method = method
        self.rtol, self.atol = float(rtol), float(atol)
        # adjoint_params only reach torchsde.sdeint_adjoint.
        if backend == "torchsde" and self.gradient.name == "adjoint" and adjoint_params is not None:
            options["adjoint_params"] = tuple(adjoint_params)
        self.options = options

    def check_regularizer(self, regularizer: str, reg_method: str | None) -> None:
        if regularizer != "error":
            raise ValueError(
                f"regularizer={regularizer!r} is not available for SDEs: only 'error' (EEst * |dt|); the "
                "stiffness estimate is an ODE Runge--Kutta quantity"
            )
        # The probe of an SDE is always the solver's own step: the penalty is the estimate it steps by.
        if reg_method is not None and reg_method not in SDE_METHODS:
            raise ValueError(
                f"reg_method must be None or {SDE_METHODS[0]!r} for SDEs (the step is the solver's own), "
                f"got {reg_method!r}"
            )

    def prepare(self, y0: Tensor, t: Tensor | Sequence[float], generator, bm=None):
        noise_type, times = validate_sde_problem(self.sde, y0, t, "euler_maruyama")
        stats = Stats()
        g0 = y0
        if noise_type == "additive":
            with torch.no_grad():
                g0 = self.sde.g(time_tensor(times[0], y0), y0)
            stats.add(1, diffusion=1)
        size = brownian_size(noise_type, y0, g0)
        bm = make_brownian(bm, times[0], times[-1], size, y0, generator)
        return times, y0.dtype, (noise_type, bm), stats

    def solve(
        self,
        y0: Tensor,
        times: list[float],
        t_dtype: torch.dtype,
        context: tuple[str, Any],
        *,
        record_steps: bool = False,
        record_states: bool = False,
        step_penalty: Callable | None = None,
    ) -> MainSolve:
        return _sde_backends.solve_main(
            self.sde,
            y0,
            times,
            backend=self.backend,
            method=self.method,
            rtol=self.rtol,
            atol=self.atol,
            gradient=self.gradient,
            bm=context[1],
            record_states=record_states,
            step_penalty=step_penalty,
            options=self.options,
        )

    def probe(
        self,
        context: tuple[str, Any],
        tableau: None,
        t_reg: float,
        state: Tensor,
        dt_abs: float | None,
        t1: float,
        direction: float,
        detach_state: bool,
        *,
        scale: float = 1.0,
        hairer: bool = False,
    ) -> tuple[Any, float, Stats]:
        """One Euler--Maruyama step from ``(t_reg, state)`` on the main solve's Brownian path
        (``scale`` multiplies the heuristic's step; ``hairer`` does not apply)."""
        noise_type, bm = context
        stats = Stats()
        sde = CheckedSDE(self.sde, noise_type)
        t_now = time_tensor(t_reg, state)
        if detach_state:
            with torch.no_grad():
                f0, g0 = sde.f(t_now, state), sde.g(t_now, state)
        else:
            f0, g0 = sde.f(t_now, state), sde.g(t_now, state)
        size = brownian_size(noise_type, state, g0)
        stats.add(2, diffusion=1)
        if dt_abs is None:
            dt_abs, extra_f, extra_g = sde_initial_step_size(
                sde,
                noise_type,
                t_reg,
                state.detach(),
                f0.detach(),
                g0.detach(),
                self.rtol,
                self.atol,
                t_end=t1,
            )
            dt_abs *= scale
            stats.add(extra_f + extra_g, diffusion=extra_g)
        dt = min(dt_abs, t1 - t_reg)
        dw = check_brownian_increment(bm(t_reg, t_reg + dt), size, state)
        result = sde_step(sde, noise_type, t_reg, state, dt, dw, rtol=self.rtol, atol=self.atol, f0=f0, g0=g0)
        stats.add(result.nfe, diffusion=result.nfe_diffusion)
        return result, dt, stats
