"""The SDE entry point: ``sdeint(sde, y0, t)``, adaptive Euler--Maruyama on a kept Brownian path."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import nullcontext
from typing import Any, cast

import torch
from torch import Tensor, nn

from .._autograd import solve_entry_point
from .._errors import warn
from .._integrate import DEFAULT_MAX_STEPS, SolveOptions, check_landing_gaps, integrate, times_rounding
from .._step import beside_jump, time_tensor
from .._tuple import owning_module
from .._validate import (
    ARGS_HINT,
    DT0_HINT,
    SDE_SENSEALG_HINT,
    STEP_CONTROL_SPELLINGS,
    T_EVAL_HINT,
    T_SPAN_HINT,
    THROW_HINT,
    active_autocast,
    call_leaving_input,
    check_adaptive_settings_unset,
    check_function_transforms,
    check_generator,
    check_step_penalty,
    check_times_distinct,
    explain_unknown_keywords,
    narrowest_float,
    positive_float,
    relative_tolerance,
    seed_hint,
    without_autocast,
)
from ..controller import PIController, TimeSet
from ..gradients import Checkpoint, Direct, GradientMethod, as_gradient_method
from ..gradients._finite import in_float16_autocast
from ..gradients._function import buffer_marks, first_evaluations, records_graph, reevaluating_for
from ..gradients._params import known_params, resolve_adjoint_params, warn_if_reevaluation_differs
from ..gradients.direct import watched_outputs
from ..solution import Solution, Steps
from ._checkpoint import CheckpointedSolve, RecordingStepper
from ._step import EulerMaruyamaStepper, SDEStepResult
from .brownian import interval_of, make_brownian, release_brownian
from .problem import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    DIFFUSION,
    DRIFT,
    FIXED_STEP_NOISE_TYPE,
    STEP_KEYWORDS,
    CheckedBrownian,
    CheckedSDE,
    brownian_size,
    check_shapes,
    validate_sde_problem,
)

SDEStepPenalty = Callable[[SDEStepResult, float], Tensor]
"""``penalty(result, dt) -> 0-dim tensor`` evaluated on every accepted step (global regularization)."""


@explain_unknown_keywords(
    {
        "dt": "torchsde's step: here step_size= fixes the step and first_step= starts an adaptive solve, "
        "the default; local_reg.compat.sdeint takes torchsde's signature",
        "adaptive": "a solve is adaptive here unless step_size= fixes its step",
        "dt_min": "torchsde's smallest adaptive step: controller=PIController(min_step=) here",
        "dt0": DT0_HINT,
        "throw": THROW_HINT,
        "args": ARGS_HINT,
        "t_span": T_SPAN_HINT,
        **{
            name: f"torchsde's {name}=; local_reg.compat.sdeint takes torchsde's signature"
            for name in ("options", "names", "logqp", "extra", "extra_solver_state")
        },
        # odeint's that an SDE solve lacks (docs/sde.md, "Not implemented").
        "dense": "odeint's; an SDE solve keeps no interpolant: put the times among t",
        "dense_output": "scipy's; an SDE solve keeps no interpolant: put the times among t",
        "t_eval": T_EVAL_HINT,
        "adjoint": "diffrax's adjoint: gradient= here, 'direct' or 'checkpoint' for an SDE",
        "sensealg": SDE_SENSEALG_HINT,
        "seed": seed_hint("bm="),
        "alg": "StochasticDiffEq's algorithm: method= here, e.g. 'euler_maruyama'",
        **STEP_CONTROL_SPELLINGS,
        "step_to_outputs": "odeint's; every output time ends an SDE step already",
        **{
            name: f"odeint's {name}=, not implemented for SDEs (docs/sde.md)"
            for name in ("norm", "compile", "callbacks", "checkpoints")
        },
        **{
            name: "torchsde's adjoint settings: sdeint differentiates by gradient='direct' or "
            "'checkpoint'; local_reg.compat.sdeint_adjoint takes them, and LocallyRegularized in "
            "options= with backend='torchsde', gradient='adjoint'"
            for name in (
                "adjoint_method",
                "adjoint_rtol",
                "adjoint_atol",
                "adjoint_options",
                "adjoint_adaptive",
            )
        },
    }
)
@solve_entry_point
def sdeint(
    sde: Any,
    y0: Tensor,
    t: TimeSet,
    *,
    method: str = "euler_maruyama",
    rtol: float | Tensor = DEFAULT_RTOL,
    atol: float | Tensor = DEFAULT_ATOL,
    first_step: float | Tensor | None = None,
    step_size: float | Tensor | None = None,
    bm: Any | None = None,
    max_steps: int = DEFAULT_MAX_STEPS,
    controller: PIController | None = None,
    generator: torch.Generator | None = None,
    record_states: bool = False,
    step_penalty: SDEStepPenalty | None = None,
    gradient: str | GradientMethod = "direct",
    adjoint_params: Iterable[Tensor] | None = None,
) -> Solution[Tensor]:
    """Solve the Ito SDE ``dy = f(t, y) dt + g(t, y) dW`` from ``y(t[0]) = y0``.

    Adaptive Euler--Maruyama with a Lamba / Rackauckas--Nie embedded error estimate (see
    :mod:`local_reg.sde._step` for the formulas), a PI step-size controller
    (:class:`local_reg.PIController`) and a Brownian path kept consistent under rejections (see
    :mod:`local_reg.sde.brownian`).

    Args:
        sde: torchsde-style SDE: ``f(t, y)``, ``g(t, y)``, ``noise_type`` in ``"diagonal"``,
            ``"scalar"``, ``"additive"``, or ``"general"`` with fixed steps of Euler--Maruyama only
            (:mod:`local_reg.sde.problem`); ``sde_type`` (default ``"ito"``) must be ``"ito"``.
        y0: initial state of shape ``(batch, d)``; one step size and one error norm for the batch.
        t: output times, 1-D, strictly increasing. Every output time is the end of an accepted
            step (the step that would pass it is shortened to land on it).
        method: ``"euler_maruyama"`` (strong order 1/2, 1 for additive noise) or ``"milstein"``
            (derivative-free Milstein, strong order 1 for scalar noise and for diagonal noise whose
            ``g_i`` depends on ``y_i`` alone; order 1/2 where it depends on other components, which
            would need Levy areas; the same for additive noise; one more diffusion evaluation per
            step than Euler--Maruyama). With adaptive steps Euler--Maruyama converges to a biased limit for
            multiplicative noise, since the error estimate that accepts a step holds the Milstein
            term it drops: use ``"milstein"`` where the path's accuracy matters (docs/sde.md).
            Euler--Maruyama stays the default as the scheme of [LR23]'s SDE experiments.
        rtol, atol: tolerances of ``EEst``. The defaults ``1e-2`` suit neural SDEs: the scheme is
            low order, the noise itself is O(sqrt(h)) per step, and a trained model's outputs are
            averaged over trajectories, so path accuracy beyond ~1% buys nothing but NFE (the
            paper's neural SDE experiments also solve at loose tolerances).
        first_step: first step size (adaptive mode); by default
            :func:`local_reg.sde.sde_initial_step_size` picks it.
        step_size: take fixed steps instead: each interval between output times is divided into
            equal steps no longer than ``step_size`` (as :func:`local_reg.odeint`'s, for times
            given in float32 too); no error estimate is computed.
            ``first_step`` and ``controller``, read by adaptive steps only, are refused beside it.
        bm: Brownian motion ``bm(ta, tb) -> W(tb) - W(ta)`` of shape ``(batch, m)`` covering
            ``[t[0], t[-1]]`` (e.g. ``torchsde.BrownianInterval``); by default a new
            ``BrownianInterval`` seeded from ``generator`` (or torch's global generator). Every
            increment is checked: a tensor of ``y0``'s dtype and device and of shape ``(batch, m)``.
        max_steps: attempted steps (accepted + rejected) before a :class:`SolverError`.
        controller: step-size controller (default :class:`PIController`), with its ``max_step``, ``min_step``,
            ``step_ts`` and ``jump_ts`` (at a jump the drift and diffusion are evaluated on each
            step's own side, docs/solver.md).
        record_states: keep the state at the start of every accepted step in ``solution.steps``.
        step_penalty: ``penalty(step_result, dt)`` on every accepted step, returned stacked as
            ``solution.penalties`` (global regularization); needs the adaptive mode and
            ``gradient="direct"``.
        gradient: how ``ys`` are differentiated: ``"direct"`` (``Direct()``; backpropagation
            through every step, the graph of every drift and diffusion call kept) or
            ``"checkpoint"`` (``Checkpoint()``; the forward solve keeps no graph, only each
            accepted step's state and Brownian increment, and the backward pass re-runs the steps
            one at a time with a graph: the same gradient to rounding error, memory of one step's
            graph; :mod:`local_reg.sde._checkpoint`). Other methods are ODE-only.
        adjoint_params: the tensors ``"checkpoint"`` returns gradients for besides ``y0``; default
            ``sde.parameters()`` for a ``torch.nn.Module`` SDE (any other SDE needs it). Under
            ``"direct"`` autograd finds every tensor the drift and diffusion use; a list given there
            is still checked (tensors only) and watched for non-finite gradients, as ``odeint``'s.

    Returns:
        :class:`local_reg.Solution` whose ``stats`` count drift and diffusion evaluations apart
        (``nfe_drift``, ``nfe_diffusion``) and whose ``steps`` records the accepted steps
        (``stiffness_estimate=None``).

    Raises:
        ValueError, TypeError: bad arguments, naming the argument; a drift, diffusion or Brownian
            increment of the wrong shape, dtype or device (checked on every call).
        SolverError: step size underflow (also when the trial steps keep turning non-finite: a
            non-finite trial step is rejected), non-finite drift or diffusion at ``t[0]``, a
            non-finite fixed step, or ``max_steps`` exceeded.
    """
    check_function_transforms("sdeint", t=t, y0=y0)
    noise_type, times = validate_sde_problem(sde, y0, t, method, general=True)
    if noise_type == FIXED_STEP_NOISE_TYPE and (step_size is None or method != "euler_maruyama"):
        got = "adaptive steps" if step_size is None else f"method={method!r}"
        raise ValueError(
            "sde.noise_type='general' is solved with fixed steps of Euler--Maruyama only (step_size=... "
            f"and method='euler_maruyama'; got {got}): Milstein's term and an error estimate of "
            "Euler--Maruyama's leading local error need the noise's iterated integrals (Levy areas)"
        )
    # Every output time ends a step (no dense output).
    check_landing_gaps(
        times, "sdeint ends a step at every output time, and cannot take a step this short; merge them"
    )
    check_times_distinct(times, y0.dtype, "(y0's, whatever t's): solve in float64 or shift t towards 0")
    check_generator(generator)
    if bm is not None and generator is not None:
        raise ValueError(
            "generator seeds the Brownian motion sdeint makes when bm is None; with bm given it would be "
            "unused: pass one or the other"
        )
    # A graph-free gradient method of a solve whose field calls sdeint evaluates it again in its
    # backward pass, which replays neither a generator nor torch's global stream.
    rerun_by = reevaluating_for()
    redraws = generator is not None and _rerun_draws_another_path(generator)
    if bm is None and rerun_by is not None and (generator is None or redraws):
        rerun = (
            f"sdeint is re-run inside a backward pass: gradient={rerun_by!r} of the solve whose field calls "
            "it evaluates that field again, where sdeint draws another Brownian path than the forward "
            "solve's from "
        )
        remedies = (
            "use gradient='direct' for that solve, or pass bm= (a Brownian motion the re-run reads again)"
        )
        if generator is None:
            warn(f"{rerun}torch's global stream (the gradient is that of other paths); {remedies}")
        else:
            raise RuntimeError(
                f"{rerun}a generator that has drawn before: the gradient would be that of another path; "
                f"{remedies}, or give each call a new generator seeded there from a fixed seed"
            )
    if redraws:
        raise RuntimeError(
            "sdeint is re-run inside a backward pass (torch.utils.checkpoint's recomputation?) with a "
            "generator that has drawn before, which the re-run cannot replay: the gradient would be "
            "that of another Brownian path. Pass bm= (a Brownian motion the re-run reads again), give "
            "each solve in the checkpointed function a new generator seeded there from a fixed seed, or "
            "leave generator unset to draw from torch's global stream, which checkpointing replays "
            "(preserve_rng_state=True, its default)"
        )
    rounded_to = narrowest_float(t)  # the float the times came in, if narrower than float64
    options = SolveOptions(
        rtol=relative_tolerance("rtol", rtol),  # one number: the SDE error estimate's scale
        atol=positive_float("atol", atol),
        first_step=first_step,
        max_steps=max_steps,
        step_size=step_size,
        controller=controller,
        time_dtype=y0.dtype,  # the drift and diffusion get times in the state's dtype
        times_rounding=times_rounding(times, rounded_to),
    ).for_state(y0)
    check_adaptive_settings_unset(step_size, {"first_step": first_step, "controller": controller})
    options = options.over(times)
    check_step_penalty(step_penalty)
    if step_penalty is not None and step_size is not None:
        raise ValueError("step_penalty needs the adaptive mode (an error estimate): drop step_size")
    checkpointed = sde_gradient(gradient, step_penalty)
    if checkpointed is not None:
        check_function_transforms("sdeint", checkpointed.name, y0=y0)  # t was judged above
    owner = sde_module(sde)  # whose parameters the checkpoint's re-run steps read
    params = sde_params(sde, owner, adjoint_params, checkpointed)
    # Records for a backward pass only where autograd will ask for one (not under no_grad).
    recording = checkpointed is not None and records_graph(y0, params)

    # At a jump at t0, just after it (as the first step takes them).
    t0 = times[0]
    start = beside_jump(t0, times[-1], y0.dtype, options.controller.jump_ts)
    autocast = active_autocast()  # the drift and diffusion run under it, the solver's arithmetic not

    def drift_and_diffusion() -> tuple[Tensor, Tensor]:
        # One time tensor for both, as every step passes them (an SDE may reuse what f computed
        # for the g of the same (t, y): compat's logqp does).
        time = time_tensor(start, y0)
        return (
            call_leaving_input(DRIFT, autocast, sde.f, time, y0),
            call_leaving_input(DIFFUSION, autocast, sde.g, time, y0),
        )

    # The checkpoint gradient's forward solve keeps no graph, from its first evaluations on.
    graph_free = None if checkpointed is None else checkpointed.name
    # Before the first evaluations, which may change them too.
    buffers_at_start = buffer_marks(owner if checkpointed is not None else None)
    f0, g0 = first_evaluations(graph_free, drift_and_diffusion, y0, params, "sde")
    check_shapes(noise_type, y0, f0, g0)
    # Every later drift, diffusion and Brownian increment is checked too.
    size = brownian_size(noise_type, y0, g0)
    sde = CheckedSDE(sde, noise_type, size[1])
    # A fixed step size is the new Brownian interval's step hint (sde/brownian.py: step_hint).
    made = bm is None
    path = make_brownian(
        bm,
        t0,
        times[-1],
        size,
        y0,
        generator,
        step=options.step_size,
        max_steps=options.max_steps,
        times_dtype=rounded_to,
    )
    bm = CheckedBrownian(path, size, y0, given=not made, interval=interval_of(path))
    stepper = (RecordingStepper if recording else EulerMaruyamaStepper)(
        sde,
        noise_type,
        bm,
        float(options.rtol),  # numbers: sdeint takes no per-element tolerances
        float(options.atol),
        f0,
        g0,
        **STEP_KEYWORDS[method],
        jump_ts=options.controller.jump_ts,
    )
    try:
        with without_autocast():
            if isinstance(stepper, RecordingStepper):
                solve = CheckpointedSolve(
                    stepper,
                    times,
                    options,
                    params,
                    record_states,
                    owner,
                    cast(Checkpoint, checkpointed),
                    buffers_at_start,
                    float16_autocast=in_float16_autocast(autocast),
                )
                ys = solve.outputs(y0)
                stats, steps, stacked_penalties = solve.stats, cast(Steps, solve.steps), None
            else:
                # A checkpoint solve with nothing to differentiate keeps no graph either (of a
                # tensor the SDE captures, say), as odeint's graph-free methods.
                with torch.no_grad() if checkpointed is not None else nullcontext():
                    ys, stats, steps, penalties = integrate(
                        stepper, y0, times, options, record_states=record_states, step_penalty=step_penalty
                    )
                # As odeint's "direct": a non-finite gradient of y0 or of the tensors it knows from a
                # finite cotangent is a SolverError, as the checkpoint gradient's is (a checkpoint
                # solve here keeps no graph).
                stacked_penalties, _ = watched_outputs(
                    ys,
                    penalties,
                    (y0, *params),
                    stats,
                    t0,
                    "the drift and diffusion",
                    float16_autocast=in_float16_autocast(autocast),
                )
    finally:
        if made:
            # Made here, and read by no backward pass (autograd differentiates the steps, and the
            # checkpoint gradient's re-run takes the increments it kept).
            release_brownian(path)
    stats.add(2, diffusion=1)
    ts = torch.tensor(times, dtype=y0.dtype, device=y0.device)
    return Solution(
        ts=ts,
        ys=ys,
        stats=stats,
        steps=steps,
        penalties=stacked_penalties,
        graph_free_method=None if checkpointed is None else checkpointed.name,
    )


def _rerun_draws_another_path(generator: torch.Generator) -> bool:
    """Whether a solve with ``generator`` is a re-run inside a backward pass (``torch.utils.checkpoint``'s
    recomputation, which enables grad to rebuild the graph) that would draw another Brownian path:
    the recomputation replays torch's global stream, not this generator, which draws the forward
    run's path again only if it is freshly seeded now (made in the checkpointed function)."""
    if torch._C._current_graph_task_id() == -1 or not torch.is_grad_enabled():
        return False
    fresh = torch.Generator(device=generator.device).manual_seed(generator.initial_seed())
    return not torch.equal(fresh.get_state(), generator.get_state())


def sde_gradient(gradient: object, step_penalty: object) -> Checkpoint | None:
    """The checked ``gradient`` of an :func:`sdeint` solve: ``None`` for ``"direct"``, else the
    :class:`Checkpoint` (without ``checkpoints``, which sdeint keeps every state for)."""
    method = as_gradient_method(gradient)
    if isinstance(method, Direct):
        return None
    if not isinstance(method, Checkpoint):
        raise ValueError(
            f"gradient={method.name!r} is not available for sdeint: expected 'direct' or 'checkpoint' "
            "(the adjoints and the symplectic adjoint are ODE-only)"
        )
    if method.checkpoints is not None:
        raise ValueError(
            f"sdeint's gradient='checkpoint' keeps every accepted step's state: "
            f"Checkpoint(checkpoints={method.checkpoints}) is ODE-only; pass Checkpoint()"
        )
    if step_penalty is not None:
        raise ValueError("step_penalty needs gradient='direct' in sdeint (a graph of every step)")
    return method


def sde_params(
    sde: object,
    module: nn.Module | None,
    adjoint_params: Iterable[Tensor] | None,
    checkpointed: Checkpoint | None,
) -> tuple[Tensor, ...]:
    """The tensors besides ``y0`` that ``gradient="checkpoint"`` differentiates or, under
    ``"direct"``, whose gradients are checked for non-finite values (as ``odeint``'s
    :func:`~local_reg.gradients._params.known_params`): ``adjoint_params``, or the parameters of
    ``module``, ``sde``'s (:func:`sde_module`); under ``"direct"`` none for an SDE of plain
    functions, whose captured tensors autograd finds unchecked."""
    if checkpointed is None:
        return known_params(module, adjoint_params, Direct())
    if adjoint_params is None and module is None:
        raise ValueError(
            f"gradient='checkpoint' needs the parameters of sde, but sde is not a torch.nn.Module "
            f"({type(sde).__name__}): pass adjoint_params=(tensors f and g depend on), or "
            "adjoint_params=() if they have none"
        )
    warn_if_reevaluation_differs(module, checkpointed, "sde")
    return resolve_adjoint_params(module, adjoint_params, checkpointed)


def sde_module(sde: object) -> nn.Module | None:
    """The module whose parameters the drift and diffusion use: ``sde`` itself, or the module its
    ``f`` is a bound method of (a wrapper such as ``local_reg.compat``'s SDE renamed by ``names``);
    ``None`` for an SDE of plain functions."""
    return owning_module(sde) or owning_module(getattr(sde, "f", None))
