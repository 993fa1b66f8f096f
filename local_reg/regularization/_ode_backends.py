"""The main (unregularized) ODE solve of a regularizer, through ``local_reg.odeint`` or torchdiffeq.

Both backends return the same record (:class:`MainSolve`): the states at the output times, the
forward statistics, and, when asked for, the accepted steps (start time, signed step size, start
state) that biased sampling and ``step_size="solver"`` need.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
import torchdiffeq
from torch import Tensor, nn
from torchdiffeq._impl.odeint import SOLVERS
from torchdiffeq._impl.rk_common import RKAdaptiveStepsizeODESolver
from torchdiffeq._impl.solvers import FixedGridODESolver

from .._errors import SolverError
from .._integrate import DEFAULT_MAX_STEPS
from .._validate import cast_back_from_autocast, check_choice, check_output
from ..gradients import BacksolveAdjoint, Direct, GradientMethod, as_gradient_method
from ..gradients._finite import guard_direct_gradients, in_float16_autocast
from ..gradients._function import in_peer_backward
from ..gradients._params import peer_module_check
from ..solution import Stats
from ._main_solve import (
    BackwardCounter,
    FinitenessRecord,
    MainSolve,
    Request,
    call_user,
    check_peer_outputs,
    peer_solver_error,
    raised_by_user,
)
from ._options import ode_method

BACKENDS = ("local_reg", "torchdiffeq")


def check_backend_gradient(backend: object, gradient: object) -> GradientMethod:
    """The gradient method (checked) of the main solve on ``backend``."""
    if backend == "torchsde":
        raise ValueError(
            "backend='torchsde' solves SDEs (a module with f, g and noise_type): an ODE takes "
            "backend='local_reg' (or 'torchdiffeq', which the local and plain models offer)"
        )
    check_choice("backend", backend, BACKENDS)
    gradient_method = as_gradient_method(gradient)
    if backend == "torchdiffeq" and not isinstance(gradient_method, (Direct, BacksolveAdjoint)):
        raise ValueError(
            f"gradient={gradient_method.name!r} is not available with backend='torchdiffeq': it offers "
            "'direct' (torchdiffeq.odeint) and 'adjoint' (torchdiffeq.odeint_adjoint); use "
            "backend='local_reg' for the others"
        )
    if (
        backend == "torchdiffeq"
        and isinstance(gradient_method, BacksolveAdjoint)
        and gradient_method.method is not None
        and gradient_method.method.name not in SOLVERS
    ):
        raise ValueError(
            f"BacksolveAdjoint method {gradient_method.method.name!r} is not one of torchdiffeq's, which "
            f"backend='torchdiffeq' solves the adjoint with: one of {sorted(SOLVERS)}"
        )
    return gradient_method


def _torchdiffeq_adjoint_options(adjoint: BacksolveAdjoint) -> dict[str, Any]:
    """``odeint_adjoint``'s keywords for the settings of ``adjoint``."""
    kwargs: dict[str, Any] = {}
    if adjoint.rtol is not None:
        kwargs["adjoint_rtol"] = adjoint.rtol
    if adjoint.atol is not None:
        kwargs["adjoint_atol"] = adjoint.atol
    if adjoint.method is not None:
        kwargs["adjoint_method"] = adjoint.method.name
    options = {"norm": "seminorm"} if adjoint.norm == "seminorm" else {}
    for key in ("step_size", "first_step", "max_steps"):
        if getattr(adjoint, key) is not None:
            options[{"max_steps": "max_num_steps"}.get(key, key)] = getattr(adjoint, key)
    # torchdiffeq cannot infer the backward solve's options for another method than the forward's.
    if options or "adjoint_method" in kwargs:
        kwargs["adjoint_options"] = options
    return kwargs


def torchdiffeq_reports_steps(method: str) -> bool:
    """Whether torchdiffeq's solver ``method`` reports its accepted steps (``callback_accept_step``):
    its adaptive Runge--Kutta solvers do, its fixed grids and ``scipy_solver`` do not."""
    return issubclass(SOLVERS[method], RKAdaptiveStepsizeODESolver)


def _output_grid_without(
    positions: list[int], n_times: int, grid_constructor: Callable | None, func: Any, y0: Tensor, t: Tensor
) -> Tensor:
    """The grid of a torchdiffeq fixed-grid solve whose grid is its output times (no ``step_size``),
    without the output times at ``positions`` (added to be read, not stepped to), then given to the
    user's ``grid_constructor`` if any. Only the forward solve's call has ``n_times`` times: the
    backsolve adjoint's calls are each one interval between two outputs, kept as they are."""
    if t.shape[0] == n_times:
        keep = torch.ones(n_times, dtype=torch.bool, device=t.device)
        keep[positions] = False
        t = t[keep]
    return t if grid_constructor is None else grid_constructor(func, y0, t)


def _torchdiffeq_fixed_grid(method: str) -> bool:
    return issubclass(SOLVERS[method], FixedGridODESolver)


_FORWARD_STEP_LIMIT = (
    "torchdiffeq: {limit} steps attempted without reaching the end (local_reg's default step limit, "
    "as on its own backend; the problem may be stiff: an implicit solver, a looser tolerance, or "
    "torchdiffeq's own per-interval limit options={{'max_num_steps': N}})"
)
_ADJOINT_STEP_LIMIT = (
    "torchdiffeq: the adjoint's backward solve attempted {limit} steps without reaching t0 "
    "(local_reg's default step limit, as its own backsolve adjoint's; BacksolveAdjoint(max_steps=N) "
    "gives torchdiffeq's own, per output interval)"
)


def _stop_at_step_limit(attempted: int, limit: int | None, t0: Tensor, reason: str) -> None:
    """A :class:`SolverError` at ``t0`` once ``attempted`` steps reach ``limit`` (``None``: no limit),
    ``reason`` formatted with the limit."""
    if limit is not None and attempted >= limit:
        raise SolverError(reason.format(limit=limit), t=float(t0.detach()), n_steps=attempted)


class _TorchdiffeqField(nn.Module):
    """Counts the calls of ``func`` by torchdiffeq and, for its adaptive Runge--Kutta solvers, the
    accepted steps (recording them if asked) through torchdiffeq's ``callback_accept_step`` hook,
    which also calls ``func``'s own; ``func``'s ``callback_step`` and ``callback_reject_step`` are
    passed on. ``func`` is a submodule when it is a module, so
    ``odeint_adjoint``'s default ``adjoint_params`` are its parameters."""

    def __init__(
        self,
        func: Callable[[Tensor, Tensor], Tensor],
        record: bool,
        method: str,
        direction: float = 1.0,
        step_limit: int | None = None,
        adjoint_step_limit: int | None = None,
    ) -> None:
        super().__init__()
        self.func = func
        self.step_limit = step_limit
        """Attempted steps at most over the whole solve (``None``: torchdiffeq's own limit)."""
        self.adjoint_step_limit = adjoint_step_limit
        """Attempted steps at most in each backward solve of ``odeint_adjoint`` (``None``: none)."""
        self.adjoint_attempted = 0
        self._adjoint_pass = -1  # the backward pass (graph task) adjoint_attempted counts
        self.direction = direction
        """The solve's time direction: torchdiffeq reports a step towards decreasing time with dt > 0."""
        self.calls = 0
        self.last_t: Tensor | None = None
        """The time of the last call: where a failed torchdiffeq solve stopped."""
        self.reports_steps = torchdiffeq_reports_steps(method)
        self.calls_record = FinitenessRecord(
            direction,
            "func returned non-finite values in the steps tried after the last accepted one"
            if self.reports_steps
            else "func returned non-finite values",
        )
        """The forward solve's calls since its last accepted step (an adaptive solver's; a fixed
        grid's, all of them): where ``func`` returned non-finite values, read where the solve fails.
        An adaptive solver shrinks its step away from them, down to an underflow in dt that would be
        all its error says; a fixed grid steps on with them, to a NaN solution at an output time."""
        self.attempted = 0
        self.accepted = 0
        self.record = record
        self.step_t: list[float] = []
        self.step_dt: list[float] = []
        self.step_states: list[Tensor] = []
        self.reevaluated_by: str | None = None
        """The adjoint (a gradient method's name) whose backward pass evaluates ``func`` again."""
        for name in (
            "callback_step",
            "callback_reject_step",
            "callback_accept_step_adjoint",
            "callback_reject_step_adjoint",
        ):
            # func's own, which torchdiffeq calls on func itself (and warns about where it has none).
            if callable(getattr(func, name, None)):
                setattr(self, name, functools.partial(call_user, getattr(func, name)))
        if self.reports_steps:
            # Instance attributes, so solvers without callbacks (fixed grids) see none and do not warn.
            self.callback_step = self._attempt
            self.callback_accept_step = self._accept

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        self.calls += 1
        # Detached: the stats keep this field, and a t with a graph would keep that graph alive
        # (and make the model refuse copy.deepcopy).
        self.last_t = t.detach()
        # Under the caller's torch.autocast, an output in its dtype: torchdiffeq's own sums with the
        # state would promote it back, as local_reg's backend casts it.
        with in_peer_backward(self.reevaluated_by):
            derivative = call_user(self.func, t, y)
        derivative = check_output("func", cast_back_from_autocast(derivative, y), y)
        # The forward solve's failures become a SolverError (the adjoint's backward solve keeps
        # torchdiffeq's).
        if self.reevaluated_by is None:
            self.calls_record.note(self.last_t, derivative)
        return derivative

    def _attempt(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        # torchdiffeq's own limit is 2**31 - 1 per output interval: a stiff field would run for
        # hours where the local_reg backend stops.
        _stop_at_step_limit(self.attempted, self.step_limit, t0, _FORWARD_STEP_LIMIT)
        self.attempted += 1
        user_callback = getattr(self.func, "callback_step", None)
        if user_callback is not None:
            call_user(user_callback, t0, y0, dt)

    def callback_step_adjoint(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        """A step of ``odeint_adjoint``'s backward solve: counted against ``adjoint_step_limit`` per
        backward pass (a measurement's or a retained graph's second pass counts afresh), and passed
        on to ``func``'s own."""
        task = torch._C._current_graph_task_id()
        if task != self._adjoint_pass:
            self._adjoint_pass, self.adjoint_attempted = task, 0
        _stop_at_step_limit(self.adjoint_attempted, self.adjoint_step_limit, t0, _ADJOINT_STEP_LIMIT)
        self.adjoint_attempted += 1
        user_callback = getattr(self.func, "callback_step_adjoint", None)
        if user_callback is not None:
            call_user(user_callback, t0, y0, dt)

    @property
    def steps_attempted(self) -> int | None:
        """The steps attempted (accepted and rejected), as local_reg's own ``SolverError`` and
        ``Stats.n_steps`` count them; ``None`` where the solver reports no steps (the fixed grids)."""
        return self.attempted if self.reports_steps else None

    @property
    def evaluations(self) -> str:
        """The evaluations so far, as a failure names them."""
        return f"{self.calls} evaluations of func"

    def stats(self) -> Stats:
        """The solve's evaluations and, where torchdiffeq reports them, its steps."""
        if not self.reports_steps:
            return Stats(nfe=self.calls)
        rejected = self.attempted - self.accepted
        return Stats(nfe=self.calls, n_steps=self.attempted, n_accepted=self.accepted, n_rejected=rejected)

    def _accept(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self.accepted += 1
        self.calls_record.clear()  # the solve got past the trial steps that turned non-finite
        if self.record:
            self.step_t.append(float(t0.detach()))
            self.step_dt.append(math.copysign(float(dt.detach()), self.direction))
            self.step_states.append(y0.detach())
        user_callback = getattr(self.func, "callback_accept_step", None)
        if user_callback is not None:
            call_user(user_callback, t0, y0, dt)


def solve_main(
    problem: Any,
    y0: Tensor,
    times: list[float],
    t_dtype: torch.dtype,
    request: Request,
    rounded_to: torch.dtype | None = None,
) -> MainSolve:
    """Solve ``problem`` (an :class:`~._problems.ODEProblem`) at ``times`` on its backend and return
    the record; ``t_dtype`` is the dtype torchdiffeq sees the times in, ``rounded_to`` the float
    they came in (local_reg's fixed steps allow for its rounding)."""
    func, backend, method, gradient = problem.func, problem.backend, problem.method, problem.gradient
    rtol, atol = problem.rtol, problem.atol
    record_steps = request.steps
    method = ode_method(backend, method)
    options = dict(problem.options or {})
    if backend == "local_reg":
        solution = problem.odeint(
            func,
            y0,
            times,
            t_dtype,
            rounded_to=rounded_to,
            record_states=request.states,
            step_penalty=request.step_penalty,
        )
        return MainSolve.from_solution(solution, record_steps=record_steps)

    step_limit = None if "max_num_steps" in options else DEFAULT_MAX_STEPS
    is_adjoint = isinstance(gradient, BacksolveAdjoint)
    # The adjoint's backward solve too, where its method reports steps and no limit is given.
    adjoint_step_limit = None
    if is_adjoint and gradient.max_steps is None:
        backward_method = method if gradient.method is None else gradient.method.name
        adjoint_step_limit = DEFAULT_MAX_STEPS if torchdiffeq_reports_steps(backward_method) else None
    field = _TorchdiffeqField(
        func,
        record=record_steps,
        method=method,
        direction=times[-1] - times[0],
        step_limit=step_limit,
        adjoint_step_limit=adjoint_step_limit,
    )
    if request.interpolated and options.get("step_size") is None and _torchdiffeq_fixed_grid(method):
        # Its grid would be the output times: t_reg, a grid point, would add a step (and change the
        # outputs) that a solve without it does not take. Read it from the grid's interpolation.
        added = set(request.interpolated)
        positions = [i for i, time in enumerate(times[1:-1], start=1) if time in added]
        options["grid_constructor"] = functools.partial(
            _output_grid_without, positions, len(times), options.get("grid_constructor")
        )
    t_tensor = torch.tensor(times, dtype=t_dtype, device=y0.device)
    # torchdiffeq's adjoint evaluates func again in its backward pass, as local_reg's graph-free methods.
    check_module = peer_module_check(func, gradient) if is_adjoint else None
    params = problem.checked_params()
    try:
        if is_adjoint:
            kwargs = _torchdiffeq_adjoint_options(gradient)
            # torchdiffeq's default is the parameters of the field it is given, a wrapper that holds
            # func only where func is a module: a bound method's module's would get no gradient.
            kwargs["adjoint_params"] = params
            ys = torchdiffeq.odeint_adjoint(
                field, y0, t_tensor, rtol=rtol, atol=atol, method=method, options=options, **kwargs
            )
            # Its backward pass evaluates func again; its forward solve, even inside a backward
            # pass (torch.utils.checkpoint's recomputation), does not.
            field.reevaluated_by = gradient.name
        else:
            ys = torchdiffeq.odeint(field, y0, t_tensor, rtol=rtol, atol=atol, method=method, options=options)
    except AssertionError as error:
        if raised_by_user(error):
            raise  # the user's own, from func or its callbacks: as the local_reg backend passes it on
        # torchdiffeq reports a failed solve (underflow in dt, max_num_steps exceeded, a non-finite
        # state) with assert.
        raise peer_solver_error(
            error,
            "torchdiffeq",
            field.evaluations,
            y0,
            field.last_t,
            field.steps_attempted,
            field.calls_record,
        ) from error
    else:
        # Read before the record goes: a fixed grid steps on with non-finite values.
        check_peer_outputs(ys, times, "torchdiffeq", field.evaluations, field.calls_record)
    finally:
        # The forward solve is over: drop the bound method, a reference cycle that would keep the
        # recorded states alive until Python's cycle collector runs (the backward pass keeps field).
        for name in ("callback_step", "callback_accept_step"):
            if getattr(field.__dict__.get(name), "__self__", None) is field:
                del field.__dict__[name]
        field.calls_record.clear()  # the stats keep the field
    if check_module is not None:
        check_module(ys)
    if ys.requires_grad:
        # As local_reg's gradient methods: torchdiffeq hands a NaN gradient back without a word
        # (its adaptive adjoint asserts first, where its backward solve steps into it).
        guard = guard_direct_gradients(
            (y0, *params), times[0], field.steps_attempted, float16_autocast=in_float16_autocast()
        )
        guard(ys)
    main = MainSolve(
        ys=ys,
        stats=field.stats(),
        n_accepted=field.accepted if field.reports_steps else None,
        step_t=field.step_t if record_steps else None,
        step_dt=field.step_dt if record_steps else None,
        step_states=torch.stack(field.step_states) if request.states and field.step_states else None,
        backward_counter=BackwardCounter(field, field.calls, is_adjoint),
    )
    # The backward counter (kept by the model's stats) holds the field: not the states it recorded.
    field.step_states = []
    return main
