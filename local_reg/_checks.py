"""Argument checks that need nothing else of the library, so that the modules ``_validate`` itself
imports (the tableaus, the interpolants) can use them too."""

from __future__ import annotations

import numbers


def type_name(value: object) -> str:
    """``value``'s type for an error message, qualified outside the builtins (numpy's ``bool`` is
    ``numpy.bool``, not the ``bool`` the message asks for)."""
    kind = type(value)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def check_bool(name: str, value: object) -> bool:
    """``value`` if it is a bool (numpy's is not), else a ``TypeError`` naming ``name``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type_name(value)}")
    return value


def _integer(name: str, value: object, kind: str) -> int:
    """``value`` as an int (numpy's integers too); a bool or another type is a ``TypeError``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a {kind} int, got {type_name(value)}")
    return int(value)


def positive_int(name: str, value: object) -> int:
    value = _integer(name, value, "positive")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return value


def non_negative_int(name: str, value: object) -> int:
    value = _integer(name, value, "non-negative")
    if value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value}")
    return value
