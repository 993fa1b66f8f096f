"""What counts as an SDE here, and how its diffusion meets the Brownian increment.

We follow the torchsde convention (Li et al. 2020; Kidger et al. 2021): an SDE is an object with
a drift ``f(t, y)``, a diffusion ``g(t, y)``, a ``noise_type`` and optionally an ``sde_type``
(default ``"ito"``). The state ``y`` has shape ``(batch, d)`` and the Brownian motion ``W`` has
shape ``(batch, m)``. By noise type, ``g`` returns

- ``"diagonal"``: shape ``(batch, d)``, ``m = d``, and ``dy_i = f_i dt + g_i dW_i``;
- ``"scalar"``: shape ``(batch, d, 1)``, ``m = 1``, one Brownian motion drives every component;
- ``"additive"``: shape ``(batch, d, m)``, ``g`` must not depend on ``y``; ``dy = f dt + g dW``;
- ``"general"``: shape ``(batch, d, m)``, ``g`` may depend on ``y``; ``dy = f dt + g dW``. Only
  :func:`local_reg.sdeint`'s fixed-step Euler--Maruyama solves it (strong order 1/2, torchsde's
  ``"euler"``): a strong order-1 scheme, and an error estimate of Euler--Maruyama's leading local
  error, need the iterated integrals ``int dW_j dW_k`` of the noise's channels (Levy areas), which
  neither the Milstein term nor the embedded estimate here has.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._checks import is_sde
from .._validate import (
    FreshOutputs,
    active_autocast,
    call_leaving_input,
    check_output,
    check_strided,
    checked_call,
    time_tensors_requiring_grad,
    validate_state,
    validate_times,
)
from ..tableaus import ButcherTableau

STEP_KEYWORDS: dict[str, dict[str, bool]] = {
    "euler_maruyama": {"milstein": False},
    "milstein": {"milstein": True},
}
"""Each SDE scheme of :func:`local_reg.sdeint` and the keywords of its step (those of
:func:`local_reg.sde.sde_step`): a scheme is one entry here, and its name is in :data:`METHODS`."""
METHODS = tuple(STEP_KEYWORDS)
"""The SDE schemes of :func:`local_reg.sdeint`."""
TORCHSDE_NAMES = {
    "euler": ": torchsde's 'euler' (for Ito SDEs) is 'euler_maruyama' here",
    "srk": (
        ": torchsde's 'srk' (strong order 1.5) is not implemented here; 'milstein' has strong order 1, and "
        "the regularized modules solve with torchsde's own methods under backend='torchsde'"
    ),
    **dict.fromkeys(
        ("euler_heun", "heun", "midpoint", "reversible_heun", "adjoint_reversible_heun"),
        ": that is a torchsde method for Stratonovich SDEs; sdeint solves Ito SDEs",
    ),
}
"""The hint a torchsde method name adds to the refusal."""
DRIFT, DIFFUSION = "sde.f (drift)", "sde.g (diffusion)"
"""How errors name the SDE's two functions."""
DEFAULT_RTOL = 1e-2
DEFAULT_ATOL = 1e-2
"""The default tolerances of :func:`local_reg.sdeint` (see its docstring for why they are loose)."""
SUPPORTED_NOISE_TYPES = ("diagonal", "scalar", "additive")
"""The noise types of every SDE solve here, adaptive ones and the regularized models' included."""
FIXED_STEP_NOISE_TYPE = "general"
"""The noise type only :func:`local_reg.sdeint`'s fixed-step Euler--Maruyama takes (module docstring)."""
SUPPORTED_SDE_TYPES = ("ito",)


ITO_FORM = (
    "write the SDE in Ito form (add to the drift f_k the correction sum_{l,j} g_lj dg_kj/dy_l / 2; "
    "for diagonal noise g_k dg_k/dy_k / 2), then declare sde_type='ito': declaring it alone solves "
    "another SDE"
)
"""How a Stratonovich SDE becomes one the Ito schemes solve (``sdeint``'s and compat's refusals)."""


def refuse_sde_class(sde: Any) -> None:
    """A ``TypeError`` for a class given as ``sde``: its methods are unbound functions, so a class
    with ``f``, ``g`` and ``noise_type`` looks like an SDE until its drift is called."""
    if isinstance(sde, type):
        raise TypeError(f"sde must be an SDE instance, got the class {sde.__name__}: pass {sde.__name__}()")


def validate_sde(sde: Any, general: bool = False) -> str:
    """Check ``sde`` is an SDE this package solves; return its ``noise_type``. ``general``: the
    caller (``sdeint``) takes general noise too, and checks the scheme it needs."""
    refuse_sde_class(sde)
    if not is_sde(sde):
        raise TypeError(
            "sde must have methods f(t, y) (drift) and g(t, y) (diffusion) and a string attribute "
            f"noise_type, as torchsde SDEs do; got {type(sde).__name__}"
        )
    noise_type = sde.noise_type
    if noise_type not in SUPPORTED_NOISE_TYPES and not (general and noise_type == FIXED_STEP_NOISE_TYPE):
        raise ValueError(
            f"sde.noise_type={noise_type!r} is not supported: use one of {SUPPORTED_NOISE_TYPES} "
            "(general noise needs Levy areas for a strong error estimate: sdeint solves it with fixed "
            "steps of Euler--Maruyama only, and the regularized models need one of these noise types "
            "on either backend)"
        )
    sde_type = getattr(sde, "sde_type", "ito")
    if sde_type not in SUPPORTED_SDE_TYPES:
        raise ValueError(
            f"sde.sde_type={sde_type!r} is not supported: the Euler--Maruyama scheme of sdeint is "
            f"an Ito scheme; {ITO_FORM} (torchsde.sdeint solves Stratonovich SDEs, but the regularized "
            "models need an Ito SDE on either backend)"
        )
    return noise_type


def refuse_times_requiring_grad(t: object, name: str = "t") -> None:
    """A ``ValueError`` for output times ``t`` (``name``: as the caller's signature spells them) that
    require grad: sdeint solves at fixed times, so no gradient reaches them."""
    if time_tensors_requiring_grad(t):
        raise ValueError(
            f"{name} requires grad, but sdeint solves at fixed times and no gradient reaches {name} "
            f"(torchsde refuses it too): pass {name}.detach()"
        )


def validate_sde_problem(
    sde: Any,
    y0: Tensor,
    t: Tensor | np.ndarray | Sequence[float | Tensor],
    method: str,
    general: bool = False,
    one_time: bool = False,
) -> tuple[str, list[float]]:
    """Shared argument checks of the SDE entry points; returns ``(noise_type, times)``. ``general``:
    as :func:`validate_sde`'s; ``one_time``: ``t`` may hold one time (torchsde's ``sdeint``, which
    returns ``y0`` there)."""
    noise_type = validate_sde(sde, general)
    batch_state("y0", y0)
    refuse_times_requiring_grad(t)
    times = validate_times(t, increasing_only=True)
    if len(times) < 2 and not one_time:
        raise ValueError("t must hold at least two times (start and end of the solve)")
    if times[-1] < times[0]:
        raise ValueError("t must be strictly increasing: sdeint does not integrate backwards")
    check_method(method)
    return noise_type, times


def batch_state(name: str, value: object) -> Tensor:
    """``value`` checked as a state (:func:`local_reg._validate.validate_state`) of shape
    ``(batch, state)``, as torchsde's; errors name ``name``."""
    state = validate_state(value, name)
    if state.dim() != 2:
        raise ValueError(
            f"{name} must have shape (batch, state) as in torchsde, got shape {tuple(state.shape)}"
        )
    return state


def check_method(method: object) -> str:
    """``method`` if it is one of :data:`METHODS`; else a ``ValueError`` that lists them, with a hint
    for a torchsde method name."""
    if not isinstance(method, str):
        # A tableau's repr lists every coefficient: the type says what was passed.
        raise TypeError(
            f"method must be the name of an SDE method, one of {list(METHODS)}, got {type(method).__name__}"
            + (" (Butcher tableaus are for odeint)" if isinstance(method, ButcherTableau) else "")
        )
    if method not in METHODS:
        raise ValueError(
            f"unknown method {method!r}; expected one of {list(METHODS)}{TORCHSDE_NAMES.get(method, '')}"
        )
    return method


def brownian_size(noise_type: str, y0: Tensor, g0: Tensor) -> tuple[int, int]:
    """Shape ``(batch, m)`` of the Brownian motion that drives the SDE."""
    if noise_type == "diagonal":
        return (y0.shape[0], y0.shape[1])
    if noise_type == "scalar":
        return (y0.shape[0], 1)
    return (y0.shape[0], g0.shape[-1])


def check_shapes(noise_type: str, y0: Tensor, f0: object, g0: object) -> None:
    """Check the drift and diffusion at ``y0`` are tensors of ``y0``'s dtype and device with the
    shapes ``noise_type`` implies (``TypeError`` / ``ValueError`` naming ``sde.f`` or ``sde.g``)."""
    drift, diffusion = (_checked_tensor(name, value, y0) for name, value in (("sde.f", f0), ("sde.g", g0)))
    if drift.shape != y0.shape:
        raise ValueError(
            f"{DRIFT} returned shape {tuple(drift.shape)}, expected the shape of y0 {tuple(y0.shape)}"
        )
    check_diffusion_shape(noise_type, y0, diffusion)


def _checked_tensor(name: str, value: object, y0: Tensor) -> Tensor:
    """``value`` if it is a tensor of ``y0``'s dtype and device, else a ``TypeError`` / ``ValueError``
    naming ``name``."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must return a torch.Tensor, got {type(value).__name__}")
    check_strided(name, value, returned=True)
    if value.dtype != y0.dtype:
        raise TypeError(f"{name} returned dtype {value.dtype}, expected the dtype of y0 {y0.dtype}")
    if value.device != y0.device:
        raise ValueError(f"{name} returned a tensor on {value.device}, expected y0's device {y0.device}")
    return value


def check_diffusion_shape(
    noise_type: str, y0: Tensor, g0: Tensor, name: str = DIFFUSION, state_name: str = "y0"
) -> None:
    """A ``ValueError`` unless ``g0`` (what ``name`` returned at ``y0``, or an argument so named
    where ``name`` is not :data:`DIFFUSION`) has the shape ``noise_type`` implies."""
    batch, d = y0.shape
    if noise_type == "diagonal":
        ok, expected = g0.shape == y0.shape, f"{(batch, d)}"
    elif noise_type == "scalar":
        ok, expected = g0.shape == (batch, d, 1), f"{(batch, d, 1)}"
    else:
        ok, expected = g0.dim() == 3 and g0.shape[:2] == (batch, d), f"({batch}, {d}, m)"
    if not ok:
        got = "returned" if name == DIFFUSION else "has"
        raise ValueError(
            f"{name} {got} shape {tuple(g0.shape)}, but noise_type={noise_type!r} with {state_name} of "
            f"shape {tuple(y0.shape)} needs {expected}; drift and diffusion shapes must match"
        )


class CheckedSDE:
    """``sde`` with the output of every drift and diffusion call checked (:func:`check_shapes`),
    as :class:`local_reg._validate.CheckedField` does for ODEs: a later call that returns another
    shape or dtype is an error, not a silently promoted or broadcast solution. Metadata only.

    Mixed precision as for ODEs: the drift and diffusion run under the ``torch.autocast`` regions
    active when the wrapper is made, their outputs cast back to the state's dtype."""

    def __init__(self, sde: Any, noise_type: str, m: int | None = None) -> None:
        """``m``: the number of Brownian motions, which fixes the last dimension of an additive
        diffusion."""
        self.sde = sde
        self.noise_type = noise_type
        self.m = m
        self.autocast = active_autocast()
        self.fresh_drift = FreshOutputs(DRIFT)
        self.fresh_diffusion = FreshOutputs(DIFFUSION)

    def f(self, t: Tensor, y: Tensor) -> Tensor:
        return checked_call(DRIFT, self.autocast, self.sde.f, t, y, self.fresh_drift)

    def g(self, t: Tensor, y: Tensor) -> Tensor:
        value = call_leaving_input(DIFFUSION, self.autocast, self.sde.g, t, y)
        if not isinstance(value, Tensor):
            raise TypeError(f"sde.g must return a torch.Tensor, got {type(value).__name__}")
        check_output(DIFFUSION, value, y, shape=value.shape)
        check_diffusion_shape(self.noise_type, y, value)
        if self.noise_type == "additive" and self.m is not None and value.shape[-1] != self.m:
            raise ValueError(
                f"{DIFFUSION} returned shape {tuple(value.shape)}, but the first call had "
                f"{self.m} Brownian motions (last dimension)"
            )
        return self.fresh_diffusion(value)


class CheckedBrownian:
    """``bm`` with every increment checked: a tensor of ``like``'s dtype and device and of the
    Brownian motion's ``size`` (a float64 increment would silently promote a float32 solve). Its
    finiteness is judged only once a step has turned non-finite (:meth:`check_last_finite`): a
    non-finite increment makes the step's state non-finite, which the loop reads anyway, so every
    step is spared a read of the device."""

    def __init__(
        self,
        bm: Any,
        size: tuple[int, int],
        like: Tensor,
        given: bool = True,
        interval: tuple[float, float] | None = None,
    ) -> None:
        """``given``: ``bm`` is the caller's (its own values may be at fault), not one sdeint made.
        ``interval``: what ``bm`` covers, if it says; a query is clamped onto it (the solve's times
        lie within it up to float32 rounding, ``local_reg.sde.brownian.make_brownian``)."""
        self.bm = bm
        self.size = tuple(size)
        self.like = like
        self.given = given
        self.interval = interval
        self.last: tuple[float, float, Tensor] | None = None

    def __call__(self, ta: float, tb: float) -> Tensor:
        if self.interval is not None:
            start, end = self.interval
            ta, tb = min(max(ta, start), end), min(max(tb, start), end)
        dw = check_brownian_increment(self.bm(ta, tb), self.size, self.like)
        self.last = (ta, tb, dw)
        return dw

    def check_last_finite(self) -> None:
        """A ``ValueError`` if the last increment is not finite: otherwise the solve would blame the
        state, drift or diffusion (after rejecting the step down to an underflow)."""
        if self.last is None:
            return
        ta, tb, dw = self.last
        if not bool(torch.isfinite(dw).all()):
            source = (
                f"bm({ta!r}, {tb!r}) returned a non-finite increment: its own values, or a Brownian "
                "motion that"
                if self.given
                else f"the Brownian motion sdeint made has a non-finite increment over [{ta!r}, {tb!r}]: it"
            )
            raise ValueError(
                f"{source} cannot resolve this interval in {dw.dtype} (a step this short, a first_step "
                "say, or times this large; solve in float64, or over times nearer 0)"
            )


def check_brownian_increment(dw: object, size: tuple[int, ...], like: Tensor) -> Tensor:
    if isinstance(dw, Tensor) and dw.dtype != like.dtype and dw.dtype.is_floating_point:
        # torchsde promotes; here a float64 increment would silently promote a float32 solve.
        raise TypeError(
            f"bm returned dtype {dw.dtype}, expected the dtype of y0 {like.dtype}: make the Brownian "
            f"motion with dtype=y0.dtype"
        )
    return check_output("bm", dw, like, shape=size)


def diffusion_times_increment(noise_type: str, g: Tensor, dw: Tensor) -> Tensor:
    """``g dW`` for the noise type: elementwise (diagonal), broadcast (scalar) or matrix-vector."""
    if noise_type == "diagonal":
        return g * dw
    if noise_type == "scalar":
        return g[..., 0] * dw
    return torch.bmm(g, dw.unsqueeze(-1)).squeeze(-1)


def noise_vector(noise_type: str, g: Tensor) -> Tensor:
    """The diffusion as a ``(batch, d)`` amplitude: the column that moves each component.

    Diagonal: ``g`` itself; scalar: its only column; additive (and general): the row norms
    ``|g_i.|`` (the standard deviation per unit sqrt-time of component ``i``).
    """
    if noise_type == "diagonal":
        return g
    if noise_type == "scalar":
        return g[..., 0]
    return torch.linalg.vector_norm(g, dim=-1)
