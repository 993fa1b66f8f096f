"""One regularized module for every penalty and every kind of problem.

:class:`Regularized` holds the body all regularized models share: it chooses the problem kind once
(:class:`._problems.ODEProblem` or :class:`._problems.SDEProblem`), solves, and in training mode
adds ``weight * R`` as ``reg_loss``, ``R`` from its penalty strategy: :class:`LocalPenalty`
[LR23] or :class:`GlobalPenalty` [GR21]. Without a penalty it is the plain (vanilla) model.
:class:`local_reg.LocallyRegularized` and :class:`local_reg.GloballyRegularized` are thin
configurations of it.

[LR23] Pal, Edelman, Rackauckas, ICML 2023. [GR21] Pal, Ma, Shah, Rackauckas, ICML 2021.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.reduction import ForkingPickler
from typing import Any, ClassVar, NoReturn, Protocol, cast

import torch
from torch import Tensor, nn

from .._autograd import solve_entry_point
from .._errors import warn
from .._step import beside_jump
from .._tuple import TupleField, TupleState
from .._validate import (
    active_autocast,
    check_choice,
    check_generator,
    refuse_tracing,
    time_direction,
    time_tensors_requiring_grad,
    transformed,
)
from ..controller import TimeSet
from ..gradients._finite import guard_direct_gradients, in_float16_autocast
from ..gradients._function import reevaluating_for
from ..sde.problem import SUPPORTED_NOISE_TYPES, is_sde
from ..solution import State, Stats
from ..tableaus import ButcherTableau, get_tableau
from ._main_solve import MainSolve, Request
from ._ode_backends import torchdiffeq_reports_steps
from ._options import misplaced_keywords, ode_method, solver_option_names
from ._penalty import finite_penalty
from ._probe import (
    PENALTIES,
    PROBE_DTYPES,
    PROBES,
    check_probe_options,
    penalty_form,
    sample_output_times,
    split_outputs,
)
from ._problems import (
    REGULARIZERS,
    CastField,
    ODEProblem,
    SDEProblem,
    SolveConfig,
    check_regularizer_tableau,
    step_penalty_value,
)
from ._sampling import STEP_SIZES, check_sampling
from ._stats import RegularizationStats
from .schedules import WeightSchedule, as_schedule

Problem = ODEProblem | SDEProblem


def _warn_of_autocast(penalty: str, regularizer: str, dtype: torch.dtype, remedy: str) -> None:
    """A ``RuntimeWarning`` where ``penalty``, which reads the solver's error or stiffness estimate
    (``regularizer``: ``"error"`` or ``"stiffness"``), is computed in float32 (``dtype``) under
    ``torch.autocast``, which lowers float32 operations: the estimate then measures the field's
    rounding in the autocast dtype (bfloat16: a penalty 300-10000x float32's, its gradient pointing
    elsewhere), not the truncation error it is meant to penalize. Float64 is left alone by
    autocast."""
    regions = active_autocast()
    if regions and dtype == torch.float32 and torch.is_grad_enabled():
        dtypes = ", ".join(sorted({str(dtype).removeprefix("torch.") for _, dtype in regions}))
        warn(
            f"{penalty} reads the solver's {regularizer} estimate, which under torch.autocast ({dtypes}) "
            f"measures the field's rounding in that dtype, not the truncation error: {remedy}",
            RuntimeWarning,
        )


def _probe_dtype_problem(problem: Problem) -> ODEProblem:
    """``problem``, which ``probe_dtype`` casts the vector field's parameters of: a ``ValueError``
    unless it is an ODE whose ``func`` is an ``nn.Module``."""
    if isinstance(problem, ODEProblem) and isinstance(problem.func, nn.Module):
        return problem
    got = "an SDE" if isinstance(problem, SDEProblem) else type(problem.func).__name__
    raise ValueError(
        "probe_dtype casts the vector field's parameters: it needs an ODE whose func is an nn.Module, "
        f"got {got}"
    )


def make_problem(func: Any, config: SolveConfig) -> Problem:
    """The problem ``func`` poses, with ``config`` checked once: an SDE if it looks like a torchsde
    module (``f``, ``g``, ``noise_type``), else an ODE. ``None`` tolerances are the solver's
    defaults: 1e-6 / 1e-8 for ODEs, looser for Euler--Maruyama (see :func:`local_reg.sdeint`),
    where ODE tolerances would cost orders of magnitude more steps."""
    if not is_sde(func) and _has_drift_and_diffusion_only(func):
        raise TypeError(
            f"func ({type(func).__name__}) has methods f and g, an SDE's drift and diffusion, but no "
            f"string attribute noise_type: an SDE needs noise_type (one of {SUPPORTED_NOISE_TYPES}) "
            "and sde_type ('ito'), as torchsde's SDEs have; an ODE needs forward(t, y)"
        )
    return (SDEProblem if is_sde(func) else ODEProblem)(func, config)


def _has_drift_and_diffusion_only(func: Any) -> bool:
    """Whether ``func`` has callable ``f`` and ``g`` and nothing to call as an ODE's field: not
    callable, or a module that does not define ``forward``."""
    if not (callable(getattr(func, "f", None)) and callable(getattr(func, "g", None))):
        return False
    return not callable(func) or (isinstance(func, nn.Module) and type(func).forward is nn.Module.forward)


def plain_solve(
    problem: Problem,
    y0: Tensor,
    t: TimeSet,
    generator: torch.Generator | None = None,
    bm: Any = None,
) -> tuple[Tensor, RegularizationStats]:
    """The unregularized solve (vanilla training, and every solve in eval mode): no extra output
    time, no extra evaluation."""
    with problem.prepared(y0, t, generator, bm) as (times, t_dtype, context, cost):
        main = problem.solve(y0, times, t_dtype, context, Request())
        main.stats.add(cost.nfe, diffusion=cost.nfe_diffusion)
        return main.ys, RegularizationStats(
            main=main.stats, n_accepted=main.n_accepted, backward_counter=main.backward_counter
        )


def functional_settings(function: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The module keywords of a functional form (``local_regularization`` and kin): its
    ``settings``, whose ``weight`` is refused (the form returns the unweighted penalty, so a weight
    would do nothing), with a constant weight in its place that the form never reads (the default
    would measure, or warn about, a weight that is not used)."""
    if "weight" in settings:
        raise TypeError(
            f"{function}() takes no weight: it returns the unweighted penalty reg (add weight * reg to "
            "the loss yourself, or use the module, whose reg_loss is weighted)"
        )
    return {**settings, "weight": 1.0}


@dataclass(frozen=True)
class LocalPenalty:
    """Local regularization [LR23] at a sampled ``t_reg``: the paper's one probe step there, its
    ``EEst * |dt|`` (``regularizer="error"``) or ``rho / stability_size`` (``"stiffness"``), or
    without a probe step the field's mean square rate there (``penalty="kinetic"``, the default of
    :class:`LocallyRegularized`; docs/regularization.md).

    Attributes:
        sampling: ``"random"``: ``t_reg ~ U[t0, t1)``, added to the main solve's output times (an
            ODE solve reads it from its dense output, at no extra step; an SDE solve lands on it,
            except for the kinetic penalty, which interpolates its recorded steps);
            ``"biased"``: uniform over the start times of the main solve's accepted steps.
        regularizer: ``"error"`` or ``"stiffness"`` (ODEs only).
        reg_method: the probe's embedded pair (ODEs; default Tsit5, as the paper's code).
        step_size: ``"initial"`` (the paper): the initial-step heuristic at ``u(t_reg)``;
            ``"solver"``: the main solve's accepted step that contains ``t_reg``.
        detach_state: ``True`` (the paper): ``u(t_reg)`` and ``f`` there are constants.
        probe, probe_scale, penalty, n_draws: the probe's step size (``"initial"``, the heuristic
            with exponent ``1/p``; ``"initial-hairer"``, ``1/(p+1)``; ``"solver"``), a factor on the
            heuristic's step, the penalty's form (``"error-dt"``, the paper's; ``"growth"``;
            ``"log"``; ``"log-hinge"``; ``"kinetic"``, no probe step) and the number of draws
            averaged; see :mod:`._probe`. Their defaults are the paper's procedure.
        probe_dtype: ``None`` (the state's dtype, the paper's) or ``"float64"``/``"float32"``
            (or the torch dtype): the probe step's dtype, for an ODE whose ``func`` is an
            ``nn.Module``, with a tensor state (its parameters and buffers are cast differentiably).
    """

    draws: ClassVar[bool] = True  # t_reg, from the model's generator
    # The field is evaluated apart from the main solve (at u(t_reg), detached by default), so the
    # penalty reaches the parameters by a way of its own.
    evaluates_apart: ClassVar[bool] = True
    PROBES: ClassVar[tuple[str, ...]] = PROBES
    PENALTIES: ClassVar[tuple[str, ...]] = PENALTIES
    STEP_SIZES: ClassVar[tuple[str, ...]] = STEP_SIZES
    PROBE_DTYPES: ClassVar[tuple[str, ...]] = PROBE_DTYPES
    """The allowed values of ``probe``, ``penalty``, ``step_size`` and ``probe_dtype``."""

    sampling: str = "random"
    regularizer: str = "error"
    reg_method: str | ButcherTableau | None = None
    step_size: str = "initial"
    detach_state: bool = True
    probe: str = "initial"
    probe_scale: float = 1.0
    penalty: str = "error-dt"
    n_draws: int = 1
    probe_dtype: str | torch.dtype | None = None

    def __post_init__(self) -> None:
        check_sampling(self.sampling, self.step_size, self.detach_state)
        check_choice("regularizer", self.regularizer, REGULARIZERS)
        probe, probe_scale, n_draws = check_probe_options(
            self.probe, self.probe_scale, self.penalty, self.n_draws, self.regularizer, self.step_size
        )
        checked: dict[str, object] = {"probe_scale": probe_scale, "n_draws": n_draws}
        if probe == "solver":
            checked["step_size"] = "solver"
        for name, value in checked.items():
            object.__setattr__(self, name, value)
        if isinstance(self.probe_dtype, torch.dtype):
            object.__setattr__(self, "probe_dtype", str(self.probe_dtype).removeprefix("torch."))
        if self.probe_dtype is not None:
            check_choice("probe_dtype", self.probe_dtype, PROBE_DTYPES)
        if self.penalty == "kinetic" and (self.reg_method is not None or self.probe_dtype is not None):
            raise ValueError("penalty='kinetic' takes no probe step: reg_method and probe_dtype do not apply")

    @property
    def reads_beside_solve(self) -> tuple[str, ...]:
        """The main solve's options the probe step reads: its step bounds (``controller``) and
        ``norm`` (its error estimate's, and the initial-step heuristic's that sizes it); none
        without a probe (the kinetic penalty)."""
        return () if self.penalty == "kinetic" else ("controller", "norm")

    def check(self, problem: Problem) -> None:
        """Refuse, when the model is made, a problem this penalty cannot regularize (a ``ValueError``
        naming the option: e.g. an SDE with an ODE-only probe or form)."""
        problem.check_regularizer(self.regularizer, self.reg_method)
        if isinstance(problem, SDEProblem) and (
            self.probe == "initial-hairer" or self.penalty not in ("error-dt", "kinetic")
        ):
            raise ValueError(
                "these probe options (probe='initial-hairer', a penalty form other than 'error-dt' or "
                "'kinetic') are Runge--Kutta options; an SDE's probe is an Euler--Maruyama step"
            )
        if self.probe_dtype is not None:
            _probe_dtype_problem(problem)
        needs_steps = self.sampling == "biased" or self.step_size == "solver"
        if needs_steps and getattr(problem, "backend", None) == "torchsde":
            raise ValueError(
                "sampling='biased' and step_size='solver' need the accepted steps, which torchsde does "
                "not report: use backend='local_reg'"
            )
        if needs_steps and isinstance(problem, ODEProblem) and problem.backend == "torchdiffeq":
            method = ode_method("torchdiffeq", problem.method)
            # check_ode_settings took torchdiffeq's method by name (one of its solvers).
            if not torchdiffeq_reports_steps(cast(str, method)):
                raise ValueError(
                    f"sampling='biased' and step_size='solver' need the accepted steps, which torchdiffeq's "
                    f"method {method!r} does not report (only its adaptive Runge--Kutta methods do): use "
                    "an adaptive method or backend='local_reg'"
                )

    def _reads_recorded_path(self, problem: Problem) -> bool:
        """Whether ``u(t_reg)`` comes from the main solve's recorded steps instead of an output time.

        ``local_reg.sdeint`` ends a step on every output time, so asking it for ``u(t_reg)`` costs
        an extra step (a large share of a short SDE solve). The kinetic penalty only evaluates the
        drift at a constant ``u(t_reg)``, so it reads the state linearly interpolated between the
        recorded steps instead (as torchsde and ODE dense output do); a probe step, which restarts
        on the Brownian path at ``t_reg``, and a state that carries a gradient still land there.
        """
        return (
            isinstance(problem, SDEProblem)
            and problem.backend == "local_reg"
            and self.penalty == "kinetic"
            and self.detach_state
        )

    def __call__(
        self,
        problem: Problem,
        y0: Tensor,
        t: TimeSet,
        generator: torch.Generator | None = None,
        bm: Any = None,
    ) -> tuple[Tensor, Tensor, RegularizationStats]:
        """One training pass: the main solve's ``ys`` at ``t``, the unweighted penalty ``R`` (its
        mean over ``n_draws`` sampled times) and the pass's statistics."""
        tableau = problem.check_regularizer(self.regularizer, self.reg_method)
        with problem.prepared(y0, t, generator, bm) as (times, t_dtype, context, cost):
            if len(times) < 2:
                raise ValueError(
                    f"t must hold at least 2 times (t0 and t1) to sample t_reg, got {len(times)}"
                )
            direction = time_direction(times)
            main, ys, draws = self._solve_and_draw(problem, y0, times, t_dtype, context, direction, generator)
            main.stats.add(cost.nfe, diffusion=cost.nfe_diffusion)
            probe_problem, probe_dtype, probe_context = self._probe_set_up(problem, context)
            if self.penalty != "kinetic":
                _warn_of_autocast(
                    "the local stiffness penalty"
                    if self.regularizer == "stiffness"
                    else f"the local penalty {self.penalty!r}",
                    self.regularizer,
                    y0.dtype if probe_dtype is None else probe_dtype,
                    "compute it outside autocast, or probe in float64 (an ODE's probe_dtype='float64'), "
                    "or use the default kinetic penalty, which reads no estimate",
                )
            penalties = []
            probe = Stats()
            field_time_dtype = problem.field_time_dtype(context, y0)
            jump_ts = problem.jump_times(times, field_time_dtype)
            drawn_states = []
            for t_reg, state, solver_dt in draws:
                if self.detach_state:
                    state = state.detach()
                else:
                    # A view of its own, whose gradient from the penalty is checked before it joins
                    # the main solve's outputs, where a NaN would read as the loss's.
                    state = state.view_as(state)
                    drawn_states.append(state)
                if probe_dtype is not None:
                    state = state.to(probe_dtype)
                draw_penalty, result, dt = self._draw_penalty(
                    probe_problem,
                    probe_context,
                    context,
                    tableau,
                    t_reg,
                    state,
                    solver_dt,
                    times[-1],
                    direction,
                    field_time_dtype,
                    jump_ts,
                    probe,
                )
                penalties.append(draw_penalty)
            penalty = penalties[0] if len(penalties) == 1 else torch.stack(penalties).mean()
            penalty, value, finite = finite_penalty(penalty.to(y0.dtype), y0)
            if drawn_states:
                inputs = (*drawn_states, *problem.checked_params())
                float16 = in_float16_autocast()
                guard = guard_direct_gradients(
                    inputs, times[0], None, problem.field_name, float16_autocast=float16
                )
                guard(penalty)
            return ys, penalty, _pass_stats(main, probe, t_reg, dt, state, result, value, finite)

    def _solve_and_draw(
        self,
        problem: Problem,
        y0: Tensor,
        times: list[float],
        t_dtype: torch.dtype,
        context: Any,
        direction: float,
        generator: torch.Generator | None,
    ) -> tuple[MainSolve, Tensor, list[tuple[float, Tensor, float | None]]]:
        """The main solve, its outputs at ``times``, and the ``n_draws`` draws ``(t_reg, u(t_reg),
        |dt| of the main solve's step there or None)`` the penalty is taken at."""
        solver_step = self.step_size == "solver"
        if self.sampling == "random" and self._reads_recorded_path(problem):
            _, t_regs = sample_output_times(times, self.n_draws, t_dtype, generator)
            main = problem.solve(y0, times, t_dtype, context, Request(steps=True, states=True))
            return main, main.ys, [(t_reg, main.state_at(t_reg, direction), None) for t_reg in t_regs]
        if self.sampling == "random":
            solve_times, t_regs = sample_output_times(times, self.n_draws, t_dtype, generator)
            # The draws added to the output times (one that snapped onto a given time is that time).
            added = tuple(sorted(set(solve_times) - set(times)))
            main = problem.solve(
                y0, solve_times, t_dtype, context, Request(steps=solver_step, interpolated=added)
            )
            ys, states = split_outputs(main.ys, solve_times, times, t_regs)
            draws = [
                (t_reg, state, main.step_containing(t_reg, direction) if solver_step else None)
                for t_reg, state in zip(t_regs, states, strict=True)
            ]
            return main, ys, draws
        main = problem.solve(y0, times, t_dtype, context, Request(steps=True, states=True))
        if not main.step_t:
            # torchdiffeq's fixed-grid solvers never call callback_accept_step.
            raise ValueError(
                "sampling='biased' found no recorded accepted steps: with backend='torchdiffeq' it "
                "needs an adaptive method (e.g. method='dopri5'), whose accepted steps torchdiffeq "
                "reports"
            )
        return main, main.ys, [main.sample_step(generator) for _ in range(self.n_draws)]

    def _probe_set_up(self, problem: Problem, context: Any) -> tuple[Problem, torch.dtype | None, Any]:
        """The problem, dtype (``None``: the state's) and context the probe step is taken with:
        ``problem`` and ``context`` themselves unless ``probe_dtype`` casts the field."""
        if self.probe_dtype is None:
            return problem, None, context
        if isinstance(problem, ODEProblem) and isinstance(problem.func, TupleField):
            raise ValueError("probe_dtype does not take tuple states: pass a tensor state")
        # As check refuses when the model is made (a direct call skips it).
        cast_problem = _probe_dtype_problem(problem)
        # __post_init__ keeps a dtype by its name.
        probe_dtype = getattr(torch, cast(str, self.probe_dtype))
        probe_problem = cast_problem.with_func(CastField(cast(nn.Module, cast_problem.func), probe_dtype))
        # The probe's stage times in its dtype too: built in a float32 t's, a field of t made the
        # float64 estimate measure their rounding.
        probe_context = context._replace(time_dtype=torch.promote_types(context.time_dtype, probe_dtype))
        return probe_problem, probe_dtype, probe_context

    def _draw_penalty(
        self,
        probe_problem: Problem,
        probe_context: Any,
        context: Any,
        tableau: ButcherTableau | None,
        t_reg: float,
        state: Tensor,
        solver_dt: float | None,
        t1: float,
        direction: float,
        field_time_dtype: torch.dtype,
        jump_ts: tuple[float, ...],
        probe: Stats,
    ) -> tuple[Tensor, Any, float | None]:
        """The penalty at one draw ``(t_reg, state)``, with the probe step's result and ``dt``
        (``None`` for the kinetic penalty, which takes none); ``probe`` counts its evaluations."""
        if self.penalty == "kinetic":
            # At a jump (a biased draw's step start), the side the solve's next step evaluates.
            t_field = beside_jump(t_reg, t1, field_time_dtype, jump_ts)
            return probe_problem.drift(context, t_field, state, probe).pow(2).mean(), None, None
        result, dt, cost_of_draw = probe_problem.probe(
            probe_context,
            tableau,
            t_reg,
            state,
            solver_dt if self.step_size == "solver" else None,
            t1,
            direction,
            self.detach_state,
            scale=self.probe_scale,
            heuristic=self.probe,
            jump_ts=jump_ts,
        )
        probe.add(cost_of_draw.nfe, diffusion=cost_of_draw.nfe_diffusion)
        if self.penalty == "error-dt":
            return step_penalty_value(result, dt, self.regularizer, tableau), result, dt
        if tableau is None:
            # What check refuses when the model is made: an SDE's probe has no tableau.
            raise ValueError(f"penalty={self.penalty!r} is a Runge--Kutta option, not an SDE's")
        return penalty_form(result.error_estimate, dt, tableau.order, self.penalty), result, dt


def _pass_stats(
    main: MainSolve,
    probe: Stats,
    t_reg: float,
    dt: float | None,
    state: Tensor,
    result: Any,
    penalty: float,
    finite: bool,
) -> RegularizationStats:
    """A local penalty's pass statistics: the main solve's and the probe steps', and the last
    draw's time, step, state and estimates."""
    stiffness = getattr(result, "stiffness_estimate", None)
    return RegularizationStats(
        main=main.stats,
        probe=probe,
        t_reg=t_reg,
        dt_reg=dt,
        # A copy: the state is a view into the whole solution (or the stacked step states), which a
        # kept stats object would otherwise hold whole.
        state=state.detach().clone(),
        error_estimate=None if result is None else float(result.error_estimate.detach()),
        stiffness_estimate=None if stiffness is None else float(stiffness.detach()),
        penalty=penalty,
        penalty_finite=finite,
        n_accepted=main.n_accepted,
        backward_counter=main.backward_counter,
    )


REDUCTIONS = ("mean", "sum", "max")
DEFAULT_REDUCTION = {"error": "mean", "stiffness": "max"}
GLOBAL_GRADIENTS = {ODEProblem: ("direct", "checkpoint"), SDEProblem: ("direct",)}


@dataclass(frozen=True)
class GlobalPenalty:
    """Global regularization [GR21]: per accepted step ``j`` of the main solve ``EEst_j * |dt_j|``
    (error) or ``S_Est_j = rho_j / stability_size`` (stiffness), reduced by ``reduction``:
    ``"mean"`` (default for error, the public code), ``"sum"`` (the paper's ``R_E``) or ``"max"``;
    ``"max"`` of ``S_Est_j`` (default for stiffness, the public code), ``"sum"`` / ``"mean"`` of
    ``S_Est_j * |dt_j|`` (the paper's ``R_S``). An SDE takes the error's three. Differentiated
    through the whole solve, so the gradient method must keep a per-step graph."""

    draws: ClassVar[bool] = False  # an SDE's Brownian seeds are the problem's, not the penalty's
    reads_beside_solve: ClassVar[tuple[str, ...]] = ()  # the main solve's steps only
    regularizer: str = "error"
    reduction: str | None = None

    def __post_init__(self) -> None:
        check_choice("regularizer", self.regularizer, REGULARIZERS)
        if self.reduction is not None:
            check_choice("reduction", self.reduction, REDUCTIONS)

    def check(self, problem: Problem) -> None:
        """Refuse, when the model is made, a gradient method that cannot differentiate every
        step's penalty (a ``ValueError`` naming the ones that can)."""
        allowed = GLOBAL_GRADIENTS[type(problem)]
        if problem.gradient.name not in allowed:
            raise ValueError(
                f"global regularization differentiates through every accepted step of the solver, so "
                f"it needs a gradient method that keeps a per-step graph: gradient must be one of "
                f"{list(allowed)}, got {problem.gradient.name!r} (local regularization, "
                "LocallyRegularized, works with every gradient method)"
            )
        if problem.backend != "local_reg":
            raise ValueError(
                f"global regularization needs the local_reg solver's per-step records, not "
                f"backend={problem.backend!r}"
            )
        if isinstance(problem, SDEProblem):
            problem.check_regularizer(self.regularizer, None)
            if problem.options.get("step_size") is not None:
                raise ValueError(
                    "global regularization of an SDE sums the error estimates of the adaptive solver's "
                    "accepted steps, which fixed steps do not compute: drop options['step_size']"
                )
        else:
            method = ode_method("local_reg", problem.method)
            tableau = get_tableau(method)
            check_regularizer_tableau(self.regularizer, tableau, "method")

    def __call__(
        self,
        problem: Problem,
        y0: Tensor,
        t: TimeSet,
        generator: torch.Generator | None = None,
        bm: Any = None,
    ) -> tuple[Tensor, Tensor, RegularizationStats]:
        """One training pass: the main solve's ``ys`` at ``t``, the unweighted penalty ``R`` (every
        accepted step's, reduced by ``reduction``) and the pass's statistics."""
        with problem.prepared(y0, t, generator, bm) as (times, t_dtype, context, cost):
            if len(times) < 2:
                raise ValueError(f"t must hold at least 2 times, got {len(times)}")
            reduction = DEFAULT_REDUCTION[self.regularizer] if self.reduction is None else self.reduction
            is_ode = isinstance(problem, ODEProblem)
            tableau = get_tableau(ode_method("local_reg", problem.method)) if is_ode else None

            def per_step(result: Any, dt: float) -> Tensor:
                value = step_penalty_value(result, dt, self.regularizer, tableau)
                return value if self.regularizer == "error" or reduction == "max" else value * abs(dt)

            _warn_of_autocast(
                f"global regularization ({self.regularizer!r})",
                self.regularizer,
                y0.dtype,
                "compute it outside autocast",
            )
            main = problem.solve(y0, times, t_dtype, context, Request(step_penalty=per_step))
            main.stats.add(cost.nfe, diffusion=cost.nfe_diffusion)
            penalties = main.penalties
            reduced = {"mean": penalties.mean, "sum": penalties.sum, "max": penalties.max}[reduction]()
            reg, value, finite = finite_penalty(reduced, y0)
            stats = RegularizationStats(
                main=main.stats,
                penalty=value,
                penalty_finite=finite,
                n_accepted=main.n_accepted,
                backward_counter=main.backward_counter,
            )
            return main.ys, reg, stats


class Penalty(Protocol):
    """What :class:`Regularized` takes as its ``penalty``: :class:`LocalPenalty`,
    :class:`GlobalPenalty`, the baselines' (STEER, RNODE, TayNODE) or one of the user's own.

    ``check(problem)`` runs once, when the model is made (raise to refuse the problem);
    ``penalty(problem, y0, t, generator[, bm])`` makes one training pass: ``(ys, R, stats)``, ``R``
    unweighted, for the flat state ``y0``. A class attribute ``draws = False`` says it draws nothing
    from the model's generator (without it, it is taken to draw).
    """

    def check(self, problem: Any, /) -> None:
        """Run once when the model is made: raise to refuse ``problem``."""
        ...

    def __call__(
        self,
        problem: Any,
        y0: Tensor,
        t: Tensor | Sequence[float],
        generator: torch.Generator | None,
        /,
    ) -> tuple[Tensor, Tensor, RegularizationStats]:
        """One training pass from the flat state ``y0``: ``(ys, R, stats)``, ``R`` unweighted. A
        fifth argument, ``bm`` (an SDE's Brownian motion, given to ``forward`` or ``penalize``), is
        optional: passed only where given (so a penalty with a defaulted ``bm`` is one too). ``t``
        is passed on as the model was given it: a tensor or a list of floats as annotated, or any
        other form ``odeint`` takes (an array, a list of 0-dim tensors) where the caller used one."""
        ...


def _checked_penalty_result(penalty: Penalty, result: object) -> tuple[Tensor, Tensor, RegularizationStats]:
    """``penalty``'s ``(ys, R, stats)``, refused by name where a user's penalty returns otherwise (a
    vector ``R`` would broadcast into ``loss + reg_loss``, a float or ``None`` fail far away)."""
    own = f"penalty {type(penalty).__name__}"
    contract = (
        "(ys, R, stats): the solution, the unweighted penalty R (a 0-dim tensor), a RegularizationStats"
    )
    if not (isinstance(result, tuple) and len(result) == 3):
        got = f"a tuple of {len(result)}" if isinstance(result, tuple) else type(result).__name__
        raise TypeError(f"{own} must return {contract}; got {got}")
    ys, reg, stats = result
    if not isinstance(ys, Tensor):
        raise TypeError(f"{own} returned ys of type {type(ys).__name__}: it must be the solution, a tensor")
    if not (isinstance(reg, Tensor) and reg.ndim == 0 and reg.is_floating_point()):
        got = (
            f"shape {tuple(reg.shape)}, dtype {reg.dtype}" if isinstance(reg, Tensor) else type(reg).__name__
        )
        raise TypeError(f"{own} returned R of {got}: it must be a 0-dim floating tensor (e.g. its .mean())")
    if not isinstance(stats, RegularizationStats):
        raise TypeError(
            f"{own} returned stats of type {type(stats).__name__}: it must be a RegularizationStats"
        )
    return ys, reg, stats


def _rebuild_generator(device: str, state: bytes) -> torch.Generator:
    generator = torch.Generator(device)
    generator.set_state(torch.frombuffer(bytearray(state), dtype=torch.uint8))
    return generator


def _reduce_generator(generator: torch.Generator) -> tuple[Callable[..., torch.Generator], tuple[str, bytes]]:
    return _rebuild_generator, (str(generator.device), generator.get_state().numpy().tobytes())


# torch.multiprocessing's pickler sends a Generator's state tensor through shared memory, which a
# spawned process fails to map ("unable to resize file"), so a model owning a generator could not be
# passed to one: the state travels as bytes there (as torch registers its own types' reductions).
# Plain pickle and copy.deepcopy are untouched: two models sharing a generator still share it after.
ForkingPickler.register(torch.Generator, _reduce_generator)


class Regularized(nn.Module):
    """A neural ODE ``dy/dt = func(t, y)`` or SDE ``dy = f dt + g dW`` as a module, trained with a
    penalty on the solver's own heuristics (or none).

    ``ys = model(y0, t)`` returns the solution at ``t``. In training mode with a ``penalty`` it also
    sets ``model.reg_loss = w * R`` (add it to the task loss); otherwise ``ys`` is exactly the
    unregularized solution, with no extra cost, and ``reg_loss`` is a 0-dim zero. ``model.stats``
    (:class:`RegularizationStats`) describes the last call that returned (before the first, an
    empty one: zero evaluations, ``t_reg`` ``None``): a call that raises (a ``SolverError``) leaves
    ``stats``, ``reg_loss`` and the generator as they were, so a loop that catches it and goes on
    must not log them or add that ``reg_loss`` again as this call's.

    Args:
        func: the vector field ``func(t, y)`` (an ``nn.Module`` or a function), or a torchsde-style
            SDE module (``f``, ``g``, ``noise_type``), solved by :func:`local_reg.sdeint` or torchsde.
        penalty: :class:`LocalPenalty`, :class:`GlobalPenalty`, a penalty of your own (``check(problem)``
            and ``penalty(problem, y0, t, generator[, bm]) -> (ys, R, stats)``) or ``None`` (the
            plain model).
        weight: a non-negative float or a :class:`WeightSchedule`; advance it with
            ``model.weight.step()`` once per iteration. Its state (and ``generator``'s) is part of
            ``model.state_dict()``.
        method, rtol, atol, gradient, adjoint_params, backend, options: the main solve
            (``local_reg.odeint``/``sdeint`` keywords; ``backend`` ``"local_reg"``, ``"torchdiffeq"``
            or ``"torchsde"``; ``options`` extra keywords of the backend's solver). ``None``
            tolerances are local_reg's defaults whatever the backend (an ODE: ``rtol = 1e-6``,
            ``atol = 1e-8``, :func:`local_reg.odeint`'s; an SDE: :func:`local_reg.sdeint`'s), so
            that two backends compared side by side solve to one tolerance (torchdiffeq's own
            default is ``1e-7``, ``1e-9``).
        generator: draws ``t_reg`` and an SDE's Brownian seeds (torch's global generator by default);
            refused (``ValueError``) for an ODE whose penalty draws nothing: none, or one whose
            class attribute ``draws`` is ``False`` (the global and TayNODE penalties; a penalty of
            your own without the attribute is taken to draw).
    """

    reg_loss: Tensor
    stats: RegularizationStats
    weight: WeightSchedule
    """A number assigned to it is taken as the constructor takes it, a :class:`ConstantWeight`."""

    def __init__(
        self,
        func: Any,
        penalty: Penalty | None = None,
        *,
        weight: float | WeightSchedule = 1.0,
        method: str | ButcherTableau | None = None,
        rtol: float | None = None,
        atol: float | None = None,
        gradient: object = "direct",
        adjoint_params: Iterable[Tensor] | None = None,
        backend: str | None = None,
        generator: torch.Generator | None = None,
        options: dict[str, Any] | None = None,
        **misplaced: NoReturn,  # none: a type checker refuses any, and so does the module, naming options=
    ) -> None:
        # Under torch.export a model made inside the exported code would import torchdiffeq there,
        # whose tableaus would stay export's fake tensors for the rest of the process.
        refuse_tracing(type(self).__name__)
        if misplaced:
            own = [
                name
                for kind in type(self).__mro__
                if "__init__" in vars(kind) and issubclass(kind, Regularized)
                for name in inspect.signature(vars(kind)["__init__"]).parameters
            ]
            sde = is_sde(func)
            options_taken = solver_option_names(sde, backend, method)
            raise misplaced_keywords(type(self).__name__, misplaced, options_taken, own, backend, sde)
        super().__init__()
        # Everything is checked now, so a typo fails at construction, not at the first batch.
        config = SolveConfig(
            backend=backend,
            method=method,
            rtol=rtol,
            atol=atol,
            gradient=gradient,
            adjoint_params=adjoint_params,
            options=options,
        )
        self.problem = make_problem(func, config)
        if penalty is not None:
            is_penalty = callable(penalty) and callable(getattr(penalty, "check", None))
            if isinstance(penalty, type) or not is_penalty:
                raise TypeError(
                    "penalty must be a penalty object such as LocalPenalty() or GlobalPenalty(), or None, "
                    f"got {penalty!r}"
                )
            penalty.check(self.problem)
        self._check_read(penalty)
        check_generator(generator)
        draws = penalty is not None and getattr(penalty, "draws", True)  # a penalty of the user's may draw
        if generator is not None and isinstance(self.problem, ODEProblem) and not draws:
            # Refused rather than silently unused: the caller may expect it to seed something.
            what = "the plain model" if penalty is None else type(penalty).__name__
            raise ValueError(
                f"generator is unused here: {what} of an ODE draws nothing (a generator draws "
                "LocalPenalty's t_reg, STEER's end times, RNODE's noise and an SDE's Brownian seeds), so "
                "pass generator=None"
            )
        self.func = func
        self.penalty = penalty
        self.weight = as_schedule(weight)
        self.generator = generator
        # Before the first forward pass: no penalty and no evaluations yet.
        self.reg_loss = torch.zeros(())
        self.stats = RegularizationStats()

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "func" and ("func" in self.__dict__ or "func" in self.__dict__.get("_modules", {})):
            # The solve, its checks and a self-tuning weight's parameter list were made for the
            # first field: a new one would be listed by parameters() but never solved.
            raise AttributeError(
                "func is fixed when the model is made: build a new model around the new field (for "
                "a compiled field, pass options={'compile': True}), or change its parameters in place"
            )
        if name == "weight":
            # As the constructor takes it: a number is a constant weight, anything else not a
            # schedule a TypeError now (not an AttributeError at the next forward pass).
            value = as_schedule(value)
        super().__setattr__(name, value)

    def __getstate__(self) -> dict[str, Any]:
        # reg_loss holds the last training pass's graph, which copy.deepcopy and pickle refuse; the
        # probe's state made inside a torch.func transform (a functional_call under grad) cannot be
        # read once the transform has returned.
        state = {**super().__getstate__(), "reg_loss": self.reg_loss.detach()}
        if transformed(getattr(self.stats, "state", None)):
            state["stats"] = dataclasses.replace(self.stats, state=None)
        return state

    def _check_read(self, penalty: Any) -> None:
        """Refuse options that neither the main solve (beside a fixed ``step_size``) nor ``penalty``
        reads: a probe's step bounds or norm given to a model without that probe. A penalty of
        the user's may read anything from the problem, and is not judged."""
        options = self.problem.options
        controller = options.get("controller")
        fixed = options.get("step_size") is not None and self.problem.backend == "local_reg"
        if fixed and controller is not None and controller.jump_ts:
            # local_reg.odeint lands fixed steps on jumps at their grid's points, but a model's
            # regularization time among the output times moves that grid (a main solve that reads
            # the controller, beside a backsolve's adaptive backward steps, too).
            raise ValueError(
                f"options['controller'].jump_ts cannot be read beside options['step_size']="
                f"{options['step_size']!r}: a regularized model's fixed steps do not land on them, so a "
                "step across a jump would read the field on both sides: solve adaptively (no step_size)"
            )
        reads = () if penalty is None else getattr(penalty, "reads_beside_solve", None)
        if reads is None:
            return
        unread = [
            name
            for name in self.problem.main_solve_unread
            if name not in reads and options.get(name) is not None
        ]
        if unread:
            what = "the plain model (no penalty)" if penalty is None else f"its {type(penalty).__name__}"
            names = " and ".join(f"options[{name!r}]" for name in unread)
            raise ValueError(
                f"{names} would go unread beside options['step_size']={options['step_size']!r}: the fixed "
                f"steps do not read {'it' if len(unread) == 1 else 'them'}, nor does {what} (only a "
                "probe step reads a controller's bounds or a norm): pass one or the other"
            )

    @property
    def draws_brownian_path(self) -> bool:
        """Whether a call without ``bm`` draws a Brownian path (the model solves an SDE): a new one
        at each call, so that a graph-free gradient method of a solve whose field calls this model
        differentiates other paths than its forward solve's."""
        return isinstance(self.problem, SDEProblem)

    def _check_draws_replayable(self, training_pass: bool, bm: Any = None) -> None:
        """A call inside a backward pass is a re-run, which cannot replay this model's generator: its
        draws would differ from the forward pass's, and the gradient would belong to other draws. (A
        given ``bm`` leaves an SDE's path undrawn.) ``torch.utils.checkpoint``'s recomputation
        replays torch's global stream, a graph-free gradient method's re-evaluation of a field
        that calls this model (:func:`reevaluating_for`) neither."""
        if torch._C._current_graph_task_id() == -1:
            return
        draws_path = self.draws_brownian_path and bm is None
        draws_penalty = training_pass and getattr(self.penalty, "draws", True)
        if not (draws_path or draws_penalty):
            return
        method = reevaluating_for()
        if self.generator is None:
            if method is not None and draws_path:
                # The output itself is of another path (a penalty's draw changes reg_loss only).
                warn(
                    f"{type(self).__name__} solving an SDE is re-run inside a backward pass: "
                    f"gradient={method!r} of the solve whose field calls it evaluates that field "
                    "again, where this model draws another Brownian path than the forward solve's "
                    "(the gradient is that of other paths); use gradient='direct' for that solve, or "
                    "pass this model a fixed bm (a BrownianInterval, docs/sde.md)"
                )
            return
        if method is None:
            raise RuntimeError(
                f"{type(self).__name__} is re-run inside a backward pass (torch.utils.checkpoint's "
                "recomputation?), which cannot replay the draws of its own generator: the gradient "
                "would be that of other draws. Checkpoint inside func instead, or (LocallyRegularized, "
                "an SDE model) leave generator unset to draw from torch's global stream, which "
                "checkpointing replays"
            )
        remedies = ["gradient='direct' for that solve, which differentiates the forward's own draws"]
        if draws_path:
            remedies.append("a fixed bm for this model")
        if draws_penalty:
            remedies.append("this model in eval mode there")
        raise RuntimeError(
            f"{type(self).__name__} is re-run inside a backward pass: gradient={method!r} of the solve "
            "whose field calls it evaluates that field again, which replays neither this model's "
            "generator nor torch's global stream: the gradient would be that of other draws. Use "
            f"{', or '.join(remedies)}"
        )

    @contextlib.contextmanager
    def _undone_on_failure(self) -> Iterator[None]:
        """A call that raises (refused input, a failing ``func``, an interrupt) leaves the model's
        generator where it was, so that the next call draws as if it had not been made (the draws
        come before the solve's own checks). Without a generator the draws were torch's global
        stream's, which moves on, as after any torch code that raised."""
        generator = self.generator
        state = None if generator is None else generator.get_state()
        try:
            yield
        except BaseException:
            if generator is not None and state is not None:
                generator.set_state(state)
            raise

    @solve_entry_point  # eager under a user's torch.compile, the draws and the weight too
    def forward(self, y0: State, t: TimeSet, bm: Any | None = None) -> State:
        """The solution at the times ``t`` from ``y0`` (shaped as ``odeint(...).ys``). In training
        mode with a penalty it also sets :attr:`reg_loss` (the weighted penalty to add to the loss)
        and :attr:`stats`; in eval mode it is the plain solve, with ``reg_loss`` zero. ``bm``: an
        SDE's Brownian motion, as torchsde's ``sdeint(..., bm=)`` (for a solve on a path of the
        caller's, e.g. one validation path for every model: a ``BrownianInterval`` made with
        ``halfway_tree=True``, whose path does not depend on the order of the queries, docs/sde.md);
        without it the model draws one."""
        refuse_tracing(type(self).__name__)
        penalized = self.penalty is not None and self.training
        self._check_brownian(bm, penalized)
        self._check_draws_replayable(penalized, bm)
        problem, flat_y0, unflatten = self._flat(y0, t)
        with self._undone_on_failure():
            if not penalized:
                ys, stats = plain_solve(problem, flat_y0, t, self.generator, bm)
                self.stats, self.reg_loss = stats, torch.zeros((), dtype=ys.dtype, device=ys.device)
                return unflatten(ys)
            ys, reg, stats = self._penalized(problem, flat_y0, t, bm)
            stats.grad_ratio = self.weight.last_ratio
            reg_loss = reg * self.weight()
            before = stats.nfe_backward or 0
            self.weight.watch(reg_loss)
            # A measuring weight differentiates reg_loss here; with detach_state=False that runs the
            # main gradient method's backward pass, whose evaluations belong to this forward pass.
            stats.nfe_measurement = (stats.nfe_backward or 0) - before
            if getattr(self.penalty, "evaluates_apart", False):
                # Checked as the main solve's outputs are (after the weight's measurement, whose
                # pass runs here): a NaN the loss puts on reg_loss passes through as the loss's,
                # and a non-finite gradient of the field there is an error. Not y0: the penalty
                # reaches it only through a drawn state, which the penalty checks itself; held by
                # the hooks of reg_loss, which the model keeps, y0 would outlive the caller's batch.
                params = problem.checked_params()
                float16 = in_float16_autocast()
                guard = guard_direct_gradients(
                    params, float(t[0]), None, problem.field_name, float16_autocast=float16
                )
                guard(reg_loss)
            # Set only now: a call that fails leaves the last call's stats and reg_loss.
            self.stats, self.reg_loss = stats, reg_loss
            return unflatten(ys)

    def _check_brownian(self, bm: Any, penalized: bool) -> None:
        """A given ``bm`` is an SDE's; beside a penalty that draws nothing, the model's generator
        (which would have seeded the path ``bm`` replaces) is refused, as ``sdeint`` refuses both."""
        if bm is None:
            return
        if not isinstance(self.problem, SDEProblem):
            raise ValueError("bm is an SDE's Brownian motion, but this model solves an ODE: drop bm")
        if penalized and self.generator is not None and not getattr(self.penalty, "draws", True):
            raise ValueError(
                f"generator is unused here: {type(self.penalty).__name__} draws nothing, and the "
                "Brownian motion it would seed is the given bm: pass one or the other"
            )

    def _flat(self, y0: Tensor | tuple[Tensor, ...], t: TimeSet) -> tuple[Problem, Tensor, Callable]:
        """The problem and state a call solves, ``t`` checked.

        A tuple ``y0`` (an ODE's, e.g. a CNF's ``(z, logp)``) is solved as one flat state, as
        :func:`local_reg.odeint` does (:mod:`local_reg._tuple`): the problem's field is wrapped and
        the outputs are split back into a tuple. The penalty sees the flat state. A ``t`` that
        requires grad is refused: the modules solve at fixed times (the penalties sample among
        them), so its gradient would be silently ``None``."""
        if time_tensors_requiring_grad(t):
            raise ValueError(
                "t requires grad, but the regularized modules solve at fixed times and no gradient "
                "reaches t: pass t.detach(), or solve with local_reg.odeint, which differentiates "
                "with respect to its times"
            )
        if not isinstance(y0, tuple):
            return self.problem, y0, lambda ys: ys
        if not isinstance(self.problem, ODEProblem):
            raise TypeError("tuple states are for ODEs: an SDE's y0 is one (batch, d) tensor")
        state = TupleState(y0)
        return (
            self.problem.with_func(TupleField(self.problem.func, state)),
            state.flatten(y0),
            state.unflatten,
        )

    @solve_entry_point
    def penalize(
        self, y0: State, t: TimeSet, bm: Any | None = None
    ) -> tuple[State, Tensor, RegularizationStats]:
        """``(ys, R, stats)`` of one training pass, ``R`` unweighted, whatever the module's mode;
        ``reg_loss`` and ``stats`` are left as they are. ``bm``: an SDE's Brownian motion."""
        refuse_tracing(type(self).__name__)
        if self.penalty is None:
            raise ValueError("this model has no penalty: it is the plain solve")
        self._check_brownian(bm, True)
        self._check_draws_replayable(True, bm)
        problem, flat_y0, unflatten = self._flat(y0, t)
        with self._undone_on_failure():
            ys, reg, stats = self._penalized(problem, flat_y0, t, bm)
        return unflatten(ys), reg, stats

    def _penalized(
        self, problem: Problem, y0: Tensor, t: TimeSet, bm: Any
    ) -> tuple[Tensor, Tensor, RegularizationStats]:
        """The penalty's pass, checked: ``bm`` is passed only where given (a penalty of the
        user's may take four arguments, :class:`Penalty`)."""
        penalty = cast(Penalty, self.penalty)
        # Called loosely: the protocol leaves the optional fifth argument out, and its t is the
        # documented tensor or list of floats where the module passes on any times it was given.
        call = cast(Callable[..., tuple[Tensor, Tensor, RegularizationStats]], penalty)
        if bm is None:
            return _checked_penalty_result(penalty, call(problem, y0, t, self.generator))
        try:
            inspect.signature(penalty).bind(problem, y0, t, self.generator, bm)
        except TypeError:
            raise TypeError(
                f"penalty {type(penalty).__name__} takes no bm (a fifth positional argument, "
                "Penalty's optional one): give it one to solve on a given Brownian motion"
            ) from None
        return _checked_penalty_result(penalty, call(problem, y0, t, self.generator, bm))

    def get_extra_state(self) -> dict[str, Any]:
        # The schedule's iteration and the sampler's RNG state, so a resumed run continues both.
        generator = None if self.generator is None else self.generator.get_state()
        return {"weight": self.weight.state_dict(), "generator": generator}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        saved = state.get("generator")
        restore = None
        if self.generator is not None and saved is not None:
            restore = self.generator.get_state()  # the weight's state may yet be refused
            try:
                self.generator.set_state(saved)
            except RuntimeError as error:
                raise ValueError(
                    f"the saved generator state ({saved.numel()} bytes) does not fit this model's "
                    f"generator on {self.generator.device} (saved from a generator on another device?): "
                    "make the model with a generator of the device it was trained with, or remove the "
                    "state dict's '_extra_state' entry of this module and load with strict=False to "
                    "start its draws afresh"
                ) from error
        # A model without a penalty reads no weight, and an ODE's draws nothing: a trained
        # regularized model's state loads into the plain one (to serve it) without a word about them.
        plain = self.penalty is None
        try:
            if not plain:
                self.weight.load_state_dict(state["weight"])
        except (KeyError, ValueError) as error:
            if restore is not None:
                cast(torch.Generator, self.generator).set_state(restore)
            # torch calls this whatever load_state_dict's strict: say how to keep this model's weight.
            raise ValueError(
                f"{error} (a state saved with another weight? to keep this model's weight, remove the "
                "state dict's '_extra_state' entry of this module and load with strict=False)"
            ) from None
        if (self.generator is None) != (saved is None) and not (
            plain and isinstance(self.problem, ODEProblem)
        ):
            # The draws of t_reg (and STEER's times, RNODE's noise, an SDE's seeds) would not
            # continue the saved run's: say so rather than drop the state or keep a fresh one.
            warn(
                "the state was saved by a model with a generator and this one has none: its draws "
                "come from torch's global generator, not from the saved state (pass generator= when "
                "building it)"
                if self.generator is None
                else "the state was saved by a model without a generator: this model's generator "
                "keeps its own state, so its draws do not continue the saved run's"
            )

    def extra_repr(self) -> str:
        problem = self.problem
        return (
            f"penalty={self.penalty!r}, weight={self.weight!r}, gradient={problem.gradient!r}, "
            f"backend={problem.backend!r}"
        )
