"""``tabular``: a neural ODE classifier on scikit-learn's breast-cancer table (offline; 569 rows, 30
features, 2 classes). Kept out of the tuning of local regularization's options as a held-out check."""

from __future__ import annotations

import copy
from typing import Any

from ..methods import MNIST_WEIGHTS
from .base import TaskData
from .classification import ClassificationTask, classifier_schema, split_datasets

_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"train_size": 64, "test_size": 64, "epochs": 1, "batch_size": 32},
    "quick": {"train_size": None, "test_size": None, "epochs": 30, "batch_size": 64},
    "full": {"train_size": None, "test_size": None, "epochs": 100, "batch_size": 64},
}


class TabularTask(ClassificationTask):
    """30 standardized features -> ODE ``31 -> hidden -> 30`` (tanh, time concatenated) -> linear -> 2.

    Features are standardized with the whole table's mean and deviation (a fixed transform, the same
    for every seed); the split holds out 25%, stratified, the same for every seed.
    """

    name = "tabular"
    schema = classifier_schema(30, 2)

    def settings(self, size: str) -> dict[str, Any]:
        return {
            **_SIZES[size],
            "dim": 30,
            "hidden": 64,
            "n_classes": 2,
            "eval_batch_size": 512,
            "lr": 3e-3,
            "solver": {"method": "tsit5", "rtol": 1e-6, "atol": 1e-6},
            "weights": copy.deepcopy(MNIST_WEIGHTS),
        }

    def load_data(self, settings: dict[str, Any], seed: int) -> TaskData:
        from sklearn.datasets import load_breast_cancer

        x, labels = load_breast_cancer(return_X_y=True)
        x = (x - x.mean(axis=0)) / x.std(axis=0)
        return split_datasets(x, labels, 0.25, settings)
