"""The SDE experiment tasks: every method builds, trains one batch and evaluates at the tiny size."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from local_reg import GloballyRegularized, LocallyRegularized, Regularized
from local_reg.experiments.methods import METHODS
from local_reg.experiments.tasks import REGISTRY, ModelContext


@pytest.mark.parametrize("task_name", ["nsde_digits", "spiral_sde"])
@pytest.mark.parametrize(
    ("method", "gradient"),
    [
        ("vanilla", "direct"),
        ("local-random", "direct"),
        ("local-biased", "direct"),
        ("global-error", "direct"),
        ("local-random", "adjoint"),
        ("local-biased", "checkpoint"),
        ("vanilla", "checkpoint"),
    ],
)
def test_task_trains_and_evaluates(task_name, method, gradient):
    task = REGISTRY[task_name]
    assert method in task.methods
    settings = task.settings("tiny")
    data = task.load_data(settings, seed=0)
    model = task.build_model(settings, ModelContext(METHODS[method], gradient, total_iterations=2))
    batch = next(iter(DataLoader(data.train, batch_size=8, shuffle=False)))
    model.train()
    loss, metrics = task.training_loss(model, batch)
    (block,) = [m for m in model.modules() if isinstance(m, Regularized)]
    assert block.stats.nfe_main > 0
    if method == "vanilla":
        assert block.penalty is None and not isinstance(block, (LocallyRegularized, GloballyRegularized))
        assert block.reg_loss.dim() == 0 and float(block.reg_loss) == 0.0 and block.stats.nfe_reg == 0
    else:
        assert block.reg_loss.dim() == 0 and torch.isfinite(block.reg_loss)
        loss = loss + block.reg_loss
    loss.backward()
    assert all(p.grad is not None for p in block.parameters())
    model.eval()
    with torch.no_grad():
        result = task.evaluate(model, next(iter(DataLoader(data.test, batch_size=8))))
    assert task.metric in result
    assert not block.reg_loss and block.stats.nfe_reg == 0


def test_unsupported_combinations_are_rejected():
    task = REGISTRY["nsde_digits"]
    settings = task.settings("tiny")
    for gradient in ("adjoint", "checkpoint"):
        with pytest.raises(ValueError, match=r"global regularization .* use --gradient direct"):
            task.build_model(settings, ModelContext(METHODS["global-error"], gradient, 1))
    with pytest.raises(ValueError, match="gradient"):
        task.build_model(settings, ModelContext(METHODS["vanilla"], "symplectic", 1))
    with pytest.raises(ValueError, match="not available"):
        task.build_model(settings, ModelContext(METHODS["global-stiffness"], "direct", 1))


@pytest.mark.parametrize("task_name", ["nsde_digits", "spiral_sde", "digits"])
def test_the_local_options_reach_the_regularizer_of_every_task_kind(task_name):
    """``--set local.n_draws=2`` and the like: an SDE task ignored them once, so its rows were
    labelled with options that never ran."""
    task = REGISTRY[task_name]
    settings = {**task.settings("tiny"), "local": {"n_draws": 2, "probe_scale": 2.0}}
    model = task.build_model(settings, ModelContext(METHODS["local-random"], "direct", total_iterations=2))
    (block,) = [m for m in model.modules() if isinstance(m, LocallyRegularized)]
    assert block.penalty.n_draws == 2 and block.penalty.probe_scale == 2.0


@pytest.mark.parametrize("task_name", ["nsde_digits", "spiral_sde"])
def test_a_few_steps_on_one_batch_lower_its_training_loss(task_name):
    """The task's loss is one its optimizer can descend: with the Brownian paths fixed (the same
    seed before each pass), a few Adam steps on one batch lower that batch's loss."""
    task = REGISTRY[task_name]
    settings = task.settings("tiny")
    data = task.load_data(settings, seed=0)
    torch.manual_seed(0)
    model = task.build_model(settings, ModelContext(METHODS["local-random"], "direct", total_iterations=8))
    optimizer = torch.optim.Adam(model.parameters(), lr=settings["lr"])
    batch = next(iter(DataLoader(data.train, batch_size=16, shuffle=False)))
    model.train()
    losses = []
    for _ in range(8):
        torch.manual_seed(1)
        loss, _ = task.training_loss(model, batch)
        (block,) = [m for m in model.modules() if isinstance(m, Regularized)]
        losses.append(loss.item())
        optimizer.zero_grad()
        (loss + block.reg_loss).backward()
        optimizer.step()
    assert losses[-1] < 0.95 * losses[0], losses
