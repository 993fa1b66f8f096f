r"""Local and global regularization of neural SDEs [LR23, Sec. 5; GR21].

Local (the paper's SDE variant, with its sampling): at each training forward pass sample
``t_reg`` in ``[t0, t1)``, get ``u(t_reg)`` on the Brownian path of the main solve, take ONE
instrumented step of the solver's own scheme (:func:`local_reg.sde.sde_step`: Euler--Maruyama with
the Lamba / Rackauckas--Nie estimate) from there *on the same Brownian path* and penalize::

    R = EEst * |dt|

``u(t_reg)``, ``dt`` and ``f(t_reg, u), g(t_reg, u)`` are constants (as ``k1`` for ODEs), so the
gradient flows through the step's remaining drift evaluation ``f(t_reg + dt, u + dt f)`` (to the
drift parameters, via ``E_D``) and diffusion evaluation ``g(t_reg, u + sqrt(dt) g)`` (to the
diffusion parameters, via ``E_N``): plain reverse mode through one step, whatever the main
solve's gradient method. [LR23] uses SOSRI for this step in Julia; here it is the main solver's
scheme, so the penalty is the quantity the solver steps by.

Global (baseline, [GR21]): ``EEst_j * |dt_j|`` over every accepted step ``j`` of the main solve,
reduced by mean (the public code) or sum (the paper), differentiated through the whole solve.

[LR23] Pal, Edelman, Rackauckas, ICML 2023. [GR21] Pal, Ma, Shah, Rackauckas, ICML 2021.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from .._penalty import finite_penalty
from .._sampling import check_sampling, sample_output_time, split_output
from .._step import time_tensor
from .._validate import check_choice
from ._sdeint import DEFAULT_ATOL, DEFAULT_RTOL, METHODS, validate_sde_problem
from ._step import SDEStepResult, sde_initial_step_size, sde_step
from .backends import check_backend_gradient, solve_main
from .brownian import make_brownian
from .problem import brownian_size
from .stats import SDERegularizationStats

REDUCTIONS = ("mean", "sum")


def check_sde_regularizer(regularizer: object) -> None:
    """The SDE penalty is ``EEst * |dt|``: ``regularizer`` must be ``"error"``."""
    if regularizer != "error":
        raise ValueError(
            f"regularizer={regularizer!r} is not available for SDEs: only 'error' (EEst * |dt|); the "
            "stiffness estimate is an ODE Runge--Kutta quantity"
        )


def check_sde_global_gradient(gradient: object) -> None:
    """Global regularization differentiates through every step: ``gradient`` must be ``"direct"``."""
    if gradient != "direct":
        raise ValueError(
            f"global regularization of an SDE differentiates through every accepted step of "
            f"local_reg.sdeint, so gradient must be 'direct', got {gradient!r} (local regularization "
            "works with the adjoint, backend='torchsde')"
        )


# The ODE wrappers' default reg_method, accepted (and ignored) so they can hand an SDE through.
_ODE_DEFAULT_REG_METHOD = "tsit5"


def _check_reg_method(reg_method: object) -> None:
    # The regularization step of an SDE is always the solver's own scheme (that is the point: the
    # penalty is the estimate the solver steps by), so the keyword only exists for the ODE interface.
    allowed = (None, _ODE_DEFAULT_REG_METHOD, *METHODS)
    if reg_method not in allowed:
        raise ValueError(
            f"reg_method must be None or {METHODS[0]!r} for SDEs (the step is the solver's own), "
            f"got {reg_method!r}"
        )


def _brownian(
    sde: Any, noise_type: str, y0: Tensor, times: list[float], bm: Any, generator
) -> tuple[Any, int]:
    """The Brownian motion the main solve and the regularization step share; returns it and the
    diffusion evaluations spent finding its size (additive noise: ``m`` is ``g``'s last dim)."""
    g0, nfe = y0, 0
    if noise_type == "additive":
        with torch.no_grad():
            g0 = sde.g(time_tensor(times[0], y0), y0)
        nfe = 1
    size = brownian_size(noise_type, y0, g0)
    return make_brownian(bm, times[0], times[-1], size, y0, generator), nfe


def _adjoint_options(
    backend: str, gradient: str, adjoint_params: Iterable[Tensor] | None, options: dict[str, Any] | None
) -> dict[str, Any]:
    """The main solver's extra keywords; ``adjoint_params`` only reach ``torchsde.sdeint_adjoint``."""
    options = dict(options or {})
    if backend == "torchsde" and gradient == "adjoint" and adjoint_params is not None:
        options["adjoint_params"] = tuple(adjoint_params)
    return options


def sde_local_regularization(
    sde: Any,
    y0: Tensor,
    t: Tensor | Sequence[float],
    *,
    sampling: str = "random",
    regularizer: str = "error",
    method: str | None = None,
    reg_method: str | None = None,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    gradient: str = "direct",
    adjoint_params: Iterable[Tensor] | None = None,
    backend: str = "local_reg",
    step_size: str = "initial",
    detach_state: bool = True,
    generator: torch.Generator | None = None,
    bm: Any | None = None,
    options: dict[str, Any] | None = None,
) -> tuple[Tensor, Tensor, SDERegularizationStats]:
    """Solve the SDE at ``t`` and compute the local regularization penalty [LR23].

    Returns ``(ys, reg, stats)``: ``ys`` the solution at ``t`` (never at ``t_reg``), shape
    ``(len(t), batch, d)``; ``reg`` the *unweighted* 0-dim penalty ``EEst * |dt|``; ``stats`` an
    :class:`SDERegularizationStats`. Add ``weight * reg`` to the training loss (the paper uses a
    constant weight 1000 for its MNIST neural SDE).

    Args:
        sde: torchsde-style SDE (``f``, ``g``, ``noise_type``; Ito). See :func:`local_reg.sdeint`.
        sampling: ``"random"``: ``t_reg ~ U[t0, t1)``, added to the main solve's output times so
            the solver lands on it and ``u(t_reg)`` is on the path; ``"biased"``: uniform over the
            start times of the main solve's accepted steps (``local_reg`` backend only).
        regularizer: ``"error"`` only (keyword kept for the ODE interface).
        method: the main solver: ``"euler_maruyama"`` (``local_reg``) or a torchsde method name
            (default ``"euler"``).
        reg_method: ``None`` or ``"euler_maruyama"``: the regularization step is always the
            ``local_reg`` solver's step (``"tsit5"``, the ODE wrappers' default, is accepted and
            ignored so they can pass their keywords through).
        adjoint_params: parameters for ``sdeint_adjoint`` (default: the SDE's); ignored otherwise.
        rtol, atol: tolerances of the main solve and of the step's ``EEst``.
        gradient: ``"direct"`` (backpropagation through the main solve); with
            ``backend="torchsde"`` also ``"adjoint"`` (``torchsde.sdeint_adjoint``).
        backend: ``"local_reg"`` (:func:`local_reg.sdeint`) or ``"torchsde"``.
        step_size: ``"initial"`` (the paper): the SDE initial-step heuristic at ``u(t_reg)``;
            ``"solver"``: the main solve's accepted step that starts at ``t_reg`` (``local_reg``
            backend). Either is capped at ``t1 - t_reg``.
        detach_state: ``True`` (the paper): ``u(t_reg)``, ``f`` and ``g`` there are constants.
            ``False``: the gradient also flows into ``u(t_reg)`` (random sampling only).
        generator: draws ``t_reg`` and, if ``bm`` is ``None``, the Brownian seed.
        bm: the Brownian motion over ``[t[0], t[-1]]`` shared by the main solve and the step;
            by default a new ``torchsde.BrownianInterval``.
        options: extra keywords of the main solver.

    Raises:
        ValueError, TypeError: bad arguments, naming the argument.
        SolverError: from the main solve.
    """
    sampling, step_size = check_sampling(sampling, step_size, detach_state)
    check_sde_regularizer(regularizer)
    _check_reg_method(reg_method)
    check_backend_gradient(backend, gradient)
    if backend == "torchsde" and (sampling == "biased" or step_size == "solver"):
        raise ValueError(
            "sampling='biased' and step_size='solver' need the accepted steps, which torchsde does "
            "not report: use backend='local_reg'"
        )
    noise_type, times = validate_sde_problem(sde, y0, t, "euler_maruyama")
    rtol = float(rtol)
    atol = float(atol)
    t1 = times[-1]
    bm, nfe_reg_diffusion = _brownian(sde, noise_type, y0, times, bm, generator)
    options = _adjoint_options(backend, gradient, adjoint_params, options)
    common = dict(
        backend=backend, method=method, rtol=rtol, atol=atol, gradient=gradient, bm=bm, options=options
    )

    if sampling == "random":
        solve_times, index, inserted = sample_output_time(times, y0.dtype, generator)
        t_reg = solve_times[index]
        main = solve_main(sde, y0, solve_times, **common)
        ys, state = split_output(main.ys, index, inserted)
        solver_dt = main.step_containing(t_reg, direction=1.0) if step_size == "solver" else None
    else:
        main = solve_main(sde, y0, times, record_states=True, **common)
        ys = main.ys
        t_reg, state, solver_dt = main.sample_step(generator)

    t_now = time_tensor(t_reg, state)
    if detach_state:
        state = state.detach()
        with torch.no_grad():
            f0, g0 = sde.f(t_now, state), sde.g(t_now, state)
    else:
        f0, g0 = sde.f(t_now, state), sde.g(t_now, state)
    nfe_reg_drift = 1
    nfe_reg_diffusion += 1
    if step_size == "initial":
        dt, extra_f, extra_g = sde_initial_step_size(
            sde, noise_type, t_reg, state.detach(), f0.detach(), g0.detach(), rtol, atol
        )
        nfe_reg_drift += extra_f
        nfe_reg_diffusion += extra_g
    else:
        dt = solver_dt
    dt = min(dt, t1 - t_reg)
    # The same Brownian path as the main solve: the penalty is measured where the model was trained.
    dw = bm(t_reg, t_reg + dt)
    result = sde_step(sde, noise_type, t_reg, state, dt, dw, rtol=rtol, atol=atol, f0=f0, g0=g0)
    nfe_reg_drift += result.nfe_drift
    nfe_reg_diffusion += result.nfe_diffusion

    penalty, value, finite = finite_penalty(result.error_estimate * dt, y0)
    stats = main.regularization_stats(
        SDERegularizationStats,
        nfe_main=main.nfe_drift + main.nfe_diffusion,
        nfe_reg=nfe_reg_drift + nfe_reg_diffusion,
        nfe_main_drift=main.nfe_drift,
        nfe_main_diffusion=main.nfe_diffusion,
        nfe_reg_drift=nfe_reg_drift,
        nfe_reg_diffusion=nfe_reg_diffusion,
        t_reg=t_reg,
        dt_reg=dt,
        state=state.detach(),
        error_estimate=float(result.error_estimate.detach()),
        penalty=value,
        penalty_finite=finite,
    )
    return ys, penalty, stats


def sde_global_regularization(
    sde: Any,
    y0: Tensor,
    t: Tensor | Sequence[float],
    *,
    regularizer: str = "error",
    reduction: str | None = None,
    method: str | None = None,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    gradient: str = "direct",
    generator: torch.Generator | None = None,
    bm: Any | None = None,
    options: dict[str, Any] | None = None,
) -> tuple[Tensor, Tensor, SDERegularizationStats]:
    """Solve at ``t`` and return ``(ys, reg, stats)`` with the unweighted global penalty [GR21]:
    ``EEst_j * |dt_j|`` over the accepted steps, ``reduction="mean"`` (default, the public code)
    or ``"sum"`` (the paper), differentiated through the whole ``local_reg.sdeint`` solve
    (``gradient="direct"`` only). ``nfe_reg`` is 0: the penalty reuses the main solve's steps.
    """
    check_sde_regularizer(regularizer)
    reduction = check_choice("reduction", "mean" if reduction is None else reduction, REDUCTIONS)
    check_sde_global_gradient(gradient)
    noise_type, times = validate_sde_problem(sde, y0, t, "euler_maruyama")
    bm, nfe_extra = _brownian(sde, noise_type, y0, times, bm, generator)

    def per_step(result: SDEStepResult, dt: float) -> Tensor:
        return result.error_estimate * abs(dt)

    main = solve_main(
        sde,
        y0,
        times,
        backend="local_reg",
        method=method,
        rtol=rtol,
        atol=atol,
        gradient=gradient,
        bm=bm,
        step_penalty=per_step,
        options=options,
    )
    penalties = main.penalties
    reg, value, finite = finite_penalty(penalties.mean() if reduction == "mean" else penalties.sum(), y0)
    stats = main.regularization_stats(
        SDERegularizationStats,
        nfe_main=main.nfe_drift + main.nfe_diffusion,
        nfe_main_drift=main.nfe_drift,
        nfe_main_diffusion=main.nfe_diffusion,
        nfe_reg=nfe_extra,
        nfe_reg_diffusion=nfe_extra,
        penalty=value,
        penalty_finite=finite,
    )
    return main.ys, reg, stats


def sde_solve_plain(
    sde: Any,
    y0: Tensor,
    t: Tensor | Sequence[float],
    *,
    method: str | None = None,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    gradient: str = "direct",
    adjoint_params: Iterable[Tensor] | None = None,
    backend: str = "local_reg",
    generator: torch.Generator | None = None,
    bm: Any | None = None,
    options: dict[str, Any] | None = None,
) -> tuple[Tensor, SDERegularizationStats]:
    """The unregularized solve (vanilla training, and every solve in eval mode): no extra output
    time, no extra evaluation. Returns ``(ys, stats)`` with ``stats.nfe_reg == 0``. The arguments
    are those of :func:`sde_local_regularization`."""
    check_backend_gradient(backend, gradient)
    noise_type, times = validate_sde_problem(sde, y0, t, "euler_maruyama")
    bm, nfe_size = _brownian(sde, noise_type, y0, times, bm, generator)
    main = solve_main(
        sde,
        y0,
        times,
        backend=backend,
        method=method,
        rtol=rtol,
        atol=atol,
        gradient=gradient,
        bm=bm,
        options=_adjoint_options(backend, gradient, adjoint_params, options),
    )
    stats = main.regularization_stats(
        SDERegularizationStats,
        nfe_main=main.nfe_drift + main.nfe_diffusion + nfe_size,
        nfe_main_drift=main.nfe_drift,
        nfe_main_diffusion=main.nfe_diffusion + nfe_size,
    )
    return main.ys, stats
