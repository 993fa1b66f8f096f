"""The task interface: what an experiment needs to know about a problem to train and test it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ...regularization import (
    GloballyRegularized,
    LocallyRegularized,
    Regularized,
    RNODERegularized,
    SteerRegularized,
    TayNODERegularized,
)
from ...tableaus import TABLEAUS
from ..methods import METHODS, ODE_METHODS, Method, local_options, weight_schedule
from ..settings import Integer, OneOf, Real, Schema, Weight

Batch = Sequence[Tensor]
"""One minibatch: the tuple of tensors a ``DataLoader`` yields from the task's dataset."""


@dataclass
class TaskData:
    """A task's data: ``train`` and ``test`` map-style datasets whose items are tuples of tensors."""

    train: Dataset
    test: Dataset


@dataclass(frozen=True)
class ModelContext:
    """What a task may need to build a model for one run.

    Attributes:
        method: the training method.
        gradient: how the main solve is differentiated: a shorthand of
            :data:`local_reg.gradients.GRADIENT_METHODS`.
        total_iterations: optimizer steps in the whole run, the horizon of a decaying weight schedule.
    """

    method: Method
    gradient: str
    total_iterations: int


class Task(ABC):
    """A problem the experiments train on, with its data, model, loss and metric.

    Subclasses set the class attributes and implement the abstract methods; ODE tasks usually
    implement :meth:`build_dynamics`, :meth:`build_network` and (for ``steer``)
    :meth:`last_interval` and inherit :meth:`build_model`, which wraps the dynamics in the method's
    solver block. Tasks whose methods need another wrapping (neural
    SDEs) override :meth:`build_model` and list their own :attr:`methods`.

    Attributes:
        name: the CLI name (the key in :data:`local_reg.experiments.tasks.REGISTRY`).
        metric: the test metric's name, a key of what :meth:`evaluate` returns (``"accuracy"``, ``"mse"``).
        higher_is_better: whether a larger :attr:`metric` is better (accuracy) or worse (a loss).
        methods: the method names this task supports, in table order.
        schema: what every key of :meth:`settings` may hold (:mod:`..settings`); every run's settings,
            ``--set`` overrides included, are checked against it before training.
    """

    name: ClassVar[str]
    metric: ClassVar[str]
    higher_is_better: ClassVar[bool]
    methods: ClassVar[tuple[str, ...]] = ODE_METHODS
    schema: ClassVar[Schema]

    @abstractmethod
    def settings(self, size: str) -> dict[str, Any]:
        """Every hyperparameter of a run of the given size (``"tiny"``, ``"quick"`` or ``"full"``).

        Must be JSON-serializable: it is recorded with the results and hashed into the run id. The
        runner reads ``epochs``, ``batch_size``, ``eval_batch_size``, ``lr`` and optionally
        ``weight_decay``; the default :meth:`build_model` reads ``solver`` (``{"method", "rtol",
        "atol"}``) and ``weights`` (method name -> weight spec, see :mod:`..methods`).
        """

    @abstractmethod
    def load_data(self, settings: dict[str, Any], seed: int) -> TaskData:
        """The train and test datasets (deterministic given ``settings`` and ``seed``)."""

    def default_methods(self, settings: dict[str, Any]) -> tuple[str, ...]:
        """The methods ``experiment`` trains when ``--methods`` is not given: every one by default."""
        return self.methods

    def build_model(self, settings: dict[str, Any], context: ModelContext) -> nn.Module:
        """The whole network for one run; by default ``build_network(solver_block(build_dynamics()))``."""
        if context.method.family == "steer":
            # Refused here, before any training, rather than by STEER's own check at the first batch.
            name = context.method.name
            interval, half_width = self.last_interval(settings), settings["weights"][name]
            if isinstance(half_width, (int, float)) and half_width >= interval:
                raise ValueError(
                    f"weights.{name}={half_width:g} must be smaller than the last interval of the "
                    f"output times, {interval:g}: STEER perturbs the end time by up to its half-width"
                )
        block = solver_block(self.build_dynamics(settings), settings, context)
        return self.build_network(block, settings)

    def last_interval(self, settings: dict[str, Any]) -> float:
        """The last interval ``|t[-1] - t[-2]|`` of the output times the model solves over: STEER's
        half-width must be smaller. A task that lists ``steer`` among its methods (every ODE task by
        default) implements it, or leaves ``steer`` out of :attr:`methods`."""
        raise NotImplementedError(
            f"task {self.name!r} lists steer but does not implement last_interval (the last interval of "
            "its output times, which STEER's half-width must stay below): implement it or leave steer "
            "out of the task's methods"
        )

    def build_dynamics(self, settings: dict[str, Any]) -> nn.Module:
        """The vector field ``f(t, y)`` of the neural ODE (for the default :meth:`build_model`)."""
        raise NotImplementedError(f"task {self.name!r} must implement build_dynamics or build_model")

    def build_network(self, block: nn.Module, settings: dict[str, Any]) -> nn.Module:
        """The network around the solver block ``ys = block(y0, t)`` (for the default :meth:`build_model`)."""
        raise NotImplementedError(f"task {self.name!r} must implement build_network or build_model")

    @abstractmethod
    def training_loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        """The task loss of one training batch (regularization excluded: the runner adds it).

        Must call ``model(...)`` exactly once: ``model`` may be wrapped in DistributedDataParallel,
        which synchronizes gradients only for work done through its own ``forward``. Returns the loss
        and metrics to show on the progress bar (e.g. ``{"accuracy": 0.93}``).
        """

    @abstractmethod
    def evaluate(self, model: nn.Module, batch: Batch) -> dict[str, float]:
        """Batch-mean metrics in eval mode under ``torch.no_grad()``; must include :attr:`metric`."""


def training_fields(solvers: Sequence[str], methods: Sequence[str]) -> dict[str, Any]:
    """The schema fields every task has: the runner's ``epochs``, ``batch_size``, ``eval_batch_size``
    and ``lr``, the ``solver`` group (``method`` one of ``solvers``, ``rtol``, ``atol``) and a weight
    spec per regularized method of ``methods``."""
    return {
        "epochs": Integer(1),
        "batch_size": Integer(1),
        "eval_batch_size": Integer(1),
        # The optimizer steps float32 parameters by lr times a ratio of order 1: a larger one overflows.
        "lr": Real(high=torch.finfo(torch.float32).max),
        # rtol = 0 is a pure absolute tolerance, as the solvers take it; atol must be positive.
        "solver": {"method": OneOf(tuple(solvers)), "rtol": Real(closed=True), "atol": Real()},
        "weights": {
            m: Weight(default=METHODS[m].family == "local") for m in methods if METHODS[m].family != "vanilla"
        },
    }


ODE_SOLVERS: tuple[str, ...] = tuple(name for name, tableau in TABLEAUS.items() if tableau.adaptive)
"""The embedded Runge-Kutta pairs an ODE task's ``solver.method`` may name (the tasks solve adaptively)."""


def solver_block(func: nn.Module, settings: dict[str, Any], context: ModelContext) -> nn.Module:
    """Wrap dynamics ``func(t, y)`` in the solver block of ``context.method``'s family:
    ``ys = block(y0, t)``.

    ``vanilla`` is a plain :class:`local_reg.Regularized` (no penalty); ``local`` and ``global`` are
    :class:`local_reg.regularization.LocallyRegularized` / ``GloballyRegularized`` with the weight
    ``settings["weights"][method]`` (see :func:`..methods.weight_schedule`); ``rnode`` and
    ``taynode`` are ``RNODERegularized`` / ``TayNODERegularized`` with that weight, ``steer`` is
    ``SteerRegularized`` with ``b = settings["weights"][method]``; ``local`` also takes the keyword
    arguments in ``settings["local"]`` if present (``probe``, ``penalty``, ...).
    """
    method = context.method
    solver = {**settings["solver"], "gradient": context.gradient}
    if method.family == "vanilla":
        return Regularized(func, **solver)
    spec = settings["weights"][method.name]
    if method.family == "steer":
        if isinstance(spec, dict):
            raise ValueError(
                f"{method.name}'s setting weights.{method.name} is the half-width b, a number; got {spec!r}"
            )
        return SteerRegularized(func, b=spec, **solver)
    weight = weight_schedule(spec, context.total_iterations, method.name)
    # Method refuses a local method without its sampling and regularizer, a global one without its
    # regularizer.
    if method.family == "local":
        return LocallyRegularized(
            func,
            sampling=cast(str, method.sampling),
            regularizer=cast(str, method.regularizer),
            weight=weight,
            **solver,
            **local_options(weight, settings),
        )
    if weight is None:  # weight_schedule refuses the default weight of any but a local method
        raise ValueError(f"{method.name} needs a weight, got {spec!r}")
    if method.family == "rnode":
        return RNODERegularized(func, weight=weight, **solver)
    if method.family == "taynode":
        return TayNODERegularized(func, weight=weight, **solver)
    if method.family == "global":
        return GloballyRegularized(func, regularizer=cast(str, method.regularizer), weight=weight, **solver)
    raise ValueError(f"method {method.name!r}: family {method.family!r} has no solver block here")
