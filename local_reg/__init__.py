"""local_reg: instrumented adaptive ODE solvers and local regularization of neural differential
equations (Pal, Edelman, Rackauckas, ICML 2023)."""

from ._errors import SolverError
from ._odeint import odeint
from ._step import StepResult, initial_step_size, rms_norm, step
from .controller import PIController
from .gradients import GRADIENT_METHODS, BacksolveAdjoint, Checkpoint, Direct, GradientMethod, Symplectic
from .interpolants import Interpolant, get_interpolant
from .regularization import (
    AdaptiveWeight,
    ConstantWeight,
    ExponentialDecay,
    GloballyRegularized,
    GlobalPenalty,
    LocallyRegularized,
    LocalPenalty,
    RegularizationStats,
    Regularized,
    SDERegularizationStats,
    WeightSchedule,
    global_regularization,
    local_regularization,
)
from .sde import SDEStats, is_sde, sdeint
from .solution import Solution, Stats, Steps
from .tableaus import TABLEAUS, ButcherTableau, get_tableau

__all__ = [
    "GRADIENT_METHODS",
    "AdaptiveWeight",
    "BacksolveAdjoint",
    "Checkpoint",
    "Direct",
    "GradientMethod",
    "Symplectic",
    "ConstantWeight",
    "ExponentialDecay",
    "GlobalPenalty",
    "GloballyRegularized",
    "LocalPenalty",
    "LocallyRegularized",
    "Regularized",
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
    "Interpolant",
    "get_interpolant",
    "initial_step_size",
    "odeint",
    "rms_norm",
    "step",
    "SDERegularizationStats",
    "SDEStats",
    "is_sde",
    "sdeint",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Deprecated SDE spellings: the regularizers take SDEs themselves.
    if name in ("sde_local_regularization", "sde_global_regularization"):
        from . import sde

        return getattr(sde, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
