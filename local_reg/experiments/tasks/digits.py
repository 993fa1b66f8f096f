"""``digits``: the paper's MNIST neural ODE scaled down to scikit-learn's 1797 8x8 digits (offline)."""

from __future__ import annotations

import copy
from typing import Any

from ..methods import MNIST_WEIGHTS
from .base import TaskData
from .classification import ClassificationTask, classifier_schema, split_datasets

_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"train_size": 64, "test_size": 64, "epochs": 1, "batch_size": 32},
    "quick": {"train_size": None, "test_size": None, "epochs": 20, "batch_size": 128},
    "full": {"train_size": None, "test_size": None, "epochs": 60, "batch_size": 128},
}


def digits_data(settings: dict[str, Any]) -> TaskData:
    """scikit-learn's bundled 8x8 digits, pixels scaled to [0, 1], split 80/20 (stratified, fixed),
    each part cut to ``settings``' sizes."""
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    return split_datasets(images / 16.0, labels, 0.2, settings)


class DigitsTask(ClassificationTask):
    """64 pixels in [0, 1] -> ODE ``65 -> hidden -> 64`` (tanh, time concatenated) -> linear -> 10 classes.

    The fixed split holds out 20% of the digits (stratified, the same for every seed); the seed
    changes initialization, shuffling and regularization sampling.
    """

    name = "digits"
    schema = classifier_schema(64, 10)

    def settings(self, size: str) -> dict[str, Any]:
        return {
            **_SIZES[size],
            "dim": 64,
            "hidden": 100,
            "n_classes": 10,
            "eval_batch_size": 512,
            "lr": 3e-3,
            "solver": {"method": "tsit5", "rtol": 1e-6, "atol": 1e-6},
            # The published MNIST coefficients ([LR23], [GR21]).
            "weights": copy.deepcopy(MNIST_WEIGHTS),
        }

    def load_data(self, settings: dict[str, Any], seed: int) -> TaskData:
        return digits_data(settings)
