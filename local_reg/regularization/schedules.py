"""Weights of the regularization term, constant or on a schedule advanced by the training loop.

[LR23] Pal, Edelman, Rackauckas, ICML 2023, section 5: the loss is ``task + w(k) * R`` with either a
constant ``w`` or an exponential decay from ``w0`` to ``w1`` over ``N`` training iterations,

    w(k) = w0 * exp(-k * ln(w0 / w1) / N)       (MNIST 2.5 -> 1.0; PhysioNet 100 -> 10),

so ``w(0) = w0`` and ``w(N) = w1``.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypedDict, cast

import torch
from torch import Tensor

from .._autograd import at_pass_end, untraced_hook
from .._checks import non_negative_int, positive_int
from .._errors import warn
from .._validate import (
    gradient_hooks_held_back,
    non_negative_float,
    positive_float,
    real_number,
    transformed,
)
from ._diagnostics import GradientRatio, squared_norm, trained_parameters

ROUNDING_ULPS = 4096
"""A task gradient measured as the pass's gradient less the penalty's counts as zero when its norm is
at most this many machine epsilons (of the gradients' dtype) times the norm of the penalty's part
in that pass: what the subtraction leaves of a zero task gradient is the rounding of the two
computations of the penalty's gradient (measured: 300 epsilons through one float64 probe step).
In float32 that is a ratio of the weighted penalty's gradient to the task's above 2000, far from
any target; a task gradient genuinely that small (a loss scaled 1e7-fold down) is lost with it,
and the warning of a weight that never measured names that case."""


MAX_JOINED_CALLS = 64
"""How many training calls of one open :class:`RatioWeight` measurement keep their penalty's
gradient apart (a recurrent block called at every observation of a series joins one per call);
later calls add theirs to the last one's, so that memory stays bounded however many calls a pass
holds, and are read together with it: a pass that weighs those later calls differently, or
carries only some of them, measures nothing (and the warning of a weight that never measured says
so)."""


class _Penalty(TypedDict):
    """Training calls' penalties in an open measurement (one call's, or from the
    ``MAX_JOINED_CALLS``-th on, the sum of every later call's too): their gradient on each measured
    parameter (``None`` where they have none) and, per call, the factor the backward pass put on
    it (``None`` until read)."""

    parts: list[Tensor | None]
    scales: list[float | None]


class _Measurement(TypedDict):
    """One open gradient-ratio measurement of :class:`RatioWeight` (see ``watch``)."""

    parameters: list[Tensor]
    penalties: list[_Penalty]
    gradients: list[Tensor | None]
    without_penalty: bool
    reached: int
    ended: bool
    end_queued: bool
    end_of_pass: Callable[[], None]
    passes: dict[int, bool]
    """The backward passes (graph tasks) that reached the measurement, each whether it finished."""
    handles: list[torch.utils.hooks.RemovableHandle]
    nodes: list[torch.autograd.graph.Node]
    unhooked: list[tuple[int, Tensor] | None]
    """Each parameter's gradient in a backward pass (graph task) before the user's own hooks."""


class WeightSchedule:
    """A regularization weight that may change with the training iteration.

    ``schedule()`` is the current weight; ``schedule.step()`` advances one iteration (the training
    loop calls it, typically once per optimizer step). ``state_dict()`` / ``load_state_dict()`` save
    and restore the iteration so that a resumed run continues the schedule.
    """

    def __init__(self) -> None:
        self.iteration = 0

    def value(self, iteration: int) -> float:
        """The weight at training iteration ``iteration`` (0 before the first :meth:`step`): what a
        schedule defines."""
        raise NotImplementedError(f"{type(self).__name__} must define value(iteration)")

    def __call__(self) -> float:
        """The current weight, ``value(iteration)``, checked (a non-negative number, or a 0-dim
        tensor kept with its graph)."""
        weight = self.value(self.iteration)
        # A user's schedule is checked as a float weight is: a negative one would reward what the
        # penalty measures, a NaN would make reg_loss NaN. A 0-dim tensor (a learned weight) is
        # checked by its value and kept, with its graph.
        checked = non_negative_float(f"{type(self).__name__}.value({self.iteration})", weight)
        return cast(float, weight) if isinstance(weight, Tensor) else checked

    def step(self) -> float:
        """Advance one iteration and return the new weight."""
        self.iteration += 1
        return self()

    @property
    def last_ratio(self) -> float | None:
        """The last measured ratio of the penalty's gradient to the task's (:class:`RatioWeight`);
        ``None`` for a schedule that measures none."""
        return None

    def observe(self, task_loss: float, nfe: float | None = None) -> None:
        """Report the iteration's measured task loss and NFE before :meth:`step`; a schedule fixed in
        advance ignores them (:class:`AdaptiveWeight` adapts to them)."""

    def watch(self, reg_loss: Tensor) -> None:
        """Called by a regularized model with each weighted penalty it makes in training; a weight
        that measures the penalty's pull (:class:`RatioWeight` with ``parameters``) starts here."""

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue the schedule: the iteration, and a self-tuning
        weight's measured state."""
        return {"iteration": self.iteration}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; a state that is not one of this schedule's is a
        ``ValueError`` that leaves the schedule as it was."""
        if not isinstance(state, Mapping) or "iteration" not in state:
            got = f"keys {sorted(state)}" if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(
                f"state must be the state_dict() of a {type(self).__name__} (a dict with 'iteration'), "
                f"got {got}"
            )
        try:
            iteration = non_negative_int("iteration", state["iteration"])  # numpy's integers too
        except TypeError as error:
            raise ValueError(str(error)) from None
        unused = sorted(set(state) - set(self.state_dict()))
        if unused:
            # Most likely another schedule's state (a self-tuning weight's, loaded into a model
            # built with weight=0.5): its weight is not carried over.
            warn(
                f"{type(self).__name__}.load_state_dict ignores the state's keys {unused}, which it "
                "does not use (a state saved by another weight schedule?)"
            )
        self.iteration = iteration


LEARNED_WEIGHT = "to learn the weight, return it from the value() of a WeightSchedule of your own"


def constant_coefficient(name: str, value: object, learn: str = LEARNED_WEIGHT) -> float:
    """A constant, non-negative coefficient (a weight, a penalty's relative weight) as a float; a tensor
    that requires grad (one meant to be learned) is refused, whose gradient the float would drop
    silently: ``learn`` says what to do instead."""
    if isinstance(value, Tensor) and value.requires_grad:
        raise TypeError(
            f"{name} is a tensor that requires grad, whose gradient a constant coefficient would drop: "
            + learn
        )
    return non_negative_float(name, value)


class ConstantWeight(WeightSchedule):
    """``w(k) = value`` for every iteration (e.g. 1000 for the MNIST neural SDE of [LR23])."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self._weight = constant_coefficient("value", value)

    @property
    def weight(self) -> float:
        """The constant; it may be set between iterations, and is checked as the constructor's."""
        return self._weight

    @weight.setter
    def weight(self, value: float) -> None:
        self._weight = constant_coefficient("weight", value)

    def state_dict(self) -> dict[str, Any]:
        # The constant too, as "constant" (a self-tuning weight's state has a "weight" of its own,
        # which is not carried over): it may have been set between iterations.
        return {**super().state_dict(), "constant": self._weight}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # A state saved before the constant was part of it keeps this schedule's.
        weight = self._weight
        if isinstance(state, Mapping) and "constant" in state:
            weight = non_negative_float("the state's constant", state["constant"])
        super().load_state_dict(state)
        self._weight = weight

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A pickle of an earlier version holds the constant as "weight".
        state = dict(state)
        if "weight" in state:
            state["_weight"] = state.pop("weight")
        self.__dict__.update(state)

    def value(self, iteration: int) -> float:
        return self.weight

    def __repr__(self) -> str:
        return f"ConstantWeight({self.weight})"


class ExponentialDecay(WeightSchedule):
    """``w(k) = w0 * exp(-k ln(w0 / w1) / N)`` for ``k <= N``, then ``w1`` ([LR23]).

    ``w0`` and ``w1`` must be positive (the logarithm of their ratio defines the decay rate); past
    ``N`` iterations the weight stays at ``w1`` rather than decaying further.
    """

    def __init__(self, w0: float, w1: float, n_steps: int) -> None:
        super().__init__()
        self.w0 = non_negative_float("w0", w0)
        self.w1 = non_negative_float("w1", w1)
        for name, weight in (("w0", self.w0), ("w1", self.w1)):
            if weight == 0:
                message = f"{name} must be positive for an exponential decay (rate ln(w0 / w1)), got 0"
                raise ValueError(message)
        self.n_steps = positive_int("n_steps", n_steps)

    def value(self, iteration: int) -> float:
        iteration = non_negative_int("iteration", iteration)
        if iteration >= self.n_steps:
            return self.w1  # exactly, not the formula's rounding of it
        return self.w0 * math.exp(-iteration * math.log(self.w0 / self.w1) / self.n_steps)

    def __repr__(self) -> str:
        return f"ExponentialDecay(w0={self.w0}, w1={self.w1}, n_steps={self.n_steps})"


class _SelfTuningWeight(WeightSchedule):
    """What the weights that tune themselves share: a start ``initial`` within ``[w_min, w_max]``, an
    averaging factor ``beta`` and a state (``_fresh()``'s keys) saved whole by ``state_dict()``."""

    def __init__(self, initial: float, beta: float, w_min: float, w_max: float) -> None:
        super().__init__()
        self.initial = positive_float("initial", initial)
        self.beta = non_negative_float("beta", beta)
        if self.beta >= 1:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        self.w_min, self.w_max = positive_float("w_min", w_min), positive_float("w_max", w_max)
        if self.w_min > self.w_max:
            raise ValueError(f"w_min must not exceed w_max, got w_min={w_min}, w_max={w_max}")
        if not self.w_min <= self.initial <= self.w_max:
            raise ValueError(f"initial must lie in [w_min, w_max] = [{w_min}, {w_max}], got {initial}")
        self._state = self._fresh()

    def _fresh(self) -> dict[str, Any]:
        raise NotImplementedError

    def _weight_of(self, state: dict[str, Any]) -> float:
        raise NotImplementedError

    def _check_state(self, state: Mapping[str, Any]) -> None:
        """Refuse a state (its keys present) that :meth:`step` could not continue from."""

    def value(self, iteration: int) -> float:
        return self._weight_of(self._state)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), **self._state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Every check before anything is set: a refused state leaves the weight as it was.
        if isinstance(state, Mapping):
            missing = [k for k in self._fresh() if k not in state]
            if missing:
                raise ValueError(f"{type(self).__name__} state is missing {missing}")
            self._check_state(state)
            try:
                weight = self._weight_of(state)
            except OverflowError:  # exp of a huge log-weight: out of bounds like any other
                weight = math.inf
            if not self.w_min * (1 - 1e-12) <= weight <= self.w_max * (1 + 1e-12):
                bounds = f"[w_min, w_max] = [{self.w_min}, {self.w_max}]"
                raise ValueError(f"weight {weight} lies outside {bounds}")
        super().load_state_dict(state)
        self._state = {k: state[k] for k in self._fresh()}


class AdaptiveWeight(_SelfTuningWeight):
    """A weight that tunes itself: the user states the price, dual ascent finds the multiplier.

    The constraint is "the task loss may rise by at most ``loss_rise`` (relative) above its
    unregularized level", optionally with "and NFE should come down to ``target_nfe``". The weight
    ``w`` is the multiplier of the cost term in ``task + w R`` and follows projected dual ascent on
    ``log w`` with sign steps (bounded, scale-free), from quantities measured in training: after each
    iteration ``k`` with task loss ``L_k`` and forward NFE ``N_k``,

        Lbar = EMA(L), Nbar = EMA(N)  (factor ``beta``, bias-corrected)
        B    = min over k > warmup of Lbar  (the best task loss seen: the unregularized baseline's stand-in)
        g    = -1                         if Lbar > B + loss_rise |B|   (over the loss allowance)
             = clip(Nbar / target_nfe - 1, -1, 1)   else, if target_nfe is set
             = +1                         else                         (within allowance: buy cost)
        log w <- clip(log w + rate g, log w_min, log w_max)

    so ``w`` rises while the cost is above its target and the loss is within its allowance, and falls
    when the loss exceeds it. No update in the first ``warmup`` observations (the EMAs settle). This
    goes beyond [LR23], whose weights are fixed per task; the dual-ascent view of a penalty weight is
    the method of multipliers (Bertsekas, *Constrained Optimization and Lagrange Multiplier Methods*).
    Call :meth:`observe` then :meth:`step` once per iteration; ``state_dict()`` holds the multiplier
    and both averages, so a resumed run continues where it stopped.
    """

    def __init__(
        self,
        initial: float = 1.0,
        *,
        loss_rise: float = 0.05,
        target_nfe: float | None = None,
        rate: float = 0.02,
        beta: float = 0.9,
        warmup: int = 10,
        w_min: float = 1e-3,
        w_max: float = 1e3,
    ) -> None:
        self.loss_rise = non_negative_float("loss_rise", loss_rise)
        self.target_nfe = None if target_nfe is None else positive_float("target_nfe", target_nfe)
        self.rate = positive_float("rate", rate)
        self.warmup = non_negative_int("warmup", warmup)
        super().__init__(initial, beta, w_min, w_max)

    def _fresh(self) -> dict[str, Any]:
        return {
            "log_weight": math.log(self.initial),
            "ema_loss": 0.0,
            "ema_nfe": 0.0,
            "observed": 0,
            "baseline": None,
            "pending": None,
        }

    def _weight_of(self, state: dict[str, Any]) -> float:
        return math.exp(float(state["log_weight"]))

    def _check_state(self, state: Mapping[str, Any]) -> None:
        def finite(value: object) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        for key in ("log_weight", "ema_loss", "ema_nfe"):
            if not finite(state[key]):
                raise ValueError(f"AdaptiveWeight state's {key} must be a finite float, got {state[key]!r}")
        observed = state["observed"]
        if isinstance(observed, bool) or not isinstance(observed, int) or observed < 0:
            raise ValueError(f"AdaptiveWeight state's observed must be a non-negative int, got {observed!r}")
        if state["baseline"] is not None and not finite(state["baseline"]):
            raise ValueError(
                f"AdaptiveWeight state's baseline must be None or finite, got {state['baseline']!r}"
            )
        pending = state["pending"]
        if pending is not None and not (
            isinstance(pending, (tuple, list))
            and len(pending) == 2
            and finite(pending[0])
            and (pending[1] is None or finite(pending[1]))
        ):
            raise ValueError(f"AdaptiveWeight state's pending must be None or (loss, nfe), got {pending!r}")

    @property
    def baseline(self) -> float | None:
        """The best (lowest) bias-corrected task-loss average seen after the warm-up (``None`` during
        it: the averages are still settling)."""
        return self._state["baseline"]

    def observe(self, task_loss: float, nfe: float | None = None) -> None:
        task_loss = real_number("task_loss", task_loss, "a real number")
        if not math.isfinite(task_loss):
            raise ValueError(f"task_loss must be finite, got {task_loss}")
        if self.target_nfe is not None and nfe is None:
            raise ValueError("this AdaptiveWeight has a target_nfe: observe() needs the measured nfe")
        # A non-finite count would stay in the NFE average for good.
        nfe = None if nfe is None else non_negative_float("nfe", nfe)
        self._state["pending"] = (task_loss, nfe)

    def step(self) -> float:
        """Advance one iteration; with an :meth:`observe` since the last step, fold it into the
        averages and, after ``warmup`` observations, update the multiplier (without one, the
        multiplier stays)."""
        state = self._state
        if state["pending"] is not None:
            loss, nfe = state["pending"]
            state["pending"] = None
            state["observed"] += 1
            state["ema_loss"] = self.beta * state["ema_loss"] + (1 - self.beta) * loss
            state["ema_nfe"] = self.beta * state["ema_nfe"] + (1 - self.beta) * (nfe or 0.0)
            correction = 1 - self.beta ** state["observed"]
            mean_loss, mean_nfe = state["ema_loss"] / correction, state["ema_nfe"] / correction
            if state["observed"] > self.warmup:
                baseline = state["baseline"]
                state["baseline"] = mean_loss if baseline is None else min(baseline, mean_loss)
                # Relative to the best loss's size: a negative loss (a log-likelihood's) must not
                # put the allowance below the best loss itself.
                if mean_loss > state["baseline"] + self.loss_rise * abs(state["baseline"]):
                    direction = -1.0
                elif self.target_nfe is not None:
                    direction = max(-1.0, min(1.0, mean_nfe / self.target_nfe - 1))
                else:
                    direction = 1.0
                state["log_weight"] = max(
                    math.log(self.w_min),
                    min(math.log(self.w_max), state["log_weight"] + self.rate * direction),
                )
        return super().step()

    def __repr__(self) -> str:
        return (
            f"AdaptiveWeight(w={self():.4g}, loss_rise={self.loss_rise}, target_nfe={self.target_nfe}, "
            f"rate={self.rate}, bounds=[{self.w_min}, {self.w_max}])"
        )


def _record_pass(passes: dict[int, bool]) -> None:
    """Enter the running backward pass in ``passes``, marked finished by a callback at its end
    (autograd runs none for a pass that raised)."""
    task = torch._C._current_graph_task_id()
    if task not in passes:
        passes[task] = False
        finished = functools.partial(passes.__setitem__, task, True)
        at_pass_end(finished)


class RatioWeight(_SelfTuningWeight):
    """A weight normalized by the measured gradient ratio: the penalty gets a stated share of the pull.

    The penalty's gradient scales with the tolerance, the probe and the task (EEst is the error
    divided by the tolerance), so no fixed weight transfers between them (docs/results.md, "Study:
    probe, penalty form, draws, self-tuning weight"). This weight holds instead the ratio

        ||d(w R)/dtheta|| / ||dL/dtheta|| = target_ratio

    of the weighted penalty's gradient to the task loss's: every ``every`` iterations it measures
    both gradient norms (:class:`local_reg.regularization.GradientRatio`: one extra vector--Jacobian
    product of ``w R``), keeps bias-corrected moving averages (factor ``beta``) of the task's norm
    ``G_L`` and of the *unweighted* penalty's ``G_R`` (the weighted one divided by the weight that
    made it), and sets

        w = clip(target_ratio * G_L / G_R, w_min, w_max)

    from the first measurement on (``initial`` until then). On a separable classifier read at its
    end the task's gradient vanishes as the training accuracy reaches 100%, and the weight, which
    follows it, fades with it. With ``floor = f > 0`` it does not fade with the task: it stays at or
    above ``f`` times the largest weight it has set, as far as that keeps the weighted penalty's
    gradient within ``f * target_ratio`` times the task's largest average gradient so far,

        w = max(clip(target_ratio * G_L / G_R),
                min(f * w_peak, clip(target_ratio * max(G_L, f * G_L_peak) / G_R)))

    (``G_L_peak`` bias-corrected; both largest values count from the measurements made with a
    floor on, so a phase without one does not set a later phase's floor). The cap lets a weight
    made large by a small penalty gradient (a field initialized near zero: the first measured
    weight can be 1e3 times the settled one) come down as the field grows, and the floor never
    raises the weight above its largest, where the task's gradient falls without vanishing and the
    penalty slows the field (docs/regularization.md, "A fading weight"). With ``max_rise = g`` the
    weight rises by at most the factor ``g`` per measurement, ``w_k <= g * w_{k-1}`` (falls are not
    limited): one measurement is one draw of the penalty's gradient, which can be 100 times smaller
    than its neighbours' where the penalty is nearly satisfied, and a weight set from one such draw
    has reached ``w_max``; limited, it starts at ``initial`` and climbs, as a step-size controller
    limits a step's growth (docs/results.md, "A bounded rise of the weight along the flow"). The
    target ``1`` (this class's default) is the one the study in docs/results.md chose for the
    probe-step penalties; :class:`LocallyRegularized`'s default kinetic penalty uses ``0.2``
    (``0.03`` and ``max_rise=2`` for a fit read along the flow), measured every 10 iterations
    (docs/regularization.md). The two norms are
    averaged, not their ratio, so that a minibatch with a near-zero task gradient (an unbounded
    ratio) does not dominate the average. It goes beyond [LR23], whose weights are
    fixed per task; normalizing a loss term by gradient norms is the idea of GradNorm (Chen et al.,
    ICML 2018). The ratio is measured over the parameters given, so pass all the trained ones (a
    classifier's head too): the task's gradient is the whole model's.

    Two ways to use it. **With the trained parameters given**, the model measures and updates the
    weight by itself, in the usual training loop (as :class:`LocallyRegularized`'s default weight,
    ``RatioWeight(0.2, every=10)`` over its vector field's parameters, does)::

        model = LocallyRegularized(func, weight=RatioWeight(0.2, every=10, parameters=params))
        loss = task_loss(model(y0, t))
        optimizer.zero_grad()
        (loss + model.reg_loss).backward()
        optimizer.step()

    Each training forward pass counts as one iteration: when :attr:`due`, making ``reg_loss`` takes
    the penalty's gradient, and the next backward pass that reaches the parameters gives the
    task's (its gradients less the penalty's) and sets the weight; :meth:`step` is then not needed
    (calling it does no harm). **Without them**, call ``model.weight.backward(loss, model.reg_loss,
    params)`` in place of ``(loss + model.reg_loss).backward()`` (or measure with a
    :class:`GradientRatio` and report ``observe_gradients(penalty_norm, task_norm)`` when
    :attr:`due`) and ``model.weight.step()`` once per iteration, which sets the weight. A weight
    that has measured nothing after ``10 * every`` iterations warns. ``state_dict()`` holds the
    weight, both averages, the largest weight and task average (the floor's), the last ratio, the
    count of iterations and whether the next call measures again, so a resumed run continues where
    it stopped.
    """

    _warned_unreached = False  # once per object: its parameters are not in reg_loss's graph
    _late_calls_apart = False  # a pass weighed the calls past MAX_JOINED_CALLS apart (for the warning)
    _read_as_rounding = False  # a task gradient was read as the rounding of a zero one (for the warning)

    def __init__(
        self,
        target_ratio: float = 1.0,
        *,
        every: int = 1,
        beta: float = 0.9,
        initial: float = 1e-3,
        w_min: float = 1e-6,
        w_max: float = 1e3,
        parameters: Iterable[Tensor] | None = None,
        floor: float = 0.0,
        max_rise: float | None = None,
    ) -> None:
        self.target_ratio = positive_float("target_ratio", target_ratio)
        self.every = positive_int("every", every)
        self.floor = non_negative_float("floor", floor)
        if self.floor > 1:
            raise ValueError(f"floor must be in [0, 1] (a fraction of the largest weight set), got {floor}")
        if max_rise is not None:
            max_rise = real_number("max_rise", max_rise, "a factor")
            if not 1 < max_rise < math.inf:
                raise ValueError(
                    f"max_rise must be a finite factor above 1 (or None: no limit), got {max_rise}"
                )
        self.max_rise = max_rise
        self.parameters = None if parameters is None else trained_parameters(parameters)
        self._measurement: _Measurement | None = None
        # (autograd graph task, how many training calls' penalties its backward pass carried).
        self._penalties_in_pass = (-1, 0)
        super().__init__(initial, beta, w_min, w_max)

    def _fresh(self) -> dict[str, Any]:
        return {
            "weight": self.initial,
            "peak": 0.0,
            "task_peak": 0.0,
            "ema_task": 0.0,
            "ema_penalty": 0.0,
            "measured": 0,
            "last_ratio": None,
            "pending": None,
            "watched": 0,
            "overdue": 0,
        }

    def _weight_of(self, state: dict[str, Any]) -> float:
        return float(state["weight"])

    @property
    def due(self) -> bool:
        """Whether this iteration's gradients should be measured (every ``every`` iterations; with
        ``parameters`` an iteration is a training forward pass of the model, else a :meth:`step`)."""
        clock = self.iteration if self.parameters is None else self._state["watched"]
        return clock % self.every == 0

    @property
    def measuring(self) -> bool:
        """Whether a measurement is open: the next backward pass carrying the penalty measures it and
        sets the weight when it ends (:meth:`watch`)."""
        return self._measurement is not None

    @property
    def last_ratio(self) -> float | None:
        """The last measured ``||grad (w R)|| / ||grad L||`` (``None`` before the first)."""
        return self._state["last_ratio"]

    def observe_gradients(self, penalty_norm: float, task_norm: float) -> None:
        """Report this iteration's gradient norms before :meth:`step`: ``penalty_norm`` of the weighted
        penalty ``model.reg_loss`` (made at the current weight), ``task_norm`` of the task loss.

        A measurement without information is skipped: a non-finite norm, a zero penalty gradient
        (a penalty replaced by zero, or a probe with no error at all), or a zero task gradient (a
        pass that carried the penalty alone: ``reg_loss.backward()`` before ``loss.backward()``;
        give both one backward pass)."""
        penalty_norm = real_number("penalty_norm", penalty_norm, "a gradient norm")
        task_norm = real_number("task_norm", task_norm, "a gradient norm")
        if penalty_norm < 0 or task_norm < 0:
            raise ValueError(f"gradient norms must be non-negative, got {penalty_norm}, {task_norm}")
        if not (math.isfinite(penalty_norm) and math.isfinite(task_norm)) or 0 in (penalty_norm, task_norm):
            return
        self._state["pending"] = (penalty_norm / self(), task_norm)

    def watch(self, reg_loss: Tensor) -> None:
        """With ``parameters``: count one iteration and, when :attr:`due`, take the gradient of
        ``reg_loss`` (the weighted penalty just made) and measure the task's in the next backward
        pass: a pre-hook on each parameter's gradient accumulator reads that pass's own gradient
        (not ``.grad``: gradients accumulated before do not count) less the penalty's part times
        the factor that pass puts on ``reg_loss`` (so ``(loss + reg_loss) / k`` or AMP's loss
        scaling measure the unscaled ratio; a pass without ``reg_loss`` measures nothing); nested
        ``torch.autograd.grad`` calls (the gradient methods' own) run no accumulator and are not
        seen. The measurement sets the weight when that backward pass ends, from the parameters it
        reached (so a checkpoint taken after it holds the new weight, and a parameter that gets no
        gradient is left out).

        Later calls before that pass (a model called several times per backward pass: a recurrent
        encoder, two batches, a weight shared by two blocks) join the measurement, which then
        compares the penalties of the calls the pass carries with the rest of its gradient. A pass
        that also carries the penalty of a call made before the measurement opened (a due call in
        the middle of a pass), or reaches the parameters without the measurement's penalty, or
        raises, measures nothing, and the next training call measures again (``every`` such calls
        in a row at most). The task's gradient is all that reaches the parameters until the pass carrying
        ``reg_loss`` ends (nested passes of a reentrant checkpoint, or an earlier pass that reaches
        only parameters the penalty does not, add to it)."""
        if not torch.is_grad_enabled():
            # A call under no_grad (logging in training mode) cannot be backpropagated: it is not a
            # training forward pass, and the measurement the last one opened stays open.
            return
        # Inside a torch.func transform the gradients are the transform's, not the parameters' own:
        # not a pass to measure, to count towards the warning that none was, or to close the
        # measurement the last training pass opened.
        if transformed(reg_loss):
            if self.parameters is not None and not getattr(self, "_warned_of_transform", False):
                # Once per weight: a loop trained by torch.func.grad would otherwise train with the
                # initial weight (0.001 by default: next to no regularization), without a word.
                self._warned_of_transform = True
                warn(
                    "RatioWeight measures nothing inside torch.func transforms (their gradients are not "
                    f"the parameters' .grad), so its weight stays at {self():g}: to train under "
                    "torch.func.grad, give the model a constant weight (weight=...)"
                )
            return
        if self.parameters is None:
            return
        measurement = self._measurement
        # Outside every backward pass (a call inside one, in a nested pass or a checkpoint's
        # re-run, may come while the passes that reached the measurement are still running).
        outside = torch._C._current_graph_task_id() == -1
        if outside and measurement is not None and not all(measurement["passes"].values()):
            # A backward pass that reached it raised (autograd runs no callback of a failed pass):
            # it holds part of that pass's gradient, and its end may never come. It measured nothing.
            self._finish_measurement()
            self._state["overdue"] += 1
        # After passes that measured nothing (below), the next calls measure again, `every` at most.
        due = self.due or 0 < self._state["overdue"] <= self.every
        self._state["watched"] += 1
        self._warn_if_unmeasured(self._state["watched"], "training calls")
        # Those still trained: a parameter frozen since construction (requires_grad_(False)) has no
        # gradient to compare.
        parameters = [p for p in self.parameters if p.requires_grad]
        measurement = self._measurement
        joins = (
            measurement is not None
            and reg_loss.requires_grad
            # A due call joins too: with more calls per pass than `every`, restarting at one
            # would never measure. Over the same parameters.
            and len(parameters) == len(measurement["parameters"])
            and all(p is q for p, q in zip(parameters, measurement["parameters"], strict=True))
        )
        if measurement is not None and joins:
            self._add_penalty(measurement, reg_loss)
        else:
            self._finish_measurement()
            if due and reg_loss.requires_grad and parameters:
                self._open_measurement(reg_loss, parameters)
        if reg_loss.requires_grad:
            reg_loss.register_hook(untraced_hook(self._count_penalty))

    def _open_measurement(self, reg_loss: Tensor, parameters: list[Tensor]) -> None:
        """Take ``reg_loss``'s gradient and hook ``parameters``' accumulators for the next pass."""

        def end_of_pass() -> None:
            opened["end_queued"] = False
            if opened["reached"]:
                # A pass that carried the penalty of a call this measurement does not hold (made
                # before it opened) counts that call's gradient as the task's.
                task, penalties = self._penalties_in_pass
                read = sum(
                    scale is not None for penalty in opened["penalties"] for scale in penalty["scales"]
                )
                mixed = task == torch._C._current_graph_task_id() and penalties > read
                opened["ended"] = not mixed
                # The measuring call was not the first of its pass (a model called several times
                # per pass), or its penalty was left out of the pass (gradient accumulation with the
                # penalty on another micro-batch): the next call measures again.
                failed = mixed or opened["without_penalty"]
                self._state["overdue"] = self._state["overdue"] + 1 if failed else 0
                if self._measurement is opened:
                    self._finish_measurement()
            else:
                # A pass that reached no watched accumulator (torch.autograd.grad through reg_loss,
                # a user's logging) leaves no factor behind for a later pass without reg_loss.
                for penalty in opened["penalties"]:
                    penalty["scales"] = [None] * len(penalty["scales"])

        def before_hooks(gradient: Tensor | None, index: int) -> None:
            if gradient is not None:  # a copy: a hook after it may change it in place (g.clamp_)
                opened["unhooked"][index] = (torch._C._current_graph_task_id(), gradient.detach().clone())

        def report(incoming: tuple[Tensor | None, ...], index: int) -> None:
            (gradient,) = incoming
            unhooked, opened["unhooked"][index] = opened["unhooked"][index], None
            if unhooked is not None and unhooked[0] == torch._C._current_graph_task_id():
                # The gradient before a user's hooks (a clip, a scale), as the penalty's part is taken.
                gradient = unhooked[1]
            if gradient is None:
                return
            _record_pass(opened["passes"])
            opened["reached"] += 1
            carried = any(scale is not None for penalty in opened["penalties"] for scale in penalty["scales"])
            if not carried and any(penalty["parts"][index] is not None for penalty in opened["penalties"]):
                # reg_loss reaches this parameter, so a backward pass that carries it has read its
                # factor by now: this one carries no penalty of the measurement, and measures nothing.
                opened["without_penalty"] = True
                if not opened["end_queued"]:
                    opened["end_queued"] = True
                    at_pass_end(opened["end_of_pass"])
                return
            # A parameter reports once per pass that reaches it, and more than once in one
            # training pass where nested passes backpropagate it (a head applied twice under a
            # reentrant torch.utils.checkpoint): the task's gradient is the sum. A copy, since
            # the accumulator may keep the incoming tensor as .grad and add to it in place.
            total = opened["gradients"][index]
            opened["gradients"][index] = gradient.detach().clone() if total is None else total + gradient

        opened: _Measurement = {
            "parameters": parameters,
            "penalties": [],
            "gradients": [None] * len(parameters),
            "without_penalty": False,
            "reached": 0,
            "ended": False,
            "end_queued": False,
            "end_of_pass": end_of_pass,
            "passes": {},
            "handles": [],
            "nodes": [],
            "unhooked": [None] * len(parameters),
        }
        self._add_penalty(opened, reg_loss)
        for index, parameter in enumerate(parameters):
            # A pre-hook of the parameter's AccumulateGrad node sees this backward pass's gradient
            # before it is added to .grad (so accumulated gradients do not count), and runs only in
            # a backward pass that accumulates: not in the gradient methods' own autograd.grad.
            # Read past a __torch_function__ subclass or mode, whose view_as gives a fresh view's node.
            with torch._C.DisableTorchFunction():
                node = torch.autograd.graph.get_gradient_edge(parameter).node
            opened["handles"].append(
                node.register_prehook(untraced_hook(functools.partial(report, index=index)))
            )
            # A tensor hook ahead of the user's own, which the accumulator's pre-hook runs after:
            # torch calls them in their dictionary's order of insertion (which move_to_end leaves).
            first = parameter.register_hook(untraced_hook(functools.partial(before_hooks, index=index)))
            hooks = cast(dict, parameter._backward_hooks)
            ours = hooks.pop(first.id)
            others = list(hooks.items())
            hooks.clear()
            hooks[first.id] = ours
            hooks.update(others)
            opened["handles"].append(first)
            # A parameter holds its accumulator weakly: one in no live graph yet (a head used after
            # the model's call) would get a new one in the task's graph, without the hook.
            opened["nodes"].append(node)
        self._measurement = opened

    def _add_penalty(self, measurement: _Measurement, reg_loss: Tensor) -> None:
        """Take ``reg_loss``'s gradient on the measurement's parameters, and read the factor the
        backward pass puts on it."""
        try:
            # Without the user's gradient hooks, as the training pass's gradient is read: they
            # would run on an extra call (a multi-gradient hook fails inside autograd.grad).
            with gradient_hooks_held_back(measurement["parameters"]):
                parts = torch.autograd.grad(
                    reg_loss, measurement["parameters"], retain_graph=True, allow_unused=True
                )
        except RuntimeError as error:
            if "donated buffers" not in str(error):
                raise
            # AOTAutograd compiles the backward of a user's torch.compile (dynamic shapes) with
            # donated buffers, which refuse the graph kept for the training pass.
            raise RuntimeError(
                "RatioWeight measures the penalty's gradient in the forward pass and keeps the graph "
                "for the training backward pass (retain_graph=True), which a torch.compile'd backward "
                "with donated buffers refuses (torch.compile(..., dynamic=True)): set "
                "torch._functorch.config.donated_buffer = False, compile without dynamic=True, or "
                "give the model a constant weight"
            ) from error
        if all(part is None for part in parts) and not self._warned_unreached:
            self._warned_unreached = True
            warn(
                "none of RatioWeight's parameters is in model.reg_loss's graph, so it measures "
                "nothing and its weight stays where it is: give it the field's parameters (after "
                "load_state_dict(..., assign=True) or to_empty() they are new objects; the default "
                "weight follows them)"
            )
        penalties = measurement["penalties"]
        if len(penalties) < MAX_JOINED_CALLS:
            penalty: _Penalty = {"parts": list(parts), "scales": [None]}
            penalties.append(penalty)
        else:
            penalty = penalties[-1]
            penalty["parts"] = [
                mine if theirs is None else theirs if mine is None else mine + theirs
                for mine, theirs in zip(penalty["parts"], parts, strict=True)
            ]
            penalty["scales"].append(None)
        call = len(penalty["scales"]) - 1

        def read_scale(gradient: Tensor) -> None:
            # The backward pass's factor on reg_loss: a loss divided over micro-batches or scaled
            # by AMP's GradScaler scales the task's gradient and the penalty's alike.
            penalty["scales"][call] = float(gradient.sum())
            _record_pass(measurement["passes"])
            # Finish when this pass ends, with the parameters it reached: one that gets no gradient
            # (a layer the forward pass skipped) never reports, and waiting for it would leave the
            # measurement open past a checkpoint. Queued here, in the pass that carries reg_loss,
            # not at a parameter's report, which a nested pass (a head under a reentrant
            # torch.utils.checkpoint) may give first and end before this one has begun.
            if not measurement["end_queued"]:
                measurement["end_queued"] = True
                at_pass_end(measurement["end_of_pass"])

        measurement["handles"].append(reg_loss.register_hook(untraced_hook(read_scale)))

    def _count_penalty(self, gradient: Tensor) -> None:
        """A training call's penalty reached in a backward pass: counted per pass."""
        task = torch._C._current_graph_task_id()
        last, penalties = self._penalties_in_pass
        self._penalties_in_pass = (task, penalties + 1 if task == last else 1)

    def _finish_measurement(self) -> None:
        """Report the open measurement (if it ended), set the weight, remove its hooks."""
        measurement, self._measurement = self._measurement, None
        if measurement is None:
            return
        for handle in measurement["handles"]:
            handle.remove()
        try:
            self._report(measurement)
        finally:
            # Its closures refer to it (a cycle): its gradients go now, not at the next collection.
            measurement["end_of_pass"] = _no_end_of_pass
            measurement["penalties"].clear()
            measurement["gradients"].clear()
            measurement["nodes"].clear()

    def _report(self, measurement: _Measurement) -> None:
        """Observe what the ended ``measurement`` measured."""
        # A pass that raised after some parameters reported never ended: it measured part of them.
        if not measurement["ended"] or measurement["without_penalty"]:
            return
        carried: list[tuple[_Penalty, float, int]] = []
        for penalty in measurement["penalties"]:
            read = {scale for scale in penalty["scales"] if scale is not None}
            if not read:
                continue
            # Calls summed together (past MAX_JOINED_CALLS) that the pass read in part, or with
            # different factors, cannot be told apart.
            if len(read) > 1 or None in penalty["scales"]:
                self._late_calls_apart = True
                return
            carried.append((penalty, read.pop(), len(penalty["scales"])))
        if not carried:
            return
        # The calls' factors (two batches weighed by their sizes, windows by their lengths) are
        # read relative to their mean: the ratio of the penalties' gradient, as the pass weighs
        # them, to the rest does not depend on that choice, and equal factors give the
        # penalties' plain sum. A pass that put 0 on every penalty compares it unweighted.
        reference = sum(abs(scale) * calls for _, scale, calls in carried) / sum(
            calls for _, _, calls in carried
        )
        penalty_parts: list[Tensor | None] = []
        for index in range(len(measurement["parameters"])):
            found = [
                part * (scale / reference if reference else 1.0)
                for penalty, scale, _ in carried
                if (part := penalty["parts"][index]) is not None
            ]
            penalty_parts.append(torch.stack(found).sum(0) if found else None)
        penalty_norm = _norm(penalty_parts)
        eps = max((torch.finfo(part.dtype).eps for part in penalty_parts if part is not None), default=0.0)
        task_norm = _norm(
            gradient if part is None else gradient - reference * part
            for gradient, part in zip(measurement["gradients"], penalty_parts, strict=True)
            if gradient is not None
        )
        # The task's part is the pass's gradient less the penalties' as the pass weighed them; of
        # a zero task gradient the subtraction leaves its rounding, which must read as zero (a
        # skipped measurement), not as a tiny task gradient that would send the weight to w_min.
        if task_norm <= ROUNDING_ULPS * eps * reference * penalty_norm:
            # Also a task gradient genuinely that small (a loss scaled far down): the warning of a
            # weight that never measured names both.
            self._read_as_rounding = self._read_as_rounding or task_norm > 0.0
            task_norm = 0.0
        # The task's gradient in that pass was the reference factor times the task loss's.
        task_norm /= reference if reference else 1.0
        if not (math.isfinite(penalty_norm) and math.isfinite(task_norm)):
            # A pass whose gradients overflowed (a GradScaler's float16 overflow, which it skips) or
            # that a loss made non-finite measured nothing: the next call measures again.
            self._state["overdue"] += 1
        self.observe_gradients(penalty_norm, task_norm)
        self._fold()

    def backward(self, task_loss: Tensor, reg_loss: Tensor, parameters: Iterable[Tensor]) -> float:
        """``(task_loss + reg_loss).backward()``, measuring both gradients over ``parameters`` when
        :attr:`due`; returns the measured ratio (``nan`` when not measured). Gradients already
        in ``.grad`` (earlier micro-batches) are left out of the measurement."""
        if isinstance(task_loss, Tensor) and task_loss.numel() != 1:
            raise ValueError(
                f"task_loss must be one value (a 0-dim tensor), got shape {tuple(task_loss.shape)}"
            )
        if not self.due:
            (task_loss + reg_loss).backward()
            return math.nan
        meter = GradientRatio(parameters)
        meter.before_backward(reg_loss)
        (task_loss + reg_loss).backward()
        ratio = meter.after_backward()
        self.observe_gradients(meter.penalty_norm, meter.task_norm)
        return ratio

    def step(self) -> float:
        """Fold in the last measurement (if any), set the weight, advance one iteration."""
        self._fold()
        if self.parameters is None:
            self._warn_if_unmeasured(self.iteration + 1, "iterations")
        return super().step()

    def _fold(self) -> None:
        """Fold the pending measurement into the averages and set the weight from them."""
        state = self._state
        if state["pending"] is None:
            return
        penalty, task = state["pending"]
        state["pending"] = None
        state["last_ratio"] = penalty * state["weight"] / task if task > 0 else math.inf
        state["measured"] += 1
        state["ema_penalty"] = self.beta * state["ema_penalty"] + (1 - self.beta) * penalty
        state["ema_task"] = self.beta * state["ema_task"] + (1 - self.beta) * task
        # The bias corrections of the two averages are equal and cancel in their ratio.
        free = self._clip(self.target_ratio * state["ema_task"] / state["ema_penalty"])
        # The weight before this measurement: a rise from it is limited to max_rise.
        ceiling = math.inf if self.max_rise is None else self.max_rise * state["weight"]
        if self.floor == 0:
            # The largest values count from when a floor is on: a phase without one (a fit along
            # the flow before an end-read fine-tuning, say) must not set a later phase's floor.
            state.update(weight=min(free, ceiling), peak=0.0, task_peak=0.0)
            return
        # The task's largest average is kept corrected, since it is compared across measurements.
        correction = 1 - self.beta ** state["measured"]
        state["task_peak"] = max(state["task_peak"], state["ema_task"] / correction)
        task_held = max(state["ema_task"], self.floor * state["task_peak"] * correction)
        held = self._clip(self.target_ratio * task_held / state["ema_penalty"])
        state["weight"] = min(max(free, min(self.floor * state["peak"], held)), ceiling)
        state["peak"] = max(state["peak"], state["weight"])

    def _clip(self, weight: float) -> float:
        return max(self.w_min, min(self.w_max, weight))

    def _warn_if_unmeasured(self, count: int, unit: str) -> None:
        if self._state["measured"] != 0 or self._state["pending"] is not None or count != 10 * self.every:
            return
        if self._late_calls_apart:
            how = (
                f"past {MAX_JOINED_CALLS} training calls in one backward pass, every call's "
                "model.reg_loss must be backpropagated with one and the same factor (the later calls' "
                "penalty gradients are summed): add each call's reg_loss unweighted (outside a "
                "per-call discount or length weight), or give the model a constant weight"
            )
        elif self._read_as_rounding:
            how = (
                f"the task's gradient read as zero beside the penalty's (below {ROUNDING_ULPS} "
                "machine epsilons of it, the rounding of a zero one): with a task loss scaled far "
                "down (or a very short span) the initial weight's penalty pulls that much harder than "
                "the task, so give RatioWeight a lower initial= or the model a constant weight; a task "
                "whose gradient is zero (every margin met) leaves nothing to measure"
            )
        elif self.parameters and any(p.requires_grad for p in self.parameters):
            how = (
                "backpropagate each training call's model.reg_loss with the task loss by one "
                ".backward() (a pass that carries the penalty of a call made before the "
                "measuring one measures nothing, nor does a gradient taken by torch.autograd.grad); "
                "a task loss whose gradient is zero (every margin met) leaves nothing to measure"
            )
        elif self.parameters:
            how = "none of its parameters requires grad (frozen): it measures once they are trained"
        else:
            how = "give it parameters=... or call weight.backward(...)"
        warn(
            f"RatioWeight has measured no gradients in {count} {unit}, so its weight stays at "
            f"initial={self.initial}: {how}"
        )

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), **self._state_as_copied()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(self._upgraded(state) if isinstance(state, Mapping) else state)

    def _upgraded(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """A state saved before the weight counted its own iterations (or kept its largest weight,
        or the task's largest average), with none counted (and its current values as the largest)."""
        measured, task = state.get("measured", 0), state.get("ema_task", 0.0)
        current = task / (1 - self.beta**measured) if measured else 0.0
        return {"watched": 0, "overdue": 0, "peak": state.get("weight", 0.0), "task_peak": current, **state}

    def __getstate__(self) -> dict[str, Any]:
        # An open measurement's hooks belong to this object's parameters, not to a copy's.
        return {**self.__dict__, "_measurement": None, "_state": self._state_as_copied()}

    def _state_as_copied(self) -> dict[str, Any]:
        """The measured state as a copy or a saved state holds it: an open measurement, whose hooks
        stay here, is one more pass that measured nothing there (``overdue``), so the copy measures
        at its next training call (as after a pass that raised), not a whole ``every`` calls later."""
        if self._measurement is None:
            return self._state
        return {**self._state, "overdue": self._state["overdue"] + 1}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A pickle of an earlier version: no floor and an unbounded rise then (what 0 and None
        # mean), its measured state without the counts added since.
        self.__dict__.update({"floor": 0.0, "max_rise": None, "_penalties_in_pass": (-1, 0), **state})
        self._state = self._upgraded(self._state)

    def __repr__(self) -> str:
        return (
            f"RatioWeight(w={self():.4g}, target_ratio={self.target_ratio}, every={self.every}, "
            f"beta={self.beta}, bounds=[{self.w_min}, {self.w_max}]"
            + (f", floor={self.floor}" if self.floor else "")
            + (f", max_rise={self.max_rise}" if self.max_rise is not None else "")
            + ")"
        )


def _no_end_of_pass() -> None:
    """A finished measurement's end of pass (one still queued in a running pass finds nothing)."""


def _norm(grads: Iterable[Tensor | None]) -> float:
    """The Euclidean norm of a list of gradients (``None``: zero)."""
    return math.sqrt(sum(squared_norm(g) for g in grads if g is not None))


def as_schedule(weight: float | WeightSchedule) -> WeightSchedule:
    """A float becomes a :class:`ConstantWeight`; a schedule is used as is."""
    if isinstance(weight, WeightSchedule):
        return weight
    if isinstance(weight, bool) or not isinstance(weight, (numbers.Real, torch.Tensor)):
        raise TypeError(
            "weight must be a non-negative number or a WeightSchedule (ConstantWeight, RatioWeight, "
            f"ExponentialDecay, AdaptiveWeight), got {type(weight).__name__}"
        )
    return ConstantWeight(constant_coefficient("weight", weight))
