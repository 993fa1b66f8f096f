"""``spiral_sde``: the ``spiral`` task (torchdiffeq's demo) fitted by a neural SDE.

Same data, batches and metric as :mod:`.spiral` (trajectory segments; test: the whole trajectory
from ``y(0)``; mean absolute error). The model is ``dy = MLP(y**3) dt + sigma_max *
sigmoid(W y + b) dW`` (Ito, diagonal noise): the demo's drift plus a learned, bounded noise. A
prediction is the mean of ``trajectories`` sample paths (1 in training, ``eval_trajectories`` at
test), solved as one batch; NFE counts drift and diffusion evaluations.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..settings import Integer, Real, Schema
from .base import ModelContext, training_fields
from .sde_methods import SDE_METHODS, SDE_SOLVERS, SquashedNoiseSDE, sde_block
from .spiral import SPIRAL_FIELDS, SPIRAL_REQUIRES, SpiralField, SpiralTask


def spiral_sde(hidden: int, sigma_max: float) -> SquashedNoiseSDE:
    """Drift: the spiral demo's field; diffusion: diagonal, in ``(0, sigma_max)``."""
    return SquashedNoiseSDE(SpiralField(hidden), 2, sigma_max)


class SpiralSDEModel(nn.Module):
    """``prediction = model(times, path)``: the mean of several sample paths from each segment's start."""

    def __init__(self, block: nn.Module, train_trajectories: int, eval_trajectories: int) -> None:
        super().__init__()
        self.block = block
        self.train_trajectories = train_trajectories
        self.eval_trajectories = eval_trajectories

    def forward(self, times: Tensor, path: Tensor) -> Tensor:
        k = self.train_trajectories if self.training else self.eval_trajectories
        y0 = path[:, 0].repeat(k, 1)
        # Every item of a batch shares its time offsets (the SDE is autonomous): use the first's.
        ys = self.block(y0, times[0] - times[0, 0])
        return ys.view(ys.shape[0], k, path.shape[0], -1).mean(1).transpose(0, 1)


class SpiralSDETask(SpiralTask):
    """Learn the spiral with a neural SDE; metric: mean absolute error of the mean path."""

    name = "spiral_sde"
    methods = SDE_METHODS
    schema = Schema(
        {
            **training_fields(SDE_SOLVERS, SDE_METHODS),
            **SPIRAL_FIELDS,
            "sigma_max": Real(),
            "train_trajectories": Integer(1),
            "eval_trajectories": Integer(1),
        },
        SPIRAL_REQUIRES,
    )

    def settings(self, size: str) -> dict[str, Any]:
        return {
            **super().settings(size),
            "sigma_max": 0.1,
            "train_trajectories": 1,
            "eval_trajectories": 8,
            "lr": 3e-3,
            "solver": {"method": "euler_maruyama", "rtol": 1e-2, "atol": 1e-2},
            # No published coefficients. Quick runs, 3 seeds (docs/results.md): local w = 1 cut test
            # NFE to 0.31x but the test error grew 4x; w = 0.1 keeps it (NFE 0.94x random, 0.81x
            # biased). Global w = 10: not tuned.
            "weights": {"local-random": 0.1, "local-biased": 0.1, "global-error": 10.0},
        }

    def build_model(self, settings: dict[str, Any], context: ModelContext) -> nn.Module:
        sde = spiral_sde(settings["hidden"], settings["sigma_max"])
        block = sde_block(sde, settings, context)
        return SpiralSDEModel(block, settings["train_trajectories"], settings["eval_trajectories"])
