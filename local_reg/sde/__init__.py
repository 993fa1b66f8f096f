"""Neural SDEs: adaptive Euler--Maruyama with an embedded error estimate.

- :func:`sdeint`: the solver (:mod:`local_reg.sde._step` has the scheme and the error estimate).
- :func:`is_sde`: does a module look like a torchsde SDE (``f``, ``g``, ``noise_type``)?

:class:`local_reg.LocallyRegularized`, :class:`local_reg.GloballyRegularized` and the plain
:class:`local_reg.Regularized` accept such a module and then solve with :func:`sdeint` (or torchsde).
"""

import typing as _typing

from .._errors import warn as _warn
from ..solution import Stats as SDEStats
from ._sdeint import sdeint
from ._step import SDEStepResult, sde_initial_step_size, sde_step
from .problem import is_sde

_MOVED = {
    "SDEBlock": "Regularized",
    "SDERegularizationStats": "RegularizationStats",
    "sde_local_regularization": "local_regularization",
    "sde_global_regularization": "global_regularization",
}
"""Deprecated SDE spellings and the regularization names that replaced them (one module serves both
kinds of problem)."""


def _moved(name: str, spelled: str) -> object:
    """What replaced the deprecated ``name``, after a ``DeprecationWarning`` naming it as the user
    spelled it (``local_reg.SDEBlock`` or ``local_reg.sde.SDEBlock``)."""
    from .. import regularization

    _warn(
        f"{spelled} is deprecated: use local_reg.{_MOVED[name]} (the regularizers take SDEs too)",
        DeprecationWarning,
    )
    return getattr(regularization, _MOVED[name])


if _typing.TYPE_CHECKING:
    # The deprecated spellings __getattr__ serves (with a warning), as type checkers should read
    # them: a __getattr__ they saw would make every misspelled name from the package Any. Assigned,
    # not imported under other names: an assignment is exported to a strict checker.
    from .. import regularization as _regularization

    SDERegularizationStats = _regularization.RegularizationStats
    SDEBlock = _regularization.Regularized
    sde_global_regularization = _regularization.global_regularization
    sde_local_regularization = _regularization.local_regularization
else:

    def __getattr__(name: str) -> _typing.Any:
        if name in _MOVED:
            return _moved(name, f"local_reg.sde.{name}")
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["SDEStats", "SDEStepResult", "is_sde", "sde_initial_step_size", "sde_step", "sdeint"]
