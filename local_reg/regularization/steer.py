"""STEER: a random end time during training [STEER20], a baseline of [LR23].

[STEER20] Ghosh, Behl, Dupont, Torr, Namboodiri. *STEER: Simple Temporal Regularization For Neural
ODEs.* NeurIPS 2020.

At every training forward pass the end time of the integration is drawn as::

    T ~ U(t1 - b, t1 + b),      0 < b < t1 - t0,

and the model's output at ``t1`` is the solution at ``T``; evaluation integrates to ``t1`` exactly.
There is no penalty term: the randomness itself regularizes the dynamics towards ones that are
cheap to solve.

With several output times ``t0 < ... < t_{n-1} < t_n`` only the last is perturbed, and ``b`` must be
smaller than the last interval ``|t_n - t_{n-1}|`` (the paper's ``b < t1 - t0`` for two times), so
that the output times stay strictly ordered. A ``b`` that breaks this for a given ``t`` is a
``ValueError`` at that call, never a silent reordering or clipping of the distribution.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from .._validate import validate_times
from ..tableaus import ButcherTableau
from ._baseline import (
    BaselineRegularized,
    BaselineStats,
    VectorField,
    non_negative,
    solution_stats,
)


def check_half_width(b: float, times: list[float]) -> None:
    """``b`` must leave the perturbed end time beyond the previous output time."""
    if len(times) < 2:
        raise ValueError(f"STEER needs at least 2 output times (t0 and t1), got {len(times)}")
    last_interval = abs(times[-1] - times[-2])
    if b >= last_interval:
        raise ValueError(
            f"b={b} must be smaller than the last interval of t, |t[-1] - t[-2]| = {last_interval:g}: "
            "only the end time is perturbed and the output times must stay strictly ordered"
        )


def sample_end_time(t_end: float, b: float, generator: torch.Generator) -> float:
    """A draw of ``U(t_end - b, t_end + b)``."""
    u = float(torch.rand((), generator=generator, dtype=torch.float64))
    return t_end + b * (2.0 * u - 1.0)


class SteerRegularized(BaselineRegularized):
    """A neural ODE ``dy/dt = func(t, y)`` trained with STEER [STEER20].

    ``ys = model(y0, t)`` returns the solution at ``t``. In training mode the last output time
    ``t[-1]`` is replaced by ``T ~ U(t[-1] - b, t[-1] + b)`` (drawn from ``generator``), so
    ``ys[-1]`` is the solution at ``T`` and ``model.stats.t_end`` is ``T``; ``reg_loss`` is always
    0 (STEER adds no term to the loss). In eval mode the plain solve at ``t``.

    Args:
        func: the vector field ``func(t, y)``.
        b: the half-width of the end-time distribution, absolute (in the units of ``t``); must be
            smaller than ``|t[-1] - t[-2]|`` at every call. [STEER20] uses ``b = 0.5`` on ``[0, 1]``.
        method, rtol, atol, gradient, adjoint_params: of :func:`local_reg.odeint`; every gradient
            method works (the perturbed solve is an ordinary solve).
        generator: the CPU ``torch.Generator`` of the end times; by default one of the wrapper's
            own, seeded from ``torch.initial_seed()``. Its state is part of ``state_dict()``.
        options: further :func:`local_reg.odeint` keywords (``step_size``, ``checkpoints``, ...).
    """

    def __init__(
        self,
        func: VectorField,
        *,
        b: float = 0.5,
        method: str | ButcherTableau = "tsit5",
        rtol: float = 1e-6,
        atol: float = 1e-8,
        gradient: str = "direct",
        adjoint_params: Iterable[Tensor] | None = None,
        generator: torch.Generator | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            func,
            weight=None,
            method=method,
            rtol=rtol,
            atol=atol,
            gradient=gradient,
            adjoint_params=adjoint_params,
            generator=generator,
            options=options,
        )
        self.b = non_negative("b", b)

    def regularized_forward(
        self, y0: Tensor, t: Tensor | Sequence[float]
    ) -> tuple[Tensor, Tensor, BaselineStats]:
        times = validate_times(t)
        check_half_width(self.b, times)
        t_end = sample_end_time(times[-1], self.b, self.generator)
        solution = self.solve(self.func, y0, times[:-1] + [t_end])
        zero = torch.zeros((), dtype=y0.dtype, device=y0.device)
        return solution.ys, zero, solution_stats(solution, t_end=t_end, penalty=0.0)

    def extra_repr(self) -> str:
        return f"b={self.b}, gradient={self.gradient!r}"
