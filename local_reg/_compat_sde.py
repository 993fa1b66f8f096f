"""torchsde 0.2.6's ``sdeint`` on local_reg's SDE solver: ``from local_reg.compat import sdeint``.

:func:`sdeint` takes torchsde's signature and defaults and returns what torchsde returns, the tensor of
states at ``ts`` of shape ``(len(ts), batch, d)``, solved by :func:`local_reg.sdeint`:

========================================  ===========================================================
torchsde                                  local_reg.sdeint
========================================  ===========================================================
``adaptive=False``, ``dt``                ``step_size=dt`` over torchsde's grid (``ts[0] + dt + dt
                                          + ...``), the outputs interpolated linearly as torchsde's
``adaptive=True``, ``dt``, ``rtol``,      ``first_step=dt``, ``rtol``, ``atol``,
``atol``, ``dt_min``                      ``controller=PIController(min_step=dt_min,
                                          force_min_step=True)``
``method="euler"``                        ``method="euler_maruyama"``
``method="milstein"``                     ``method="milstein"`` (derivative-free, torchsde's
                                          ``options={"grad_free": True}``)
``method=None`` (torchsde: ``"srk"``)     ``"milstein"`` for diagonal and scalar noise,
                                          ``"euler_maruyama"`` for additive and
                                          general noise (torchsde's default there)
``bm``                                    ``bm``
``names={"drift": .., "diffusion": ..}``  an SDE whose ``f`` and ``g`` are the named methods
                                          (``"prior_drift"``: ``h``)
``logqp=True``                            one more state component, ``log(q/p)``, with the KL
                                          integrand as its drift and no diffusion (:class:`LogqpSDE`)
========================================  ===========================================================

Refused with a ``ValueError`` naming the argument: torchsde's other methods (``"srk"``, the
Stratonovich ones, ``"log_ode"``), ``extra=True``, ``extra_solver_state``, the fused ``names``
keys, and ``options`` keys other than ``grad_free``;
:func:`local_reg.sdeint` itself refuses Stratonovich SDEs, and ``noise_type="general"`` with adaptive
steps or Milstein (it solves general noise with fixed Euler--Maruyama steps, as torchsde). Gradients
are backpropagated through the solve (exact for the discrete solve, memory O(steps));
:func:`sdeint_adjoint` takes torchsde's ``sdeint_adjoint`` signature and differentiates the same
solve by checkpointing (exact, the steps' states in memory) instead of the stochastic adjoint.
Every difference is listed in docs/compat.md ("torchsde's sdeint").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, cast, overload

import torch
from torch import Tensor

from ._errors import SolverAssertion, SolverError, warn
from ._integrate import NO_STEP_LIMIT
from ._step import time_tensor, within_ulps
from ._validate import (
    check_bool,
    narrowest_float,
    non_negative_float,
    positive_float,
    refuse_tracing,
    relative_tolerance,
    rounded_list,
    validate_state,
    validate_times,
)
from .controller import PIController, TimeSet
from .sde._sdeint import sde_module
from .sde._sdeint import sdeint as _sdeint
from .sde.brownian import check_brownian_span, make_brownian, release_brownian
from .sde.problem import (
    FIXED_STEP_NOISE_TYPE,
    ITO_FORM,
    batch_state,
    brownian_size,
    check_shapes,
    refuse_sde_class,
    refuse_times_requiring_grad,
    validate_sde,
    validate_sde_problem,
)

SDE_METHODS = {"euler": "euler_maruyama", "milstein": "milstein"}
"""torchsde's method names that local_reg has, and the :func:`local_reg.sdeint` scheme each runs."""

_OFFERED = "use method='milstein' (diagonal or scalar noise) or 'euler' (additive or general noise)"
_ITO_FORM = f"local_reg solves Ito SDEs only: {ITO_FORM}, and {_OFFERED}"
_STRATONOVICH = "a torchsde method for Stratonovich SDEs; " + _ITO_FORM
REFUSED_METHODS = {
    "srk": (
        "torchsde's stochastic Runge--Kutta method (strong order 1.5) is not implemented in local_reg; "
        f"{_OFFERED}, both of strong order 1 there (method=None picks them)"
    ),
    **dict.fromkeys(
        ("euler_heun", "heun", "midpoint", "reversible_heun", "adjoint_reversible_heun"), _STRATONOVICH
    ),
    "log_ode": (
        "torchsde's log-ODE method is for Stratonovich SDEs with general noise, which local_reg does "
        f"not solve (Ito SDEs with diagonal, scalar or additive noise); {_OFFERED}"
    ),
}
"""torchsde's methods local_reg lacks, and what the refusal says."""

SDE_OPTIONS = ("grad_free",)
"""The ``options`` keys :func:`sdeint` takes (torchsde 0.2.6 has no other method option)."""

RENAMED = {"drift": "f", "diffusion": "g", "prior_drift": "h"}
"""torchsde's ``names`` keys :func:`sdeint` takes, and the method of the SDE each renames (the
prior drift is read by ``logqp=True`` only)."""
UNSUPPORTED_NAMES = ("drift_and_diffusion", "drift_and_diffusion_prod")
"""torchsde's other ``names`` keys: the fused evaluations, which local_reg's schemes do not call."""


class RenamedSDE:
    """``sde`` with the drift ``f``, the diffusion ``g`` and the prior drift ``h`` read from the
    methods torchsde's ``names`` gives (``names={"drift": "f_", "diffusion": "g_"}``); every other
    attribute (``noise_type``, ``sde_type``, ...) is ``sde``'s. The methods are ``sde``'s own,
    bound: gradients reach its parameters as they would."""

    def __init__(self, sde: Any, methods: dict[str, str]) -> None:
        """``methods``: the method of ``sde`` to read for each of ``f``, ``g`` and ``h``."""
        self.sde = sde
        for name, method in methods.items():
            setattr(self, name, getattr(sde, method))

    def __getattr__(self, name: str) -> Any:
        # Only for the attributes not set in __init__; "sde" itself is looked up here before
        # __init__ has set it (copy, pickle), which must not recurse.
        if name == "sde":
            raise AttributeError(name)
        return getattr(self.sde, name)


def _renamed(sde: Any, names: object, caller: str = "sdeint") -> Any:
    """``sde`` with torchsde's ``names`` applied (itself without any); ``caller``: the
    ``local_reg.compat`` function the messages name."""
    if names is None:
        return sde
    if not isinstance(names, dict):
        raise TypeError(f"names must be a dict, got {type(names).__name__}")
    unsupported = sorted(set(names) & set(UNSUPPORTED_NAMES))
    if unsupported:
        raise ValueError(
            f"names: {unsupported} not supported by local_reg.compat.{caller}: its schemes call the "
            f"drift, the diffusion and (logqp=True) the prior drift, each alone (no fused evaluation); "
            f"supported keys: "
            f"{list(RENAMED)}"
        )
    unknown = sorted(set(names) - set(RENAMED), key=str)
    if unknown:
        raise ValueError(f"names: unknown keys {unknown}; expected some of {list(RENAMED)}")
    if not names:
        return sde
    refuse_sde_class(sde)
    methods = {}
    for key, default in RENAMED.items():
        method = names.get(key, default)
        if not isinstance(method, str):
            raise TypeError(
                f"names[{key!r}] must be the name of a method of sde, got {type(method).__name__}"
            )
        if not callable(getattr(sde, method, None)):
            if key == "prior_drift" and key not in names:
                continue  # an SDE without a prior drift, which only logqp=True reads
            raise ValueError(
                f"names[{key!r}]={method!r}, but sde ({type(sde).__name__}) has no method {method!r}"
            )
        methods[default] = method
    return RenamedSDE(sde, methods)


def _as_given(sde: Any) -> Any:
    """The SDE as the user passed it: the one a :class:`RenamedSDE` renames, for messages."""
    return sde.sde if isinstance(sde, RenamedSDE) else sde


class LogqpSDE(torch.nn.Module):
    """torchsde's ``logqp=True``: ``sde`` with one more state component, ``log(q/p)`` along the
    path, whose drift is the KL integrand ``|u|^2 / 2`` with ``g u = f - h`` (``h`` the prior
    drift; for diagonal noise ``u = (f - h) / g`` elementwise, a ``|g|`` below 1e-7 taken as
    1e-7 with its sign, else ``u = pinv(g) (f - h)``) and whose diffusion is zero (Li et al. 2020,
    "Scalable gradients for stochastic differential equations", section 5). Its parameters are
    ``sde``'s (or those of the module it renames)."""

    def __init__(self, sde: Any, noise_type: object, names: dict[str, str] | None) -> None:
        super().__init__()
        if not callable(getattr(sde, "h", None)):
            named = (names or {}).get("prior_drift", "h")
            raise ValueError(
                f"logqp=True needs the prior drift: sde ({type(_as_given(sde)).__name__}) has no method "
                f"{named!r} (define h(t, y), or name it with names={{'prior_drift': ...}})"
            )
        self.sde = sde
        module = sde_module(sde)
        if module is not None and module is not sde:
            self.renamed_module = module  # a module renamed by names: its parameters are these
        self.noise_type = noise_type
        self.sde_type = "ito"
        # The diffusion f computed, for the g of the same step start (sdeint evaluates both at one
        # (t, y)): the KL integrand needs it, and the user's g would otherwise run twice per step.
        self._diffusion_at: tuple[Tensor, Tensor, bool, Tensor] | None = None

    def f(self, t: Tensor, y: Tensor) -> Tensor:
        state = y[:, :-1]
        drift, diffusion, prior = self.sde.f(t, state), self.sde.g(t, state), self.sde.h(t, state)
        self._diffusion_at = (t, y, torch.is_grad_enabled(), diffusion)
        if not isinstance(prior, Tensor) or prior.shape != drift.shape:
            found = tuple(prior.shape) if isinstance(prior, Tensor) else type(prior).__name__
            raise ValueError(
                f"the prior drift h returned {found}, the drift f {tuple(drift.shape)}: they must match"
            )
        if self.noise_type == "diagonal":
            # torchsde's stable division (misc.stable_division), for the same numbers.
            small = diffusion.abs().detach() <= 1e-7
            u = (drift - prior) / torch.where(small, 1e-7 * diffusion.sign(), diffusion)
        else:
            u = (torch.linalg.pinv(diffusion) @ (drift - prior).unsqueeze(-1)).squeeze(-1)
        return torch.cat([drift, 0.5 * (u**2).sum(dim=1, keepdim=True)], dim=1)

    def g(self, t: Tensor, y: Tensor) -> Tensor:
        cached, self._diffusion_at = self._diffusion_at, None
        # The same tensors under the same grad mode (a graph-free evaluation's result must not
        # stand in for a differentiated one), read once.
        if cached is not None and cached[0] is t and cached[1] is y and cached[2] == torch.is_grad_enabled():
            diffusion = cached[3]
        else:
            diffusion = self.sde.g(t, y[:, :-1])
        return torch.cat(
            [diffusion, diffusion.new_zeros((diffusion.shape[0], 1, *diffusion.shape[2:]))], dim=1
        )


def _scheme(method: object, noise_type: object, caller: str = "sdeint") -> str:
    """The :func:`local_reg.sdeint` scheme of torchsde's ``method`` (``None``: by the noise type);
    ``caller``: the ``local_reg.compat`` function the messages name."""
    if method is None:
        # torchsde's default for Ito SDEs is "srk" ("euler" for general noise); local_reg's schemes
        # of strong order 1 on each noise type stand in for it (general noise: Euler--Maruyama, as
        # torchsde's; a Stratonovich SDE is refused by local_reg.sdeint).
        return "euler_maruyama" if noise_type in ("additive", "general") else "milstein"
    if not isinstance(method, str):
        raise TypeError(f"method must be a str or None, got {type(method).__name__}")
    if method in SDE_METHODS:
        return SDE_METHODS[method]
    if method in REFUSED_METHODS:
        raise ValueError(
            f"method={method!r} is not available in local_reg.compat.{caller}: {REFUSED_METHODS[method]}"
        )
    raise ValueError(
        f"unknown method {method!r}; expected one of {list(SDE_METHODS)} (torchsde's names), or None"
    )


def _grad_free(
    options: object, method: object, scheme: str, noise_type: object, caller: str = "sdeint"
) -> None:
    """Check torchsde's ``options``: only ``grad_free``, which local_reg's derivative-free Milstein
    is (``True``, or left out); ``False`` with ``method="milstein"`` asks for the derivative-using
    Milstein it does not have (with ``method=None`` torchsde's srk ignores it, as here)."""
    if options is None:
        return
    if not isinstance(options, dict):
        raise TypeError(f"options must be a dict, got {type(options).__name__}")
    unknown = sorted(set(options) - set(SDE_OPTIONS), key=str)
    if unknown:
        raise ValueError(
            f"options: {unknown} not supported by local_reg.compat.{caller}; supported keys: "
            f"{list(SDE_OPTIONS)}"
        )
    if "grad_free" not in options:
        return
    grad_free = options["grad_free"]
    check_bool("options['grad_free']", grad_free)
    if method is None:
        return
    if scheme != "milstein":
        warn(
            f"local_reg.compat.{caller}: options['grad_free'] is ignored by Euler--Maruyama (torchsde's "
            "'euler' and 'srk' ignore it too)"
        )
    elif not grad_free and noise_type != "additive":
        # For additive noise torchsde turns grad_free off itself: the Milstein term is zero.
        raise ValueError(
            "options['grad_free']=False asks for torchsde's Milstein scheme with the diffusion's "
            "derivative (by autograd), which local_reg does not have: its 'milstein' is the "
            "derivative-free one (torchsde's grad_free=True), of the same strong order 1; pass "
            "options={'grad_free': True} or leave it out"
        )


def _solve(
    sde: Any,
    y0: Tensor,
    ts: TimeSet,
    bm: Any | None = None,
    method: str | None = None,
    dt: float | Tensor = 1e-3,
    adaptive: bool = False,
    rtol: float | Tensor = 1e-5,
    atol: float | Tensor = 1e-4,
    dt_min: float | Tensor = 1e-5,
    options: dict[str, Any] | None = None,
    names: dict[str, str] | None = None,
    logqp: bool = False,
    extra: bool = False,
    extra_solver_state: Any | None = None,
    gradient: str = "direct",
    adjoint_params: Any | None = None,
    caller: str = "sdeint",
) -> Tensor | tuple[Tensor, Tensor]:
    """:func:`sdeint` and :func:`sdeint_adjoint`: torchsde's arguments, and the
    :func:`local_reg.sdeint` gradient method with its ``adjoint_params``; ``caller``: which of the
    two the messages name."""
    # torchsde refuses them all (misc.assert_no_grad); its fixed-step grid here would detach ts and
    # its gradient be none, silently.
    refuse_times_requiring_grad(ts, "ts")
    for name, value in (("dt", dt), ("rtol", rtol), ("atol", atol), ("dt_min", dt_min)):
        if isinstance(value, Tensor) and value.requires_grad:
            raise ValueError(
                f"{name} requires grad, but no gradient reaches it (torchsde refuses it too): pass "
                f"{name}.detach()"
            )
    check_bool("logqp", logqp)
    if extra:
        raise ValueError(
            f"extra=True is not supported by local_reg.compat.{caller}: its schemes (Euler--Maruyama, "
            "Milstein) keep no solver state besides y (torchsde's for them is the empty tuple); drop extra"
        )
    if extra_solver_state is not None:
        raise ValueError(
            f"extra_solver_state is not supported by local_reg.compat.{caller}: its schemes keep no solver "
            "state besides y0; drop it"
        )
    sde = _renamed(sde, names, caller)
    noise_type = getattr(sde, "noise_type", None)  # checked by local_reg.sdeint
    if getattr(sde, "sde_type", "ito") == "stratonovich":
        # Before the method: torchsde's default for it (midpoint) is a Stratonovich scheme.
        raise ValueError(
            f"sde.sde_type='stratonovich' is not supported by local_reg.compat.{caller}: {_ITO_FORM}"
        )
    scheme = _scheme(method, noise_type, caller)
    _grad_free(options, method, scheme, noise_type, caller)
    if logqp:
        if gradient == "checkpoint" and adjoint_params is None and sde_module(sde) is None:
            raise ValueError(
                f"local_reg.compat.{caller} needs the parameters of sde, but sde is not a torch.nn.Module "
                f"({type(_as_given(sde)).__name__}): pass adjoint_params=(tensors its drift, diffusion and "
                "prior drift depend on), or adjoint_params=() if they have none"
            )
        # The checks local_reg.sdeint makes, on what the user gave rather than on its extension.
        validate_sde(sde, general=True)
        y0 = batch_state("y0", y0)
        sde = LogqpSDE(sde, noise_type, names)
        shape = getattr(bm, "shape", None)
        if noise_type == "diagonal" and shape is not None and tuple(shape) == tuple(y0.shape):
            raise ValueError(
                f"bm has shape {tuple(shape)}: logqp=True solves one more state component, log(q/p), so "
                f"diagonal noise needs a Brownian motion of shape {(y0.shape[0], y0.shape[1] + 1)} "
                "(batch, d + 1), as torchsde's"
            )
        y0 = torch.cat([y0, y0.new_zeros((y0.shape[0], 1))], dim=1)
    ys = _states(
        sde,
        y0,
        ts,
        bm,
        scheme,
        noise_type,
        dt,
        adaptive,
        rtol,
        atol,
        dt_min,
        gradient,
        adjoint_params,
        caller,
    )
    if not logqp:
        return ys
    # torchsde returns the states and the increments of log(q/p) between output times.
    states, log_ratio = ys.split([ys.shape[2] - 1, 1], dim=2)
    return states, (log_ratio[1:] - log_ratio[:-1]).squeeze(2)


def _states(
    sde: Any,
    y0: Tensor,
    ts: TimeSet,
    bm: Any | None,
    scheme: str,
    noise_type: object,
    dt: float | Tensor,
    adaptive: bool,
    rtol: float | Tensor,
    atol: float | Tensor,
    dt_min: float | Tensor,
    gradient: str,
    adjoint_params: Any | None,
    caller: str,
) -> Tensor:
    """The states at ``ts`` of :func:`_solve`'s checked arguments (``scheme``: local_reg's)."""
    check_bool("adaptive", adaptive)
    step = positive_float("dt", dt)
    tolerances = _tolerances(rtol, atol, dt_min)
    if noise_type == FIXED_STEP_NOISE_TYPE and (adaptive or scheme != "euler_maruyama"):
        # Named in torchsde's terms (local_reg.sdeint's message names its own arguments).
        raise ValueError(
            "noise_type='general' is solved with fixed steps of method='euler' only (adaptive=False, "
            "method='euler' or None): Milstein's term and an error estimate of Euler--Maruyama's "
            "leading local error need the noise's iterated integrals (Levy areas)"
        )
    # Before the fixed-step grid reads its dtype (local_reg.sdeint checks it again).
    y0 = validate_state(y0)
    # The times as torchsde names them: local_reg.sdeint's messages say t.
    times = validate_times(ts, "ts", increasing_only=True)
    if times[-1] < times[0]:
        raise ValueError("ts must be strictly increasing (torchsde's too)")
    if len(times) == 1:
        # No interval to solve: torchsde returns y0 alone, as local_reg.compat.odeint does, after
        # checking the drift's, the diffusion's and a given Brownian motion's shapes at ts[0].
        _brownian_size_at_start(sde, y0, ts, scheme, bm)
        return torch.stack([y0])
    # No step limit, as torchsde has none: a fixed-step solve's count is known; an adaptive one is
    # bounded through dt_min (at most (ts[-1] - ts[0]) / dt_min accepted steps plus one landing step
    # per output time, each after a bounded run of rejections down to dt_min, whose attempt is
    # accepted).
    if not adaptive:
        return _fixed_step_states(sde, y0, ts, times, bm, scheme, step, gradient, adjoint_params)
    return _adaptive_states(
        sde, y0, ts, bm, scheme, noise_type, step, *tolerances, gradient, adjoint_params, caller
    )


def _tolerances(
    rtol: float | Tensor, atol: float | Tensor, dt_min: float | Tensor
) -> tuple[float, float, float]:
    """``rtol``, ``atol`` and ``dt_min`` as floats, checked by name whether or not the steps read
    them (only adaptive steps do, as in torchsde), as compat.odeint's fixed steps check their
    tolerances: a bad one would otherwise surface only on a switch to ``adaptive=True``. Fixed steps
    take ``atol = 0`` and ``dt_min = 0``, as torchsde does (it floors its error scale); adaptive
    steps need both positive (:func:`_adaptive_states` checks, as it starts)."""
    return (
        relative_tolerance("rtol", rtol),
        non_negative_float("atol", atol),
        non_negative_float("dt_min", dt_min),
    )


def _fixed_step_states(
    sde: Any,
    y0: Tensor,
    ts: TimeSet,
    times: list[float],
    bm: Any | None,
    scheme: str,
    step: float,
    gradient: str,
    adjoint_params: Any | None,
) -> Tensor:
    """The states at ``ts`` of fixed steps of about ``step`` on torchsde's grid, interpolated
    linearly between the grid points as torchsde interpolates."""
    times_tensor = ts if isinstance(ts, Tensor) else torch.tensor(times, dtype=y0.dtype, device=y0.device)
    if not times_tensor.is_floating_point():
        # torchsde's grid of integer times: their sums with dt, in torch's default dtype.
        times_tensor = times_tensor.to(torch.get_default_dtype())
    outputs = times_tensor.detach().cpu().contiguous()
    grid, step_size = _fixed_grid(outputs, step, y0.dtype)
    # The grid point at or after each output time: interpolation reads it and the one before.
    after = torch.searchsorted(grid, outputs).clamp(min=1)

    def on_grid(start: Tensor, first: int, last: int, path: Any) -> Tensor:
        return _sdeint(
            sde,
            start,
            grid[first : last + 1].to(times_tensor.device),
            method=scheme,
            step_size=step_size,
            bm=path,
            max_steps=NO_STEP_LIMIT,
            gradient=gradient,
            adjoint_params=adjoint_params,
        ).ys

    if len(grid) - 1 <= _GRID_CHUNK:
        return _interpolated(on_grid(y0, 0, len(grid) - 1, bm), grid, outputs, after)
    return _chunked_grid_states(on_grid, sde, y0, ts, bm, scheme, step, grid, outputs, after)


def _chunked_grid_states(
    on_grid: Callable[[Tensor, int, int, Any], Tensor],
    sde: Any,
    y0: Tensor,
    ts: TimeSet,
    bm: Any | None,
    scheme: str,
    step: float,
    grid: Tensor,
    outputs: Tensor,
    after: Tensor,
) -> Tensor:
    """The states at ``outputs`` of a long ``grid`` solved in calls of ``on_grid`` over
    ``_GRID_CHUNK`` steps each, keeping only the states interpolation reads."""
    needed = torch.unique(torch.cat([after.new_zeros(1), after - 1, after]))
    wanted = set(needed.tolist())
    made = bm is None
    if not made:
        # The whole span's, before the first call: each call checks only its own piece, whose
        # span a message would name though the user never asked for it.
        check_brownian_span(bm, float(grid[0]), float(grid[-1]), narrowest_float(ts))
    if made:
        # One Brownian motion for every call, made as local_reg.sdeint makes its own.
        size = _brownian_size_at_start(sde, y0, ts, scheme, bm, drift=False)
        bm = make_brownian(None, float(grid[0]), float(grid[-1]), size, y0, step=step)
    # The states at the needed points, in order: y0, then each call's rows gathered at once
    # (copies, which hold only those rows; one index per call, also in the backward pass).
    pieces, state = [y0.unsqueeze(0)], y0
    try:
        for first in range(0, len(grid) - 1, _GRID_CHUNK):
            last = min(first + _GRID_CHUNK, len(grid) - 1)
            chunk = on_grid(state, first, last, bm)
            rows = [index - first for index in range(first + 1, last + 1) if index in wanted]
            if rows:
                pieces.append(chunk[rows])
            state = chunk[-1].clone()
            del chunk
    finally:
        if made:
            release_brownian(bm)
    kept = torch.cat(pieces)
    return _interpolated(kept, grid[needed], outputs, torch.searchsorted(needed, after))


def _adaptive_states(
    sde: Any,
    y0: Tensor,
    ts: TimeSet,
    bm: Any | None,
    scheme: str,
    noise_type: object,
    step: float,
    rtol: float,
    atol: float,
    min_step: float,
    gradient: str,
    adjoint_params: Any | None,
    caller: str,
) -> Tensor:
    """The states at ``ts`` of adaptive steps from a first step ``step``, none proposed below
    ``min_step`` (torchsde's ``dt_min``) and one there accepted whatever its error, as torchsde's."""
    if scheme == "euler_maruyama" and noise_type != "additive":
        warn(
            f"local_reg.compat.{caller}: adaptive Euler--Maruyama with non-additive noise converges to a "
            "biased limit as the tolerance shrinks (torchsde warns too; docs/sde.md): use "
            "method='milstein'"
        )
    if atol == 0:
        raise ValueError(
            "atol=0: local_reg's error scale atol + rtol max(|a|, |b|) needs atol > 0 (torchsde floors "
            "that scale at 1e-7, so takes 0); pass a small positive atol, e.g. atol=1e-7"
        )
    min_step = positive_float("dt_min", min_step)
    # torchsde 0.2.6 (BaseSDESolver.integrate) clamps a proposed step below dt_min to dt_min (warning
    # "Hitting minimum allowed step size") and then accepts the step it just tried, whatever its
    # error: that step may be up to 1 / 0.2 = 5 dt_min long (its smallest shrink factor). Here the
    # rejected step is retried at dt_min and that attempt is accepted whatever its (finite) error
    # (force_min_step): no step is longer than torchsde's, and none proposed below dt_min, as there.
    controller = PIController(min_step=min_step, force_min_step=True)
    # rtol, atol: one number each in both (torchsde: ``Scalar``). Both scale the error as
    # atol + rtol * max(|a|, |b|) elementwise under an RMS over batch and state, but torchsde's error
    # is one full step against two half steps (a, b their ends; it propagates the two half steps,
    # three steps' evaluations per attempt) and local_reg's the embedded Lamba estimate (a, b the
    # step's start and end): at one tolerance the steps differ. torchsde also floors each scale and
    # the norm at 1e-7 (so it takes atol=0), where local_reg.sdeint refuses atol <= 0.
    try:
        solution = _sdeint(
            sde,
            y0,
            ts,
            method=scheme,
            rtol=rtol,
            atol=atol,
            first_step=step,
            bm=bm,
            max_steps=NO_STEP_LIMIT,
            controller=controller,
            gradient=gradient,
            adjoint_params=adjoint_params,
        )
    except SolverError as error:
        # Steps at dt_min are accepted whatever their finite error, so an adaptive solve fails only
        # on a non-finite step, which torchsde asserts on ("Found nans in the error estimate"): an
        # AssertionError too, named in torchsde's terms.
        reason = error.reason.replace("min_step=", "dt_min=")
        raise SolverAssertion(reason, t=error.t, n_steps=error.n_steps).with_traceback(
            error.__traceback__
        ) from None
    forced = int((solution.steps.error_estimate > 1.0).sum())
    if forced:
        # No count in the text: a training loop would print it again for every new count.
        warn(
            f"local_reg.compat.{caller}: steps were accepted at dt_min={min_step:g} whatever their error "
            "(torchsde warns 'Hitting minimum allowed step size'): lower dt_min or loosen rtol, atol"
        )
    return solution.ys


@overload
def sdeint(
    sde: Any,
    y0: Tensor,
    ts: TimeSet,
    bm: Any | None = ...,
    method: str | None = ...,
    dt: float | Tensor = ...,
    adaptive: bool = ...,
    rtol: float | Tensor = ...,
    atol: float | Tensor = ...,
    dt_min: float | Tensor = ...,
    options: dict[str, Any] | None = ...,
    names: dict[str, str] | None = ...,
    logqp: Literal[False] = ...,
    extra: bool = ...,
    extra_solver_state: Any | None = ...,
) -> Tensor: ...
@overload
def sdeint(
    sde: Any,
    y0: Tensor,
    ts: TimeSet,
    bm: Any | None = ...,
    method: str | None = ...,
    dt: float | Tensor = ...,
    adaptive: bool = ...,
    rtol: float | Tensor = ...,
    atol: float | Tensor = ...,
    dt_min: float | Tensor = ...,
    options: dict[str, Any] | None = ...,
    names: dict[str, str] | None = ...,
    *,
    logqp: Literal[True],
    extra: bool = ...,
    extra_solver_state: Any | None = ...,
) -> tuple[Tensor, Tensor]: ...
@overload
def sdeint(
    sde: Any,
    y0: Tensor,
    ts: TimeSet,
    bm: Any | None = ...,
    method: str | None = ...,
    dt: float | Tensor = ...,
    adaptive: bool = ...,
    rtol: float | Tensor = ...,
    atol: float | Tensor = ...,
    dt_min: float | Tensor = ...,
    options: dict[str, Any] | None = ...,
    names: dict[str, str] | None = ...,
    logqp: bool = ...,
    extra: bool = ...,
    extra_solver_state: Any | None = ...,
) -> Tensor | tuple[Tensor, Tensor]: ...
def sdeint(
    sde: Any,
    y0: Tensor,
    ts: TimeSet,
    bm: Any | None = None,
    method: str | None = None,
    dt: float | Tensor = 1e-3,
    adaptive: bool = False,
    rtol: float | Tensor = 1e-5,
    atol: float | Tensor = 1e-4,
    dt_min: float | Tensor = 1e-5,
    options: dict[str, Any] | None = None,
    names: dict[str, str] | None = None,
    logqp: bool = False,
    extra: bool = False,
    extra_solver_state: Any | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Solve the Ito SDE ``dy = f(t, y) dt + g(t, y) dW`` as torchsde 0.2.6's ``sdeint`` does, on
    :func:`local_reg.sdeint`; returns the states at ``ts``, shape ``(len(ts), batch, d)`` (with
    ``logqp=True``, and the increments of ``log(q/p)``).

    Args:
        sde: torchsde SDE: ``f(t, y)``, ``g(t, y)``, ``noise_type`` ``"diagonal"``, ``"scalar"``,
            ``"additive"`` or ``"general"`` (fixed steps of ``"euler"`` only), ``sde_type="ito"``
            (the default).
        y0: initial state, shape ``(batch, d)``.
        ts: output times, strictly increasing. With fixed steps they are read from torchsde's grid
            by its linear interpolation; adaptive steps end at every one (torchsde steps past them
            and interpolates linearly). One time gives ``y0`` alone, as torchsde.
        bm: Brownian motion ``bm(ta, tb)`` of shape ``(batch, m)`` (a ``torchsde.BrownianInterval``
            or ``BrownianTree``); by default a new ``BrownianInterval`` seeded from torch's global
            generator.
        method: ``"euler"`` (Euler--Maruyama) or ``"milstein"`` (derivative-free Milstein, torchsde's
            ``options={"grad_free": True}``). torchsde's default, ``"srk"`` (strong order 1.5), is
            not implemented here: ``None`` picks ``"milstein"`` for diagonal and scalar noise and
            ``"euler"`` for additive noise, each of strong order 1 there (Milstein only for diagonal
            noise whose ``g_i`` depends on ``y_i`` alone, else 1/2).
        dt: the fixed step (``adaptive=False``): steps of ``dt`` from ``ts[0]``, summed as torchsde
            sums them, the last cut at ``ts[-1]``; or the first step (``adaptive=True``).
        adaptive: steps sized by local_reg's embedded error estimate and PI controller
            (docs/sde.md), where torchsde compares one step with two half steps.
        rtol, atol: the tolerances of the error estimate (read by adaptive steps only, checked by
            fixed steps too), one number each, scaled as torchsde's ``atol + rtol max(|a|, |b|)``
            elementwise under an RMS norm; ``atol > 0`` with ``adaptive`` (fixed steps take 0, as
            torchsde's).
        dt_min: with ``adaptive``, the shortest step (positive): ``PIController(min_step=dt_min,
            force_min_step=True)`` accepts an attempt of ``dt_min`` whatever its error.
        options: ``{"grad_free": True}`` (``False`` is refused for ``method="milstein"`` on
            multiplicative noise; ignored with a warning by ``"euler"``, silently with
            ``method=None``, as by torchsde's srk).
        names: ``{"drift": ..., "diffusion": ..., "prior_drift": ...}``: the SDE's methods to call
            instead of ``f``, ``g``, ``h``.
        logqp: also return the increments of ``log(q/p)`` between output times, shape
            ``(len(ts) - 1, batch)``: the KL divergence of the SDE from one with the prior drift
            ``h`` along the path, solved as one more state component (:class:`LogqpSDE`; for
            diagonal noise ``bm`` then has ``d + 1`` channels, as torchsde's).
        extra, extra_solver_state: not supported (``ValueError``).

    Gradients w.r.t. ``y0`` and the SDE's parameters are backpropagated through the solve (exact
    for the discrete solve, memory O(steps)); :func:`sdeint_adjoint` keeps one step's graph.

    Raises:
        ValueError: a method, option, ``names`` key or argument local_reg does not have, naming the
            alternative; what :func:`local_reg.sdeint` refuses (a Stratonovich SDE, general noise with
            adaptive steps or Milstein).
        TypeError: an argument of the wrong type, naming it.
    """
    refuse_tracing("sdeint")  # before the checks that export cannot guard on
    return _solve(
        sde,
        y0,
        ts,
        bm,
        method,
        dt,
        adaptive,
        rtol,
        atol,
        dt_min,
        options,
        names,
        logqp,
        extra,
        extra_solver_state,
    )


ADJOINT_DEFAULTS = {
    "adjoint_method": None,
    "adjoint_adaptive": False,
    "adjoint_rtol": 1e-5,
    "adjoint_atol": 1e-4,
    "adjoint_options": None,
}
"""torchsde 0.2.6's ``sdeint_adjoint`` settings of its backward (adjoint) solve, with their
defaults: the checkpoint gradient has no backward solve for them to set."""


@overload
def sdeint_adjoint(
    sde: Any,
    y0: Tensor,
    ts: TimeSet,
    bm: Any | None = ...,
    method: str | None = ...,
    adjoint_method: str | None = ...,
    dt: float | Tensor = ...,
    adaptive: bool = ...,
    adjoint_adaptive: bool = ...,
    rtol: float | Tensor = ...,
    adjoint_rtol: float | Tensor = ...,
    atol: float | Tensor = ...,
    adjoint_atol: float | Tensor = ...,
    dt_min: float | Tensor = ...,
    options: dict[str, Any] | None = ...,
    adjoint_options: dict[str, Any] | None = ...,
    adjoint_params: Any | None = ...,
    names: dict[str, str] | None = ...,
    logqp: Literal[False] = ...,
    extra: bool = ...,
    extra_solver_state: Any | None = ...,
) -> Tensor: ...
@overload
def sdeint_adjoint(
    sde: Any,
    y0: Tensor,
    ts: TimeSet,
    bm: Any | None = ...,
    method: str | None = ...,
    adjoint_method: str | None = ...,
    dt: float | Tensor = ...,
    adaptive: bool = ...,
    adjoint_adaptive: bool = ...,
    rtol: float | Tensor = ...,
    adjoint_rtol: float | Tensor = ...,
    atol: float | Tensor = ...,
    adjoint_atol: float | Tensor = ...,
    dt_min: float | Tensor = ...,
    options: dict[str, Any] | None = ...,
    adjoint_options: dict[str, Any] | None = ...,
    adjoint_params: Any | None = ...,
    names: dict[str, str] | None = ...,
    *,
    logqp: Literal[True],
    extra: bool = ...,
    extra_solver_state: Any | None = ...,
) -> tuple[Tensor, Tensor]: ...
@overload
def sdeint_adjoint(
    sde: Any,
    y0: Tensor,
    ts: TimeSet,
    bm: Any | None = ...,
    method: str | None = ...,
    adjoint_method: str | None = ...,
    dt: float | Tensor = ...,
    adaptive: bool = ...,
    adjoint_adaptive: bool = ...,
    rtol: float | Tensor = ...,
    adjoint_rtol: float | Tensor = ...,
    atol: float | Tensor = ...,
    adjoint_atol: float | Tensor = ...,
    dt_min: float | Tensor = ...,
    options: dict[str, Any] | None = ...,
    adjoint_options: dict[str, Any] | None = ...,
    adjoint_params: Any | None = ...,
    names: dict[str, str] | None = ...,
    logqp: bool = ...,
    extra: bool = ...,
    extra_solver_state: Any | None = ...,
) -> Tensor | tuple[Tensor, Tensor]: ...
def sdeint_adjoint(
    sde: Any,
    y0: Tensor,
    ts: TimeSet,
    bm: Any | None = None,
    method: str | None = None,
    adjoint_method: str | None = None,
    dt: float | Tensor = 1e-3,
    adaptive: bool = False,
    adjoint_adaptive: bool = False,
    rtol: float | Tensor = 1e-5,
    adjoint_rtol: float | Tensor = 1e-5,
    atol: float | Tensor = 1e-4,
    adjoint_atol: float | Tensor = 1e-4,
    dt_min: float | Tensor = 1e-5,
    options: dict[str, Any] | None = None,
    adjoint_options: dict[str, Any] | None = None,
    adjoint_params: Any | None = None,
    names: dict[str, str] | None = None,
    logqp: bool = False,
    extra: bool = False,
    extra_solver_state: Any | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """torchsde 0.2.6's ``sdeint_adjoint``: the same solve as :func:`sdeint`, differentiated by
    :func:`local_reg.sdeint`'s ``gradient="checkpoint"`` (docs/sde.md) instead of the stochastic
    adjoint (Li et al. 2020).

    The forward solve keeps no graph, only each accepted step's state and Brownian increment, and
    the backward pass re-runs the steps: the gradient is exact for the discrete forward solve (the
    stochastic adjoint's approximates it to its own backward solve's error), in memory O(steps)
    states (the adjoint's is O(1)). ``adjoint_params``: the tensors differentiated besides ``y0``
    (default the SDE's parameters; an SDE that is not a ``torch.nn.Module`` needs them).
    ``adjoint_method``, ``adjoint_adaptive``, ``adjoint_rtol``, ``adjoint_atol`` and
    ``adjoint_options`` size torchsde's backward solve, which this gradient does not have: other
    values than their defaults or the forward's own (``adjoint_method=method``, ...) are ignored
    with a warning. The other arguments are :func:`sdeint`'s (torchsde's Stratonovich schemes,
    ``"reversible_heun"`` among them, are refused as there).
    """
    refuse_tracing("sdeint_adjoint")  # before the checks that export cannot guard on
    # Each against its default and the forward's own setting (the backward "as the forward"); a
    # method by the scheme it names (torchsde's default adjoint method is the forward's scheme).
    if adjoint_method is not None and _same_scheme(adjoint_method, method, getattr(sde, "noise_type", None)):
        adjoint_method = None
    if adjoint_options == {}:
        adjoint_options = None  # torchsde reads None as {}
    given = {
        "adjoint_method": (adjoint_method, method),
        "adjoint_adaptive": (adjoint_adaptive, adaptive),
        "adjoint_rtol": (adjoint_rtol, rtol),
        "adjoint_atol": (adjoint_atol, atol),
        "adjoint_options": (adjoint_options, options),
    }
    ignored = [
        name
        for name, (value, forward) in given.items()
        if not (_is_default(value, ADJOINT_DEFAULTS[name]) or _is_default(value, forward))
    ]
    ys = _solve(
        sde,
        y0,
        ts,
        bm,
        method,
        dt,
        adaptive,
        rtol,
        atol,
        dt_min,
        options,
        names,
        logqp,
        extra,
        extra_solver_state,
        gradient="checkpoint",
        adjoint_params=adjoint_params,
        caller="sdeint_adjoint",
    )
    if ignored:  # after the solve, which may refuse the call for another reason
        warn(
            f"local_reg.compat.sdeint_adjoint ignores {ignored}: its gradient re-runs the forward steps "
            "(exact for the discrete solve), with no backward solve for them to set"
        )
    return ys


_GRID_CHUNK = 128
"""Steps per :func:`local_reg.sdeint` call on torchsde's grid: a call keeps the state at every grid
point it steps to (each ends a step), so a long grid is solved in calls of this many steps, keeping
only the states the interpolation reads (memory of the outputs and of a call, not of every step,
as torchsde's under ``no_grad``)."""


def _brownian_size_at_start(
    sde: Any, y0: Tensor, ts: TimeSet, scheme: str, bm: Any | None, drift: bool = True
) -> tuple[int, int]:
    """The shape of the Brownian motion ``sde`` needs, after :func:`local_reg.sdeint`'s checks of
    the arguments and of the diffusion's (with ``drift``, the drift's too) and a given ``bm``'s
    shapes at ``ts[0]``, for where compat evaluates the SDE before (or without) a call of
    ``sdeint``. Without ``drift`` the caller's ``sdeint`` checks the drift: one evaluation less."""
    noise_type, times = validate_sde_problem(sde, y0, ts, scheme, general=True, one_time=True)
    start = time_tensor(times[0], y0)
    with torch.no_grad():
        diffusion = sde.g(start, y0)
        # y0 stands in for an unevaluated drift: it has the shape, dtype and device checked.
        rate = sde.f(start, y0) if drift else y0
    check_shapes(noise_type, y0, rate, diffusion)
    size = brownian_size(noise_type, y0, diffusion)
    shape = getattr(bm, "shape", None)
    if bm is not None and shape is not None and tuple(shape) != size:
        raise ValueError(
            f"bm has shape {tuple(shape)}, but this SDE and y0 need a Brownian motion of shape {size} "
            "(batch, noise channels)"
        )
    return size


def _fixed_grid(ts: Tensor, dt: float, field_dtype: torch.dtype) -> tuple[Tensor, float]:
    """torchsde's fixed-step grid (its ``BaseSDESolver.integrate``): from ``ts[0]``, steps of
    ``dt`` added in ``ts``'s dtype, the last cut at ``ts[-1]``; and the step size under which
    :func:`local_reg.sdeint` takes one step in each of its intervals.

    Two points local_reg cannot step between are merged: a last step of at most 4 ulps
    (:func:`local_reg._step.within_ulps`; ``0.1`` added ten times falls 1e-16 short of 1), merged
    into the step before, and points equal in ``field_dtype`` (the dtype the drift sees times in:
    float64 times of a float32 state), whose steps the merged interval takes as equal steps."""
    end = float(ts[-1]) if ts.dtype == torch.float64 else ts[-1]
    point = float(ts[0]) if ts.dtype == torch.float64 else ts[0]

    def refuse_if_too_short(before: float | Tensor, after: float | Tensor) -> None:
        if within_ulps(float(before), float(after)):
            raise ValueError(
                f"dt={dt:g} is too short at t={float(before)!r}: a step of at most 4 float64 ulps there, "
                "which local_reg's loop does not take (t + dt == t in ts's dtype included, where torchsde "
                "loops forever): pass a larger dt, or ts in float64 where it is narrower"
            )

    if point + dt < end:
        # Ulps grow with |t|: a dt too short where the grid's points are largest is refused before
        # the grid is built one step at a time up to there (from ts[0] = 0, 1e15 steps for dt =
        # 1e-17). There: ts[0], or the last point below ts[-1] (no step starts at ts[-1] itself,
        # and below a power of 2 the ulps are half its own).
        if abs(float(end)) >= abs(float(point)):
            inner = (
                math.nextafter(end, float(point))
                if isinstance(end, float)
                else torch.nextafter(end, cast(Tensor, point))
            )
            refuse_if_too_short(inner - dt, inner)
        else:
            refuse_if_too_short(point, point + dt)
    points = [point]
    while point < end:
        # In ts's dtype: float64 as Python floats (the same sums, faster), others as tensors.
        point = (
            min(point + dt, end) if isinstance(point, float) else torch.minimum(point + dt, cast(Tensor, end))
        )
        if point < end:
            refuse_if_too_short(points[-1], point)
        points.append(point)
    values = [float(point) for point in points]
    seen = values if field_dtype == torch.float64 else rounded_list(values, field_dtype)
    kept = [0]
    for index in range(1, len(values)):
        if not (within_ulps(values[kept[-1]], values[index]) or seen[kept[-1]] == seen[index]):
            kept.append(index)
        elif index == len(values) - 1 and len(kept) > 1:
            kept[-1] = index  # the end kept, the point before it dropped
        elif index == len(values) - 1:
            kept.append(index)  # a span local_reg.sdeint refuses, with its own message
    # The steps of torchsde's grid in each kept interval; a last sliver merged is no step of its own.
    counts = [b - a for a, b in zip(kept, kept[1:], strict=False)]
    if len(values) > 2 and within_ulps(values[-2], values[-1]) and counts[-1] > 1:
        counts[-1] -= 1
    grid = torch.stack([torch.as_tensor(points[index], dtype=ts.dtype, device=ts.device) for index in kept])
    gaps = [values[b] - values[a] for a, b in zip(kept, kept[1:], strict=False)]
    step_size = max([dt, *(gap / count for gap, count in zip(gaps, counts, strict=True))])
    return grid, step_size


def _interpolated(on_grid: Tensor, grid: Tensor, ts: Tensor, after: Tensor) -> Tensor:
    """The states at ``ts`` from those at the points of ``grid`` (``ts``, ``grid`` and ``after``, the
    index of the point at or after each time, on the CPU), linear between ``after - 1`` and
    ``after`` as torchsde's ``linear_interp`` weighs them (in ``ts``'s dtype, the states' dtype
    kept): at a grid point its state exactly, and ``ts[0]``'s the start."""
    if bool((grid[after] == ts)[1:].all()):
        return on_grid[torch.cat([after.new_zeros(1), after[1:]]).to(on_grid.device)]
    before, later = grid[after - 1], grid[after]
    weights = torch.stack([(later - ts) / (later - before), (ts - before) / (later - before)])
    weight_before, weight_after = weights.to(on_grid.device, on_grid.dtype)
    shape = (-1,) + (1,) * (on_grid.dim() - 1)
    after = after.to(on_grid.device)
    states = weight_before.reshape(shape) * on_grid[after - 1] + weight_after.reshape(shape) * on_grid[after]
    return torch.cat([on_grid[:1], states[1:]])


def _same_scheme(adjoint_method: object, method: object, noise_type: object) -> bool:
    """Whether torchsde's ``adjoint_method`` names the scheme the forward solve runs (``method``,
    ``None`` resolved by ``noise_type``); ``False`` where either is not one local_reg has."""
    try:
        return _scheme(adjoint_method, noise_type) == _scheme(method, noise_type)
    except (TypeError, ValueError):
        return False


def _is_default(value: object, default: object) -> bool:
    """Whether ``value`` is ``default`` (numbers compared as floats, a 0-dim tensor too)."""
    if value is default:
        return True
    numbers = tuple(v for v in (value, default) if not isinstance(v, bool))
    if len(numbers) == 2 and all(
        isinstance(v, (int, float)) or (isinstance(v, Tensor) and v.numel() == 1) for v in numbers
    ):
        return float(cast(float, value)) == float(cast(float, default))
    return type(value) is type(default) and value == default


__all__ = ["sdeint", "sdeint_adjoint"]
