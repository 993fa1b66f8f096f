"""``spiral``: fit a 2-D spiral trajectory, the classic torchdiffeq demo (``ode_demo.py``).

Data: ``dy/dt = (y**3) A`` with ``A = [[-0.1, 2], [-2, -0.1]]`` from ``y(0) = (2, 0)`` on ``[0, 25]``,
solved once with a tight tolerance. Training batches are short segments of the trajectory, each
integrated from its own first point; the test is the whole trajectory (every tenth point) from
``y(0)``. Model: ``f(y) = MLP(y**3)``; loss and metric: mean absolute error (as in the demo).

The test holds no unseen data: every test point is an observation of a training segment (the
same time and state, at every size), so the test MAE is the error of one long rollout over the
training trajectory (``spiral_sde``'s likewise).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from ... import odeint
from ..methods import MNIST_WEIGHTS, ODE_METHODS
from ..settings import Fields, Integer, Requirement, Schema
from .base import ODE_SOLVERS, Batch, Task, TaskData, training_fields

_TRUE_A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=torch.float64)

_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"data_size": 200, "epochs": 1, "batch_size": 20, "segment_stride": 5},
    "quick": {"data_size": 1000, "epochs": 10, "batch_size": 20, "segment_stride": 2},
    "full": {"data_size": 1000, "epochs": 50, "batch_size": 20, "segment_stride": 1},
}


SPIRAL_FIELDS: Fields = {
    "data_size": Integer(2),
    "segment_length": Integer(2),
    "segment_stride": Integer(1),
    "test_stride": Integer(1),
    "hidden": Integer(1),
}
"""The data and network settings :mod:`.spiral_sde` shares."""

SPIRAL_REQUIRES = (
    Requirement(
        ("data_size", "segment_length"),
        lambda s: s["data_size"] > s["segment_length"],
        "data_size must exceed segment_length, or there is no training segment",
    ),
    Requirement(
        ("data_size", "test_stride"),
        lambda s: s["data_size"] > s["test_stride"],
        "data_size must exceed test_stride, or the test trajectory has a single point",
    ),
)


SPIRAL_T_MAX = 25.0
"""The end of the true trajectory's time span (it starts at 0)."""


def spiral_field(t: Tensor, y: Tensor) -> Tensor:
    """The true dynamics ``dy/dt = (y**3) A``, in ``y``'s dtype."""
    return (y**3) @ _TRUE_A.to(y.dtype)


def spiral_trajectory(data_size: int) -> tuple[Tensor, Tensor]:
    """Times and states ``(data_size, 2)`` of the true spiral on ``[0, SPIRAL_T_MAX]`` (float64
    solve, rtol 1e-10)."""
    times = torch.linspace(0.0, SPIRAL_T_MAX, data_size, dtype=torch.float64)
    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64)
    solution = odeint(spiral_field, y0, times, rtol=1e-10, atol=1e-10)
    return times, solution.ys


class SpiralField(nn.Module):
    """``f(t, y) = MLP(y**3)``: the demo's network (2 -> 50 -> 2, tanh), autonomous."""

    def __init__(self, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, 2))

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return self.net(y**3)


class SpiralModel(nn.Module):
    """``prediction = model(times, path)``: integrate from each path's first point at its times."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, times: Tensor, path: Tensor) -> Tensor:
        # Every item of a batch shares its time offsets (the field is autonomous): use the first's.
        return self.block(path[:, 0], times[0] - times[0, 0]).transpose(0, 1)


class SpiralTask(Task):
    """Learn the spiral's vector field from trajectory segments; metric: mean absolute error."""

    name = "spiral"
    metric = "mae"
    higher_is_better = False
    schema = Schema({**training_fields(ODE_SOLVERS, ODE_METHODS), **SPIRAL_FIELDS}, SPIRAL_REQUIRES)

    def settings(self, size: str) -> dict[str, Any]:
        return {
            **_SIZES[size],
            "segment_length": 10,
            "test_stride": 10,
            "hidden": 50,
            "eval_batch_size": 1,
            "lr": 1e-3,
            "solver": {"method": "tsit5", "rtol": 1e-6, "atol": 1e-8},
            # No published coefficients for this demo: the MNIST ones ([LR23], [GR21], the baselines), but
            # STEER's b must stay below the grid's interval (last_interval: 25 / 999 at the quick and
            # full sizes).
            "weights": {**copy.deepcopy(MNIST_WEIGHTS), "steer": 0.01},
        }

    def load_data(self, settings: dict[str, Any], seed: int) -> TaskData:
        times, path = spiral_trajectory(settings["data_size"])
        times, path = times.float(), path.float()
        length = settings["segment_length"]
        starts = torch.arange(0, len(times) - length, settings["segment_stride"])
        windows = starts.unsqueeze(1) + torch.arange(length)
        # The test keeps every tenth point: where every output time ends a step (the SDE task's
        # solves), the NFE then measures the dynamics rather than the number of output times.
        test = slice(None, None, settings["test_stride"])
        return TaskData(
            train=TensorDataset(times[windows], path[windows]),
            test=TensorDataset(times[test].unsqueeze(0), path[test].unsqueeze(0)),
        )

    def build_dynamics(self, settings: dict[str, Any]) -> nn.Module:
        return SpiralField(settings["hidden"])

    def last_interval(self, settings: dict[str, Any]) -> float:
        return SPIRAL_T_MAX / (settings["data_size"] - 1)

    def build_network(self, block: nn.Module, settings: dict[str, Any]) -> nn.Module:
        return SpiralModel(block)

    def training_loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        times, path = batch
        loss = (model(times, path) - path).abs().mean()
        return loss, {"mae": loss.item()}

    def evaluate(self, model: nn.Module, batch: Batch) -> dict[str, float]:
        times, path = batch
        return {"mae": (model(times, path) - path).abs().mean().item()}
