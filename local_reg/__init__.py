"""local_reg: instrumented adaptive ODE solvers and local regularization of neural differential
equations (Pal, Edelman, Rackauckas, ICML 2023)."""

from ._errors import SolverError
from .controller import PIController
from .gradients import GRADIENT_METHODS
from .odeint import odeint
from .regularization import (
    AdaptiveWeight,
    ConstantWeight,
    ExponentialDecay,
    GloballyRegularized,
    LocallyRegularized,
    RegularizationStats,
    WeightSchedule,
    global_regularization,
    local_regularization,
)
from .sde import (
    SDERegularizationStats,
    SDEStats,
    is_sde,
    sde_global_regularization,
    sde_local_regularization,
    sdeint,
)
from .solution import Solution, Stats, Steps
from .step import StepResult, initial_step_size, rms_norm, step
from .tableaus import TABLEAUS, ButcherTableau, get_tableau

__all__ = [
    "GRADIENT_METHODS",
    "AdaptiveWeight",
    "ConstantWeight",
    "ExponentialDecay",
    "GloballyRegularized",
    "LocallyRegularized",
    "RegularizationStats",
    "WeightSchedule",
    "global_regularization",
    "local_regularization",
    "TABLEAUS",
    "ButcherTableau",
    "PIController",
    "Solution",
    "SolverError",
    "Stats",
    "StepResult",
    "Steps",
    "get_tableau",
    "initial_step_size",
    "odeint",
    "rms_norm",
    "step",
    "SDERegularizationStats",
    "SDEStats",
    "is_sde",
    "sde_global_regularization",
    "sde_local_regularization",
    "sdeint",
]
__version__ = "0.1.0"
