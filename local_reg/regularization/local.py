"""Local regularization of neural ODEs [LR23].

[LR23] Pal, Edelman, Rackauckas. *Locally Regularized Neural Differential Equations: Some Black Boxes
Were Meant to Remain Closed!* ICML 2023.

At each training forward pass, one time ``t_reg`` in ``[t0, t1)`` is sampled, one step of an
embedded Runge--Kutta pair (Tsit5 by default) is taken from the solution ``u(t_reg)`` and its error
estimate is penalized::

    R_E = EEst * |dt|,   EEst = rms(dt * sum_i btilde_i k_i / (atol + rtol * max(|u|, |u_1|)))
    R_S = S_Est = rho / stability_size          (stiffness variant; Shampine's rho)

``u(t_reg)``, ``dt`` and ``k1 = f(t_reg, u(t_reg))`` are constants: only the step's remaining stages
are differentiated, by plain reverse mode through one step, so the main solve may use any gradient
method. The step is :func:`local_reg.step`, the same function the solver uses to accept or reject
steps, so ``EEst`` here is the solver's own error estimate.

:class:`LocallyRegularized`'s default penalty takes no step: ``R_K = mean(f(t_reg, u(t_reg))**2)``
(twice the kinetic-energy rate of Finlay et al., ICML 2020, at the one sampled time), which is what the
float32 ``EEst`` of the paper's probe mostly measured (docs/results.md).
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._autograd import untraced_hook
from .._errors import warn
from .._tuple import owning_module
from .._validate import finite_times, refuse_tracing, transformed
from ..controller import TimeSet
from ..gradients._params import adjoint_params_tuple
from ..sde.problem import is_sde
from ..solution import State
from ..tableaus import ButcherTableau
from ._diagnostics import trained_parameters
from ._module import LocalPenalty, Regularized, functional_settings
from ._stats import RegularizationStats
from .schedules import ConstantWeight, RatioWeight, WeightSchedule

DEFAULT_PENALTY = "kinetic"
"""The penalty of :class:`LocallyRegularized` when no probe option is given (module docstring)."""
KINETIC_RATIO = 0.2
"""The default weight's target ``||grad (w R)|| / ||grad L||`` over the vector field's parameters for
the default (kinetic) penalty."""
PROBE_RATIO = 1.0
"""The same target for the probe-step penalties."""
FITTED_FLOW_RATIO = 0.03
"""The kinetic default's target when the loss reads interior output times: the solution is read along
the flow, which the data then fix, and a larger target costs fit (docs/results.md, "A bounded rise
of the weight along the flow" and "Two fits no rule had seen")."""
FLOW_MAX_RISE = 2.0
"""The kinetic default's :class:`RatioWeight` ``max_rise`` when the loss reads interior output times: the
weight rises by at most this factor per measurement, so that no single draw of the penalty's
gradient sets it (docs/results.md, "A bounded rise of the weight along the flow")."""
END_READ_FLOOR = 1.0
"""The kinetic default's :class:`RatioWeight` ``floor`` when ``t`` has only its two end times: the
weight does not fade as a classifier that separates its training set loses its task gradient
(docs/results.md, "A floor under the fading weight, for solves read at their end")."""
DEFAULT_EVERY = 10
"""Training forward passes between the default weight's measurements."""
DEFAULT_REVISION = 1
"""Raised whenever the default penalty or weight changes in a way that neither the constants above
nor :class:`RatioWeight`'s keyword defaults show: :func:`default_fingerprint` hashes it with them."""


def default_fingerprint() -> str:
    """Six hex digits that name this version of :class:`LocallyRegularized`'s default (its penalty,
    its weight's targets, floor, rise limit and measurement interval, and :class:`RatioWeight`'s own
    keyword defaults). The experiments runner labels a run of the default with them, so that a results
    folder written under an earlier default is not read as this one's runs."""
    ratio_defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(RatioWeight).parameters.items()
        if parameter.default is not inspect.Parameter.empty and name != "parameters"
    }
    signature = {
        "revision": DEFAULT_REVISION,
        "penalty": DEFAULT_PENALTY,
        "targets": [KINETIC_RATIO, FITTED_FLOW_RATIO, PROBE_RATIO],
        "floor": END_READ_FLOOR,
        "flow_max_rise": FLOW_MAX_RISE,
        "every": DEFAULT_EVERY,
        "ratio_weight": ratio_defaults,
    }
    return hashlib.sha1(json.dumps(signature, sort_keys=True).encode()).hexdigest()[:6]


def _follow_the_reading(weight: RatioWeight, along_the_flow: bool) -> None:
    """The kinetic default's target, floor and rise limit for a solve read along the flow (a fit to
    observations) or at its end."""
    weight.target_ratio = FITTED_FLOW_RATIO if along_the_flow else KINETIC_RATIO
    weight.floor = 0.0 if along_the_flow else END_READ_FLOOR
    weight.max_rise = FLOW_MAX_RISE if along_the_flow else None


def default_weight(
    func: Any, adjoint_params: Iterable[Tensor] | None = None, penalty: str = "kinetic"
) -> WeightSchedule:
    """:class:`LocallyRegularized`'s default weight for ``penalty``: ``RatioWeight(KINETIC_RATIO,
    every=DEFAULT_EVERY, floor=END_READ_FLOOR)`` (the target, floor and ``max_rise`` then follow each
    training call's output times), or ``RatioWeight(PROBE_RATIO, every=DEFAULT_EVERY)`` for a probe step,
    over ``func``'s trainable parameters (``adjoint_params`` when given, else the parameters of
    ``func``'s module, or of a bound method's); the constant 1 when there are none. A module whose
    parameters are all frozen now (a pretrained field, unfrozen later) gets the self-tuning weight
    too: it measures the parameters trained at each training call, from the first that trains one
    (until then it stays at its ``initial``, and with the default ``detach_state=True`` the penalty
    has nothing to pull on; a field that stays frozen with ``detach_state=False`` pulls on what makes
    ``y0`` at that weight: pass ``weight=`` for another)."""
    if adjoint_params is not None:
        parameters = list(adjoint_params)
    else:
        owner = owning_module(func)
        # What is not a field (not callable, a class) is refused with its own error.
        if owner is None and callable(func) and not isinstance(func, type):
            warn(
                "func is a plain function, whose parameters the default self-tuning weight cannot "
                "see, so the penalty's weight is the constant 1 (far too strong on many tasks): pass "
                "an nn.Module, or adjoint_params=(the tensors func uses), for the self-tuning weight; "
                "adjoint_params=() for a field without parameters, or weight=... to choose one"
            )
        parameters = [] if owner is None else list(owner.parameters())
    trained = [p for p in parameters if isinstance(p, Tensor) and p.requires_grad]
    frozen_module = adjoint_params is None and bool(parameters) and not trained
    if not trained and not frozen_module:
        return ConstantWeight(1.0)
    if penalty == "kinetic":
        weight = RatioWeight(
            KINETIC_RATIO, every=DEFAULT_EVERY, parameters=trained or None, floor=END_READ_FLOOR
        )
    else:
        weight = RatioWeight(PROBE_RATIO, every=DEFAULT_EVERY, parameters=trained or None)
    if frozen_module:
        # Its frozen parameters, which a RatioWeight made by hand refuses: each training call
        # measures those trained by then (LocallyRegularized follows the module's parameters).
        weight.parameters = parameters
    return weight


def local_regularization(
    func: Any, y0: State, t: TimeSet, *, bm: Any | None = None, **settings: Any
) -> tuple[State, Tensor, RegularizationStats]:
    """Solve ``dy/dt = func(t, y)`` (or an SDE) at ``t`` and compute the local regularization
    penalty [LR23] once, without a module (by default the field's mean square rate at the sampled
    time; ``penalty="error-dt"`` for a probe step and the paper's ``EEst * |dt|``).

    Returns ``(ys, reg, stats)``: ``ys`` the solution at ``t`` (as :func:`local_reg.odeint`; never
    at ``t_reg``), ``reg`` the *unweighted* penalty (0-dim tensor) and a
    :class:`RegularizationStats`. Add ``weight * reg`` to the training loss. ``settings`` are
    :class:`LocallyRegularized`'s keywords; ``bm`` is an SDE's Brownian motion
    over ``[t[0], t[-1]]``, shared by the main solve and the step (by default a new
    ``torchsde.BrownianInterval`` seeded from ``generator``).
    """
    return LocallyRegularized(func, **functional_settings("local_regularization", settings)).penalize(
        y0, t, bm
    )


class LocallyRegularized(Regularized):
    """A neural ODE ``dy/dt = func(t, y)`` (or SDE) trained with local regularization [LR23].

    ``ys = model(y0, t)`` returns the solution at ``t``. In training mode it also sets
    ``model.reg_loss = w * R``, ``R`` the penalty at a sampled ``t_reg`` (by default the field's
    mean square rate there; with a probe step, that of one regularization step from ``u(t_reg)``),
    ``u(t_reg)``, ``dt`` and ``k1 = f(t_reg, u(t_reg))`` constants, so the main solve may use any
    gradient method; add it to the task loss. In eval mode there is no
    regularization and no extra cost: ``ys`` is exactly the unregularized solution and ``reg_loss``
    is 0. ``model.stats`` describes the last call. Everything is checked at construction.

    ``func`` may be a torchsde-style SDE (``f``, ``g``, ``noise_type``; see :func:`local_reg.sdeint`):
    by default ``R`` is then the drift's mean square at ``t_reg``; with a probe option or
    ``penalty="error-dt"``, one Euler--Maruyama step with its embedded estimate on the main solve's
    Brownian path, ``R = EEst * |dt|`` (``regularizer="error"`` only, ``reg_method`` ``None``); and
    ``backend`` is ``"local_reg"`` or ``"torchsde"``.

    A penalty that is not finite (a diverging regularization step) is replaced by a zero that
    carries no gradient, and ``stats.penalty_finite`` is ``False``; a zero ``EEst`` has a zero
    gradient, never NaN.

    **Defaults.** Two departures from [LR23], both chosen in docs/results.md's study:

    - The penalty is ``mean(f(t_reg, u(t_reg))**2)`` (``penalty="kinetic"``; an SDE's drift): the
      field's mean square rate at the sampled time, one evaluation, no probe step. In float32 the
      paper's probe step lands so far inside the tolerance that its ``EEst`` is mostly rounding,
      about ``eps |dt| |f| / tol``; this is the deliberate form of what it measured, and it does not
      depend on the tolerance. Asking for anything only a probe step reads (``regularizer=
      "stiffness"``, ``reg_method``, ``step_size="solver"``, ``probe``, ``probe_scale``, ``probe_dtype``) or
      ``penalty="error-dt"`` takes a probe step and the paper's penalty ``EEst * |dt|`` instead
      (for an ODE the probe is ``"initial-hairer"`` unless given; :meth:`paper`, or
      ``probe="initial"``, takes the paper's step).
    - The weight tunes itself: ``RatioWeight(0.2, every=10, parameters=<func's trainable
      parameters>)`` holds the penalty's gradient on the vector field's parameters at 0.2 times the
      task loss's gradient there (measured every 10 training forward passes, in the usual
      backward pass; no ``weight.step()`` needed), with ``floor=1`` for a solve read only at its
      two end times: the weight does not fade when a classifier separates its training set and
      its task gradient vanishes. When ``t`` has more than two times and the loss reads them (the
      solution is read along the flow, a fit to observations; judged by the measuring backward
      pass's gradient on ``ys[1:-1]``) the target is 0.03, there is no floor, and the weight rises
      by at most a factor 2 per measurement (``max_rise=2``, from its start 1e-3); all three are set
      at each training call and by each measuring pass (from each call's own ``t``: a fit chained
      through calls at ``[t_k, t_k+1]``, one per observation interval, gets the end-read rule
      unless given ``RatioWeight(0.03, every=10, max_rise=2, parameters=...)``). With the probe step,
      ``RatioWeight(1.0, ...)``. A field without trainable parameters gets the constant weight 1.

    Measured (3 seeds, quick settings; docs/results.md): on eleven of sixteen task settings the
    test accuracy within 1 point of vanilla's or the test loss within 10% at 0.47-0.95x the test
    NFE; it costs accuracy when training is short (a classifier whose classes are shells around
    the centre at 30 epochs, -5.3 points, +0.1 at 100; mnist at 5 epochs, -1.2) and on a
    Lotka--Volterra fit (1.4-2.5x the loss). On two tasks added after it was fixed: MNIST-1D 0.55x
    at +6.4 points, a van der Pol fit 0.96x at 0.92x the loss. The floor on end-read solves came
    after these: where the weight faded it cut further at equal accuracy (digits trained 60
    epochs 0.65x to 0.59x, breast cancer 0.69x to 0.49x), elsewhere it changed nothing beyond the
    seeds' spread. Along the flow the bounded rise at the target 0.03 came later still: on the
    held-out fits (forced oscillator, Duffing, FitzHugh--Nagumo, Brusselator, Sel'kov, Stuart--Landau)
    it keeps vanilla's test mse (medians 0.99-1.19x, against 1.13-2.26x with the target 0.1 and an
    unbounded rise) and cuts little (0.87-1.00x the NFE). The paper's exact procedure, with its
    fixed weights: :meth:`paper`.

    Args:
        sampling: ``"random"`` (unbiased, the paper's default): ``t_reg ~ U[t0, t1)``; ``u(t_reg)``
            is the main solve's dense output there (an ODE), the linear interpolant of its recorded
            steps (an SDE's kinetic penalty) or an output time it lands on (an SDE's probe step).
            ``"biased"``: ``t_reg`` is drawn uniformly from the start times of the main solve's
            accepted steps (which cluster where the dynamics are hard) and the step restarts from
            the recorded state.
        regularizer: ``"error"``: ``R = EEst * |dt|``; ``"stiffness"``: ``R = rho / stability_size``
            (not multiplied by ``dt``; [LR23] reports it "did not yield positive results").
        method, rtol, atol, gradient, adjoint_params, backend, options, generator, weight: the
            keywords of :class:`Regularized`, as follows.
        method: the main solver (default ``"tsit5"``; ``"dopri5"`` with torchdiffeq, which has no
            Tsit5; ``"euler_maruyama"`` for an SDE).
        reg_method: the embedded pair of the regularization step (default Tsit5, which the public
            code hard-codes).
        rtol, atol: tolerances of the main solve and of the regularization step's ``EEst``.
        gradient: the main solve's gradient method, passed to ``local_reg.odeint(gradient=...)`` (an
            object such as ``Symplectic(checkpoints=32)``, or ``"direct"``, ``"adjoint"``,
            ``"checkpoint"``, ``"symplectic"``, ``"interpolating_adjoint"``); with torchdiffeq ``"direct"`` is
            ``torchdiffeq.odeint`` and ``"adjoint"`` is ``torchdiffeq.odeint_adjoint`` (a
            ``BacksolveAdjoint``'s settings become its ``adjoint_*`` arguments).
        adjoint_params: the main solve's: the tensors the graph-free gradient methods differentiate
            (default: the backend's), under ``"direct"`` those whose gradients are checked for
            non-finite values (as ``odeint``'s and ``sdeint``'s).
        backend: ``"local_reg"`` or ``"torchdiffeq"``. With torchdiffeq, ``u(t_reg)`` is its dense
            output at ``t_reg`` (adding an output time does not change its steps) and biased sampling
            records steps with torchdiffeq's ``callback_accept_step``.
        step_size: ``"initial"`` (the paper): the initial-step heuristic at ``u(t_reg)``;
            ``"solver"``: the accepted step of the main solve that contains ``t_reg`` (starts at it
            when the main solve lands on it). Either is capped at ``|t1 - t_reg|``.
        detach_state: ``True`` (the paper): ``u(t_reg)`` and ``k1`` are constants. ``False``: the
            penalty's gradient also flows into ``u(t_reg)`` (and from there, through the main
            gradient method, into ``y0`` and the parameters); only with ``sampling="random"``.
        generator: the ``torch.Generator`` (CPU) that draws ``t_reg`` (and an SDE's Brownian seed);
            the global one by default.
        options: extra keyword arguments of the main solve (``local_reg.odeint`` keywords, or
            torchdiffeq's ``options`` dict).
        probe, probe_scale, penalty, n_draws: the probe's step size, a factor on the heuristic's
            step, the penalty's form and the draws averaged (:class:`LocalPenalty`). ``penalty``
            defaults to ``"kinetic"`` (above); with a probe step, ``probe`` defaults to
            ``"initial-hairer"`` for an ODE (``"initial"`` for an SDE, whose probe is an
            Euler--Maruyama step by this library's SDE heuristic, where the paper's code takes a
            SOSRI step: docs/sde.md). ``stats`` describe the last draw (``t_reg``, ``state``,
            ``dt_reg``, the estimates), except ``penalty``, ``R``: the draws' mean.
        probe_dtype: the probe step's dtype (:class:`LocalPenalty`; default the state's).
        weight: ``None`` (the default weight above), a non-negative float or a
            :class:`WeightSchedule` (e.g. ``ExponentialDecay(2.5, 1.0, N)`` as for MNIST in
            [LR23], whose weights belong to its penalty: :meth:`paper`); advance a schedule with
            ``model.weight.step()`` once per iteration. A given weight does not change the
            penalty. Its state (and ``generator``'s) is part of ``model.state_dict()``.
    """

    PAPER_OPTIONS: ClassVar[dict[str, Any]] = {"probe": "initial", "penalty": "error-dt", "n_draws": 1}
    """The options :meth:`paper` fixes to [LR23]'s procedure."""

    def __init__(
        self,
        func: Any,
        *,
        sampling: str = "random",
        regularizer: str = "error",
        reg_method: str | ButcherTableau | None = None,
        step_size: str = "initial",
        detach_state: bool = True,
        probe: str | None = None,
        probe_scale: float = 1.0,
        penalty: str | None = None,
        n_draws: int = 1,
        probe_dtype: str | torch.dtype | None = None,
        weight: float | WeightSchedule | None = None,
        **solve: Any,
    ) -> None:
        # Two keywords whose names odeint and Regularized use for other things.
        if isinstance(step_size, (int, float)) and not isinstance(step_size, bool):
            raise ValueError(
                f"step_size={step_size!r}: here step_size sizes the probe step ('initial' or 'solver'); "
                f"a fixed step of the main solve goes in options={{'step_size': {step_size!r}}}"
            )
        if penalty is not None and not isinstance(penalty, str):
            forms = ", ".join(map(repr, LocalPenalty.PENALTIES))
            raise TypeError(
                f"penalty names the local penalty's form here ({forms}), got {type(penalty).__name__}: "
                "a penalty object is Regularized(func, penalty)'s"
            )
        # Options only a probe step reads: asking for one asks for the probe step.
        probe_options = [
            name
            for name, given in (
                ("regularizer", regularizer != "error"),
                ("reg_method", reg_method is not None),
                ("step_size", step_size != "initial"),
                ("probe", probe is not None),
                ("probe_scale", probe_scale != 1.0),
                ("probe_dtype", probe_dtype is not None),
            )
            if given
        ]
        if penalty is None:
            penalty = "error-dt" if probe_options else DEFAULT_PENALTY
        elif penalty == "kinetic" and probe_options:
            raise ValueError(
                f"penalty='kinetic' takes no probe step, so {probe_options} would be ignored: drop "
                "them, or choose a probe-step penalty (e.g. penalty='error-dt')"
            )
        if probe is None:
            # An SDE's probe is an Euler--Maruyama step; step_size="solver" takes the solver's step;
            # the kinetic penalty takes none (its penalty object refuses any other probe).
            takes_hairer = not (is_sde(func) or step_size == "solver" or penalty == "kinetic")
            probe = "initial-hairer" if takes_hairer else "initial"
        strategy = LocalPenalty(
            sampling=sampling,
            regularizer=regularizer,
            reg_method=reg_method,
            step_size=step_size,
            detach_state=detach_state,
            probe=probe,
            probe_scale=probe_scale,
            penalty=penalty,
            n_draws=n_draws,
            probe_dtype=probe_dtype,
        )
        default = weight is None
        # The default weight measures over func's parameters unless adjoint_params are given.
        follows_field = default and solve.get("adjoint_params") is None
        if weight is None:
            if solve.get("adjoint_params") is not None:
                solve["adjoint_params"] = adjoint_params_tuple(solve["adjoint_params"])  # read twice
            weight = default_weight(func, solve.get("adjoint_params"), penalty)
        super().__init__(func, strategy, weight=weight, **solve)
        # The weight whose target follows the output times (the kinetic default's own, while in use).
        kinetic_default = default and penalty == "kinetic"
        self._default_weight = (
            self.weight if kinetic_default and isinstance(self.weight, RatioWeight) else None
        )
        self._field_weight = self.weight if follows_field and isinstance(self.weight, RatioWeight) else None
        # (the backward pass last judged, whether a call it carried was read inside its span):
        # _judge_the_reading. Until judged, interior output times are taken as read.
        self._read_inside: tuple[int, bool] = (-1, True)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A pickle of an earlier version lacks what later ones added: unset, as those versions
        # behaved (no weight that follows the reading or the field's current parameters).
        defaults = {"_default_weight": None, "_field_weight": None, "_read_inside": (-1, True)}
        super().__setstate__({**defaults, **state})

    def forward(self, y0: State, t: TimeSet, bm: Any | None = None) -> State:
        refuse_tracing(type(self).__name__)  # before the default weight reads t's values
        field_weight = self._field_weight
        if self.training and field_weight is not None and self.weight is field_weight:
            self._measure_the_fields_current_parameters(field_weight)
        training_pass = self.training and torch.is_grad_enabled()
        default_weight = self._default_weight
        if training_pass and default_weight is not None and self.weight is default_weight:
            # The default target, floor and rise limit follow the kind of training solve: read only
            # at its end, or along the flow (where the data fix the field and a held pull would cost
            # fit); an evaluation call in between (eval() or no_grad) must not change the measurement the
            # last one opened.
            interior = len(finite_times("t", t)) > 2  # refuses a t that is no sequence of times, by name
            before = (default_weight.target_ratio, default_weight.floor, default_weight.max_rise)
            # As the last measuring pass found them read; that pass judges again when one opens.
            _follow_the_reading(default_weight, interior and self._read_inside[1])
            try:
                ys = super().forward(y0, t, bm)
            except BaseException:
                # A refused or failed call leaves them to the measurement the last call opened.
                default_weight.target_ratio, default_weight.floor, default_weight.max_rise = before
                raise
            if interior and default_weight.measuring:
                self._judge_the_reading(ys, default_weight)
            return ys
        return super().forward(y0, t, bm)

    def _judge_the_reading(self, ys: State, weight: RatioWeight) -> None:
        """Interior output times are a fit read along the flow only if the loss reads them: where the
        backward pass that measures brings no gradient to ``ys[1:-1]`` (times passed to plot, a
        classifier's loss on ``ys[-1]``), the measurement is folded under the end-read rule, as
        for ``t = [t0, t1]``. A pass carrying several calls: along the flow if any is read inside."""

        def judge(gradient: Tensor) -> None:
            pass_id = torch._C._current_graph_task_id()
            read_inside = bool(gradient[1:-1].ne(0).any())
            seen_id, seen_inside = self._read_inside
            self._read_inside = (pass_id, read_inside or (seen_id == pass_id and seen_inside))
            _follow_the_reading(weight, self._read_inside[1])

        for part in ys if isinstance(ys, tuple) else (ys,):
            if part.requires_grad:
                part.register_hook(untraced_hook(judge))

    def _measure_the_fields_current_parameters(self, field_weight: RatioWeight) -> None:
        """``load_state_dict(..., assign=True)``, ``to_empty()`` after a meta-device construction
        and the like put new parameter objects in the field: the default weight measures the ones it
        has now (those that were replaced would never get a gradient)."""
        measured = field_weight.parameters
        if measured is None:
            # Parameters removed since construction: it measures nothing (watch returns early),
            # and replacing them here would start measuring again.
            return
        owner = owning_module(self.func)
        current = [] if owner is None else [p for p in owner.parameters() if p.requires_grad]
        if any(transformed(p) for p in current):
            # torch.func.functional_call's parameters inside a transform: lent for this call only,
            # and the weight cannot measure them (its hooks read gradients on the host).
            return
        if current and [id(p) for p in current] != [id(p) for p in measured]:
            field_weight.parameters = trained_parameters(current)

    @classmethod
    def paper(cls, func: Any, weight: float | WeightSchedule, **keywords: Any) -> LocallyRegularized:
        """[LR23]'s exact procedure: the probe ``"initial"`` (the initial-step heuristic with
        exponent ``1/p``, as its code), the penalty ``EEst * |dt|``, one draw, and the fixed
        ``weight`` (a float or a schedule: the paper's are 2.5 -> 1 for MNIST, 100 -> 10 for
        PhysioNet, 1000 for the MNIST SDE); ``keywords`` are the other arguments of the class.
        For an SDE only the sampling, the penalty's form and the one draw are the paper's: its probe
        is an Euler--Maruyama step on the main solve's path, the paper's code's a SOSRI step on
        fresh noise, so the SDE weight 1000 belongs to another scale (docs/sde.md)."""
        if weight is None:
            # None would be the default's self-tuning weight, not the paper's fixed one.
            raise TypeError("LocallyRegularized.paper needs the paper's fixed weight (a float or a schedule)")
        fixed = sorted(set(keywords) & set(cls.PAPER_OPTIONS))
        if fixed:
            raise ValueError(
                f"LocallyRegularized.paper fixes {fixed} to the paper's "
                f"{ {name: cls.PAPER_OPTIONS[name] for name in fixed} }: to change them, build "
                "LocallyRegularized(func, ...) with the options you want"
            )
        return cls(func, weight=weight, **cls.PAPER_OPTIONS, **keywords)
