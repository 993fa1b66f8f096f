"""``latent_ode``: a latent ODE on irregularly sampled, partially observed time series.

The stand-in for the paper's PhysioNet 2012 experiment [LR23] (PhysioNet is not shipped by any
package): periodic multichannel series, each observed at its own irregular times (uniform in
``[0, t_max]``; ``observation_times="irregular"``, the default) or at a random subset of a shared
grid (``"grid"``), and at each observed time a random subset of the channels. With
``--set physionet_dir=DIR`` the real PhysioNet 2012 files (``*.txt`` under ``DIR``, e.g. ``set-a``)
are read instead, binned into hours (:func:`load_physionet`).

Model (Rubanova et al. 2019, with a GRU encoder): a GRU reads the series backwards (each series
its own observations), its last state gives a Gaussian posterior over the latent state ``z0``; the
latent ODE is solved once for the batch, at the union of the batch's observation times (as Rubanova
et al. do with PhysioNet; the solver interpolates there, so the union's size costs no steps), and a
linear map decodes each series at its own times. Training loss: masked MSE plus a small KL term
(``z0`` sampled); test metric: masked MSE with ``z0`` the posterior mean.
"""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from ..methods import ODE_METHODS, PHYSIONET_WEIGHTS
from ..models import ConcatMLP
from ..settings import Directory, Integer, OneOf, Real, Schema, SettingsError
from .base import ODE_SOLVERS, Batch, ModelContext, Task, TaskData, training_fields

PHYSIONET_VARIABLES = [
    "Albumin",
    "ALP",
    "ALT",
    "AST",
    "Bilirubin",
    "BUN",
    "Cholesterol",
    "Creatinine",
    "DiasABP",
    "FiO2",
    "GCS",
    "Glucose",
    "HCO3",
    "HCT",
    "HR",
    "K",
    "Lactate",
    "Mg",
    "MAP",
    "MechVent",
    "Na",
    "NIDiasABP",
    "NIMAP",
    "NISysABP",
    "PaCO2",
    "PaO2",
    "pH",
    "Platelets",
    "RespRate",
    "SaO2",
    "SysABP",
    "Temp",
    "TroponinI",
    "TroponinT",
    "Urine",
    "WBC",
    "Weight",
]
"""The 37 time-series variables of PhysioNet 2012 (the static descriptors are not modelled)."""

_PHYSIONET_HOURS = 48
_PHYSIONET_HEADER = "Time,Parameter,Value"
_SUM_SCALE = 2.0**-64

_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"n_train": 32, "n_test": 32, "epochs": 1, "batch_size": 16},
    "quick": {"n_train": 1000, "n_test": 250, "epochs": 20, "batch_size": 50},
    "full": {"n_train": 4000, "n_test": 1000, "epochs": 100, "batch_size": 50},
}


def series_parameters(n: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """The amplitude (in [0.5, 1.5]), frequency (in [1, 3]) and phase (in [0, 2 pi)) of ``n``
    series, each ``(n,)``, drawn in that order from ``generator``."""
    amplitude = 0.5 + torch.rand(n, generator=generator)
    frequency = 1.0 + 2.0 * torch.rand(n, generator=generator)
    phase = 2 * math.pi * torch.rand(n, generator=generator)
    return amplitude, frequency, phase


def periodic_series(
    n: int, times: Tensor, n_channels: int, obs_prob: float, time_obs_prob: float, noise: float, seed: int
) -> tuple[Tensor, Tensor]:
    """``n`` series ``x_c(t) = a s_c sin(w t + phi + 2 pi c / C)`` with random amplitude, frequency and
    phase at ``times`` (``(T,)`` shared, or ``(n, T)`` per series); a time is observed with
    probability ``time_obs_prob`` and, if so, each channel with ``obs_prob``. Returns ``values`` (zero
    where unobserved) and ``mask``, both ``(n, T, C)``."""
    g = torch.Generator().manual_seed(seed)
    amplitude, frequency, phase = (v.view(n, 1, 1) for v in series_parameters(n, g))
    channel = torch.arange(n_channels).view(1, 1, -1)
    scale = 1.0 - 0.5 * channel / max(n_channels - 1, 1)
    t = times.reshape(-1, times.shape[-1], 1)
    clean = amplitude * scale * torch.sin(frequency * t + phase + 2 * math.pi * channel / n_channels)
    values = clean + noise * torch.randn(clean.shape, generator=g)
    time_mask = torch.rand(n, times.shape[-1], 1, generator=g) < time_obs_prob
    mask = ((torch.rand(values.shape, generator=g) < obs_prob) & time_mask).float()
    return values * mask, mask


def irregular_series(
    n: int,
    n_times: int,
    t_max: float,
    n_channels: int,
    obs_prob: float,
    time_obs_prob: float,
    noise: float,
    seed: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`periodic_series` at each series' own times: ``n_times`` candidates uniform in
    ``[0, t_max]``, each observed with ``time_obs_prob`` (at least one per series, and at least one
    channel at each observed time). The observed times come first, in increasing order; the rest of
    the ``n_times`` slots are padding (time ``t_max``, mask zero). Returns ``values``, ``mask``
    ``(n, n_times, C)`` and ``times`` ``(n, n_times)``."""
    g = torch.Generator().manual_seed(seed + 1)
    candidates = torch.rand(n, n_times, generator=g).mul(t_max).sort(dim=1).values
    values, _ = periodic_series(n, candidates, n_channels, 1.0, 1.0, noise, seed)
    mask = (torch.rand(values.shape, generator=g) < obs_prob).float()
    observed = torch.rand(n, n_times, generator=g) < time_obs_prob
    observed[torch.arange(n), torch.randint(n_times, (n,), generator=g)] = True
    # An observed time with no channel observed would be no observation: observe one channel there.
    empty = observed & (mask.sum(-1) == 0)
    channel = torch.randint(n_channels, (n, n_times), generator=g)
    mask[empty, channel[empty]] = 1.0
    mask = mask * observed.unsqueeze(-1)
    # Observed slots first (stable: times stay increasing), padding after.
    order = torch.sort((~observed).to(torch.int8), dim=1, stable=True).indices
    times = torch.where(observed, candidates, torch.full_like(candidates, t_max)).gather(1, order)
    index = order.unsqueeze(-1).expand(-1, -1, n_channels)
    return (values * mask).gather(1, index), mask.gather(1, index), times


def _is_record(path: Path) -> bool:
    """Whether ``path`` starts with a PhysioNet record's header (a byte-order mark, Windows line
    endings and another encoding's bytes elsewhere in the folder are no obstacle)."""
    with path.open(encoding="utf-8-sig", errors="replace") as file:
        return file.readline().strip() == _PHYSIONET_HEADER


def _mean_of_bin(values: list[float]) -> float:
    """The mean of one hour's values of a variable, summed in the order read. Finite values near
    the float maximum can sum to inf, though their mean is finite: those are averaged scaled down
    by a power of two (exact on values above 1e-288)."""
    total = 0.0
    for value in values:
        total += value
    if math.isfinite(total):
        return total / len(values)
    mean = math.fsum(value * _SUM_SCALE for value in values) / len(values) / _SUM_SCALE
    return min(mean, sys.float_info.max)  # rounding may lift the mean of maxima past the maximum


def load_physionet(directory: str | Path) -> tuple[Tensor, Tensor]:
    """Read PhysioNet 2012 records (``RecordID.txt``: ``Time,Parameter,Value`` lines, ``Time`` as
    ``HH:MM``) from every ``*.txt`` under ``directory`` that starts with that header (the download's
    ``Outcomes-a.txt`` beside ``set-a`` is skipped).

    Observations are averaged into 48 hourly bins and each variable is scaled to [0, 1] by its min
    and max over all records. Returns ``values`` and ``mask``, ``(n_records, 48, 37)``. A folder
    without records, or a record line that does not parse, is a :class:`SettingsError` naming it.
    """
    if not Path(directory).is_dir():
        raise SettingsError(f"physionet_dir={str(directory)!r} is not a directory")
    try:
        # A folder or a broken link that happens to end in .txt is no record.
        candidates = sorted(Path(directory).rglob("*.txt"))
        files = [path for path in candidates if path.is_file() and _is_record(path)]
    except OSError as error:
        reason = error.strerror or error
        raise SettingsError(f"physionet_dir: {error.filename} cannot be read ({reason})") from None
    if not files:
        raise SettingsError(
            f"physionet_dir={str(directory)!r} holds no PhysioNet records (*.txt files starting with "
            f"{_PHYSIONET_HEADER!r}, as in the download's set-a folder)"
        )
    index = {name: i for i, name in enumerate(PHYSIONET_VARIABLES)}
    values = torch.zeros(len(files), _PHYSIONET_HOURS, len(index), dtype=torch.float64)
    mask = torch.zeros_like(values, dtype=torch.bool)
    for r, path in enumerate(files):
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as error:
            raise SettingsError(
                f"physionet_dir: {path} is not UTF-8 text ({error.reason} at byte {error.start})"
            ) from None
        except OSError as error:
            raise SettingsError(f"physionet_dir: {path} cannot be read ({error.strerror or error})") from None
        observed: dict[tuple[int, int], list[float]] = {}
        for number, line in enumerate(text.splitlines()[1:], start=2):
            if not line.strip():
                continue
            try:
                stamp, name, text_value = line.split(",")
                value = float(text_value)
                hours, minutes = (int(part) for part in stamp.split(":"))
                # A negative hour would index the last bin; a NaN would spread through the scaling.
                if hours < 0 or minutes < 0 or not math.isfinite(value):
                    raise ValueError
            except ValueError:
                raise SettingsError(
                    f"physionet_dir: {path}, line {number}: expected HH:MM,Parameter,Value with a time "
                    f"from 00:00 and a finite value, got {line!r}"
                ) from None
            if name not in index or value < 0:  # -1 marks a missing value
                continue
            hour = min(hours + minutes // 60, _PHYSIONET_HOURS - 1)
            observed.setdefault((hour, index[name]), []).append(value)
        for (hour, variable), hour_values in observed.items():
            values[r, hour, variable] = _mean_of_bin(hour_values)
            mask[r, hour, variable] = True
    low = torch.where(mask, values, math.inf).amin(dim=(0, 1))
    high = torch.where(mask, values, -math.inf).amax(dim=(0, 1))
    span = torch.where(high > low, high - low, 1.0)
    values = torch.where(mask, (values - low) / span, 0.0)
    return values.float(), mask.float()


class LatentODE(nn.Module):
    """``(prediction, kl) = model(values, mask)`` on the grid ``times``, or
    ``model(values, mask, series_times)`` with each series' own times ``(batch, T)`` (observed slots
    first, then padding with mask zero): GRU encoder, ODE decoder; ``kl`` is the KL divergence of the
    posterior from N(0, I), times ``kl_weight``."""

    times: Tensor  # a buffer, so that it follows the model's device

    def __init__(
        self, block: nn.Module, n_channels: int, latent: int, rec_hidden: int, times: Tensor, kl_weight: float
    ):
        super().__init__()
        self.kl_weight = kl_weight
        self.encoder = nn.GRU(2 * n_channels + 1, rec_hidden, batch_first=True)
        self.posterior = nn.Linear(rec_hidden, 2 * latent)
        self.block = block
        self.decoder = nn.Linear(latent, n_channels)
        self.register_buffer("times", times, persistent=False)

    def forward(
        self, values: Tensor, mask: Tensor, series_times: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        mean, log_var = self.encode(values, mask, series_times)
        z0 = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean) if self.training else mean
        kl = self.kl_weight * 0.5 * (mean**2 + log_var.exp() - log_var - 1).sum(-1).mean()
        if series_times is None:
            latent_path = self.block(z0, self.times)  # (T, batch, latent)
            return self.decoder(latent_path).transpose(0, 1), kl
        # One solve for the batch at the union of its observation times (and t0 = 0, where z0 is).
        observed = mask.sum(-1) > 0
        union = torch.unique(torch.cat([series_times.new_zeros(1), series_times[observed]]))
        latent_path = self.block(z0, union)  # (U, batch, latent)
        slots = torch.searchsorted(union, series_times.contiguous()).clamp(max=len(union) - 1)
        per_series = latent_path[slots, torch.arange(len(z0)).unsqueeze(1)]  # (batch, T, latent)
        return self.decoder(per_series), kl

    def encode(
        self, values: Tensor, mask: Tensor, series_times: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Mean and log-variance ``(batch, latent)`` of the Gaussian posterior over ``z0``."""
        if series_times is None:
            gaps = torch.diff(self.times, prepend=self.times[:1]).expand(*values.shape[:2]).unsqueeze(-1)
            # Read backwards in time so that the last hidden state summarizes the series as seen from t0.
            _, hidden = self.encoder(torch.cat([values, mask, gaps], dim=-1).flip(1))
        else:
            hidden = self._encode_own_times(values, mask, series_times)
        mean, log_var = self.posterior(hidden[-1]).chunk(2, dim=-1)
        return mean, log_var

    def _encode_own_times(self, values: Tensor, mask: Tensor, series_times: Tensor) -> Tensor:
        """The GRU's last state after reading each series' own observations, last one first."""
        lengths = (mask.sum(-1) > 0).sum(1).clamp(min=1)
        gaps = torch.diff(series_times, prepend=series_times[:, :1]).unsqueeze(-1)
        inputs = torch.cat([values, mask, gaps], dim=-1)
        # Reverse each series' observed prefix in place (padding stays behind it).
        position = torch.arange(values.shape[1]).unsqueeze(0)
        reverse = torch.where(position < lengths.unsqueeze(1), lengths.unsqueeze(1) - 1 - position, position)
        inputs = inputs.gather(1, reverse.unsqueeze(-1).expand_as(inputs))
        packed = nn.utils.rnn.pack_padded_sequence(
            inputs, lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        _, hidden = self.encoder(packed)
        return hidden


def masked_mse(prediction: Tensor, values: Tensor, mask: Tensor) -> Tensor:
    return ((prediction - values) ** 2 * mask).sum() / mask.sum().clamp(min=1)


class LatentODETask(Task):
    """Latent ODE of irregular, partially observed series; metric: masked MSE of the reconstruction
    of the observed entries, which the encoder reads (unseen series, no held-out time points)."""

    name = "latent_ode"
    metric = "mse"
    higher_is_better = False
    schema = Schema(
        {
            **training_fields(ODE_SOLVERS, ODE_METHODS),
            "n_train": Integer(1),
            "n_test": Integer(1),
            "physionet_dir": Directory(),
            "n_times": Integer(2),
            "observation_times": OneOf(("irregular", "grid")),
            "t_max": Real(),
            "n_channels": Integer(1),
            "obs_prob": Real(high=1.0),
            "time_obs_prob": Real(high=1.0),
            "noise": Real(closed=True),
            "latent": Integer(1),
            "hidden": Integer(1),
            "rec_hidden": Integer(1),
            "kl_weight": Real(closed=True),
        }
    )

    def settings(self, size: str) -> dict[str, Any]:
        return {
            **_SIZES[size],
            "physionet_dir": None,
            "n_times": 25,
            "observation_times": "irregular",
            "t_max": 5.0,
            "n_channels": 3,
            "obs_prob": 0.6,
            "time_obs_prob": 0.6,
            "noise": 0.01,
            "latent": 8,
            "hidden": 40,
            "rec_hidden": 32,
            "kl_weight": 1e-3,
            "eval_batch_size": 250,
            "lr": 1e-2,
            "solver": {"method": "tsit5", "rtol": 1e-6, "atol": 1e-6},
            # The published PhysioNet coefficients ([LR23], [GR21]).
            "weights": copy.deepcopy(PHYSIONET_WEIGHTS),
        }

    def _times(self, settings: dict[str, Any]) -> Tensor:
        n_times = _PHYSIONET_HOURS if settings["physionet_dir"] else settings["n_times"]
        return torch.linspace(0.0, settings["t_max"], n_times)

    def load_data(self, settings: dict[str, Any], seed: int) -> TaskData:
        n_train, n_test = settings["n_train"], settings["n_test"]
        series: tuple[Tensor, ...]  # (values, mask), and each series' own times when irregular
        if settings["physionet_dir"]:
            values, mask = load_physionet(settings["physionet_dir"])
            if len(values) < 5:  # a fifth of the records is the test set
                raise SettingsError(
                    f"physionet_dir={str(settings['physionet_dir'])!r} holds {len(values)} record(s); the "
                    "task tests on a fifth of them, so it needs at least 5"
                )
            # A fixed shuffle, the same for every seed, before the train/test cut.
            order = torch.randperm(len(values), generator=torch.Generator().manual_seed(0))
            series = (values[order], mask[order])
            n_test = min(n_test, len(values) // 5)
            n_train = min(n_train, len(values) - n_test)
        elif settings["observation_times"] == "irregular":
            # Each series its own observation times (values, mask, times).
            series = irregular_series(
                n_train + n_test,
                settings["n_times"],
                settings["t_max"],
                settings["n_channels"],
                settings["obs_prob"],
                settings["time_obs_prob"],
                settings["noise"],
                seed=0,  # the data stay fixed; the seed varies training
            )
        else:
            series = periodic_series(
                n_train + n_test,
                self._times(settings),
                settings["n_channels"],
                settings["obs_prob"],
                settings["time_obs_prob"],
                settings["noise"],
                seed=0,  # the data stay fixed; the seed varies training
            )
        return TaskData(
            train=TensorDataset(*(x[:n_train] for x in series)),
            test=TensorDataset(*(x[n_train : n_train + n_test] for x in series)),
        )

    def default_methods(self, settings: dict[str, Any]) -> tuple[str, ...]:
        if settings["observation_times"] == "irregular":
            return tuple(method for method in self.methods if method != "steer")
        return self.methods

    def build_model(self, settings: dict[str, Any], context: ModelContext) -> nn.Module:
        # STEER perturbs only the last output time, by less than the last interval; the union of a
        # batch's irregular times has intervals of any size, so no fixed b is valid there.
        if context.method.family == "steer" and settings["observation_times"] == "irregular":
            raise ValueError(
                "steer perturbs the last output time and needs a fixed last interval: use "
                "--set observation_times=grid (the union of irregular times has intervals of any size)"
            )
        return super().build_model(settings, context)

    def last_interval(self, settings: dict[str, Any]) -> float:
        times = self._times(settings)
        return float(times[-1] - times[-2])

    def build_dynamics(self, settings: dict[str, Any]) -> nn.Module:
        return ConcatMLP(settings["latent"], settings["hidden"])

    def build_network(self, block: nn.Module, settings: dict[str, Any]) -> nn.Module:
        n_channels = len(PHYSIONET_VARIABLES) if settings["physionet_dir"] else settings["n_channels"]
        return LatentODE(
            block,
            n_channels,
            settings["latent"],
            settings["rec_hidden"],
            self._times(settings),
            settings["kl_weight"],
        )

    def training_loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        # (values, mask) on the grid, or (values, mask, times) with each series' own times.
        values, mask = batch[:2]
        prediction, kl = model(*batch)
        mse = masked_mse(prediction, values, mask)
        return mse + kl, {"mse": mse.item()}

    def evaluate(self, model: nn.Module, batch: Batch) -> dict[str, float]:
        values, mask = batch[:2]
        prediction, _ = model(*batch)
        return {"mse": masked_mse(prediction, values, mask).item()}
