"""local_reg: instrumented adaptive ODE solvers and local regularization of neural differential
equations (Pal, Edelman, Rackauckas, ICML 2023)."""

import typing as _typing

from . import regularization, sde
from ._checked_step import initial_step_size, step
from ._errors import SolverError
from ._events import odeint_event
from ._integrate import StepCallbacks
from ._odeint import odeint
from ._step import StepResult, rms_norm
from .controller import PIController
from .gradients import (
    GRADIENT_METHODS,
    BacksolveAdjoint,
    Checkpoint,
    Direct,
    GradientMethod,
    InterpolatingAdjoint,
    Symplectic,
)
from .interpolants import Interpolant, get_interpolant
from .regularization import *  # noqa: F403 -- its __all__: the regularizers, schedules and stats
from .sde import SDEStats, is_sde, sdeint
from .solution import Solution, Stats, Steps
from .tableaus import TABLEAUS, ButcherTableau, get_tableau

__all__ = [
    "GRADIENT_METHODS",
    "BacksolveAdjoint",
    "ButcherTableau",
    "Checkpoint",
    "Direct",
    "GradientMethod",
    "InterpolatingAdjoint",
    "PIController",
    "SDEStats",
    "Solution",
    "SolverError",
    "Stats",
    "StepCallbacks",
    "StepResult",
    "Steps",
    "Symplectic",
    "TABLEAUS",
    "get_tableau",
    "Interpolant",
    "get_interpolant",
    "initial_step_size",
    "is_sde",
    "odeint",
    "odeint_event",
    "rms_norm",
    "sdeint",
    "step",
    *regularization.__all__,
]
__version__ = "0.1.0"


if _typing.TYPE_CHECKING:
    # The deprecated spellings __getattr__ serves (with a warning), as local_reg.sde declares them.
    from .sde import SDEBlock as SDEBlock
    from .sde import SDERegularizationStats as SDERegularizationStats
    from .sde import sde_global_regularization as sde_global_regularization
    from .sde import sde_local_regularization as sde_local_regularization
else:

    def __getattr__(name: str) -> _typing.Any:
        # Deprecated SDE spellings: the regularizers take SDEs themselves.
        if name in sde._MOVED:
            return sde._moved(name, f"local_reg.{name}")
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
