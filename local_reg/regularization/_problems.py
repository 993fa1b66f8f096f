"""The two kinds of problem a regularized model solves, chosen once when it is made.

:class:`ODEProblem` and :class:`SDEProblem` know how to check their inputs, run the main solve on
their backends, and take the local regularizer's probe step from a point of the solution: one
:func:`local_reg.step` of an embedded Runge--Kutta pair, or one instrumented Euler--Maruyama step
(the core of :func:`local_reg.sde.sde_step`) on the main solve's Brownian path. The penalty strategies
(:mod:`._module`) are written once against this interface.
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .._integrate import DEFAULT_MAX_STEPS, TooManyFixedSteps
from .._odeint import odeint, unread_beside_fixed_steps
from .._step import beside_jump, initial_step_size, next_jump, rms_norm, step, time_tensor, trial_end
from .._validate import (
    check_field_callable,
    checked_field,
    checked_norm,
    narrowest_float,
    positive_float,
    relative_tolerance,
    step_tolerances,
    time_dtype,
    times_as_given,
    validate_state,
    validate_times,
    without_autocast,
)
from ..compat import torchdiffeq_bounds
from ..controller import DEFAULT_CONTROLLER, PIController, TimeSet
from ..gradients import Direct, GradientMethod
from ..gradients._params import adjoint_params_tuple, known_params, resolve_adjoint_params
from ..sde._sdeint import sde_module
from ..sde._step import _euler_maruyama_step, unchecked_initial_step_size
from ..sde.brownian import make_brownian, release_brownian
from ..sde.problem import DEFAULT_ATOL as SDE_DEFAULT_ATOL
from ..sde.problem import DEFAULT_RTOL as SDE_DEFAULT_RTOL
from ..sde.problem import METHODS as SDE_METHODS
from ..sde.problem import (
    CheckedSDE,
    brownian_size,
    check_brownian_increment,
    validate_sde,
    validate_sde_problem,
)
from ..solution import Stats
from ..tableaus import ButcherTableau, get_tableau
from . import _ode_backends, _sde_backends
from ._main_solve import Request
from ._options import check_ode_settings, check_sde_settings, main_gradient, ode_method
from ._probe import heuristic_order

REGULARIZERS = ("error", "stiffness")


class SDEContext(NamedTuple):
    """What :meth:`SDEProblem.prepare` makes for the main solve and the probe."""

    noise_type: str
    bm: Any
    """The Brownian motion the main solve and the probe share."""
    made: bool
    """Whether ``prepare`` made ``bm`` (and releases it), rather than the caller."""
    rounded_to: torch.dtype | None
    """The float narrower than float64 the output times came in, if any (:func:`narrowest_float`)."""


class ODEContext(NamedTuple):
    """What :meth:`ODEProblem.prepare` makes for the main solve and the probe."""

    time_dtype: torch.dtype
    """The dtype ``func`` gets times in."""
    rounded_to: torch.dtype | None
    """The float narrower than float64 the output times came in, if any (:func:`narrowest_float`)."""


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
    if tableau is None or tableau.stability_size is None:
        # What check_regularizer refuses when a model is made (an SDE's probe has no tableau).
        raise ValueError("regularizer='stiffness' needs a Runge--Kutta tableau with a stability size")
    return result.stiffness_estimate / tableau.stability_size


@dataclass(frozen=True)
class SolveConfig:
    """The main solve of a regularized model, as the user gave it (``None``: the kind's default).

    Checked once, when a problem is made from it (:func:`local_reg.regularization._module.make_problem`).
    """

    backend: str | None = None
    method: str | ButcherTableau | None = None
    rtol: float | None = None
    atol: float | None = None
    gradient: object = "direct"
    adjoint_params: Iterable[Tensor] | None = None
    options: dict[str, Any] | None = None


class _Backends(Protocol):
    """What :class:`_Problem` reads of a kind's backends module (``_ode_backends``, ``_sde_backends``)."""

    def check_backend_gradient(self, backend: object, gradient: object) -> GradientMethod: ...


class _Problem:
    """What the two problem kinds share: the checked solve settings, the main solve's entry and
    the probe step's skeleton.

    A kind sets ``default_tolerances``, ``backends`` (its ``_ode_backends``-like module) and
    ``check_settings`` (method, tolerances and ``options`` keys for its backend, :mod:`._options`), and
    implements ``solve`` (the main solve at ``times`` on its backend, recording what a
    :class:`~._main_solve.Request` asks), ``_start`` (the evaluations at ``u(t_reg)`` a step
    reuses), ``_heuristic`` (its initial-step size) and ``_step`` (one instrumented step).
    """

    # Set by each kind. The context (what ``prepare`` makes for the main solve and the probe) and
    # the probe's tableau (``None`` for an SDE) differ by kind, hence ``Any`` for them here.
    default_tolerances: tuple[float, float]
    backends: _Backends
    check_settings: Callable[[str, object, object, object, object, GradientMethod], dict[str, Any]]
    field_time_dtype: Callable[[Any, Tensor], torch.dtype]
    prepare: Callable[..., tuple[list[float], torch.dtype, Any, Stats]]
    _start: Callable[[Any, float, Tensor, Stats], Any]
    _heuristic: Callable[[Any, Any, float, Tensor, Any, float, str, Stats, float], float]
    _step: Callable[[Any, Any, float, Tensor, float, Any, Sequence[float]], Any]

    def __init__(self, config: SolveConfig) -> None:
        self.backend = "local_reg" if config.backend is None else config.backend
        self.gradient = self.backends.check_backend_gradient(self.backend, config.gradient)
        default_rtol, default_atol = self.default_tolerances
        self.rtol = default_rtol if config.rtol is None else relative_tolerance("rtol", config.rtol)
        self.atol = default_atol if config.atol is None else positive_float("atol", config.atol)
        self.method = config.method
        self.adjoint_params = (
            None if config.adjoint_params is None else adjoint_params_tuple(config.adjoint_params)
        )
        self.options = self.check_settings(
            self.backend, config.method, self.rtol, self.atol, config.options, self.gradient
        )

    @property
    def controller(self) -> PIController:
        """The main solve's step-size controller (``options['controller']``; with torchdiffeq,
        one with the bounds and landing times of its ``options``)."""
        if self.backend == "torchdiffeq":
            return torchdiffeq_bounds(self.options)
        return self.options.get("controller") or DEFAULT_CONTROLLER

    def release(self, context: Any) -> None:
        """Free what ``prepare`` made for one call once its solve and probes are done (a kind with
        nothing to free does nothing)."""

    @contextmanager
    def prepared(
        self, y0: Tensor, t: TimeSet, generator: Any, bm: Any = None
    ) -> Iterator[tuple[list[float], torch.dtype, Any, Stats]]:
        """``prepare``'s ``(times, t_dtype, context, cost)`` for one call, released when it ends
        (returns or raises)."""
        times, t_dtype, context, cost = self.prepare(y0, t, generator, bm)
        try:
            yield times, t_dtype, context, cost
        finally:
            self.release(context)

    def jump_times(self, times: Sequence[float], dtype: torch.dtype) -> tuple[float, ...]:
        """The main solve's jump times over the span of ``times`` (:attr:`controller`'s), rounded to
        ``dtype``, the one the field sees times in (:meth:`local_reg.PIController.within`): the
        penalty evaluates the field on the solve's side of them."""
        return self.controller.within(times[0], times[-1], dtype).jump_ts

    def probe(
        self,
        context: Any,
        tableau: ButcherTableau | None,
        t_reg: float,
        state: Tensor,
        dt_abs: float | None,
        t1: float,
        direction: float,
        detach_state: bool,
        *,
        scale: float = 1.0,
        heuristic: str = "initial",
        jump_ts: Sequence[float] = (),
    ) -> tuple[Any, float, Stats]:
        """One instrumented step from ``(t_reg, state)``: ``(result, dt, stats)``. ``dt_abs=None``
        asks the initial-step heuristic for the step size (times ``scale``; for an ODE the exponent
        is ``1/(p+1)`` with ``heuristic="initial-hairer"``, else ``1/p``), kept within the
        controller's ``max_step`` and ``min_step`` as the main solve's first step is; either is capped at
        ``|t1 - t_reg|`` and, as the main solve's steps are, at the first of the sorted ``jump_ts``
        (:meth:`jump_times`) after ``t_reg``; a stage at a jump is evaluated on the step's side of
        it. What is evaluated at ``u(t_reg)`` is a constant when ``detach_state``."""
        stats = Stats()
        dtype = self.field_time_dtype(context, state)
        with torch.no_grad() if detach_state else nullcontext():
            start = self._start(context, beside_jump(t_reg, t1, dtype, jump_ts), state, stats)
        if dt_abs is None:
            y = state.detach()
            t_end = trial_end(t_reg, t1, dtype, jump_ts)
            dt_abs = self._heuristic(context, tableau, t_reg, y, start, direction, heuristic, stats, t_end)
            if not math.isfinite(dt_abs):
                # A field not finite at u(t_reg): step to the stop, whose non-finite estimate the
                # penalty reports (finite_penalty); a NaN step would hang the Brownian query.
                dt_abs = math.inf
            # As the main solve's first step: within the controller's max_step and min_step.
            dt_abs = self.controller.limit(dt_abs * scale)
        jump = next_jump(t_reg, t1, jump_ts)
        dt = direction * min(dt_abs, abs((t1 if jump is None else jump) - t_reg))
        result = self._step(context, tableau, t_reg, state, dt, start, jump_ts)
        stats.add(result.nfe, diffusion=result.nfe_diffusion)
        return result, dt, stats


@contextmanager
def max_steps_as_model_option() -> Iterator[None]:
    """A fixed-step solve refused for needing more than ``max_steps`` steps names the setting as a
    regularized model takes it, in its ``options``: the solver's refusal names its own keyword.
    The count is a lower bound: the times a training call draws (STEER's end time anywhere in
    ``[t1 - b, t1 + b]``, a regularization time among the output times) are drawn anew each call,
    and the solve sees them only once drawn, so the worst case is not known here."""
    try:
        yield
    except TooManyFixedSteps as error:
        raise error.spelt(
            "options={{'max_steps': {}}}",
            " ({} is this call's count: a training call's drawn times, a regularization time added to "
            "the output times or STEER's end time, may need more)",
        ) from None


class CastField(nn.Module):
    """``func`` evaluated in ``dtype``: its floating parameters and buffers, ``t`` and ``y`` cast
    (differentiably, so gradients reach the originals in their own dtype).

    The parameters are cast once, when this is made, not at every call: the gradient of an error
    estimate is a difference of nearly equal stage contributions, which must be summed in ``dtype``
    before the one cast back (cast per call, float32 rounding of each part left a relative error of
    about 3e-5 in the sum)."""

    def __init__(self, func: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.func = func
        self.dtype = dtype
        tensors = {**dict(func.named_parameters()), **dict(func.named_buffers())}
        self.cast = {name: v.to(dtype) if v.is_floating_point() else v for name, v in tensors.items()}

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return functional_call(self.func, self.cast, (t.to(self.dtype), y.to(self.dtype)))


def _check_takes_t_and_y(func: Callable) -> None:
    """``TypeError`` if ``func`` (a module's ``forward``) cannot be called as ``func(t, y)``: an
    ``nn.Sequential`` of the state alone would otherwise fail inside torch at the first call."""
    target = func.forward if isinstance(func, nn.Module) else func
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # a builtin or an extension type: nothing to read
        return
    try:
        signature.bind(None, None)
    except TypeError:
        raise TypeError(
            f"func must be callable as func(t, y), but {type(func).__name__}{signature} cannot take "
            "two arguments: wrap a network of the state alone, e.g. lambda t, y: net(y) (or a module "
            "whose forward takes (t, y))"
        ) from None


class ODEProblem(_Problem):
    """``dy/dt = func(t, y)``, solved by ``local_reg.odeint`` or torchdiffeq (``backend``)."""

    default_tolerances = (1e-6, 1e-8)
    field_name = "func"
    backends = _ode_backends
    check_settings = staticmethod(check_ode_settings)

    def __init__(self, func: Callable[[Tensor, Tensor], Tensor], config: SolveConfig) -> None:
        check_field_callable(func)
        _check_takes_t_and_y(func)
        super().__init__(config)
        self.func = func
        if self.gradient.graph_free and self.adjoint_params is None:
            # What the first solve would refuse (a plain function hides its parameters), now.
            resolve_adjoint_params(func, None, self.gradient)

    def checked_params(self) -> tuple[Tensor, ...]:
        """The tensors besides ``y0`` whose gradients a backward pass checks for non-finite values,
        as ``local_reg.odeint``'s (:func:`~local_reg.gradients._params.known_params`); on
        torchdiffeq's adjoint, also the ``adjoint_params`` it is given."""
        return known_params(self.func, self.adjoint_params, self.gradient)

    def with_func(self, func: Callable[[Tensor, Tensor], Tensor]) -> ODEProblem:
        """This problem, checked settings and all, with another vector field (a wrapper of ``func``)."""
        problem = copy.copy(self)
        problem.func = func
        return problem

    def check_regularizer(self, regularizer: str, reg_method: str | ButcherTableau | None) -> ButcherTableau:
        """The tableau of the probe step, checked against the penalty."""
        try:
            tableau = get_tableau("tsit5" if reg_method is None else reg_method)
        except (TypeError, ValueError) as error:  # get_tableau names its argument "method"
            raise type(error)(f"reg_method: {error}") from None
        check_regularizer_tableau(regularizer, tableau, "reg_method")
        return tableau

    def prepare(self, y0: Tensor, t: TimeSet, generator, bm=None):
        """``(times, t_dtype, context, stats)``: the checked times, the dtype the backend sees them
        in, what the main solve and the probe share (nothing for an ODE) and its cost."""
        # local_reg.odeint refuses a non-finite y0 itself, by the same message, before its first
        # evaluation: checked here too, that would cost one more pass over y0 and one more host
        # read (a device sync) per call.
        validate_state(y0, finite=self.backend != "local_reg")
        times = validate_times(t)
        t_dtype = self.times_dtype(t, y0)
        # The context: the dtype func gets its times in (torchdiffeq casts them to the state's),
        # and the float the times came rounded to (odeint's fixed steps allow for it).
        field_dtype = t_dtype if self.backend == "local_reg" else y0.dtype
        return times, t_dtype, ODEContext(field_dtype, narrowest_float(t)), Stats()

    def times_dtype(self, t: TimeSet, y0: Tensor) -> torch.dtype:
        """The dtype the backend sees the times in. As odeint: a floating tensor ``t`` keeps its
        precision where wider than the state's, an integer or half-precision one is read in the
        state's dtype, and so is a sequence of floats (torchdiffeq, which needs a tensor, gets it
        in float64)."""
        if isinstance(t, Tensor):
            return time_dtype(t, y0)
        return torch.float64 if self.backend == "torchdiffeq" else y0.dtype

    def solve(
        self,
        y0: Tensor,
        times: list[float],
        t_dtype: torch.dtype,
        context: ODEContext,
        request: Request,
    ):
        return _ode_backends.solve_main(self, y0, times, t_dtype, request, context.rounded_to)

    def odeint(
        self,
        field: Callable[[Tensor, Tensor], Tensor],
        y0: Tensor,
        times: list[float],
        t_dtype: torch.dtype,
        options: dict[str, Any] | None = None,
        rounded_to: torch.dtype | None = None,
        **record: Any,
    ):
        """:func:`local_reg.odeint` of ``field`` (``func`` or a field built on it) with this
        problem's method, tolerances, gradient method and options (or ``options`` instead), its
        times in ``t_dtype`` (as a tensor where wider than the state's dtype: odeint reads floats in
        the state's), or in ``rounded_to``, the float they came rounded to (:func:`times_as_given`).
        Beside a fixed ``step_size`` the settings of adaptive steps the solve leaves unread (a
        controller, a norm) are the probe's alone, and are not passed on."""
        wider = t_dtype != y0.dtype
        options = self.options if options is None else options
        unread = self.main_solve_unread
        with max_steps_as_model_option():
            return odeint(
                field,
                y0,
                torch.tensor(times, dtype=t_dtype, device=y0.device)
                if wider
                else times_as_given(times, rounded_to),
                method=ode_method("local_reg", self.method),
                rtol=self.rtol,
                atol=self.atol,
                gradient=self.gradient,
                adjoint_params=self.adjoint_params,
                **record,
                **{key: value for key, value in options.items() if key not in unread},
            )

    @functools.cached_property
    def main_solve_unread(self) -> tuple[str, ...]:
        """Which keys of ``options`` (``first_step``, ``controller``, ``norm``) the main solve leaves
        unread beside a fixed ``step_size`` (:func:`local_reg._odeint.unread_beside_fixed_steps`);
        the same for the options of an augmented solve, which keep these keys."""
        if self.backend != "local_reg":
            return ()
        return unread_beside_fixed_steps(
            self.options.get("step_size"),
            get_tableau(ode_method("local_reg", self.method)),
            main_gradient(self.gradient, self.options),
        )

    def field_time_dtype(self, context: ODEContext, state: Tensor) -> torch.dtype:
        """The dtype ``func`` gets times in (:meth:`prepare`)."""
        return context.time_dtype

    def drift(self, context: ODEContext, t_reg: float, state: Tensor, stats: Stats) -> Tensor:
        """``func(t_reg, state)``, counted in ``stats``."""
        stats.add(1)
        return checked_field(self.func)(time_tensor(t_reg, state, context.time_dtype), state)

    @property
    def norm(self) -> Callable[[Tensor], Tensor]:
        """The main solve's error norm (``options['norm']``), which the probe's estimate uses too."""
        return checked_norm(self.options.get("norm", rms_norm))

    _start = drift

    def _heuristic(
        self,
        context: ODEContext,
        tableau: ButcherTableau,
        t_reg: float,
        y: Tensor,
        k1: Tensor,
        direction: float,
        heuristic: str,
        stats: Stats,
        t_end: float,
    ) -> float:
        order = heuristic_order(tableau.order, heuristic)
        dt_abs, extra = initial_step_size(
            checked_field(self.func),
            t_reg,
            y,
            k1.detach(),
            order,
            self.rtol,
            self.atol,
            direction,
            norm=self.norm,
            t_end=t_end,
            time_dtype=context.time_dtype,
        )
        stats.add(extra)
        return dt_abs

    def _step(
        self,
        context: ODEContext,
        tableau: ButcherTableau,
        t_reg: float,
        state: Tensor,
        dt: float,
        k1: Tensor,
        jump_ts: Sequence[float],
    ):
        func = checked_field(self.func)
        return step(
            func,
            t_reg,
            state,
            dt,
            tableau,
            rtol=self.rtol,
            atol=self.atol,
            k1=k1,
            norm=self.norm,
            time_dtype=context.time_dtype,
            jump_ts=jump_ts,
        )


class SDEProblem(_Problem):
    """``dy = f dt + g dW`` (a torchsde-style module), solved by ``local_reg.sdeint`` or torchsde.

    The main solve and the probe share one Brownian motion, so the penalty is measured on the path
    the model was trained on. Finding its size for additive noise costs one evaluation of ``g``,
    counted in the main solve's statistics.
    """

    default_tolerances = (SDE_DEFAULT_RTOL, SDE_DEFAULT_ATOL)
    field_name = "the drift and diffusion"
    backends = _sde_backends
    check_settings = staticmethod(check_sde_settings)

    def __init__(self, sde: Any, config: SolveConfig) -> None:
        validate_sde(sde)
        super().__init__(config)
        self.sde = sde
        # torchsde.sdeint takes no adjoint_params: under "direct" they are only checked
        # (checked_params), as local_reg.sdeint's.
        if self.backend == "torchsde" and self.gradient.name == "adjoint" and self.adjoint_params is not None:
            self.options["adjoint_params"] = self.adjoint_params

    def checked_params(self) -> tuple[Tensor, ...]:
        """The tensors besides ``y0`` whose gradients a backward pass checks for non-finite values,
        as ``local_reg.sdeint``'s: ``adjoint_params`` (which torchsde's adjoint differentiates, and
        which ``torchsde.sdeint``, taking no list, has checked only), or else the SDE's parameters."""
        return known_params(sde_module(self.sde), self.adjoint_params, Direct())

    def check_regularizer(self, regularizer: str, reg_method: str | ButcherTableau | None) -> None:
        if regularizer != "error":
            raise ValueError(
                f"regularizer={regularizer!r} is not available for SDEs: only 'error' (EEst * |dt|); the "
                "stiffness estimate is an ODE Runge--Kutta quantity"
            )
        # The probe of an SDE is always the solver's own step: the penalty is the estimate it steps by.
        if reg_method is not None and reg_method != SDE_METHODS[0]:
            raise ValueError(
                f"reg_method must be None or {SDE_METHODS[0]!r} for SDEs (the step is the solver's own), "
                f"got {reg_method!r}"
            )

    def prepare(self, y0: Tensor, t: TimeSet, generator, bm=None):
        noise_type, times = validate_sde_problem(self.sde, y0, t, "euler_maruyama")
        stats = Stats()
        g0 = y0
        if noise_type == "additive":
            with torch.no_grad():
                g0 = CheckedSDE(self.sde, noise_type).g(time_tensor(times[0], y0), y0)
            stats.add(1, diffusion=1)
        size = brownian_size(noise_type, y0, g0)
        levy_area = "space-time" if self.backend == "torchsde" and self.method == "srk" else "none"
        made = bm is None
        # sdeint's own step hint for a fixed step (sde/brownian.py: step_hint), so that a model and
        # sdeint with one seed draw one path; torchsde's fixed steps (its dt) keep the span's hundredth.
        fixed = self.options.get("step_size") if self.backend == "local_reg" else None
        bm = make_brownian(
            bm,
            times[0],
            times[-1],
            size,
            y0,
            generator,
            levy_area,
            step=None if fixed is None else float(fixed),
            max_steps=self.options.get("max_steps", DEFAULT_MAX_STEPS),
            times_dtype=narrowest_float(t),
        )
        return times, y0.dtype, SDEContext(noise_type, bm, made, narrowest_float(t)), stats

    def solve(
        self, y0: Tensor, times: list[float], t_dtype: torch.dtype, context: SDEContext, request: Request
    ):
        with max_steps_as_model_option():
            return _sde_backends.solve_main(self, y0, times, context.bm, request, context.rounded_to)

    def release(self, context: SDEContext) -> None:
        """Free the Brownian interval ``prepare`` made (not the caller's ``bm``): its increments
        would otherwise wait for a full garbage collection (sde/brownian.py: release_brownian).
        torchsde's adjoint re-solves on it in the backward pass, and keeps it."""
        bm, made = context.bm, context.made
        if made and not (self.backend == "torchsde" and self.gradient.name == "adjoint"):
            release_brownian(bm)

    @functools.cached_property
    def main_solve_unread(self) -> tuple[str, ...]:
        """Which keys of ``options`` the main solve (``sdeint``) leaves unread beside a fixed
        ``step_size``: ``first_step`` and ``controller``."""
        if self.backend != "local_reg" or self.options.get("step_size") is None:
            return ()
        return ("first_step", "controller")

    def field_time_dtype(self, context: SDEContext, state: Tensor) -> torch.dtype:
        """The dtype the drift and diffusion get times in: the state's."""
        return state.dtype

    def drift(self, context: SDEContext, t_reg: float, state: Tensor, stats: Stats) -> Tensor:
        """The drift ``f(t_reg, state)``, counted in ``stats``."""
        stats.add(1)
        return CheckedSDE(self.sde, context.noise_type).f(time_tensor(t_reg, state), state)

    def _start(self, context: SDEContext, t_reg: float, state: Tensor, stats: Stats) -> tuple[Tensor, Tensor]:
        t_now = time_tensor(t_reg, state)
        sde = CheckedSDE(self.sde, context.noise_type)
        stats.add(2, diffusion=1)
        return sde.f(t_now, state), sde.g(t_now, state)

    def _heuristic(
        self,
        context: SDEContext,
        tableau: None,
        t_reg: float,
        state: Tensor,
        start: tuple,
        direction: float,
        heuristic: str,
        stats: Stats,
        t_end: float,
    ) -> float:
        f0, g0 = start
        sde = CheckedSDE(self.sde, context.noise_type)
        # Outside autocast as sdeint's heuristic (the checked SDE keeps it for f and g themselves).
        with without_autocast():
            dt_abs, extra_f, extra_g = unchecked_initial_step_size(
                sde,
                context.noise_type,
                t_reg,
                state,
                f0.detach(),
                g0.detach(),
                self.rtol,
                self.atol,
                t_end=t_end,
            )
        stats.add(extra_f + extra_g, diffusion=extra_g)
        return dt_abs

    def _step(
        self,
        context: SDEContext,
        tableau: None,
        t_reg: float,
        state: Tensor,
        dt: float,
        start: tuple,
        jump_ts: Sequence[float],
    ):
        noise_type, bm = context.noise_type, context.bm
        f0, g0 = start
        size = brownian_size(noise_type, state, g0)
        # The same Brownian path as the main solve: the penalty is measured where the model was trained.
        dw = check_brownian_increment(bm(t_reg, t_reg + dt), size, state)
        # Made under the caller's autocast, the wrapper runs the drift and diffusion there; the step's
        # own arithmetic (additive noise's g dW, a matrix product) runs outside it, as in sdeint.
        sde = CheckedSDE(self.sde, noise_type)
        rtol, atol = step_tolerances(self.rtol, self.atol, state.dtype)
        with without_autocast():
            return _euler_maruyama_step(
                sde, noise_type, t_reg, state, dt, dw, rtol=rtol, atol=atol, f0=f0, g0=g0, jump_ts=jump_ts
            )
