"""Argument checks that need nothing else of the library, so that the modules ``_validate`` itself
imports (the tableaus, the interpolants) can use them too, and the ODE entry points can refuse an
SDE without importing the SDE solver."""

from __future__ import annotations

import functools
import inspect
import numbers
import sys
import types


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


def is_sde(module: object) -> bool:
    """True iff ``module`` looks like a torchsde SDE: callable ``f`` and ``g`` and a ``noise_type``
    (an instance: its class has them too, unbound)."""
    return (
        not isinstance(module, type)
        and callable(getattr(module, "f", None))
        and callable(getattr(module, "g", None))
        and isinstance(getattr(module, "noise_type", None), str)
    )


def forward_is_drift(module: object) -> bool:
    """True iff a call of ``module`` calls its drift ``f``: its class makes its ``forward`` its drift
    (``f = forward``), as torchcde's vector field does to be solved by torchdiffeq (which calls
    ``forward``) or, with its ``g`` and ``noise_type``, by torchsde, or makes its ``__call__`` its
    drift (``__call__ = f``), as an SDE that is not a module may. The ODE solvers (``odeint``,
    compat's) solve its call, as torchdiffeq does; the regularized models, which take SDEs too, take
    it as one."""
    drift = getattr(type(module), "f", None)
    return callable(drift) and any(
        getattr(type(module), name, None) is drift for name in ("forward", "__call__")
    )


def _compiled_module(func: object) -> object | None:
    """What ``torch.compile`` compiled into ``func``, or None where ``func`` is not compiled (a
    compiled module's class has neither the module's ``forward`` nor its ``f``)."""
    # Without torch._dynamo loaded nothing has been compiled, and importing it would cost a second.
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    if eval_frame is None:
        return None
    if isinstance(func, eval_frame.OptimizedModule):
        return func._orig_mod
    # A compiled function (a compiled module's ``forward``, or a module compiled twice) keeps
    # what it compiles here, the module's ``_wrapped_call_impl`` for a module.
    return getattr(func, "_torchdynamo_orig_callable", None)


def _called_object(func: object) -> object:
    """The object a call of ``func`` calls: through ``functools.partial``, a bound ``__call__`` or
    ``forward`` to its owner, and ``torch.compile``'s wrapper to the module it compiles, so that an
    SDE wrapped so is judged as the SDE itself (a bound drift ``f`` stays what it is, an ODE, where
    the class makes its ``__call__`` or ``forward`` its drift too)."""
    while True:
        if isinstance(func, functools.partial):
            func = func.func
        elif (compiled := _compiled_module(func)) is not None:
            func = compiled
        elif inspect.ismethod(func) and _binds_call_other_than_drift(func):
            func = func.__self__
        else:
            return func


def _binds_call_other_than_drift(method: types.MethodType) -> bool:
    """True iff the bound ``method`` is its owner's ``__call__`` or ``forward`` and not its ``f``."""
    owner, function = type(method.__self__), method.__func__
    return function is not getattr(owner, "f", None) and any(
        function is getattr(owner, name, None) for name in ("__call__", "forward", "_wrapped_call_impl")
    )


def refuse_sde(func: object) -> None:
    """The ODE solvers' refusal of an SDE, which would otherwise fail as torch's "missing forward",
    or, with a ``forward`` other than its drift, be solved as that ODE with the noise dropped
    without a word."""
    func = _called_object(func)
    if is_sde(func) and not forward_is_drift(func):
        raise TypeError(
            f"func is an SDE ({type(func).__name__} has f, g and a noise_type): solve it with sdeint "
            "(local_reg.sdeint, or local_reg.compat.sdeint in torchsde's signature); for an ODE of its "
            "drift pass func.f, for its forward's own ODE lambda t, y: func(t, y)"
        )
