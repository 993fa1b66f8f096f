"""Construction-time checks of a regularized model's main-solve settings, per backend.

Everything a typo can break (the method's name, the tolerances, the keys of ``options``) fails when
the model is made, with a ``ValueError``/``TypeError`` naming the argument, not at the first batch.
The keys ``options`` may hold are read off the backend solver's own signature, so they stay in
step with it.
"""

from __future__ import annotations

import difflib
import inspect
import numbers
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

# With the library, not at a model's first use (a hard dependency, about 0.2 s): a first import
# inside a user's torch.compile was traced by dynamo (an internal error from scipy's import), and
# inside torch.export it left torchdiffeq's tableaus as export's fake tensors for the process.
from torchdiffeq._impl.odeint import SOLVERS

from .._validate import (
    SDE_SENSEALG_HINT,
    SENSEALG_HINT,
    check_adaptive_settings_unset,
    check_bool,
    check_choice,
    positive_float,
    relative_tolerance,
    seed_hint,
    sensealg_hint,
    step_control_spellings,
    type_name,
)
from ..compat import torchdiffeq_bounds
from ..gradients import GradientMethod
from ..tableaus import ButcherTableau, get_tableau

# Keywords the problem itself passes to the backend solver: not for ``options``.
_ODEINT_RESERVED = {"func", "y0", "t", "method", "rtol", "atol", "gradient", "adjoint_params"}
_ODEINT_RESERVED |= {"record_states", "step_penalty"}
_SDEINT_RESERVED = {"sde", "y0", "t", "method", "rtol", "atol", "bm", "generator", "record_states"}
_SDEINT_RESERVED |= {"step_penalty", "gradient", "adjoint_params"}
_TORCHSDE_RESERVED = {"sde", "y0", "ts", "bm", "method", "rtol", "atol", "unused_kwargs", "adjoint_params"}
# These change what torchsde returns or which methods of the SDE it calls, which the backend reads.
_TORCHSDE_UNSUPPORTED = ("logqp", "extra", "extra_solver_state", "names")
TORCHSDE_ITO_METHODS = ("euler", "milstein", "srk")
"""torchsde's schemes for Ito SDEs, the kind the regularized models solve (its others are
Stratonovich schemes); ``srk`` reads the space-time Levy area of the Brownian motion."""
_TORCHDIFFEQ_RESERVED = {"self", "func", "y0", "rtol", "atol", "unused_kwargs", "kwargs"}
# diffrax's dt0 as a model's options explain it (step_size= is the probe's keyword on a model).
_OPTIONS_DT0_HINT = (
    "diffrax's dt0: options={'step_size': ...} here for its default fixed step (ConstantStepSize), "
    "options={'first_step': ...} for an adaptive solve's first step"
)
# Other libraries' names of settings that local_reg's solvers spell otherwise, as the options explain
# them (a model's keywords and the keys of its options= alike).
_OWN_SOLVER_SPELLINGS = {
    "dt0": _OPTIONS_DT0_HINT,
    **step_control_spellings("options={{'controller': PIController({keyword}=...)}}"),
}

ODE_DEFAULT_METHOD = {"local_reg": "tsit5", "torchdiffeq": "dopri5"}
"""The main solve's method when none is given, by backend."""


def ode_method(backend: str, method: Any) -> Any:
    """The method an ODE main solve on ``backend`` uses: ``method``, or the backend's default."""
    return ODE_DEFAULT_METHOD[backend] if method is None else method


def keyword_names(functions: Iterable[Callable[..., Any]], reserved: set[str]) -> tuple[str, ...]:
    names: set[str] = set()
    for function in functions:
        for parameter in inspect.signature(function).parameters.values():
            if parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
                names.add(parameter.name)
    return tuple(sorted(names - reserved))


def check_option_keys(
    options: object, allowed: tuple[str, ...], backend: str, spellings: Mapping[str, str] = {}
) -> dict[str, Any]:
    """``options`` as a dict whose keys are all in ``allowed``; an unknown key that ``spellings``
    holds (another library's name for a setting) is refused with what to write instead."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise TypeError(f"options must be a dict of solver keywords, got {type(options).__name__}")
    unknown = sorted(str(key) for key in options if key not in allowed)
    if unknown:
        hints = "; ".join(f"{key!r}: {spellings[key]}" for key in unknown if key in spellings)
        raise ValueError(
            f"options: unknown keys {unknown} for backend={backend!r}{f' ({hints})' if hints else ''}; "
            f"expected some of {list(allowed)}"
        )
    return dict(options)


def torchdiffeq_option_names(method: str) -> tuple[str, ...]:
    solver = SOLVERS[method]
    inits = [klass.__init__ for klass in solver.__mro__ if "__init__" in vars(klass) and klass is not object]
    return keyword_names(inits, _TORCHDIFFEQ_RESERVED)


def solver_option_names(sde: bool, backend: object, method: object) -> tuple[str, ...]:
    """The keys ``options`` takes for the main solve of an SDE or ODE on ``backend``: the backend
    solver's keywords less the module's own and those it does not support (empty for a backend or
    method that is not one). The settings checks and the refusal of misplaced keywords read it."""
    if backend in (None, "local_reg"):
        if sde:
            from ..sde import sdeint

            return keyword_names([sdeint], _SDEINT_RESERVED)
        from .._odeint import odeint

        return keyword_names([odeint], _ODEINT_RESERVED)
    if backend == "torchsde" and sde:
        import torchsde

        reserved = _TORCHSDE_RESERVED | set(_TORCHSDE_UNSUPPORTED)
        return keyword_names([torchsde.sdeint, torchsde.sdeint_adjoint], reserved)
    if backend == "torchdiffeq" and not sde:
        name = ode_method(backend, method)
        return torchdiffeq_option_names(name) if isinstance(name, str) and name in SOLVERS else ()
    return ()


_ADJOINTS = ("adjoint_method", "adjoint_rtol", "adjoint_atol", "adjoint_options", "adjoint_adaptive")
_ODE_ADJOINT_SETTINGS = (
    "torchdiffeq's adjoint settings: a backsolve adjoint's own, gradient=BacksolveAdjoint(method=..., "
    "rtol=..., atol=..., norm='seminorm') where this model takes that gradient method"
)
_SDE_ADJOINT_SETTINGS = (
    "torchsde's adjoint settings: with backend='torchsde' and gradient='adjoint' they go in options=; "
    "local_reg's SDE solve differentiates by 'direct' or 'checkpoint'"
)


def _foreign_spellings(backend: object, sde: bool, options: tuple[str, ...]) -> dict[str, str]:
    """What a model says of torchdiffeq's, torchsde's and diffrax's keywords that are not the
    solver's options on its ``backend`` (``odeint``'s deprecated ``adjoint_*`` keywords included:
    the gradient object replaces them)."""
    own_solver = backend in (None, "local_reg")
    foreign = {}
    if not sde:
        foreign.update(dict.fromkeys(_ADJOINTS[:-1], _ODE_ADJOINT_SETTINGS))
    elif own_solver:
        foreign.update(dict.fromkeys(_ADJOINTS, _SDE_ADJOINT_SETTINGS))
    elif backend == "torchsde":
        # torchsde's sdeint, which runs without gradient='adjoint', drops them with a warning only.
        hint = "torchsde's adjoint settings: with gradient='adjoint', options={...} takes them"
        foreign.update(dict.fromkeys(_ADJOINTS, hint))
    if own_solver:
        foreign["max_num_steps"] = "torchdiffeq's step limit: options={'max_steps': ...} here"
        foreign.update(_OWN_SOLVER_SPELLINGS)
    # SciMLSensitivity's and StochasticDiffEq's settings of a port from Julia, as this backend has them.
    foreign["sensealg"] = {
        (False, True): SENSEALG_HINT,
        (False, False): sensealg_hint("'direct' or 'adjoint' with backend='torchdiffeq'"),
        (True, True): SDE_SENSEALG_HINT,
        (True, False): sensealg_hint("'direct' or 'adjoint' with backend='torchsde'"),
    }[sde, own_solver]
    step_limit = "max_steps" if own_solver else "max_num_steps" if backend == "torchdiffeq" else None
    if step_limit is not None:
        foreign["maxiters"] = f"OrdinaryDiffEq's step limit: options={{{step_limit!r}: ...}} here"
    if sde:
        foreign["seed"] = seed_hint("at the call, model(y0, t, bm=...)")
    return {
        name: hint for name, hint in foreign.items() if name.startswith("adjoint_") or name not in options
    }


def _paper_code_spellings(local: bool) -> dict[str, str]:
    """What a model says of the keywords of the paper's own Julia layer (``NeuralODE(model;
    regularize=:unbiased, regularize_type=:error_estimate, ...)``), ``local`` for a model of local
    regularization, which has their counterparts."""

    def setting(keyword: str, value: str) -> str:
        return (
            f"{keyword}={value!r} here"
            if local
            else f"local_reg.LocallyRegularized(func, {keyword}={value!r})"
        )

    return {
        "regularize": f"the paper's code's regularize=: {setting('sampling', 'random')} for :unbiased, "
        "sampling='biased' for :biased (:none: local_reg.Regularized(func))",
        "regularize_type": f"the paper's code's regularize_type=: {setting('regularizer', 'error')} for "
        ":error_estimate, regularizer='stiffness' for :stiffness_estimate",
    }


def misplaced_keywords(
    module: str, given: dict[str, Any], options: tuple[str, ...], own: list[str], backend: object, sde: bool
) -> TypeError:
    """The refusal of keywords given to a regularized module that it does not take: the solver's
    (``options``) go in ``options=``; torchdiffeq's or torchsde's spelling of a setting says what to
    write; another is named as Python would, with the module's own keyword (``own``) it is closest
    to."""
    foreign = {**_foreign_spellings(backend, sde, options), **_paper_code_spellings("sampling" in own)}
    spelled = sorted(name for name in given if name in foreign)
    solver = sorted(name for name in given if name in options and name not in foreign)
    other = sorted(name for name in given if name not in options and name not in foreign)
    parts = [f"{module}() got an unexpected keyword argument {name!r} ({foreign[name]})" for name in spelled]
    if other:
        close = [match for name in other for match in difflib.get_close_matches(name, own, n=1)]
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        parts.append(f"{module}() got unexpected keyword arguments: {', '.join(other)}{hint}")
    if solver:
        example = ", ".join(f"{name!r}: {given[name]!r}" for name in solver)
        parts.append(
            f"{', '.join(solver)} {'is a keyword' if len(solver) == 1 else 'are keywords'} of the solve that "
            f"{module} does not take itself: pass options={{{example}}}"
        )
    return TypeError("; ".join(parts))


def main_gradient(gradient: GradientMethod, options: dict[str, Any]) -> GradientMethod:
    """The gradient method of an ODE main solve with ``options``: ``gradient``, or the one the
    deprecated ``checkpoints``/``adjoint_*`` keys of ``options`` describe (as ``odeint`` reads them)."""
    from .._odeint import _legacy_gradient

    legacy = ("checkpoints", "adjoint_method", "adjoint_rtol", "adjoint_atol", "adjoint_options")
    if not any(options.get(name) is not None for name in legacy):
        # No filter change: catch_warnings resets every warning's once-per-location memory, and
        # its filters are the whole process's (another thread's warnings would be swallowed).
        return gradient
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the solve warns of them
        return _legacy_gradient(gradient, *(options.get(name) for name in legacy))


def check_ode_settings(
    backend: str, method: object, rtol: object, atol: object, options: object, gradient: GradientMethod
) -> dict[str, Any]:
    """Check an ODE main solve's method, tolerances and ``options``, and for the local_reg backend
    the ``gradient`` method against them as ``odeint`` checks it at every solve (the deprecated
    ``checkpoints``/``adjoint_*`` keys of ``options`` it converts; a fixed-step backward method
    without a step size, say); return the options."""
    rtol = relative_tolerance("rtol", rtol)
    atol = positive_float("atol", atol)
    if backend == "local_reg":
        from .._integrate import DEFAULT_MAX_STEPS, SolveOptions

        if method is not None and not isinstance(method, (str, ButcherTableau)):
            # get_tableau's own refusal, made before the call that needs the narrower type.
            raise TypeError(f"method must be a str or ButcherTableau, got {type(method).__name__}")
        tableau = get_tableau(ode_method(backend, method))
        options = check_option_keys(
            options, solver_option_names(False, backend, method), backend, _OWN_SOLVER_SPELLINGS
        )
        for name in ("step_to_outputs", "dense"):
            check_bool(f"options[{name!r}]", options.get(name, False))
        if not tableau.adaptive and options.get("step_size") is None:
            # SolveOptions' own refusal says "pass step_size", which a model takes as the probe's.
            raise ValueError(f"method {tableau.name!r} is fixed-step: pass options={{'step_size': ...}}")
        if options.get("dense"):
            raise ValueError(
                "options['dense']=True: the model returns ys only, so the dense records would be kept "
                "and never read; for the solution between output times use local_reg.odeint(dense=True)"
            )
        solve_options = SolveOptions(
            rtol=rtol,
            atol=atol,
            first_step=options.get("first_step"),
            max_steps=options.get("max_steps", DEFAULT_MAX_STEPS),
            step_size=options.get("step_size"),
            controller=options.get("controller"),
            tableau=tableau,
            norm=options.get("norm"),
            callbacks=options.get("callbacks"),
            compile=options.get("compile", False),
            entries_of="options",
        )
        if solve_options.step_size is None:
            solve_options.controller.gains(tableau.order)  # a controller this method cannot use
        gradient = main_gradient(gradient, options)
        gradient.check(solve_options)
        # The main solve leaves a first step beside a fixed step_size unread, and the probe does too.
        check_adaptive_settings_unset(
            solve_options.step_size, {"options['first_step']": options.get("first_step")}
        )
        if options.get("callbacks") is not None and options["callbacks"].stop is not None:
            raise ValueError(
                "options['callbacks'] has a stop condition, which needs a solve over exactly [t0, t1]: "
                "a regularized model adds its own output times (t_reg); stop the solve outside the model"
            )
        return options
    if isinstance(method, ButcherTableau):
        raise TypeError(
            f"method: backend='torchdiffeq' takes torchdiffeq's method names, got the tableau "
            f"{method.name!r}: a tableau of your own needs backend='local_reg' (the default)"
        )
    name = check_choice("method", ode_method(backend, method), sorted(SOLVERS))
    if name == "scipy_solver":
        # It solves on a numpy copy: the outputs carry no graph, and a model trained on them would
        # train on its penalty alone, without a word.
        raise ValueError(
            "method='scipy_solver' returns solutions without gradients, which a model trains on: use "
            "one of torchdiffeq's torch solvers (e.g. 'dopri5'), or local_reg.compat.odeint / "
            "torchdiffeq.odeint with it for a solve without gradients"
        )
    options = check_option_keys(options, solver_option_names(False, backend, name), backend)
    # The values torchdiffeq would refuse (or misuse) only at the first call.
    given: dict[str, float] = {
        key: positive_float(f"options[{key!r}]", options[key])
        for key in ("first_step", "step_size", "safety", "ifactor", "dfactor")
        if key in options and (options[key] is not None or key not in ("first_step", "step_size"))
    }
    # Beyond these a rejected step need not shrink: torchdiffeq tries it again, for ever (its step
    # limit is 2**31 - 1 attempts). Its other factors are its own (an ifactor below 1 underflows).
    shrinking = (
        ("safety", given.get("safety", 0.9) <= 1.0, "at most 1"),
        ("dfactor", given.get("dfactor", 0.2) < 1.0, "below 1"),
    )
    for key, shrinks, bound in shrinking:
        if not shrinks:
            raise ValueError(
                f"options[{key!r}] must be {bound}, got {given[key]}: torchdiffeq's rejected steps "
                "would not shrink, and its solve would try them again without end"
            )
    if "norm" in options and not callable(options["norm"]):
        # torchdiffeq calls it at the first step ("'int' object is not callable"); None is no default there.
        norm = type_name(options["norm"])
        raise TypeError(f"options['norm'] must be callable as norm(tensor) -> 0-dim tensor, got {norm}")
    torchdiffeq_bounds(options)  # the step bounds and landing times the probe keeps to
    steps = options.get("max_num_steps", 1)
    # torchdiffeq reads it into an int32 tensor: a whole float is taken, beyond int32 is not.
    whole = isinstance(steps, numbers.Real) and not isinstance(steps, bool) and float(steps).is_integer()
    if not (whole and 1 <= steps <= 2**31 - 1):
        raise ValueError(
            f"options['max_num_steps'] must be a whole number from 1 to 2**31 - 1, got {steps!r}"
        )
    return options


def check_sde_settings(
    backend: str, method: object, rtol: object, atol: object, options: object, gradient: GradientMethod
) -> dict[str, Any]:
    """Check an SDE main solve's method, tolerances and ``options``; return the options. (The SDE
    backends' ``gradient`` methods take no settings to check against them.)"""
    rtol = relative_tolerance("rtol", rtol)
    atol = positive_float("atol", atol)
    if backend == "local_reg":
        from .._integrate import DEFAULT_MAX_STEPS, SolveOptions
        from ..sde.problem import check_method

        if method is not None:
            check_method(method)
        options = check_option_keys(
            options, solver_option_names(True, backend, method), backend, _OWN_SOLVER_SPELLINGS
        )
        SolveOptions(
            rtol=rtol,
            atol=atol,
            first_step=options.get("first_step"),
            max_steps=options.get("max_steps", DEFAULT_MAX_STEPS),
            step_size=options.get("step_size"),
            controller=options.get("controller"),
            entries_of="options",
        )
        # The main solve leaves a first step beside a fixed step_size unread, and the probe does too.
        check_adaptive_settings_unset(
            options.get("step_size"), {"options['first_step']": options.get("first_step")}
        )
        return options
    from torchsde.settings import METHODS as TORCHSDE_METHODS

    if method is not None and method not in TORCHSDE_ITO_METHODS:
        if method in vars(TORCHSDE_METHODS).values():
            raise ValueError(
                f"method {method!r} is a Stratonovich scheme of torchsde, and the regularized models solve "
                f"Ito SDEs: expected one of {list(TORCHSDE_ITO_METHODS)}"
            )
        check_choice("method", method, TORCHSDE_ITO_METHODS)
    unsupported = sorted(key for key in _TORCHSDE_UNSUPPORTED if isinstance(options, dict) and key in options)
    if unsupported:
        raise ValueError(
            f"options {unsupported} change what torchsde.sdeint returns or which methods of the SDE it "
            "calls, which the regularized models read: they are not supported"
        )
    options = check_option_keys(options, solver_option_names(True, backend, method), backend)
    adjoint_settings = sorted(key for key in options if key.startswith("adjoint_"))
    if adjoint_settings and gradient.name != "adjoint":
        raise ValueError(
            f"options {adjoint_settings} are torchsde.sdeint_adjoint's, which only gradient='adjoint' "
            f"runs: with gradient={gradient.name!r}, torchsde.sdeint would drop them"
        )
    # torchsde itself loops forever on a zero or negative step.
    for name in ("dt", "dt_min"):
        if name in options:
            positive_float(f"options[{name!r}]", options[name])
    for name in ("adaptive", "adjoint_adaptive"):
        if name in options:
            check_bool(f"options[{name!r}]", options[name])
    return options
