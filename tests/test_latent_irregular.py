"""The latent_ode task with each series observed at its own times, solved at the batch's union."""

import torch
from torch import nn

from local_reg.experiments.tasks.latent_ode import LatentODE, LatentODETask, irregular_series


class LinearInTime(nn.Module):
    """A stand-in solver block with a known solution: ``z(t) = z0 * (1 + t)``; records its times."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[torch.Tensor] = []

    def forward(self, z0, t):
        self.calls.append(t)
        return z0.unsqueeze(0) * (1 + t).view(-1, 1, 1)


def _model(block, n_channels=3, latent=4):
    torch.manual_seed(0)
    return LatentODE(block, n_channels, latent, rec_hidden=5, times=torch.linspace(0, 5, 7), kl_weight=0.0)


def test_irregular_series_put_observed_times_first_in_order():
    values, mask, times = irregular_series(6, 12, 5.0, 3, 0.6, 0.5, 0.01, seed=0)
    observed = mask.sum(-1) > 0
    assert observed.any(1).all()
    for i in range(6):
        k = int(observed[i].sum())
        assert observed[i, :k].all() and not observed[i, k:].any()
        assert (torch.diff(times[i, :k]) > 0).all() and (times[i, k:] == 5.0).all()
        assert ((times[i, :k] >= 0) & (times[i, :k] <= 5.0)).all()
    assert (values[mask == 0] == 0).all() and (values[mask > 0] != 0).all()
    # Each series has its own times.
    assert not torch.equal(times[0], times[1])


def test_decoder_reads_each_series_at_its_own_times_from_one_union_solve():
    values, mask, times = irregular_series(3, 6, 5.0, 3, 0.8, 0.7, 0.01, seed=1)
    block = LinearInTime()
    model = _model(block).eval()
    prediction, _ = model(values, mask, times)
    (union,) = block.calls
    observed = mask.sum(-1) > 0
    expected_union = torch.unique(torch.cat([torch.zeros(1), times[observed]]))
    assert torch.equal(union, expected_union)
    # Independently: the posterior mean z0 of each series, decoded at (1 + t) z0.
    hidden = model._encode_own_times(values, mask, times)
    z0 = model.posterior(hidden[-1]).chunk(2, dim=-1)[0]
    for i in range(3):
        for j in range(6):
            if observed[i, j]:
                reference = model.decoder(z0[i] * (1 + times[i, j]))
                torch.testing.assert_close(prediction[i, j], reference)


def test_encoder_reads_its_own_observations_backwards_ignoring_padding():
    values, mask, times = irregular_series(2, 8, 5.0, 3, 0.8, 0.6, 0.01, seed=2)
    model = _model(LinearInTime())
    hidden = model._encode_own_times(values, mask, times)
    for i in range(2):
        k = int((mask[i].sum(-1) > 0).sum())
        gaps = torch.diff(times[i, :k], prepend=times[i, :1]).unsqueeze(-1)
        sequence = torch.cat([values[i, :k], mask[i, :k], gaps], dim=-1).flip(0).unsqueeze(0)
        _, reference = model.encoder(sequence)
        torch.testing.assert_close(hidden[-1, i], reference[-1, 0])
    # More padding changes nothing.
    pad = lambda x, fill: torch.cat([x, torch.full((2, 3, *x.shape[2:]), fill)], dim=1)  # noqa: E731
    padded = model._encode_own_times(pad(values, 0.0), pad(mask, 0.0), pad(times, 5.0))
    torch.testing.assert_close(padded, hidden)


def test_task_trains_on_irregular_times_with_the_real_solver():
    task = LatentODETask()
    settings = {**task.settings("tiny"), "n_train": 8, "n_test": 8, "batch_size": 4}
    data = task.load_data(settings, seed=0)
    assert len(data.train.tensors) == 3
    from local_reg import Regularized

    torch.manual_seed(0)
    field = task.build_dynamics(settings)
    model = task.build_network(Regularized(field, rtol=1e-5, atol=1e-5), settings)
    batch = data.train.tensors[0][:4], data.train.tensors[1][:4], data.train.tensors[2][:4]
    optimizer = torch.optim.Adam(model.parameters(), lr=settings["lr"])
    losses = []
    for _ in range(8):
        torch.manual_seed(0)  # the same VAE draw each pass: a fixed objective to descend
        loss, metrics = task.training_loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        assert torch.isfinite(loss) and metrics["mse"] > 0
        assert all(p.grad is not None for p in field.parameters())
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.95 * losses[0], losses
    grid = task.load_data({**settings, "observation_times": "grid"}, seed=0)
    assert len(grid.train.tensors) == 2


def test_the_masked_mse_averages_over_the_observed_entries_only():
    """Prediction 1 against values 0, 3 of 12 entries observed: 1.0 (the mean over all 12 would
    read 0.25)."""
    from local_reg.experiments.tasks.latent_ode import masked_mse

    mask = torch.zeros(2, 3, 2)
    mask[0, 0, 0] = mask[1, 2, 1] = mask[0, 1, 1] = 1.0
    assert float(masked_mse(torch.ones(2, 3, 2), torch.zeros(2, 3, 2), mask)) == 1.0


def test_the_irregular_test_split_is_the_series_after_the_training_ones():
    task = LatentODETask()
    settings = {**task.settings("tiny"), "observation_times": "irregular", "n_train": 8, "n_test": 8}
    data = task.load_data(settings, seed=3)
    series = irregular_series(
        16, len(task._times(settings)), settings["t_max"], settings["n_channels"], settings["obs_prob"],
        settings["time_obs_prob"], settings["noise"], seed=0,
    )  # fmt: skip
    for ours, all_of_them in zip(data.test.tensors, series, strict=True):
        assert torch.equal(ours, all_of_them[8:16])
    for ours, all_of_them in zip(data.train.tensors, series, strict=True):
        assert torch.equal(ours, all_of_them[:8])
