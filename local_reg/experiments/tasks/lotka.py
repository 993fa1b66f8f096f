"""``lotka``: learn the Lotka--Volterra predator--prey field from trajectories, offline.

Data: ``dx/dt = a x - b x y``, ``dy/dt = d x y - c y`` with ``(a, b, c, d) = (1.5, 1, 3, 1)``,
each trajectory from its own initial state (uniform in ``[0.5, 2.5]^2``), observed at
``n_times`` equally spaced times on ``[0, t_max]`` with Gaussian noise of deviation ``noise``;
the states are solved once in float64 at rtol 1e-10 with a fixed seed (the same data for every
training seed). Model: ``f(t, u) = MLP(u)`` (2 -> hidden -> hidden -> 2, tanh), integrated from
each trajectory's noisy first observation; loss and metric: mean squared error over the observed
times (the test set's error against the noise-free states).

Added after local regularization's kinetic penalty had been studied on the other tasks, as a check
of its candidate default held out from that choice: a trajectory fit, the kind of task (as
``latent_ode`` and ``spiral``) on which a penalty that slows the dynamics costs accuracy. Later
choices used it (the weight target's rule by kind of task, whose table in docs/regularization.md
includes it, and the weight's rule along the flow).

``pendulum``: the same fit of a damped pendulum, ``theta'' = -sin(theta) - 0.2 theta'``, from
initial states uniform in ``[-2, 2]^2`` on ``[0, 4]``: written to check the weight target's rule by
kind of task, decided on it and ``quantiles`` (docs/results.md).

``vanderpol``: the same fit of the van der Pol oscillator, ``x'' = (1 - x^2) x' - x``, from initial
states uniform in ``[-2, 2]^2`` on ``[0, 4]``: added after the default (its penalty, weight and
target rule) was fixed, held out from those choices; the target along the flow was later chosen on
fits that include it (docs/results.md).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from ... import odeint
from ..methods import MNIST_WEIGHTS, ODE_METHODS
from ..settings import Integer, Real, Schema
from .base import ODE_SOLVERS, Batch, Task, TaskData, training_fields

_COEFFICIENTS = (1.5, 1.0, 3.0, 1.0)
_DATA_SEED = 0

_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"train_size": 32, "test_size": 16, "epochs": 1, "batch_size": 16},
    "quick": {"train_size": 256, "test_size": 64, "epochs": 60, "batch_size": 32},
    "full": {"train_size": 1024, "test_size": 256, "epochs": 200, "batch_size": 32},
}


def lotka_volterra(t: Tensor, u: Tensor) -> Tensor:
    """The true field on a batch of states ``(..., 2)``."""
    a, b, c, d = _COEFFICIENTS
    x, y = u[..., 0], u[..., 1]
    return torch.stack((a * x - b * x * y, d * x * y - c * y), dim=-1)


def damped_pendulum(t: Tensor, u: Tensor) -> Tensor:
    """``(theta, omega)' = (omega, -sin(theta) - 0.2 omega)`` on a batch of states ``(..., 2)``."""
    theta, omega = u[..., 0], u[..., 1]
    return torch.stack((omega, -torch.sin(theta) - 0.2 * omega), dim=-1)


def van_der_pol(t: Tensor, u: Tensor) -> Tensor:
    """``(x, v)' = (v, (1 - x^2) v - x)`` (mu = 1) on a batch of states ``(..., 2)``."""
    x, v = u[..., 0], u[..., 1]
    return torch.stack((v, (1 - x**2) * v - x), dim=-1)


def trajectories(
    n: int,
    n_times: int,
    t_max: float,
    generator: torch.Generator,
    field: Callable[[Tensor, Tensor], Tensor] = lotka_volterra,
    box: tuple[float, float] = (0.5, 2.5),
) -> tuple[Tensor, Tensor]:
    """Times ``(n_times,)`` and noise-free states ``(n, n_times, 2)`` of ``field`` from initial
    states uniform in ``box``^2."""
    times = torch.linspace(0.0, t_max, n_times, dtype=torch.float64)
    low, high = box
    u0 = low + (high - low) * torch.rand(n, 2, dtype=torch.float64, generator=generator)
    states = odeint(field, u0, times, rtol=1e-10, atol=1e-10).ys
    return times, states.transpose(0, 1)


class LotkaField(nn.Module):
    """``f(t, u) = MLP(u)``, autonomous."""

    def __init__(self, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 2)
        )

    def forward(self, t: Tensor, u: Tensor) -> Tensor:
        return self.net(u)


class TrajectoryModel(nn.Module):
    """``prediction (batch, n_times, 2) = model(observed)``: the solve from each first observation."""

    def __init__(self, block: nn.Module, times: Tensor):
        super().__init__()
        self.block = block
        self.register_buffer("times", times, persistent=False)

    def forward(self, observed: Tensor) -> Tensor:
        return self.block(observed[:, 0], self.times).transpose(0, 1)


class LotkaTask(Task):
    """Fit the Lotka--Volterra field from noisy trajectories; metric: test mean squared error."""

    name = "lotka"
    field = staticmethod(lotka_volterra)
    box = (0.5, 2.5)
    metric = "mse"
    higher_is_better = False
    schema = Schema(
        {
            **training_fields(ODE_SOLVERS, ODE_METHODS),
            "train_size": Integer(1),
            "test_size": Integer(1),
            "n_times": Integer(2),
            "t_max": Real(),
            "noise": Real(closed=True),
            "hidden": Integer(1),
        }
    )

    def settings(self, size: str) -> dict[str, Any]:
        return {
            **_SIZES[size],
            "n_times": 21,
            "t_max": 2.0,
            "noise": 0.05,
            "hidden": 64,
            "eval_batch_size": 256,
            "lr": 1e-2,
            "solver": {"method": "tsit5", "rtol": 1e-6, "atol": 1e-6},
            # STEER's half-width must stay inside the last output interval (0.1 at these times);
            # MNIST's 0.5 does not.
            "weights": {**copy.deepcopy(MNIST_WEIGHTS), "steer": 0.05},
        }

    def load_data(self, settings: dict[str, Any], seed: int) -> TaskData:
        generator = torch.Generator().manual_seed(_DATA_SEED)
        n_train, n_test = settings["train_size"], settings["test_size"]
        _, states = trajectories(
            n_train + n_test, settings["n_times"], settings["t_max"], generator, self.field, self.box
        )
        noise = torch.randn(states.shape, dtype=states.dtype, generator=generator)
        noisy = states + settings["noise"] * noise
        return TaskData(
            # Training fits the noisy observations; the test starts from a noisy first observation
            # and is scored against the true states.
            train=TensorDataset(noisy[:n_train].float(), noisy[:n_train].float()),
            test=TensorDataset(noisy[n_train:].float(), states[n_train:].float()),
        )

    def build_dynamics(self, settings: dict[str, Any]) -> nn.Module:
        return LotkaField(settings["hidden"])

    def last_interval(self, settings: dict[str, Any]) -> float:
        return settings["t_max"] / (settings["n_times"] - 1)

    def build_network(self, block: nn.Module, settings: dict[str, Any]) -> nn.Module:
        times = torch.linspace(0.0, settings["t_max"], settings["n_times"])
        return TrajectoryModel(block, times)

    def training_loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        observed, target = batch
        loss = (model(observed) - target).pow(2).mean()
        return loss, {"mse": loss.item()}

    def evaluate(self, model: nn.Module, batch: Batch) -> dict[str, float]:
        observed, target = batch
        return {"mse": (model(observed) - target).pow(2).mean().item()}


class PendulumTask(LotkaTask):
    """Fit a damped pendulum's field from noisy trajectories, as ``lotka``."""

    name = "pendulum"
    field = staticmethod(damped_pendulum)
    box = (-2.0, 2.0)

    def settings(self, size: str) -> dict[str, Any]:
        return {**super().settings(size), "t_max": 4.0}


class VanDerPolTask(PendulumTask):
    """Fit the van der Pol field (mu = 1) from noisy trajectories, as ``lotka``, on ``[0, 4]``."""

    name = "vanderpol"
    field = staticmethod(van_der_pol)
