"""What a new method, task or SDE solver gets from the experiments' registries: every task's every
method builds the solver block of its family, a method is of a known family whatever its name, a
task missing a piece of the interface is a one-line CLI error, and an SDE task's solver setting is
the scheme its model solves with."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from local_reg import (
    GloballyRegularized,
    LocallyRegularized,
    Regularized,
    RNODERegularized,
    SteerRegularized,
    TayNODERegularized,
)
from local_reg.experiments import methods as methods_module
from local_reg.experiments.cli import main
from local_reg.experiments.methods import DEFAULT_WEIGHT, METHODS, Method, weight_schedule
from local_reg.experiments.runner import RunSpec
from local_reg.experiments.settings import Schema, Weight
from local_reg.experiments.tasks import REGISTRY, ModelContext, Task, TaskData
from local_reg.experiments.tasks.base import ODE_SOLVERS, training_fields
from local_reg.experiments.tasks.sde_methods import SDE_SOLVERS
from local_reg.sde.problem import METHODS as SDE_SCHEMES

BLOCK_OF_FAMILY: dict[str, type[Regularized]] = {
    "vanilla": Regularized,
    "local": LocallyRegularized,
    "global": GloballyRegularized,
    "steer": SteerRegularized,
    "rnode": RNODERegularized,
    "taynode": TayNODERegularized,
}


def test_every_family_has_its_solver_block():
    assert set(BLOCK_OF_FAMILY) == set(methods_module.FAMILIES)


SETTINGS_A_METHOD_NEEDS: dict[tuple[str, str], dict[str, Any]] = {
    # STEER perturbs the last output time, which the union of irregular times does not fix.
    ("latent_ode", "steer"): {"observation_times": "grid"},
}


@pytest.mark.parametrize(
    ("task_name", "method"), [(task, method) for task in REGISTRY for method in REGISTRY[task].methods]
)
def test_every_method_of_every_task_builds_the_block_of_its_family(task_name, method):
    task = REGISTRY[task_name]
    settings = {**task.settings("tiny"), **SETTINGS_A_METHOD_NEEDS.get((task_name, method), {})}
    model = task.build_model(settings, ModelContext(METHODS[method], "direct", 1))
    blocks = [module for module in model.modules() if isinstance(module, Regularized)]
    assert blocks and all(type(block) is BLOCK_OF_FAMILY[METHODS[method].family] for block in blocks)


def test_the_registry_parametrization_covers_every_task_and_method():
    covered = {(task, method) for task in REGISTRY for method in REGISTRY[task].methods}
    assert {task for task, _ in covered} == set(REGISTRY)
    assert {method for _, method in covered} == set(METHODS)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("kinetic", "kinetic"), "family"),
        (("odd-local", "local"), "sampling"),
        (("odd-global", "global"), "regularizer"),
    ],
)
def test_a_method_of_an_unknown_family_or_missing_its_options_is_refused(arguments, message):
    """A method of another family than the six once trained as a global one (ERNODE) without a word."""
    settings = REGISTRY["digits"].settings("tiny")
    settings["weights"][arguments[0]] = 0.1
    with pytest.raises(ValueError, match=message):
        REGISTRY["digits"].build_model(settings, ModelContext(Method(*arguments), "direct", 1))


def test_a_family_without_a_solver_block_is_named(monkeypatch):
    monkeypatch.setattr(methods_module, "FAMILIES", (*methods_module.FAMILIES, "kinetic"))
    method = Method("kinetic", "kinetic")
    settings = REGISTRY["digits"].settings("tiny")
    settings["weights"]["kinetic"] = 0.1
    with pytest.raises(ValueError, match="family 'kinetic'"):
        REGISTRY["digits"].build_model(settings, ModelContext(method, "direct", 1))


def test_a_local_method_named_otherwise_is_local_by_its_family(monkeypatch):
    """The default weight, its schema rule and the local.* options went by the prefix ``local-``."""
    method = Method("random-local", "local", sampling="random", regularizer="error")
    monkeypatch.setitem(METHODS, method.name, method)
    assert weight_schedule(DEFAULT_WEIGHT, 1, method.name) is None
    weight_rule = training_fields(ODE_SOLVERS, ("vanilla", method.name))["weights"][method.name]
    assert weight_rule == Weight(default=True)
    spec = RunSpec("digits", method.name, 0, "tiny", overrides={"local.n_draws": 2})
    spec_settings = spec.settings()
    spec_settings["weights"][method.name] = DEFAULT_WEIGHT
    assert spec.local_options == {"n_draws": 2}
    model = REGISTRY["digits"].build_model(spec_settings, ModelContext(method, "direct", 1))
    (block,) = [m for m in model.modules() if isinstance(m, LocallyRegularized)]
    assert block.penalty.n_draws == 2


class _Decay(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rate = nn.Parameter(torch.ones(()))

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return -self.rate * y


class _WithoutLastInterval(Task):
    """A task written from the interface's docstring that lists steer (every ODE task does) but
    says nothing of its output times."""

    name = "no_last_interval"
    metric = "mse"
    higher_is_better = False
    schema = Schema(training_fields(ODE_SOLVERS, METHODS))

    def settings(self, size: str) -> dict[str, Any]:
        weights = {name: 0.1 for name in METHODS if name != "vanilla"}
        return {
            "epochs": 1,
            "batch_size": 4,
            "eval_batch_size": 4,
            "lr": 1e-3,
            "solver": {"method": "tsit5", "rtol": 1e-3, "atol": 1e-3},
            "weights": weights,
        }

    def load_data(self, settings: dict[str, Any], seed: int) -> TaskData:
        raise AssertionError("the model is built, and refused, before any data is loaded")

    def build_dynamics(self, settings: dict[str, Any]) -> nn.Module:
        return _Decay()

    def build_network(self, block: nn.Module, settings: dict[str, Any]) -> nn.Module:
        return block

    def training_loss(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, float]]:
        raise AssertionError("never trained")

    def evaluate(self, model: nn.Module, batch: Any) -> dict[str, float]:
        raise AssertionError("never evaluated")


def test_a_task_that_lists_steer_without_its_last_interval_exits_2_with_one_line(
    monkeypatch, tmp_path, capsys
):
    monkeypatch.setitem(REGISTRY, _WithoutLastInterval.name, _WithoutLastInterval())
    argv = ["experiment", _WithoutLastInterval.name, "--size", "tiny", "--out", str(tmp_path)]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "last_interval" in error and "steer" in error


def test_an_sde_task_may_name_each_sde_scheme():
    assert SDE_SOLVERS == SDE_SCHEMES


@pytest.mark.parametrize("task_name", ["spiral_sde", "nsde_digits"])
@pytest.mark.parametrize("method", ["vanilla", "local-random", "global-error"])
def test_an_sde_tasks_solver_method_is_the_scheme_its_model_solves_with(task_name, method, monkeypatch):
    """``solver.method`` was checked against the SDE solvers and then left out of the model's
    solve, which ran Euler--Maruyama whatever it said."""
    from local_reg import sde as sde_package

    schemes: list[str] = []
    real_sdeint = sde_package.sdeint

    def recording_sdeint(*args: Any, **kwargs: Any) -> Any:
        schemes.append(kwargs.get("method", "euler_maruyama"))
        return real_sdeint(*args, **kwargs)

    from local_reg.regularization import _sde_backends

    monkeypatch.setattr(_sde_backends, "sdeint", recording_sdeint)
    task = REGISTRY[task_name]
    settings = task.settings("tiny")
    settings["solver"]["method"] = "milstein"
    model = task.build_model(settings, ModelContext(METHODS[method], "direct", 1))
    (block,) = [m for m in model.modules() if isinstance(m, Regularized)]
    torch.manual_seed(0)
    y0 = torch.zeros(2, block.func.diffusion.in_features)
    block(y0, torch.tensor([0.0, 0.1]))
    assert schemes and set(schemes) == {"milstein"}
