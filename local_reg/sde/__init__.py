"""Neural SDEs: adaptive Euler--Maruyama with an embedded error estimate, and its regularization.

- :func:`sdeint`: the solver (:mod:`local_reg.sde.step` has the scheme and the error estimate).
- :func:`sde_local_regularization`, :func:`sde_global_regularization`: the penalties [LR23, GR21].
- :func:`is_sde`: does a module look like a torchsde SDE (``f``, ``g``, ``noise_type``)?
  :class:`local_reg.LocallyRegularized` and :class:`local_reg.GloballyRegularized` accept such a
  module and then solve with :func:`sdeint`; :class:`SDEBlock` is the unregularized module.
"""

from ..solution import Stats as SDEStats
from ._sdeint import sdeint
from ._step import SDEStepResult, sde_initial_step_size, sde_step
from .module import SDEBlock
from .problem import is_sde
from .regularization import sde_global_regularization, sde_local_regularization, sde_solve_plain
from .stats import SDERegularizationStats

__all__ = [
    "SDEBlock",
    "SDERegularizationStats",
    "SDEStats",
    "SDEStepResult",
    "is_sde",
    "sde_global_regularization",
    "sde_initial_step_size",
    "sde_local_regularization",
    "sde_solve_plain",
    "sde_step",
    "sdeint",
]
