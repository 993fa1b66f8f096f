"""Regularizing the solver's own heuristics so learned dynamics are cheap to solve.

- :class:`LocallyRegularized` / :func:`local_regularization`: one sampled step per training
  iteration [LR23] (Pal, Edelman, Rackauckas, ICML 2023).
- :class:`GloballyRegularized` / :func:`global_regularization`: every accepted step, differentiated
  through the solver [GR21] (Pal, Ma, Shah, Rackauckas, ICML 2021).
- Weight schedules: :class:`ConstantWeight`, :class:`ExponentialDecay`; a weight that tunes itself
  by dual ascent on a stated price: :class:`AdaptiveWeight`.
"""

from ..solution import RegularizationStats
from .globalreg import GloballyRegularized, global_regularization
from .local import LocallyRegularized, local_regularization
from .schedules import AdaptiveWeight, ConstantWeight, ExponentialDecay, WeightSchedule

__all__ = [
    "AdaptiveWeight",
    "ConstantWeight",
    "ExponentialDecay",
    "GloballyRegularized",
    "LocallyRegularized",
    "RegularizationStats",
    "WeightSchedule",
    "global_regularization",
    "local_regularization",
]
