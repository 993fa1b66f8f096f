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

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._choices import check_choice
from .._penalty import finite_penalty
from .._sampling import check_sampling
from ..odeint import validate_state, validate_times
from ..sde import is_sde, sde_local_regularization, sde_solve_plain
from ..sde.backends import check_backend_gradient as check_sde_backend_gradient
from ..sde.regularization import check_sde_regularizer
from ..sde.sdeint import DEFAULT_ATOL as SDE_DEFAULT_ATOL
from ..sde.sdeint import DEFAULT_RTOL as SDE_DEFAULT_RTOL
from ..solution import RegularizationStats
from ..step import StepResult, initial_step_size, time_tensor
from ..step import step as rk_step
from ..tableaus import ButcherTableau, get_tableau
from ._probe import (
    check_probe_options,
    heuristic_order,
    penalty_form,
    probe_step_size,
    sample_output_times,
    split_outputs,
)
from .backends import check_backend_gradient, solve_main
from .schedules import WeightSchedule, as_schedule

VectorField = Callable[[Tensor, Tensor], Tensor]

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


def step_penalty_value(result: StepResult, dt: float, regularizer: str, tableau: ButcherTableau) -> Tensor:
    """``EEst * |dt|`` (error) or ``rho / stability_size`` (stiffness) of one step."""
    if regularizer == "error":
        return result.error_estimate * abs(dt)
    return result.stiffness_estimate / tableau.stability_size


def local_regularization(
    func: VectorField,
    y0: Tensor,
    t: Tensor | Sequence[float],
    *,
    sampling: str = "random",
    regularizer: str = "error",
    method: str | None = None,
    reg_method: str | ButcherTableau = "tsit5",
    rtol: float = 1e-6,
    atol: float = 1e-8,
    gradient: str = "direct",
    adjoint_params: Iterable[Tensor] | None = None,
    backend: str = "local_reg",
    step_size: str = "initial",
    detach_state: bool = True,
    generator: torch.Generator | None = None,
    options: dict[str, Any] | None = None,
    probe: str = "initial",
    probe_scale: float = 1.0,
    penalty: str = "error-dt",
    n_draws: int = 1,
) -> tuple[Tensor, Tensor, RegularizationStats]:
    """Solve ``dy/dt = func(t, y)`` at ``t`` and compute the local regularization penalty [LR23].

    Returns ``(ys, reg, stats)``: ``ys`` the solution at ``t`` (as :func:`local_reg.odeint`; never
    at ``t_reg``), ``reg`` the *unweighted* penalty (0-dim tensor) and a
    :class:`RegularizationStats`. Add ``weight * reg`` to the training loss.

    Args:
        sampling: ``"random"`` (unbiased, the paper's default): ``t_reg ~ U[t0, t1)``; the main solve
            also stops at ``t_reg`` to obtain ``u(t_reg)``. ``"biased"``: ``t_reg`` is drawn
            uniformly from the start times of the main solve's accepted steps (which cluster where
            the dynamics are hard) and the step restarts from the recorded state.
        regularizer: ``"error"``: ``R = EEst * |dt|``; ``"stiffness"``: ``R = rho / stability_size``
            (not multiplied by ``dt``; [LR23] reports it "did not yield positive results").
        method: the main solver (default ``"tsit5"``; ``"dopri5"`` with torchdiffeq, which has no
            Tsit5).
        reg_method: the embedded pair of the regularization step (the public code hard-codes Tsit5).
        rtol, atol: tolerances of the main solve and of the regularization step's ``EEst``.
        gradient: the main solve's gradient method, passed to ``local_reg.odeint(gradient=...)``
            (``"direct"``, ``"adjoint"``, ``"checkpoint"``, ``"symplectic"``); with torchdiffeq
            ``"direct"`` is ``torchdiffeq.odeint`` and ``"adjoint"`` is ``torchdiffeq.odeint_adjoint``.
        adjoint_params: parameters for the adjoint-type gradient methods (default: the backend's).
        backend: ``"local_reg"`` or ``"torchdiffeq"``. With torchdiffeq, ``u(t_reg)`` is its dense
            output at ``t_reg`` (adding an output time does not change its steps) and biased sampling
            records steps with torchdiffeq's ``callback_accept_step``.
        step_size: ``"initial"`` (the paper): the initial-step heuristic at ``u(t_reg)``;
            ``"solver"``: the accepted step of the main solve that starts at (or contains)
            ``t_reg``. Either is capped at ``|t1 - t_reg|``.
        detach_state: ``True`` (the paper): ``u(t_reg)`` and ``k1`` are constants. ``False``: the
            penalty's gradient also flows into ``u(t_reg)`` (and from there, through the main
            gradient method, into ``y0`` and the parameters); only with ``sampling="random"``.
        generator: the ``torch.Generator`` (CPU) that draws ``t_reg``; the global one by default.
        options: extra keyword arguments of the main solve (``local_reg.odeint`` keywords, or
            torchdiffeq's ``options`` dict).
        probe, probe_scale, penalty, n_draws: the study options of :mod:`._probe` (the probe's step
            size, the penalty's form, the number of draws averaged; ``stats`` then describe the
            last draw). Their defaults are the paper's procedure.

    A penalty that is not finite (a diverging regularization step) is replaced by a zero that
    carries no gradient, and ``stats.penalty_finite`` is ``False``; a zero ``EEst`` has a zero
    gradient, never NaN.
    """
    sampling, step_size = check_sampling(sampling, step_size, detach_state)
    regularizer = check_choice("regularizer", regularizer, REGULARIZERS)
    probe, probe_scale, penalty, n_draws = check_probe_options(
        probe, probe_scale, penalty, n_draws, regularizer, step_size
    )
    step_size = probe_step_size(step_size, probe)
    check_backend_gradient(backend, gradient)
    tableau = get_tableau(reg_method)
    check_regularizer_tableau(regularizer, tableau, "reg_method")
    y0 = validate_state(y0)
    times = validate_times(t)
    if len(times) < 2:
        raise ValueError(f"t must hold at least 2 times (t0 and t1) to sample t_reg, got {len(times)}")
    t_dtype = t.dtype if isinstance(t, Tensor) else torch.float64
    direction = 1.0 if times[-1] > times[0] else -1.0
    t1 = times[-1]
    common = dict(
        backend=backend,
        method=method,
        rtol=rtol,
        atol=atol,
        gradient=gradient,
        adjoint_params=adjoint_params,
        t_dtype=t_dtype,
        options=options,
    )

    if sampling == "random":
        solve_times, t_regs = sample_output_times(times, n_draws, t_dtype, generator)
        main = solve_main(
            func, y0, solve_times, record_steps=step_size == "solver", record_states=False, **common
        )
        ys, states = split_outputs(main.ys, solve_times, times, t_regs)
        draws = [
            (t_reg, state, main.step_containing(t_reg, direction) if step_size == "solver" else None)
            for t_reg, state in zip(t_regs, states, strict=True)
        ]
    else:
        main = solve_main(func, y0, times, record_steps=True, record_states=True, **common)
        ys = main.ys
        if not main.step_t:
            # torchdiffeq's fixed-grid solvers never call callback_accept_step.
            raise ValueError(
                "sampling='biased' found no recorded accepted steps: with backend='torchdiffeq' it needs "
                "an adaptive method (e.g. method='dopri5'), whose accepted steps torchdiffeq reports"
            )
        draws = [main.sample_step(generator) for _ in range(n_draws)]

    penalties, nfe_reg = [], 0
    for t_reg, state, solver_dt in draws:
        if detach_state:
            state = state.detach()
            with torch.no_grad():
                k1 = func(time_tensor(t_reg, state), state)
        else:
            k1 = func(time_tensor(t_reg, state), state)
        nfe_reg += 1
        if step_size == "initial":
            order = heuristic_order(tableau.order, probe)
            dt_abs, extra = initial_step_size(
                func, t_reg, state.detach(), k1.detach(), order, rtol, atol, direction
            )
            dt_abs *= probe_scale
            nfe_reg += extra
        else:
            dt_abs = solver_dt
        dt = direction * min(dt_abs, abs(t1 - t_reg))
        result = rk_step(func, t_reg, state, dt, tableau, rtol=rtol, atol=atol, k1=k1)
        nfe_reg += result.nfe
        if penalty == "error-dt":
            penalties.append(step_penalty_value(result, dt, regularizer, tableau))
        else:
            penalties.append(penalty_form(result.error_estimate, dt, tableau.order, penalty))

    penalty_value = penalties[0] if n_draws == 1 else torch.stack(penalties).mean()
    reg, value, finite = finite_penalty(penalty_value, y0)
    stats = main.regularization_stats(
        RegularizationStats,
        nfe_main=main.nfe,
        nfe_reg=nfe_reg,
        t_reg=t_reg,
        dt_reg=dt,
        state=state.detach(),
        error_estimate=float(result.error_estimate.detach()),
        stiffness_estimate=(
            None if result.stiffness_estimate is None else float(result.stiffness_estimate.detach())
        ),
        penalty=value,
        penalty_finite=finite,
    )
    return ys, reg, stats


def solve_plain(
    func: VectorField,
    y0: Tensor,
    t: Tensor | Sequence[float],
    *,
    backend: str,
    method: str | None,
    rtol: float,
    atol: float,
    gradient: str,
    adjoint_params: Iterable[Tensor] | None,
    options: dict[str, Any] | None,
) -> tuple[Tensor, RegularizationStats]:
    """The unregularized solve (eval mode): no extra output time, no extra evaluation."""
    check_backend_gradient(backend, gradient)
    y0 = validate_state(y0)
    times = validate_times(t)
    t_dtype = t.dtype if isinstance(t, Tensor) else torch.float64
    main = solve_main(
        func,
        y0,
        times,
        backend=backend,
        method=method,
        rtol=rtol,
        atol=atol,
        gradient=gradient,
        adjoint_params=adjoint_params,
        record_steps=False,
        record_states=False,
        t_dtype=t_dtype,
        options=options,
    )
    stats = main.regularization_stats(RegularizationStats, nfe_main=main.nfe)
    return main.ys, stats


def default_tolerances(sde: bool, rtol: float | None, atol: float | None) -> tuple[float, float]:
    """``None`` means the solver's default: 1e-6 / 1e-8 for ODEs, looser for Euler--Maruyama
    (see :func:`local_reg.sdeint`), where ODE tolerances would cost orders of magnitude more steps."""
    default_rtol, default_atol = (SDE_DEFAULT_RTOL, SDE_DEFAULT_ATOL) if sde else (1e-6, 1e-8)
    return (default_rtol if rtol is None else rtol, default_atol if atol is None else atol)


class LocallyRegularized(nn.Module):
    """A neural ODE ``dy/dt = func(t, y)`` (or SDE) trained with local regularization [LR23].

    ``ys = model(y0, t)`` returns the solution at ``t``. In training mode it also sets
    ``model.reg_loss = w * R``, ``R`` the penalty of one regularization step at a sampled ``t_reg``
    (see :func:`local_regularization` for the procedure and every argument); add it to the task
    loss. In eval mode there is no regularization and no extra cost: ``ys`` is exactly the
    unregularized solution and ``reg_loss`` is 0. ``model.stats`` describes the last call.

    ``func`` may also be a torchsde-style SDE module (``f``, ``g``, ``noise_type``; see
    :func:`local_reg.sde.is_sde`): the solves are then :func:`local_reg.sdeint` (or torchsde with
    ``backend="torchsde"``) and the penalty is one instrumented SDE step on the same Brownian path
    (:func:`local_reg.sde.sde_local_regularization`); ``regularizer`` must be ``"error"``.

    Args:
        weight: a non-negative float or a :class:`WeightSchedule` (e.g. ``ExponentialDecay(2.5, 1.0,
            N)`` as for MNIST in [LR23]); advance it with ``model.weight.step()`` once per iteration.
            Its state (and ``generator``'s) is part of ``model.state_dict()``.
        (the others: as :func:`local_regularization`.)
    """

    reg_loss: Tensor
    stats: RegularizationStats | None

    def __init__(
        self,
        func: VectorField,
        *,
        sampling: str = "random",
        regularizer: str = "error",
        weight: float | WeightSchedule = 1.0,
        method: str | None = None,
        reg_method: str | ButcherTableau = "tsit5",
        rtol: float | None = None,
        atol: float | None = None,
        gradient: str = "direct",
        adjoint_params: Iterable[Tensor] | None = None,
        backend: str = "local_reg",
        step_size: str = "initial",
        detach_state: bool = True,
        generator: torch.Generator | None = None,
        options: dict[str, Any] | None = None,
        probe: str = "initial",
        probe_scale: float = 1.0,
        penalty: str = "error-dt",
        n_draws: int = 1,
    ) -> None:
        super().__init__()
        # Validate everything now so a typo fails at construction, not at the first batch.
        check_sampling(sampling, step_size, detach_state)
        check_choice("regularizer", regularizer, REGULARIZERS)
        self.probe_options = dict(probe=probe, probe_scale=probe_scale, penalty=penalty, n_draws=n_draws)
        check_probe_options(**self.probe_options, regularizer=regularizer, step_size=step_size)
        self.is_sde = is_sde(func)
        if self.is_sde and self.probe_options != dict(
            probe="initial", probe_scale=1.0, penalty="error-dt", n_draws=1
        ):
            raise ValueError(f"probe options {self.probe_options} are for ODEs; an SDE takes the defaults")
        if self.is_sde:
            check_sde_backend_gradient(backend, gradient)
            check_sde_regularizer(regularizer)
        else:
            check_backend_gradient(backend, gradient)
            check_regularizer_tableau(regularizer, get_tableau(reg_method), "reg_method")
        rtol, atol = default_tolerances(self.is_sde, rtol, atol)
        self.func = func
        self.weight = as_schedule(weight)
        self.sampling = sampling
        self.regularizer = regularizer
        self.method = method
        self.reg_method = reg_method
        self.rtol = rtol
        self.atol = atol
        self.gradient = gradient
        self.adjoint_params = None if adjoint_params is None else tuple(adjoint_params)
        self.backend = backend
        self.step_size = step_size
        self.detach_state = detach_state
        self.generator = generator
        self.options = options
        self.reg_loss = torch.zeros(())
        self.stats = None

    def forward(self, y0: Tensor, t: Tensor | Sequence[float]) -> Tensor:
        solver = dict(
            method=self.method,
            rtol=self.rtol,
            atol=self.atol,
            gradient=self.gradient,
            adjoint_params=self.adjoint_params,
            backend=self.backend,
            options=self.options,
        )
        if self.is_sde:
            # An SDE's plain solve draws its Brownian path from the generator too.
            plain = functools.partial(sde_solve_plain, generator=self.generator)
            regularized = sde_local_regularization
        else:
            plain, regularized = solve_plain, local_regularization
        if not self.training:
            ys, self.stats = plain(self.func, y0, t, **solver)
            self.reg_loss = torch.zeros((), dtype=y0.dtype, device=y0.device)
            return ys
        ys, reg, self.stats = regularized(
            self.func,
            y0,
            t,
            sampling=self.sampling,
            regularizer=self.regularizer,
            reg_method=self.reg_method,
            step_size=self.step_size,
            detach_state=self.detach_state,
            generator=self.generator,
            **solver,
            **({} if self.is_sde else self.probe_options),
        )
        self.reg_loss = reg * self.weight()
        return ys

    def get_extra_state(self) -> dict[str, Any]:
        # The schedule's iteration and the sampler's RNG state, so a resumed run continues both.
        generator = None if self.generator is None else self.generator.get_state()
        return {"weight": self.weight.state_dict(), "generator": generator}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.weight.load_state_dict(state["weight"])
        if self.generator is not None and state.get("generator") is not None:
            self.generator.set_state(state["generator"])

    def extra_repr(self) -> str:
        return (
            f"sampling={self.sampling!r}, regularizer={self.regularizer!r}, weight={self.weight!r}, "
            f"gradient={self.gradient!r}, backend={self.backend!r}, step_size={self.step_size!r}"
        )
