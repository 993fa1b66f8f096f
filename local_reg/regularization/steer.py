"""STEER: a random end time during training [STEER20], a baseline of [LR23].

[STEER20] Ghosh, Behl, Dupont, Torr, Namboodiri. *STEER: Simple Temporal Regularization For Neural
ODEs.* NeurIPS 2020.

At every training forward pass the end time of the integration is drawn as::

    T ~ U(t1 - b, t1 + b),      0 <= b < t1 - t0,

and the model's output at ``t1`` is the solution at ``T``; evaluation integrates to ``t1`` exactly.
There is no penalty term: the randomness itself regularizes the dynamics towards ones that are
cheap to solve.

With several output times ``t0 < ... < t_{n-1} < t_n`` only the last is perturbed, and ``b`` must be
smaller than the last interval ``|t_n - t_{n-1}|`` (the paper's ``b < t1 - t0`` for two times), so
that the output times stay strictly ordered. A ``b`` that breaks this for a given ``t`` is a
``ValueError`` at that call, never a silent reordering or clipping of the distribution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch
from torch import Tensor

from .._step import VectorField
from .._validate import rounded
from ..controller import TimeSet
from ..solution import State
from ._baseline import (
    BaselinePenalty,
    BaselineStats,
    call_generator,
    own_generator,
)
from ._main_solve import Request
from ._module import Regularized, functional_settings
from ._sampling import uniform_draw
from .schedules import constant_coefficient


def check_half_width(b: float, times: list[float], time_dtype: torch.dtype | None = None) -> None:
    """``b`` must leave the perturbed end time beyond the previous output time, also once rounded to
    ``time_dtype``, the dtype ``func`` gets the times in."""
    if len(times) < 2:
        raise ValueError(f"STEER needs at least 2 output times (t0 and t1), got {len(times)}")
    last_interval = abs(times[-1] - times[-2])
    if b >= last_interval:
        raise ValueError(
            f"b={b} must be smaller than the last interval of t, |t[-1] - t[-2]| = {last_interval:g}: "
            "only the end time is perturbed and the output times must stay strictly ordered"
        )
    if time_dtype is not None:
        # The nearest end a draw can give, rounded as func will see it (rounding keeps the order, so
        # every draw lies beyond t[-2] if this does): otherwise a later draw would fail, not this call.
        direction = 1.0 if times[-1] > times[-2] else -1.0
        nearest = rounded(times[-1] - direction * b, time_dtype)
        if (nearest - rounded(times[-2], time_dtype)) * direction <= 0.0:
            raise ValueError(
                f"b={b}: the perturbed end time nearest t[-2], t[-1] {'-' if direction > 0 else '+'} b = "
                f"{times[-1] - direction * b!r}, is "
                f"t[-2]'s value in {time_dtype}, the dtype func gets the times in: pass a smaller b, or t "
                "as a float64 tensor"
            )


def sample_end_time(t_end: float, b: float, generator: torch.Generator | None) -> float:
    """A draw of ``U(t_end - b, t_end + b)``."""
    return t_end + b * (2.0 * uniform_draw(generator) - 1.0)


@dataclass(frozen=True)
class SteerPenalty(BaselinePenalty):
    """STEER's training pass: the end time drawn from ``U(t[-1] - b, t[-1] + b)``; no loss term."""

    draws: ClassVar[bool] = True  # the end time
    b: float = 0.5

    def __post_init__(self) -> None:
        learn = "STEER draws its end time as a float, which carries no gradient to b"
        object.__setattr__(self, "b", constant_coefficient("b", self.b, learn))

    def __call__(
        self,
        problem: Any,
        y0: Tensor,
        t: TimeSet,
        generator: torch.Generator | None = None,
        bm: Any = None,
    ) -> tuple[Tensor, Tensor, BaselineStats]:
        # The drawn end is a float; the other times keep the dtype they came in (fixed steps).
        times, t_dtype, context, _ = problem.prepare(y0, t, generator)
        check_half_width(self.b, times, context.time_dtype)
        t_end = sample_end_time(times[-1], self.b, generator)
        main = problem.solve(y0, times[:-1] + [t_end], t_dtype, context, Request())
        zero = torch.zeros((), dtype=y0.dtype, device=y0.device)
        stats = BaselineStats(main=main.stats, n_accepted=main.n_accepted, t_end=t_end, penalty=0.0)
        return main.ys, zero, stats


class SteerRegularized(Regularized):
    """A neural ODE ``dy/dt = func(t, y)`` trained with STEER [STEER20].

    ``ys = model(y0, t)`` returns the solution at ``t``. In training mode the last output time
    ``t[-1]`` is replaced by ``T ~ U(t[-1] - b, t[-1] + b)`` (drawn from ``generator``), so
    ``ys[-1]`` is the solution at ``T`` and ``model.stats.t_end`` is ``T``; ``reg_loss`` is always
    0 (STEER adds no term to the loss). In eval mode the plain solve at ``t``.

    Args:
        func: the vector field ``func(t, y)``.
        b: the half-width of the end-time distribution, absolute (in the units of ``t``); must be
            smaller than ``|t[-1] - t[-2]|`` at every call. [STEER20] uses ``b = 0.5`` on ``[0, 1]``.
        method, rtol, atol, gradient, adjoint_params, options: of :class:`local_reg.Regularized`
            (the solve); every gradient method works (the perturbed solve is an ordinary solve).
        generator: the CPU ``torch.Generator`` of the end times; by default one of the wrapper's
            own, seeded from ``torch.initial_seed()`` (so two wrappers made without one draw the
            same end times: give each its own for independent draws). Its state is part of
            ``state_dict()``.
    """

    def __init__(
        self, func: VectorField, *, b: float = 0.5, generator: torch.Generator | None = None, **solve: Any
    ) -> None:
        if "weight" in solve:
            # STEER's reg_loss is always 0: a weight would be accepted and do nothing.
            raise TypeError("SteerRegularized takes no weight: STEER adds no term to the loss (b sets it)")
        super().__init__(func, SteerPenalty(b), generator=own_generator(generator), **solve)


def steer_regularization(
    func: VectorField,
    y0: State,
    t: TimeSet,
    *,
    generator: torch.Generator | None = None,
    **settings: Any,
) -> tuple[State, Tensor, BaselineStats]:
    """One STEER [STEER20] training pass without a module: ``(ys, reg, stats)``, ``ys`` the solution
    at ``t`` with ``t[-1]`` replaced by ``T ~ U(t[-1] - b, t[-1] + b)`` (``stats.t_end``), ``reg`` a
    zero (STEER adds no term to the loss).
    ``settings`` are :class:`SteerRegularized`'s keywords; ``generator`` (default: one seeded from the global
    stream, so that ``torch.manual_seed`` fixes the call and repeated calls draw anew) draws ``T``.
    """
    # STEER's module takes no weight (its reg_loss is always 0), which the functional forms set.
    module_settings = functional_settings("steer_regularization", settings)
    del module_settings["weight"]
    ys, reg, stats = SteerRegularized(func, generator=call_generator(generator), **module_settings).penalize(
        y0, t
    )
    # SteerPenalty makes BaselineStats; penalize is typed for any penalty's stats.
    return ys, reg, cast(BaselineStats, stats)
