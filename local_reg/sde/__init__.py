"""Neural SDEs: adaptive Euler--Maruyama with an embedded error estimate, and its regularization."""

from .problem import is_sde
from .sdeint import sdeint
from .solution import SDEStats
from .step import SDEStepResult, sde_initial_step_size, sde_step

__all__ = ["SDEStats", "SDEStepResult", "is_sde", "sde_initial_step_size", "sde_step", "sdeint"]
