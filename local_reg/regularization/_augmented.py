"""Integrals along the trajectory as extra states of one bigger ODE (RNODE, TayNODE).

A running cost ``R = int_{t0}^{t1} r(t, z(t)) dt`` is the solution at ``t1`` of ``dR/dt = r``,
``R(t0) = 0``. ``local_reg.odeint`` integrates one tensor, so the state ``z`` (any shape) is
flattened and the accumulators appended::

    y = [z.flatten(), R_1, ..., R_m],    dy/dt = [f(t, z).flatten(), r_1(t, z), ..., r_m(t, z)]

This is an ordinary ODE to the solver, so every gradient method applies (backpropagation,
checkpointing, the symplectic adjoint, the backsolve adjoint); each derivative of the augmented
field is a derivative of ``r``, i.e. a second-order derivative of ``f`` for RNODE's Jacobian term.

The solver's error norm is an RMS over the whole augmented state, accumulators included (as in the
published RNODE and TayNODE code, which integrate the same augmented system with torchdiffeq and
JAX). ``m`` accumulators against ``z.numel()`` state elements weigh little in the RMS, but a
rapidly varying integrand can shorten the training steps a little; eval-mode solves integrate
``f`` alone. A ``norm`` or step ``callbacks`` given in ``options`` are written for the state, so
they get ``z`` in ``y0``'s shape, in training as in eval mode: such a norm leaves the accumulators
out of the error estimate.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .._errors import SolverError
from .._step import NON_FINITE_DERIVATIVE, VectorField, rms_norm, time_tensor
from .._validate import check_finite_state, time_direction
from ..solution import Solution
from ._problems import ODEContext, ODEProblem

Integrand = Callable[[Tensor, Tensor], tuple[Tensor, Tensor, tuple[Tensor, ...]]]
"""``(t, z) -> (f(t, z), rates, squared)``: the state's derivative, the 1-D tensor of the
accumulators' derivatives ``r_i(t, z)``, and each rate's tensor whose mean square it is (which tells
a rate that overflows from one whose input is not finite)."""


class AugmentedField(nn.Module):
    """``dy/dt`` of the flat augmented state ``y = [z.flatten(), R_1..R_m]``.

    ``func`` is kept as a submodule when it is a module, so that the graph-free gradient methods'
    default ``adjoint_params`` (the field's parameters) are ``func``'s.
    """

    def __init__(self, func: VectorField, integrand: Integrand, shape: torch.Size, n_terms: int) -> None:
        super().__init__()
        self.func = func
        self.integrand = integrand
        self.shape = shape
        self.n_terms = n_terms

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        z = y[: -self.n_terms].view(self.shape)
        f, rates, _ = self.integrand(t, z)
        if f.shape != z.shape:
            raise ValueError(
                f"func returned shape {tuple(f.shape)}, expected the shape of y0 {tuple(z.shape)}"
            )
        return torch.cat([f.reshape(-1), rates.to(f.dtype)])


def mean_square(x: Tensor) -> Tensor:
    """``mean(x**2)`` over every element, 0 for an empty ``x``: an empty batch adds nothing to a
    penalty's integral, where the mean would be NaN and stop the augmented solve.

    ``x`` is scaled by ``1 / sqrt(count)`` before it is squared and summed: float32's ``mean`` sums
    the squares in float32, which overflows wherever their sum passes float32's range (a field of
    1e19 over 16384 elements) though every square, and so the mean, is finite. A multiplication
    before the square, not a division after it, which measured slower (docs/benchmarks.md)."""
    return x.mul(x.numel() ** -0.5).pow(2).sum() if x.numel() else x.new_zeros(())


def solve_augmented(
    problem: ODEProblem,
    integrand: Integrand,
    rates: tuple[str, ...],
    y0: Tensor,
    times: list[float],
    context: ODEContext,
) -> tuple[Tensor, Tensor, Solution]:
    """``(ys, integrals, solution)``: the state at ``t``, shape ``(len(t), *y0.shape)``, and the
    integrals ``int r_i dt`` from ``t[0]`` to ``t[-1]`` of the integrand's rates, which ``rates``
    names for the messages (signed so that a backward solve gives the same non-negative cost as the
    forward one); ``times`` and ``context`` as :meth:`ODEProblem.prepare` made them (a baseline
    solves with local_reg.odeint, which sees the times in the dtype func gets them in)."""
    if len(times) < 2:
        # One time spans no interval: the penalty would be a silent 0.
        raise ValueError(f"t must hold at least 2 times (t0 and t1) to integrate over, got {len(times)}")
    n_terms = len(rates)
    augmented0 = torch.cat([y0.reshape(-1), y0.new_zeros(n_terms)])
    field = AugmentedField(problem.func, integrand, y0.shape, n_terms)
    options = _on_the_state(problem.options, lambda y: y[:-n_terms].view(y0.shape))
    t_dtype = context.time_dtype
    try:
        solution = problem.odeint(
            field, augmented0, times, t_dtype, options=options, rounded_to=context.rounded_to
        )
    except SolverError as error:
        explained = _non_finite_rate(error, integrand, rates, y0, t_dtype)
        if explained is None:
            raise
        raise explained from None
    except ValueError:
        named = _refusal_of_non_finite(y0)
        if named is None:
            raise
        raise named from None
    ys = solution.ys[:, :-n_terms].reshape(len(times), *y0.shape)
    direction = time_direction(times)
    return ys, direction * solution.ys[-1, -n_terms:], solution


def _non_finite_rate(
    error: SolverError, integrand: Integrand, rates: tuple[str, ...], y0: Tensor, t_dtype: torch.dtype
) -> SolverError | None:
    """``error`` told of the rate that made it, where the augmented field's derivative at ``t0`` was
    non-finite in a rate while ``f`` is finite; ``None`` where ``f`` itself is not finite, or the
    solve failed otherwise. The solver's own message blames the field, and checking the rates at
    every evaluation would cost a device read.

    A rate whose squared tensor is finite overflows (a field of 1e20 in float32, whose square is
    not). One whose squared tensor is not finite either overflowed computing it or differentiates a
    field whose derivative is not finite there (``sqrt(|z|)`` at ``z = 0``, in any float), which
    nothing here tells apart."""
    if error.reason != NON_FINITE_DERIVATIVE or error.n_steps != 0:  # the stepper's, at t0
        return None
    with torch.no_grad():
        f, values, squared = integrand(time_tensor(error.t, y0, t_dtype), y0)
    if not bool(torch.isfinite(f).all()):
        return None
    overflowing: list[str] = []
    of_non_finite: list[str] = []
    for name, rate, tensor in zip(rates, values.tolist(), squared, strict=True):
        if not math.isfinite(rate):
            (overflowing if bool(torch.isfinite(tensor).all()) else of_non_finite).append(name)
    if not overflowing and not of_non_finite:
        return None
    both = bool(overflowing) and bool(of_non_finite)
    wider = "" if f.dtype == torch.float64 else "solve in float64, or "
    causes = []
    if overflowing:
        one = len(overflowing) == 1
        subject = (
            " and ".join(overflowing) if both else "the penalty's rate" if one else "the penalty's rates"
        )
        causes.append(
            f"{subject} {'overflows' if one else 'overflow'}; {wider}rescale the state or the field"
        )
    if of_non_finite:
        subject = f"for {' and '.join(of_non_finite)}, " if both else ""
        causes.append(
            f"{subject}the derivative of f it squares is not finite there (as sqrt(|z|)'s at z = 0) or "
            f"overflows; if it overflows, {wider}rescale the state or the field"
        )
    names = overflowing + of_non_finite
    largest = float(f.abs().max()) if f.numel() else 0.0
    reason = (
        f"{' and '.join(names)} {'is' if len(names) == 1 else 'are'} not finite in {f.dtype} where the "
        f"field f is (max |f| = {largest:.3g}: {'; '.join(causes)})"
    )
    return SolverError(reason, t=error.t, n_steps=error.n_steps)


def _refusal_of_non_finite(y0: Tensor) -> ValueError | None:
    """The refusal of a non-finite ``y0`` by its own index, or ``None`` where ``y0`` is finite. The
    caller checks ``y0`` only once odeint has refused the augmented state, which it checks before
    any evaluation, but names by its index in the flat state: checked before the solve, ``y0``
    would be read twice in every call."""
    try:
        check_finite_state("y0", y0)
    except ValueError as refusal:
        return refusal
    return None


def _on_the_state(options: dict[str, Any], state_of: Callable[[Tensor], Tensor]) -> dict[str, Any]:
    """``options`` whose ``norm`` and step ``callbacks`` see ``state_of(y)`` of the augmented ``y``."""
    options = dict(options)
    norm = options.get("norm")
    if norm is not None and norm is not rms_norm:  # the default's RMS covers the accumulators too
        options["norm"] = lambda y: norm(state_of(y))
    callbacks = options.get("callbacks")
    if callbacks is not None:
        options["callbacks"] = dataclasses.replace(
            callbacks,
            **{
                name: _callback_on_the_state(callback, state_of)
                for name in ("step", "accept", "reject")
                if (callback := getattr(callbacks, name)) is not None
            },
        )
    return options


def _callback_on_the_state(
    callback: Callable[[float, Tensor, float], None], state_of: Callable[[Tensor], Tensor]
) -> Callable[[float, Tensor, float], None]:
    return lambda t, y, dt: callback(t, state_of(y), dt)
