"""The experiment tasks and their registry.

``REGISTRY`` maps a task's CLI name to an instance of a :class:`Task` subclass
(:mod:`.base`). To add a task, write one module here and add one line to ``REGISTRY``.

The interface (see :class:`Task` for the details):

- class attributes ``name``, ``metric`` (a key of :meth:`Task.evaluate`'s result, e.g.
  ``"accuracy"``), ``higher_is_better`` and ``methods`` (the method names it supports; ODE tasks
  inherit ``vanilla``, ``local-random``, ``local-biased``, ``global-error``, ``global-stiffness``,
  ``steer``, ``rnode``, ``taynode``);
- ``settings(size) -> dict``: every hyperparameter, JSON-serializable, for ``size`` in
  ``"tiny"`` (tests), ``"quick"`` (CPU) and ``"full"`` (the paper's settings). The runner reads
  ``epochs``, ``batch_size``, ``eval_batch_size``, ``lr`` (and optional ``weight_decay``);
- class attribute ``schema``, a :class:`..settings.Schema` next to the defaults: a rule for every
  key of ``settings`` (:func:`.base.training_fields` gives the runner's and the solver's) and the
  requirements across keys; every run's settings, ``--set`` overrides included, are checked against
  it before anything is trained;
- ``load_data(settings, seed) -> TaskData(train, test)``: map-style datasets of tuples of tensors
  (the runner batches them with a ``DataLoader``, sharded by a ``DistributedSampler``);
- ``build_model(settings, ModelContext(method, gradient, total_iterations)) -> nn.Module``. The
  default wraps ``build_dynamics(settings)`` in the method's solver block
  (:func:`.base.solver_block`) and passes it to ``build_network(block, settings)``; a task whose
  methods need another wrapping (a neural SDE) overrides ``build_model`` instead;
- ``last_interval(settings) -> float``: the last interval ``|t[-1] - t[-2]|`` of the output times
  the model solves over, which STEER's half-width ``weights.steer`` must stay below; a task whose
  ``methods`` list ``steer`` (every ODE task's do by default) implements it, or leaves ``steer``
  out of its ``methods``;
- ``training_loss(model, batch) -> (loss, metrics)``, calling ``model(...)`` exactly once (it may be
  wrapped in DistributedDataParallel); the runner adds the regularization itself;
- ``evaluate(model, batch) -> metrics``: batch means in eval mode, under ``torch.no_grad()``.

What the runner reads from a model: every submodule with a ``stats`` attribute is a *solver
block* (``ys = block(y0, t)``). After each forward pass the runner sums, over the solver blocks,
``stats.nfe_main`` (the main solve's function evaluations: what test NFE reports), ``stats.nfe_reg``
and ``stats.nfe_backward`` (the fields of :class:`local_reg.regularization.RegularizationStats`;
``stats`` may be ``None`` before the first call), and adds every block's ``reg_loss`` (a 0-dim
tensor, already weighted, or ``None``) to the task loss. In eval mode blocks must not regularize. A
block whose ``weight`` attribute has a ``step()`` method (a
:class:`local_reg.regularization.WeightSchedule`) is advanced once per optimizer step; its state
must be part of the module's ``state_dict`` so that checkpoints restore it.
"""

from __future__ import annotations

from .base import Batch, ModelContext, Task, TaskData
from .digits import DigitsTask
from .latent_ode import LatentODETask
from .lotka import LotkaTask, PendulumTask, VanDerPolTask
from .mnist import MnistTask
from .nsde_digits import NSDEDigitsTask, NSDEMnist1DTask
from .spiral import SpiralTask
from .spiral_sde import SpiralSDETask
from .tabular import Mnist1DTask, QuantilesTask, SyntheticTask, TabularTask

REGISTRY: dict[str, Task] = {
    "digits": DigitsTask(),
    "mnist": MnistTask(),
    "latent_ode": LatentODETask(),
    "spiral": SpiralTask(),
    "nsde_digits": NSDEDigitsTask(),
    "spiral_sde": SpiralSDETask(),
    "tabular": TabularTask(),
    "synthetic": SyntheticTask(),
    "lotka": LotkaTask(),
    "quantiles": QuantilesTask(),
    "pendulum": PendulumTask(),
    "mnist1d": Mnist1DTask(),
    "vanderpol": VanDerPolTask(),
    "nsde_mnist1d": NSDEMnist1DTask(),
}

__all__ = ["REGISTRY", "Batch", "ModelContext", "Task", "TaskData"]
