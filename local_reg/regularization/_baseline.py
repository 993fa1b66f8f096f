"""What the baseline penalties (STEER, RNODE, TayNODE) share: the checks of the problem they
regularize, the statistics they report and the generator they draw from.

They are penalty strategies of :class:`local_reg.Regularized`, like the local and global ones,
and solve through the problem's :func:`local_reg.odeint` settings, so every gradient method of the
library applies to them unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from .._tuple import owning_module
from .._validate import check_generator
from ..solution import Solution, Stats
from ._problems import ODEProblem
from ._stats import RegularizationStats


@dataclass(eq=False)  # identity, as its base's: a field-wise == would compare the tensor state
class BaselineStats(RegularizationStats):
    """:class:`RegularizationStats` of a baseline regularizer's training pass.

    Attributes:
        terms: the unweighted integrals the penalty is made of (RNODE: ``"kinetic"`` and
            ``"jacobian"``; TayNODE: ``"taylor"``); empty for STEER.
        t_end: STEER's perturbed end time of this pass, else ``None``.
    """

    terms: dict[str, float] = field(default_factory=dict)
    t_end: float | None = None


# Offsets the wrapper's own stream from the global one it is seeded from.
_SEED_OFFSET = 0x5EED_BA5E


def own_generator(generator: torch.Generator | None) -> torch.Generator:
    """``generator``, or a new CPU generator seeded from ``torch.initial_seed()``: ``torch.manual_seed``
    still fixes a run, the wrapper's draws live in its ``state_dict``, and building the wrapper
    leaves the global stream alone (a model initializes exactly as the vanilla one of its seed)."""
    if generator is None:
        return torch.Generator().manual_seed((torch.initial_seed() + _SEED_OFFSET) % 2**63)
    check_generator(generator)
    return generator


def call_generator(generator: torch.Generator | None) -> torch.Generator:
    """The generator of one functional call (``steer_regularization`` and kin): ``generator``, or a new
    one seeded from the global stream, so that repeated calls draw anew and ``torch.manual_seed``
    fixes them (a module's own generator, :func:`own_generator`, would repeat its first draw)."""
    if generator is None:
        return torch.Generator().manual_seed(int(torch.randint(2**62, (), device="cpu")))
    return own_generator(generator)


class BaselinePenalty:
    """A penalty strategy for neural ODEs solved by ``local_reg.odeint`` (see :mod:`._module`)."""

    draws: ClassVar[bool] = False  # whether it draws from the model's generator
    reads_beside_solve: ClassVar[tuple[str, ...]] = ()  # the main solve's options it reads itself

    def check(self, problem: object) -> None:
        name = type(self).__name__
        if not isinstance(problem, ODEProblem):
            raise ValueError(
                f"{name} regularizes neural ODEs; func is an SDE (it has f, g and noise_type): use "
                "LocallyRegularized or GloballyRegularized for neural SDEs"
            )
        if problem.backend != "local_reg":
            raise ValueError(f"{name} solves with local_reg.odeint, not backend={problem.backend!r}")
        if (
            problem.gradient.graph_free
            and problem.adjoint_params is None
            and not isinstance(problem.func, nn.Module)
        ):
            # The augmented field is a module: odeint would take its (empty) parameter list and the
            # closure's parameters would silently get no gradient.
            raise ValueError(
                f"gradient={problem.gradient.name!r} needs the parameters of func, but func is a plain "
                "function and adjoint_params was not given: pass adjoint_params=(tensors func depends on)"
            )


def refuse_running_statistics(func: object, penalty: str, transform: str) -> None:
    """Refuse (``ValueError``) a batch norm in training mode with running statistics in ``func``'s
    module: ``penalty`` differentiates ``func`` inside ``transform`` (a ``torch.func`` transform),
    where batch norm's in-place update of those statistics fails with torch's own message, which
    names neither the layer nor the penalty (instance norm's update works there)."""
    owner = owning_module(func)
    for name, module in [] if owner is None else owner.named_modules():
        if (
            isinstance(module, nn.modules.batchnorm._BatchNorm)
            and module.track_running_stats
            and module.training
        ):
            raise ValueError(
                f"{penalty} differentiates func by {transform}, inside which the "
                f"{type(module).__name__} {name or '(func itself)'!r} in training mode cannot update its "
                "running statistics: put it in eval mode, build it with track_running_stats=False, "
                "or call torch.func.replace_all_batch_norm_modules_(func)"
            )


def solution_stats(
    solution: Solution, nfe_reg: int = 0, *, penalty: float, terms: dict[str, float]
) -> BaselineStats:
    """The stats of a pass around one ``local_reg.odeint`` solve: its statistics as ``main`` (whose
    ``nfe_backward`` the backward pass fills in), and ``nfe_reg`` evaluations the penalty's
    integrand added (vector--Jacobian products, forward-mode evaluations) as ``probe``; the
    penalty's value and its ``terms``."""
    return BaselineStats(
        main=solution.stats,
        probe=Stats(nfe=nfe_reg),
        n_accepted=solution.stats.n_accepted,
        penalty=penalty,
        terms=terms,
    )
