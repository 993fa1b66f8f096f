"""Regularizing the solver's own heuristics so learned dynamics are cheap to solve.

- :class:`LocallyRegularized` / :func:`local_regularization`: one sampled time per training
  iteration [LR23] (Pal, Edelman, Rackauckas, ICML 2023): by default the field's mean square rate
  there, or the paper's error estimate of one probe step from there.
- :class:`GloballyRegularized` / :func:`global_regularization`: every accepted step, differentiated
  through the solver [GR21] (Pal, Ma, Shah, Rackauckas, ICML 2021).
- Baselines of [LR23]'s comparison: :class:`SteerRegularized` (random end time, Ghosh et al.
  2020), :class:`RNODERegularized` (kinetic energy and Jacobian norm, Finlay et al. 2020) and
  :class:`TayNODERegularized` (K-th derivative of the solution, Kelly et al. 2020), each with its
  functional form (:func:`steer_regularization`, :func:`rnode_regularization`,
  :func:`taynode_regularization`).
- Weight schedules: :class:`ConstantWeight`, :class:`ExponentialDecay`; weights that tune themselves:
  :class:`AdaptiveWeight`, :class:`RatioWeight` (a stated share of the gradient).

Both are configurations of one module, :class:`Regularized` (penalty :class:`LocalPenalty`,
:class:`GlobalPenalty`, or none for the plain model), which also takes neural SDEs.
"""

import typing as _typing

from ._baseline import BaselineStats
from ._diagnostics import GradientRatio
from ._module import GlobalPenalty, LocalPenalty, Penalty, Regularized
from ._stats import RegularizationStats
from .globalreg import GloballyRegularized, global_regularization
from .local import LocallyRegularized, local_regularization
from .rnode import RNODERegularized, rnode_regularization
from .schedules import AdaptiveWeight, ConstantWeight, ExponentialDecay, RatioWeight, WeightSchedule
from .steer import SteerRegularized, steer_regularization
from .taynode import TayNODERegularized, taynode_regularization

__all__ = [
    "AdaptiveWeight",
    "BaselineStats",
    "RNODERegularized",
    "SteerRegularized",
    "TayNODERegularized",
    "ConstantWeight",
    "ExponentialDecay",
    "GlobalPenalty",
    "GradientRatio",
    "GloballyRegularized",
    "LocalPenalty",
    "LocallyRegularized",
    "Penalty",
    "RatioWeight",
    "Regularized",
    "RegularizationStats",
    "WeightSchedule",
    "global_regularization",
    "local_regularization",
    "rnode_regularization",
    "steer_regularization",
    "taynode_regularization",
]


if _typing.TYPE_CHECKING:
    # The deprecated spelling __getattr__ serves (with a warning), for type checkers (local_reg.sde's
    # declarations say why).
    SDERegularizationStats = RegularizationStats
else:

    def __getattr__(name: str) -> _typing.Any:
        if name == "SDERegularizationStats":  # one RegularizationStats serves ODEs and SDEs
            from ..sde import _moved

            return _moved(name, f"local_reg.regularization.{name}")
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
