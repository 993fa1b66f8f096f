"""What the baseline regularizers (STEER, RNODE, TayNODE) share: the solver options, the plain
eval-mode solve, the statistics they report and the state they save.

They solve only through the public :func:`local_reg.odeint`, so every gradient method of the
library applies to them unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .._odeint import odeint
from .._validate import check_choice, validate_times
from ..gradients import GRADIENT_METHODS
from ..sde import is_sde
from ..solution import Solution, Stats
from ..tableaus import ButcherTableau, get_tableau
from ._stats import RegularizationStats
from .schedules import WeightSchedule, as_schedule
from .schedules import _non_negative as non_negative

VectorField = Callable[[Tensor, Tensor], Tensor]

# Keywords the wrappers set themselves; ``options`` carries the rest of ``local_reg.odeint``'s.
_OWN_KEYWORDS = ("method", "rtol", "atol", "gradient", "adjoint_params")


@dataclass
class BaselineStats(RegularizationStats):
    """:class:`RegularizationStats` of a baseline regularizer's forward pass.

    Attributes:
        terms: the unweighted integrals the penalty is made of (RNODE: ``"kinetic"`` and
            ``"jacobian"``; TayNODE: ``"taylor"``); empty for STEER and in eval mode.
        t_end: STEER's end time of this pass (perturbed in training), else ``None``.
    """

    terms: dict[str, float] = field(default_factory=dict)
    t_end: float | None = None


def positive(name: str, value: object) -> float:
    if non_negative(name, value) == 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return float(value)


# Offsets the wrapper's own stream from the global one it is seeded from.
_SEED_OFFSET = 0x5EED_BA5E


def own_generator(generator: torch.Generator | None) -> torch.Generator:
    """``generator``, or a new CPU generator seeded from ``torch.initial_seed()``: ``torch.manual_seed``
    still fixes a run, the wrapper's draws live in its ``state_dict``, and building the wrapper
    leaves the global stream alone (a model initializes exactly as the vanilla one of its seed)."""
    if generator is None:
        return torch.Generator().manual_seed((torch.initial_seed() + _SEED_OFFSET) % 2**63)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return generator


class BaselineRegularized(nn.Module):
    """Base of :class:`SteerRegularized`, :class:`RNODERegularized` and :class:`TayNODERegularized`.

    ``ys = model(y0, t)``; in training mode the subclass's ``regularized_forward`` runs, in eval
    mode the plain ``local_reg.odeint`` solve (``reg_loss`` 0, ``stats.nfe_reg`` 0).
    """

    reg_loss: Tensor
    stats: BaselineStats | None
    weight: WeightSchedule | None

    def __init__(
        self,
        func: VectorField,
        *,
        weight: float | WeightSchedule | None,
        method: str | ButcherTableau,
        rtol: float,
        atol: float,
        gradient: str,
        adjoint_params: Iterable[Tensor] | None,
        generator: torch.Generator | None | bool,
        options: dict[str, Any] | None,
    ) -> None:
        """``generator=False``: the subclass draws nothing and keeps no generator."""
        super().__init__()
        if not callable(func):
            raise TypeError(f"func must be callable as func(t, y), got {type(func).__name__}")
        if is_sde(func):
            raise ValueError(
                f"{type(self).__name__} regularizes neural ODEs; func is an SDE (it has f, g and "
                "noise_type): use LocallyRegularized or GloballyRegularized for neural SDEs"
            )
        check_choice("gradient", gradient, GRADIENT_METHODS)
        get_tableau(method)
        if options is not None and not isinstance(options, dict):
            raise TypeError(
                f"options must be a dict of local_reg.odeint keywords, got {type(options).__name__}"
            )
        clashes = sorted(set(options or {}) & set(_OWN_KEYWORDS))
        if clashes:
            raise ValueError(f"options must not repeat {clashes}: pass them as keyword arguments")
        if gradient != "direct" and adjoint_params is None and not isinstance(func, nn.Module):
            # The augmented field is a module: odeint would take its (empty) parameter list and the
            # closure's parameters would silently get no gradient.
            raise ValueError(
                f"gradient={gradient!r} needs the parameters of func, but func is a plain function and "
                "adjoint_params was not given: pass adjoint_params=(tensors func depends on)"
            )
        self.func = func
        self.weight = None if weight is None else as_schedule(weight)
        self.method = method
        self.rtol = positive("rtol", rtol)
        self.atol = positive("atol", atol)
        self.gradient = gradient
        self.adjoint_params = None if adjoint_params is None else tuple(adjoint_params)
        self.generator = None if generator is False else own_generator(generator)
        self.options = dict(options or {})
        self.reg_loss = torch.zeros(())
        self.stats = None

    def solve(self, func: VectorField, y0: Tensor, t: Tensor | Sequence[float]) -> Solution:
        """``local_reg.odeint`` with this wrapper's solver options."""
        return odeint(
            func,
            y0,
            t,
            method=self.method,
            rtol=self.rtol,
            atol=self.atol,
            gradient=self.gradient,
            adjoint_params=self.adjoint_params,
            **self.options,
        )

    def forward(self, y0: Tensor, t: Tensor | Sequence[float]) -> Tensor:
        if not isinstance(y0, Tensor):
            raise TypeError(f"y0 must be a torch.Tensor, got {type(y0).__name__}")
        if self.training:
            ys, reg, self.stats = self.regularized_forward(y0, t)
            weight = 1.0 if self.weight is None else self.weight()
            self.reg_loss = reg * weight
            return ys
        solution = self.solve(self.func, y0, t)
        self.stats = solution_stats(solution, t_end=validate_times(t)[-1])
        self.reg_loss = torch.zeros((), dtype=y0.dtype, device=y0.device)
        return solution.ys

    def regularized_forward(
        self, y0: Tensor, t: Tensor | Sequence[float]
    ) -> tuple[Tensor, Tensor, BaselineStats]:
        """``(ys, unweighted penalty (0-dim), stats)`` of one training pass."""
        raise NotImplementedError

    def get_extra_state(self) -> dict[str, Any]:
        # The schedule's iteration and the generator's state, so a resumed run continues both.
        return {
            "weight": None if self.weight is None else self.weight.state_dict(),
            "generator": None if self.generator is None else self.generator.get_state(),
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if self.weight is not None and state.get("weight") is not None:
            self.weight.load_state_dict(state["weight"])
        if self.generator is not None and state.get("generator") is not None:
            self.generator.set_state(state["generator"])


def solution_stats(solution: Solution, nfe_reg: int = 0, **fields: Any) -> BaselineStats:
    """The stats of a pass around one ``local_reg.odeint`` solve: its statistics as ``main`` (whose
    ``nfe_backward`` the backward pass fills in), and ``nfe_reg`` evaluations the penalty's
    integrand added (vector--Jacobian products, forward-mode evaluations) as ``probe``."""
    return BaselineStats(
        main=solution.stats, probe=Stats(nfe=nfe_reg), n_accepted=solution.stats.n_accepted, **fields
    )
