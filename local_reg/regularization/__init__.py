"""Regularizing the solver's own heuristics so learned dynamics are cheap to solve.

- :class:`LocallyRegularized` / :func:`local_regularization`: one sampled step per training
  iteration [LR23] (Pal, Edelman, Rackauckas, ICML 2023).
- :class:`GloballyRegularized` / :func:`global_regularization`: every accepted step, differentiated
  through the solver [GR21] (Pal, Ma, Shah, Rackauckas, ICML 2021).
- Weight schedules: :class:`ConstantWeight`, :class:`ExponentialDecay`.

Both are configurations of one module, :class:`Regularized` (penalty :class:`LocalPenalty`,
:class:`GlobalPenalty`, or none for the plain model), which also takes neural SDEs.
"""

from ._module import GlobalPenalty, LocalPenalty, Regularized
from ._stats import RegularizationStats, SDERegularizationStats
from .globalreg import GloballyRegularized, global_regularization
from .local import LocallyRegularized, local_regularization
from .schedules import AdaptiveWeight, ConstantWeight, ExponentialDecay, WeightSchedule

__all__ = [
    "AdaptiveWeight",
    "ConstantWeight",
    "ExponentialDecay",
    "GlobalPenalty",
    "GloballyRegularized",
    "LocalPenalty",
    "LocallyRegularized",
    "Regularized",
    "RegularizationStats",
    "SDERegularizationStats",
    "WeightSchedule",
    "global_regularization",
    "local_regularization",
]
