"""Image classification by a neural ODE: ``logits = W y(1)``, ``dy/dt = f(t, y)``, ``y(0)`` the pixels.

The paper's MNIST experiment [LR23]: time-concatenated tanh MLP dynamics on the flattened image and a
linear classifier on the state at ``t = 1``. :mod:`.digits` and :mod:`.mnist` differ only in the data.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from ..methods import ODE_METHODS
from ..models import ConcatMLP
from ..settings import Integer, OneOf, Schema, SettingsError
from .base import ODE_SOLVERS, Batch, Task, TaskData, training_fields

SPLIT_FIELDS = {"train_size": Integer(1, nullable=True), "test_size": Integer(1, nullable=True)}
"""``train_size`` / ``test_size`` of :func:`split_datasets`: ``null`` keeps the whole part."""


def classifier_schema(dim: int, n_classes: int) -> Schema:
    """The settings of an ODE classifier of ``dim`` features and ``n_classes`` classes (both fixed by
    the data): the training fields, the split sizes and the hidden width."""
    return Schema(
        {
            **training_fields(ODE_SOLVERS, ODE_METHODS),
            **SPLIT_FIELDS,
            "dim": OneOf((dim,)),
            "hidden": Integer(1),
            "n_classes": OneOf((n_classes,)),
        }
    )


class ODEClassifier(nn.Module):
    """``logits = classifier(block(x, [0, 1])[-1])``."""

    def __init__(self, block: nn.Module, dim: int, n_classes: int):
        super().__init__()
        self.block = block
        self.classifier = nn.Linear(dim, n_classes)
        self.register_buffer("span", torch.tensor([0.0, 1.0]), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.block(x, self.span)[-1])


class ClassificationTask(Task):
    """Shared model, loss and metric of the image-classification tasks."""

    metric = "accuracy"
    higher_is_better = True

    def build_dynamics(self, settings: dict[str, Any]) -> nn.Module:
        return ConcatMLP(settings["dim"], settings["hidden"])

    def last_interval(self, settings: dict[str, Any]) -> float:
        return 1.0  # the solve is over [0, 1], read at its end (ODEClassifier)

    def build_network(self, block: nn.Module, settings: dict[str, Any]) -> nn.Module:
        return ODEClassifier(block, settings["dim"], settings["n_classes"])

    def training_loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        x, labels = batch
        logits = model(x)
        accuracy = (logits.argmax(-1) == labels).float().mean().item()
        return nn.functional.cross_entropy(logits, labels), {"accuracy": accuracy}

    def evaluate(self, model: nn.Module, batch: Batch) -> dict[str, float]:
        x, labels = batch
        logits = model(x)
        return {
            "loss": nn.functional.cross_entropy(logits, labels).item(),
            "accuracy": (logits.argmax(-1) == labels).float().mean().item(),
        }


def split_datasets(images: Any, labels: Any, test_size: int | float, settings: dict[str, Any]) -> TaskData:
    """A stratified train/test split, fixed for every seed (the seed varies training, not the data),
    each part cut to ``settings["train_size"]`` / ``settings["test_size"]`` when those are not ``None``."""
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_size, stratify=labels, random_state=0
    )

    def dataset(x: Any, y: Any, n: int | None, key: str) -> TensorDataset:
        if n is not None and n > len(x):
            # Cutting to more than there is would train on all of it, recorded under the larger size.
            raise SettingsError(
                f"{key}={n} is more than the {len(x)} examples of that part: pass at most {len(x)}, "
                "or null for all of it"
            )
        return TensorDataset(torch.tensor(x[:n], dtype=torch.float32), torch.tensor(y[:n], dtype=torch.long))

    return TaskData(
        train=dataset(x_train, y_train, settings["train_size"], "train_size"),
        test=dataset(x_test, y_test, settings["test_size"], "test_size"),
    )
