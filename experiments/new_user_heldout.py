"""Tasks nobody tuned on, written from the README as a new user would: vanilla
(``Regularized(field)``) against ``LocallyRegularized(field, sampling="random")`` with nothing else
set, the same seeds and mini-batches. Results in docs/results.md ("Three more held-out tasks, written
as a new user", "A floor under the fading weight, for solves read at their end", "The end-read
regressions at constant weights", and for the trajectory fits "A bounded rise of the weight along the
flow" and "Two fits no rule had seen").

- ``wine``: sklearn's wine classifier (70/30 split, features standardized on the training split),
  MLP field 13 -> 64 -> 13 (tanh) on [0, 1], linear head, Adam 1e-3, batch 32, 200 epochs.
- ``diabetes``: sklearn's diabetes regression (75/25, features and target standardized on the
  training split), MLP field 10 -> 64 -> 10, linear head, Adam 1e-3, batch 32, 150 epochs.
- ``oscillator``: a trajectory fit of ``x'' + 0.3 x' + x = 0.5 cos(1.3 t)`` (scipy at rtol 1e-10),
  128 training and 128 test starts in [-2, 2]^2 observed at 31 times on [0, 6], MSE over all times;
  field MLP([y, cos 1.3t, sin 1.3t]) with two hidden layers of 64, Adam 3e-3 with cosine decay,
  300 epochs.
- ``duffing`` and ``fitzhugh``: two more trajectory fits, written after every task above had
  informed a choice, with the oscillator's settings (starts, batch, optimizer, epochs; field
  MLP(y) with two hidden layers of 64): the damped double well ``x'' + 0.3 x' - x + x^3 = 0``
  observed at 41 times on [0, 8], and the FitzHugh--Nagumo neuron ``v' = v - v^3/3 - w + 0.5``,
  ``w' = 0.08 (v + 0.7 - 0.8 w)`` observed at 41 times on [0, 20].
- ``brusselator``: one more trajectory fit, written after ``duffing`` and ``fitzhugh`` had been
  measured, with their settings: the Brusselator ``x' = 1 + x^2 y - 3.5 x``, ``y' = 2.5 x - x^2 y``
  (a limit cycle around its fixed point ``(1, 2.5)``), in coordinates centred there (the state is
  ``(x - 1, y - 2.5)``), observed at 41 times on [0, 12].
- ``selkov`` and ``hopf``: two more, written after every fit above had informed a choice, with
  the same settings: Sel'kov's glycolysis oscillator ``x' = -x + 0.08 y + x^2 y``,
  ``y' = 0.6 - 0.08 y - x^2 y``, centred at its fixed point ``(0.6, 0.6 / 0.44)``, observed at 41
  times on [0, 20]; and the Stuart--Landau oscillator with shear, ``x' = x (1 - r^2) - (1 + r^2/2) y``,
  ``y' = y (1 - r^2) + (1 + r^2/2) x``, observed at 41 times on [0, 8].
- ``hopf_noisy``: ``hopf`` with noisy training observations (Gaussian, sd 0.1, on every observed
  time after the start, which stays exact), its test paths noise-free: the error of the learned
  dynamics, as a user fitting measured data would judge it.

Classifiers and regressions read at their end through an encoder: linear encoder to a state of 16,
MLP field 16 -> 64 -> 16 (tanh) on [0, 1], linear head, Adam 1e-3, batch 32 (70/30 split,
standardized on the training split; epochs in ``SETTINGS``): sklearn's ``cancer`` (breast cancer),
``iris``, ``moons`` (noise 0.25), ``circles`` (noise 0.1, factor 0.5), ``classif``
(``make_classification``, 3 classes, 2 clusters each), ``sepclass`` (3 classes, one cluster each,
``class_sep=2.5``), ``blobs`` (4 centres in 16 dimensions) and ``blobs5`` (5 closer centres in 12),
``hastie`` (``make_hastie_10_2``), and the regressions ``friedman`` (``make_friedman1``) and
``friedman2`` (``make_friedman2``).

Methods: ``vanilla``; ``local``: the library's default as it is when run (its weight is recorded);
``floorF``: the default's penalty and target with ``RatioWeight(0.2, every=10, floor=F)`` over the
field's parameters (``floor0``: the default weight without a floor; ``floor1``: the default's for
these solves, read at their end); ``targetT``: ``RatioWeight(T, every=10, floor=1)`` (the default's
for these solves at another target); ``flowT``: ``RatioWeight(T, every=10)`` (the default's for a
solve read along the flow before its rise was bounded, at another target); ``fixedW``: the default's penalty
at the constant weight ``W``.

    python experiments/new_user_heldout.py --out results/new_user   # runs what is missing, then the tables
    python experiments/new_user_heldout.py --out results/end_read --tasks cancer iris \
        --methods vanilla floor0 floor1
    python experiments/new_user_heldout.py --out results/end_read_small_init --tasks iris sepclass \
        --methods vanilla floor0 floor1 --init-scale 1e-3   # the field's last layer at 1e-3 its scale
    python experiments/new_user_heldout.py --out results/regression_weights --tasks friedman2 \
        --methods vanilla fixed0.001 fixed0.01 fixed0.1 fixed1 local target0.1 target0.05

Each run is saved as ``OUT/TASK_METHOD_sSEED.json`` when it finishes; a rerun skips those. The
name holds neither ``--epochs`` nor ``--init-scale``: runs of other values go to another ``--out``
(a rerun into a folder trained with other values stops, naming the file).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from local_reg import LocallyRegularized, RatioWeight, Regularized, odeint
from local_reg.experiments.cli import _echo
from local_reg.experiments.report import _mean_sd
from local_reg.experiments.results import atomic_write_bytes

SETTINGS = {
    "wine": {"epochs": 200, "lr": 1e-3, "cosine": False},
    "diabetes": {"epochs": 150, "lr": 1e-3, "cosine": False},
    "oscillator": {"epochs": 300, "lr": 3e-3, "cosine": True},
    "duffing": {"epochs": 300, "lr": 3e-3, "cosine": True},
    "fitzhugh": {"epochs": 300, "lr": 3e-3, "cosine": True},
    "brusselator": {"epochs": 300, "lr": 3e-3, "cosine": True},
    "selkov": {"epochs": 300, "lr": 3e-3, "cosine": True},
    "hopf": {"epochs": 300, "lr": 3e-3, "cosine": True},
    "hopf_noisy": {"epochs": 300, "lr": 3e-3, "cosine": True},
}
ENCODED_EPOCHS = {
    "cancer": 80,
    "iris": 200,
    "moons": 50,
    "circles": 50,
    "classif": 80,
    "sepclass": 60,
    "blobs": 60,
    "blobs5": 60,
    "hastie": 60,
    "friedman": 100,
    "friedman2": 100,
}
SETTINGS.update({task: {"epochs": n, "lr": 1e-3, "cosine": False} for task, n in ENCODED_EPOCHS.items()})
# Fits of trajectories read along the flow: the span [0, t_end] and the number of observed times.
TRAJECTORIES = {
    "oscillator": (6.0, 31),
    "duffing": (8.0, 41),
    "fitzhugh": (20.0, 41),
    "brusselator": (12.0, 41),
    "selkov": (20.0, 41),
    "hopf": (8.0, 41),
    "hopf_noisy": (8.0, 41),
}
OBSERVATION_NOISE = {"hopf_noisy": 0.1}
"""The sd of the Gaussian noise on a task's training observations (its test paths stay exact)."""
REGRESSIONS = ("diabetes", "friedman", "friedman2", *TRAJECTORIES)
ENCODED_STATE = 16
OSCILLATOR = {"c": 0.3, "k": 1.0, "force": 0.5, "w": 1.3}


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.tensor(array, dtype=torch.float32)


def split_standardized(
    x: np.ndarray, y: np.ndarray, test_size: float, classify: bool
) -> tuple[torch.Tensor, ...]:
    """A fixed split (stratified for a classifier), features standardized on the training split;
    a regression's target too, as a column."""
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_size, random_state=0, stratify=y if classify else None
    )
    mean, std = x_train.mean(0), x_train.std(0)  # training split's statistics only
    x_train, x_test = _tensor((x_train - mean) / std), _tensor((x_test - mean) / std)
    if classify:
        return x_train, torch.tensor(y_train), x_test, torch.tensor(y_test)
    y_mean, y_std = y_train.mean(), y_train.std()
    y_train, y_test = (y_train - y_mean) / y_std, (y_test - y_mean) / y_std
    return x_train, _tensor(y_train)[:, None], x_test, _tensor(y_test)[:, None]


def tabular_data(task: str) -> tuple[torch.Tensor, ...]:
    from sklearn.datasets import load_diabetes, load_wine

    if task == "wine":
        return split_standardized(*load_wine(return_X_y=True), test_size=0.3, classify=True)
    return split_standardized(*load_diabetes(return_X_y=True), test_size=0.25, classify=False)


def encoded_data(task: str) -> tuple[torch.Tensor, ...]:
    from sklearn import datasets

    makers = {
        "cancer": lambda: datasets.load_breast_cancer(return_X_y=True),
        "iris": lambda: datasets.load_iris(return_X_y=True),
        "moons": lambda: datasets.make_moons(n_samples=1000, noise=0.25, random_state=0),
        "circles": lambda: datasets.make_circles(n_samples=1000, noise=0.1, factor=0.5, random_state=0),
        "classif": lambda: datasets.make_classification(
            n_samples=1000, n_features=20, n_informative=8, n_redundant=4, n_classes=3, random_state=0
        ),
        "sepclass": lambda: datasets.make_classification(
            n_samples=600,
            n_features=20,
            n_informative=6,
            n_redundant=2,
            n_classes=3,
            n_clusters_per_class=1,
            class_sep=2.5,
            flip_y=0.0,
            random_state=0,
        ),
        "blobs": lambda: datasets.make_blobs(n_samples=600, n_features=16, centers=4, random_state=0),
        "blobs5": lambda: datasets.make_blobs(
            n_samples=600, n_features=12, centers=5, center_box=(-3, 3), random_state=1
        ),
        "hastie": lambda: datasets.make_hastie_10_2(n_samples=1000, random_state=0),
        "friedman": lambda: datasets.make_friedman1(n_samples=1000, n_features=10, noise=1.0, random_state=0),
        "friedman2": lambda: datasets.make_friedman2(n_samples=1000, noise=10.0, random_state=0),
    }
    x, y = makers[task]()
    if task == "hastie":
        y = (y > 0).astype(int)  # its labels are -1 and 1
    return split_standardized(x, y, test_size=0.3, classify=task not in REGRESSIONS)


def true_derivative(task: str, t, x, v, cos) -> tuple:
    """The right-hand side that made a trajectory fit's data, for numpy or torch (``cos`` is theirs)."""
    if task == "oscillator":
        c, k, force, w = (OSCILLATOR[key] for key in ("c", "k", "force", "w"))
        return v, -c * v - k * x + force * cos(w * t)
    if task == "duffing":
        return v, -0.3 * v + x - x**3
    if task == "brusselator":
        u, w = x + 1.0, v + 2.5  # the centred state's concentrations
        return 1.0 + u**2 * w - 3.5 * u, 2.5 * u - u**2 * w
    if task == "selkov":
        u, w = x + 0.6, v + 0.6 / 0.44  # centred at the fixed point (b, b / (a + b^2))
        return -u + 0.08 * w + u**2 * w, 0.6 - 0.08 * w - u**2 * w
    if task in ("hopf", "hopf_noisy"):
        radius2 = x**2 + v**2
        turning = 1.0 + 0.5 * radius2  # the shear: outer orbits turn faster
        return x * (1.0 - radius2) - turning * v, v * (1.0 - radius2) + turning * x
    return x - x**3 / 3 - v + 0.5, 0.08 * (x + 0.7 - 0.8 * v)  # fitzhugh: x is v, v is w


def trajectory_data(task: str) -> tuple[torch.Tensor, ...]:
    from scipy.integrate import solve_ivp

    t_end, n_times = TRAJECTORIES[task]
    times = np.linspace(0.0, t_end, n_times)
    rng = np.random.default_rng(1234)

    def rhs(t: float, u: np.ndarray) -> list[float]:
        return list(true_derivative(task, t, u[0], u[1], np.cos))

    def starts_and_paths(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y0 = rng.uniform(-2, 2, size=(n, 2))
        paths = [solve_ivp(rhs, (0.0, t_end), u0, t_eval=times, rtol=1e-10, atol=1e-12).y.T for u0 in y0]
        return _tensor(y0), _tensor(np.stack(paths, 1))  # (n_times, n, 2)

    y0_train, paths_train = starts_and_paths(128)
    y0_test, paths_test = starts_and_paths(128)
    if task in OBSERVATION_NOISE:  # drawn after the paths, so the starts are the noise-free task's
        noise = rng.normal(0.0, OBSERVATION_NOISE[task], size=paths_train[1:].shape)
        paths_train[1:] += _tensor(noise)
    return y0_train, paths_train, y0_test, paths_test, _tensor(times)


class MLPField(torch.nn.Module):
    def __init__(self, dim: int, hidden: int = 64) -> None:
        super().__init__()
        layers = [torch.nn.Linear(dim, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, dim)]
        self.net = torch.nn.Sequential(*layers)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)


class TrajectoryField(torch.nn.Module):
    """A trajectory fit's field, two hidden layers of ``hidden``: ``MLP([y, cos(w t), sin(w t)])``
    for a forcing of frequency ``w`` (the user knows it), else ``MLP(y)``."""

    def __init__(self, forcing: float | None = None, hidden: int = 64) -> None:
        super().__init__()
        self.forcing = forcing
        inputs = 2 if forcing is None else 4
        layers = [torch.nn.Linear(inputs, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, hidden)]
        self.net = torch.nn.Sequential(*layers, torch.nn.Tanh(), torch.nn.Linear(hidden, 2))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.forcing is None:
            return self.net(y)
        phase = self.forcing * t.to(y.dtype).expand(y.shape[0], 1)
        return self.net(torch.cat([y, torch.cos(phase), torch.sin(phase)], -1))


def make_model(field: torch.nn.Module, method: str) -> Regularized:
    """``vanilla``, ``local`` (the library's default), ``floorF`` (the default's target with a floor),
    ``targetT`` (another target with the floor), ``flowT`` (another target without a floor: the
    default's rule for a solve read along the flow before its rise was bounded) or ``fixedW`` (the
    default's penalty at a constant weight)."""
    if method == "vanilla":
        return Regularized(field)
    if method == "local":
        return LocallyRegularized(field, sampling="random")
    if method.startswith("fixed"):
        return LocallyRegularized(field, sampling="random", weight=float(method.removeprefix("fixed")))
    if method.startswith("target"):
        target, floor = float(method.removeprefix("target")), 1.0
    elif method.startswith("flow"):
        target, floor = float(method.removeprefix("flow")), 0.0
    else:
        target, floor = 0.2, float(method.removeprefix("floor"))
    weight = RatioWeight(target, every=10, floor=floor, parameters=list(field.parameters()))
    return LocallyRegularized(field, sampling="random", weight=weight)


def run(
    task: str, method: str, seed: int, batch: int = 32, init_scale: float = 1.0, epochs: int | None = None
) -> dict:
    """One training run; ``init_scale`` multiplies the field's last layer at initialization (a field
    initialized near zero makes the first measured weight large); ``epochs`` replaces the task's."""
    settings = SETTINGS[task]
    classify = task not in REGRESSIONS
    torch.manual_seed(seed)
    shuffle = torch.Generator().manual_seed(10_000 + seed)  # the same batches for every method
    encoder = torch.nn.Identity()
    if task in TRAJECTORIES:
        x_train, y_train, x_test, y_test, t = trajectory_data(task)
        forcing = OSCILLATOR["w"] if task == "oscillator" else None
        field, head, criterion = TrajectoryField(forcing), None, torch.nn.MSELoss()
    else:
        if task in ENCODED_EPOCHS:
            x_train, y_train, x_test, y_test = encoded_data(task)
            encoder, dim = torch.nn.Linear(x_train.shape[1], ENCODED_STATE), ENCODED_STATE
        else:
            x_train, y_train, x_test, y_test = tabular_data(task)
            dim = x_train.shape[1]
        field = MLPField(dim)
        with torch.no_grad():
            for parameter in field.net[-1].parameters():
                parameter.mul_(init_scale)
        head = torch.nn.Linear(dim, int(y_train.max()) + 1 if classify else 1)
        criterion = torch.nn.CrossEntropyLoss() if classify else torch.nn.MSELoss()
        t = torch.tensor([0.0, 1.0])
    model = make_model(field, method)
    parameters = [*encoder.parameters(), *field.parameters(), *([] if head is None else head.parameters())]
    optimizer = torch.optim.Adam(parameters, lr=settings["lr"])
    epochs = epochs or settings["epochs"]
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs) if settings["cosine"] else None

    def predict(x: torch.Tensor) -> torch.Tensor:
        ys = model(encoder(x), t)
        return ys if head is None else head(ys[-1])

    def metric(x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        model.eval()
        with torch.no_grad():
            out = predict(x)
            nfe = model.stats.nfe_main
        model.train()
        value = (out.argmax(-1) == y).float().mean() if classify else criterion(out, y)
        return float(value), nfe

    train_time, n, weights = 0.0, x_train.shape[0], []
    for _ in range(epochs):
        start = time.perf_counter()
        for index in torch.randperm(n, generator=shuffle).split(batch):
            target = y_train[:, index] if head is None else y_train[index]
            loss = criterion(predict(x_train[index]), target)
            optimizer.zero_grad()
            (loss + model.reg_loss).backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        train_time += time.perf_counter() - start
        if method != "vanilla":
            weights.append(float(model.weight()))
    start = time.perf_counter()
    test_metric, test_nfe = metric(x_test, y_test)
    predict_time = time.perf_counter() - start
    return {
        "task": task,
        "method": method,
        "seed": seed,
        "epochs": epochs,
        "init_scale": init_scale,
        "metric": "accuracy" if classify else "mse",
        "test_metric": test_metric,
        "train_metric": metric(x_train, y_train)[0],
        "test_nfe": test_nfe,
        "train_time_s": train_time,
        "predict_time_s": predict_time,
        "final_weight": weights[-1] if weights else None,
        "largest_weight": max(weights) if weights else None,
        "weight": repr(model.weight) if method != "vanilla" else None,
    }


def true_nfe(task: str) -> int:
    """The test solve's NFE for the dynamics that made a trajectory fit's data (the same starts,
    times, solver, tolerances and float32): what a faithful fit costs (docs/results.md, "What a
    trajectory fit can save")."""

    def field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.cat(true_derivative(task, t, y[:, :1], y[:, 1:], torch.cos), -1)

    _, _, y0_test, _, times = trajectory_data(task)
    return odeint(field, y0_test, times).stats.nfe  # the library's defaults, as Regularized's


def table(out: Path, task: str, seeds: list[int], methods: list[str]) -> str:
    """Each method's mean (± the sample sd over seeds) and, beside it, its change against vanilla's
    on the same seeds (points of accuracy, or the mean of the per-seed ratios; docs/results.md's
    tables give the ratio of the seeds' means where they say so)."""
    runs = {
        method: [json.loads((out / f"{task}_{method}_s{seed}.json").read_text()) for seed in seeds]
        for method in methods
    }
    accuracy = runs["vanilla"][0]["metric"] == "accuracy"
    names = [name if name != "local" else "local (default)" for name in methods]
    header = "| | " + " | ".join(names[:1] + [f"{name} | vs vanilla" for name in names[1:]]) + " |"
    epochs = runs["vanilla"][0].get("epochs", SETTINGS[task]["epochs"])
    averaging = "vs vanilla: the mean of the per-seed ratios"
    averaging += "; accuracy: the change in points" if accuracy else ""
    lines = [f"{task} ({len(seeds)} seeds, {epochs} epochs; {averaging})", "", header]
    lines.append("|---" * (2 * len(methods)) + "|")
    for key, name in [
        ("test_metric", f"test {runs['vanilla'][0]['metric']}"),
        ("test_nfe", "test NFE"),
        ("train_time_s", "training time (s)"),
        ("final_weight", "final weight"),
    ]:
        cells = []
        vanilla = np.array([r[key] for r in runs["vanilla"]], float)
        for method in methods:
            values = np.array([r[key] for r in runs[method]], float)
            scale = 100 if accuracy and key == "test_metric" else 1
            if method == "vanilla" and key == "final_weight":
                cells.append("")
                continue
            mean, sd = _mean_sd(list(scale * values))  # the sample sd, as the report's tables
            cells.append(f"{mean:.4g} ± {sd:.2g}")
            if method == "vanilla":
                continue
            if key == "final_weight":
                cells.append("")
            elif scale == 100:
                cells.append(f"{100 * (values - vanilla).mean():+.2f} points")
            else:
                cells.append(f"{(values / vanilla).mean():.3f}x")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if task in TRAJECTORIES:
        lines += ["", f"The true dynamics' test NFE: {true_nfe(task)}."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/new_user"))
    parser.add_argument("--tasks", nargs="+", default=list(SETTINGS)[:3], choices=list(SETTINGS))
    parser.add_argument("--methods", nargs="+", default=["vanilla", "local"], type=method_name)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--init-scale", type=float, default=1.0, help="the field's last layer times this")
    parser.add_argument("--epochs", type=int, default=None, help="replaces every task's own")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    seeds = list(range(args.seeds))
    methods = ["vanilla", *(method for method in args.methods if method != "vanilla")]
    for task in args.tasks:
        for seed in seeds:
            for method in methods:
                path = args.out / f"{task}_{method}_s{seed}.json"
                if path.exists():
                    check_same_settings(path, args.epochs or SETTINGS[task]["epochs"], args.init_scale)
                    continue
                result = run(task, method, seed, init_scale=args.init_scale, epochs=args.epochs)
                # Whole or not at all: a run killed while writing must not read as finished.
                atomic_write_bytes(path, json.dumps(result, indent=1).encode("utf-8"))
                print(json.dumps({key: result[key] for key in SUMMARY}), flush=True)
        _echo(table(args.out, task, seeds, methods) + " \n")  # its ± escaped where stdout cannot show it


def check_same_settings(path: Path, epochs: int, init_scale: float) -> None:
    """Exit naming ``path`` if its run was trained with other ``--epochs`` or ``--init-scale``: the
    file name holds neither, so such runs belong in another ``--out`` (a file written before
    ``init_scale`` was recorded is taken as it is)."""
    try:
        recorded = json.loads(path.read_text())
    except json.JSONDecodeError as error:  # a run killed while an older version wrote it
        sys.exit(f"{path} is not a whole result ({error.msg}): delete it to train that run again")
    asked = {"epochs": epochs, "init_scale": init_scale}
    differs = [key for key in asked if key in recorded and recorded[key] != asked[key]]
    if differs:
        settings = ", ".join(f"{key}={recorded[key]} (asked: {asked[key]})" for key in differs)
        sys.exit(f"{path} was trained with {settings}: pass another --out for these settings")


SUMMARY = ("task", "method", "seed", "test_metric", "test_nfe", "train_time_s", "final_weight")


# The number in a method's name, as it is written: digits, at most one point, an optional exponent.
# Python's float() also takes "0_1" (read as 1), a sign, spaces, "inf" and other digits than 0-9.
PLAIN_NUMBER = re.compile(r"[0-9]+(\.[0-9]+)?(e-?[0-9]+)?")


def method_name(text: str) -> str:
    """``vanilla``, ``local``, ``floor`` followed by a fraction in [0, 1], ``target`` or ``flow``
    followed by a positive target, or ``fixed`` followed by a non-negative weight, each number
    written as a plain decimal (``0.1``, ``1e-3``). The name is kept as written: it names the
    result files (so ``fixed1`` and ``fixed1.0`` are two names, and two sets of files, of one weight)."""
    if text in ("vanilla", "local"):
        return text
    prefix = next((p for p in ("fixed", "target", "flow") if text.startswith(p)), "floor")
    digits = text.removeprefix(prefix)
    number = float(digits) if PLAIN_NUMBER.fullmatch(digits) else -1.0
    bounds = {"fixed": number >= 0, "target": number > 0, "flow": number > 0, "floor": 0 <= number <= 1}
    if not text.startswith(prefix) or not bounds[prefix] or not np.isfinite(number):
        expected = "vanilla, local, floorF (F in [0, 1]), targetT or flowT (T > 0), or fixedW (W >= 0)"
        raise argparse.ArgumentTypeError(
            f"method must be {expected}, its number a plain decimal such as 0.1 or 1e-3, got {text!r}"
        )
    return text


if __name__ == "__main__":
    main()
