"""Train and test one run, and sweep over methods and seeds with resume.

A *run* is one (task, method, seed, size, gradient, settings) combination; its ``run_id`` embeds a
hash of the resolved settings, so a run with other settings is a new run and never replaces a
recorded one. A sweep skips every run already in ``results.jsonl``; a run interrupted mid-way
continues from its last checkpoint (``checkpoints/<run_id>.pt``, written at the end of each epoch).
A checkpoint that cannot be read is moved aside (``<name>.corrupt-<n>``, never deleted) and its run
restarts. While a process trains a run it holds an exclusive ``flock`` on
``checkpoints/<run_id>.lock``, which the kernel releases when the process ends, however it ends.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import fcntl
import functools
import hashlib
import io
import json
import os
import sys
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from .. import __version__ as local_reg_version
from .._errors import SolverError
from ..regularization import (
    AdaptiveWeight,
    GradientRatio,
    LocalPenalty,
    RatioWeight,
    RegularizationStats,
    Regularized,
)
from ..regularization.local import default_fingerprint
from . import distributed
from .methods import DEFAULT_WEIGHT, METHODS, number_text, weight_text
from .results import ResultsFile, ResultsWarning, atomic_write_bytes, open_lock_file
from .settings import Integer, OneOf, Real, Rule, Schema, SettingsError, apply_overrides, check_settings
from .tasks import REGISTRY, ModelContext, Task
from .tasks.base import ODE_SOLVERS

SIZES = ("tiny", "quick", "full")
RATIO_EVERY = 10
"""Iterations between measurements of the penalty's gradient against the task's."""
RATIO_WARNING = 10.0
"""A measured ratio above this warns (once per run) that the regularizer dominates the training."""
LOCAL_RULES: dict[str, Rule] = {
    "probe": OneOf(LocalPenalty.PROBES),
    "probe_scale": Real(),
    "penalty": OneOf(LocalPenalty.PENALTIES),
    "n_draws": Integer(1),
    "step_size": OneOf(LocalPenalty.STEP_SIZES),
    "reg_method": OneOf(ODE_SOLVERS),
    "probe_dtype": OneOf(LocalPenalty.PROBE_DTYPES),
}
"""The ``local.*`` settings: options of the local regularizer (:class:`local_reg.LocalPenalty`)."""
# Prediction time is the fastest of this many passes over the test set: a single pass is at the
# mercy of whatever else the machine is doing.
TIMING_REPEATS = 10
STOP_REQUESTED = threading.Event()
"""Set with the ``KeyboardInterrupt`` that the command line's handler of Ctrl-C (SIGINT) and SIGTERM
raises: a signal that lands where Python drops exceptions (a ``__del__``, a weakref callback, which
only print "Exception ignored") still stops the run, at the end of its training iteration."""


@dataclass
class Clock:
    """Accumulated wall time and CPU time of this process.

    Both are recorded: wall time is what a user waits for, CPU time is what the computation costs,
    and only the latter stays meaningful when other jobs share the cores (with one torch thread per
    process the two agree on an idle machine).
    """

    wall: float = 0.0
    cpu: float = 0.0

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        self.wall += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu

    @contextlib.contextmanager
    def excluded(self) -> Iterator[None]:
        """Inside :meth:`running`: time spent here is not counted (a measurement the method itself
        does not need, so that its training time compares with vanilla's)."""
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        self.wall -= time.perf_counter() - wall
        self.cpu -= time.process_time() - cpu


@dataclass(frozen=True)
class RunSpec:
    """One run. ``overrides`` replace settings by dotted key (``{"solver.rtol": 1e-5}``)."""

    task: str
    method: str
    seed: int
    size: str = "quick"
    gradient: str = "direct"
    overrides: dict[str, Any] = field(default_factory=dict)
    processes: int = 1
    """Data-parallel processes (``torchrun``): part of the run's identity and row, since a run on
    several processes trains on other batches and times one process's share."""

    def settings(self) -> dict[str, Any]:
        """The size's settings with the overrides; raises :class:`.settings.SettingsError` naming a key
        that does not exist or a value its task's schema (or :data:`LOCAL_RULES`) does not allow.

        ``local.*`` keys set options of the local regularizer (:class:`local_reg.LocalPenalty`); no
        task lists them, so they live in a ``local`` group only when given."""
        task = REGISTRY[self.task]
        local = {k.split(".", 1)[1]: v for k, v in self.overrides.items() if k.startswith("local.")}
        others = {k: v for k, v in self.overrides.items() if not k.startswith("local.")}
        settings = apply_overrides(task.settings(self.size), others, self.task)
        check_settings(task.schema, settings)
        if local:
            unknown = sorted(set(local) - set(LOCAL_RULES))
            if unknown:
                raise SettingsError(f"unknown local.{unknown[0]}; local options: {', '.join(LOCAL_RULES)}")
            check_settings(Schema({"local": {k: LOCAL_RULES[k] for k in local}}), {"local": local})
            settings["local"] = local
        return settings

    @property
    def config_id(self) -> str:
        """Hash of everything but method, seed, regularization weights and local regularization
        options: the runs of one table (whose rows are the methods with their weights and options)."""
        settings = {k: v for k, v in self.settings().items() if k not in ("weights", "local")}
        return _digest({"size": self.size, "gradient": self.gradient, "settings": settings})

    @property
    def weight(self) -> Any:
        """The method's regularization weight spec (``None`` for vanilla)."""
        return self.settings().get("weights", {}).get(self.method)

    @property
    def local_options(self) -> dict[str, Any]:
        """The ``local.*`` options of a local method (``{}`` for the others or when none is set)."""
        if METHODS[self.method].family != "local":
            return {}
        return dict(sorted(self.settings().get("local", {}).items()))

    @property
    def label(self) -> str:
        """The method's name, with its weight when that is not the task's default (the library's
        default with its :func:`~local_reg.regularization.local.default_fingerprint`), and its local
        regularization options if any."""
        default = REGISTRY[self.task].settings(self.size).get("weights", {}).get(self.method)
        if self.weight == DEFAULT_WEIGHT:
            # Which version of the library's default: a folder's runs of an earlier one are another
            # row, not this one's.
            notes = [f"w={DEFAULT_WEIGHT} {default_fingerprint()}"]
        else:
            notes = [] if self.weight == default else [f"w={weight_text(self.weight)}"]
        notes += [f"{k}={v if isinstance(v, str) else number_text(v)}" for k, v in self.local_options.items()]
        notes += [f"{self.processes} processes"] if self.processes > 1 else []
        return f"{self.method} ({', '.join(notes)})" if notes else self.method

    @property
    def run_id(self) -> str:
        weight_spec = [self.weight, default_fingerprint()] if self.weight == DEFAULT_WEIGHT else self.weight
        weight = "" if self.weight is None else f"-w{_digest(weight_spec)[:6]}"
        local = f"-l{_digest(self.local_options)[:6]}" if self.local_options else ""
        processes = f"-p{self.processes}" if self.processes > 1 else ""
        return f"{self.task}-{self.method}-seed{self.seed}-{self.config_id}{weight}{local}{processes}"


def recorded_as(results: ResultsFile, spec: RunSpec) -> str | None:
    """The ``run_id`` under which ``spec``'s run is recorded in ``results``, or ``None``: its own, or
    that of a record of the same task, table, row and seed, whose settings were spelled otherwise
    (a weight ``1`` and ``1.0`` hash differently but are one row; a seed must not count twice)."""
    row = (spec.task, spec.config_id, spec.label, spec.seed)
    # The label leaves out a weight that is the task's default, which has changed between versions:
    # a record of another weight under the same label is another run.
    weight = json.loads(json.dumps(spec.weight))
    for record in results.load(warn=False):
        if record["run_id"] == spec.run_id:
            return record["run_id"]
        same_row = (record["task"], record["config_id"], record["label"], record["seed"]) == row
        if same_row and record.get("weight", weight) == weight:
            return record["run_id"]
    return None


def fed_ratio_weights(model: nn.Module, world: int) -> list[RatioWeight]:
    """The model's ratio weights that the runner feeds with the gradient norms it measures over the
    whole model (those not given their parameters; one given them, the library's default, measures
    by itself). That needs one regularized block on one process (the measurement's extra
    vector--Jacobian product would bypass DDP's gradient sync): otherwise a ``ValueError``."""
    fed = [s for s in weight_schedules(model) if isinstance(s, RatioWeight) and s.parameters is None]
    if fed and (world > 1 or len(fed) > 1):
        raise ValueError(
            "a ratio weight without its parameters measures the gradients of one regularized block on "
            f"one process: got {len(fed)} such weights on {world} processes (the library's default "
            "weight, 'default', measures by itself and runs under DDP)"
        )
    return fed


def _digest(value: Any) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True).encode()).hexdigest()[:8]


@functools.cache
def local_reg_source() -> str:
    """A hash of the sources of the local_reg that runs (the first 12 hex digits of a sha256 over
    each ``.py`` file's path in the package, its length and its bytes, in order of path), which
    tells two states of the code apart where its ``__version__``, never bumped, does not. Read from
    the files, not from git: an installed package has no repository."""
    package = Path(__file__).resolve().parents[1]
    sources = hashlib.sha256()
    for name in sorted(path.relative_to(package).as_posix() for path in package.rglob("*.py")):
        data = (package / name).read_bytes()
        sources.update(f"{name}\0{len(data)}\0".encode() + data)
    return sources.hexdigest()[:12]


def solver_blocks(model: nn.Module) -> list[nn.Module]:
    """The submodules that solve a differential equation: those with a ``stats`` attribute."""
    return [m for m in model.modules() if hasattr(m, "stats")]


def model_generators(model: nn.Module) -> list[torch.Generator]:
    """The ``torch.Generator`` objects the model's modules own (STEER's end times, RNODE's noise, a
    :class:`local_reg.Regularized` built with ``generator=``), each once, in module order: under DDP
    each process gives them streams of its own, as it does torch's global generator."""
    generators: dict[int, torch.Generator] = {}
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, torch.Generator):
                generators.setdefault(id(value), value)
    return list(generators.values())


def regularization_loss(model: nn.Module) -> Tensor | None:
    """Sum of the solver blocks' ``reg_loss`` of the last forward pass (already weighted), a plain
    :class:`local_reg.Regularized`'s (always zero) left out; ``None`` without any (so a vanilla
    model has no gradient ratio to measure: it recorded NaN)."""
    # A block's reg_loss is a 0-dim tensor or None (the tasks' contract, see .tasks), None left out.
    losses = [
        cast(Tensor, m.reg_loss)
        for m in solver_blocks(model)
        if getattr(m, "reg_loss", None) is not None and not (isinstance(m, Regularized) and m.penalty is None)
    ]
    return torch.stack(losses).sum() if losses else None


def solver_costs(model: nn.Module) -> dict[str, int]:
    """Function evaluations of the last forward (and backward) pass, summed over the solver blocks."""
    costs = {"nfe": 0, "reg_nfe": 0, "backward_nfe": 0}
    for block in solver_blocks(model):
        # The tasks' contract (see .tasks): a block's stats has RegularizationStats's fields, or is None.
        stats = cast("RegularizationStats | None", block.stats)
        if stats is None:  # a task's own block before its first call (the tasks' contract allows it)
            continue
        costs["nfe"] += stats.nfe_main
        costs["reg_nfe"] += stats.nfe_reg
        costs["backward_nfe"] += stats.nfe_backward or 0
    return costs


def weight_schedules(model: nn.Module) -> list[Any]:
    """The weight schedules of the solver blocks (advanced once per optimizer step; their state is in
    the model's ``state_dict``)."""
    return [m.weight for m in solver_blocks(model) if hasattr(getattr(m, "weight", None), "step")]


def _batch_size(items: Sized, wanted: int) -> int:
    return max(1, min(wanted, len(items)))


def evaluate(
    task: Task, model: nn.Module, dataset: Dataset, batch_size: int, repeats: int = 1, *, seed: int = 0
) -> dict:
    """Batch-weighted metrics, mean test NFE per batch and the prediction time per batch (eval mode).

    The NFE is the main solve's, counted by the solver; eval mode means no regularization. Each
    pass draws its noise (an SDE's Brownian paths) from torch's global stream and the model's own
    generators seeded by ``seed``, in a fork of them: every method of a seed is evaluated on noise
    of the same seed (Brownian paths coupled, not identical: docs/sde.md), and the streams are left
    where they were. (They stood where each method's
    training had left them: one SDE model's test error moved up to 2x with their position.)
    """
    # A task's datasets are map-style (TaskData), so they have the length torch's Dataset type leaves out.
    loader = DataLoader(dataset, batch_size=_batch_size(cast(Sized, dataset), batch_size))
    model.eval()
    sums: dict[str, float] = {}
    nfe, n = 0, 0
    fastest = Clock(wall=float("inf"), cpu=float("inf"))
    generators = model_generators(model)
    generator_states = [generator.get_state() for generator in generators]
    cuda = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=cuda):
            for repeat in range(repeats):
                # The streams fork_rng restores only (torch.manual_seed would seed every GPU's).
                torch.default_generator.manual_seed(seed)
                for index in cuda:
                    with torch.cuda.device(index):
                        torch.cuda.manual_seed(seed)
                for generator in generators:
                    generator.manual_seed(seed)
                clock = Clock()
                for batch in loader:
                    with clock.running():
                        metrics = task.evaluate(model, batch)
                    if repeat == 0:
                        size = len(batch[0])
                        n += size
                        nfe += solver_costs(model)["nfe"]
                        for key, value in metrics.items():
                            sums[key] = sums.get(key, 0.0) + value * size
                fastest.wall = min(fastest.wall, clock.wall / len(loader))
                fastest.cpu = min(fastest.cpu, clock.cpu / len(loader))
    finally:
        for generator, state in zip(generators, generator_states, strict=True):
            generator.set_state(state)
    result = {key: value / n for key, value in sums.items()}
    return {"metrics": result, "nfe": nfe / len(loader), "time_per_batch": fastest}


class RunsFailed(Exception):
    """Runs of a sweep whose solver failed (a diverging fit: ``SolverError``), raised once the sweep
    has trained every other run. ``failures``: ``(run_id, error)`` pairs."""

    def __init__(self, failures: list[tuple[str, Exception]]) -> None:
        self.failures = failures
        super().__init__(
            f"{len(failures)} run(s) failed, each said why above (the others are recorded; a rerun "
            f"retries these from their last checkpoint): {', '.join(run_id for run_id, _ in failures)}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # An exception pickles as type(self)(*self.args), which this one's message is not: a sweep
        # run in a worker process (multiprocessing) must come back to its parent.
        return type(self), (self.failures,)


class Interrupted(KeyboardInterrupt):
    """A stop (Ctrl-C, SIGTERM) while a run was training: which run, and how much of it its
    checkpoint holds.

    Attributes:
        run_id: the run that was interrupted.
        checkpoint: its checkpoint file (``None`` when it had not finished an epoch yet).
        epoch: epochs in the checkpoint (0 when none).
        epochs: epochs the run trains in all.
    """

    def __init__(self, run_id: str, checkpoint: Path | None, epoch: int, epochs: int):
        super().__init__(run_id)
        self.run_id, self.checkpoint, self.epoch, self.epochs = run_id, checkpoint, epoch, epochs

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.run_id, self.checkpoint, self.epoch, self.epochs)  # as RunsFailed's


CHECKPOINT_KEYS = ("model", "optimizer", "rng", "epoch", "iteration", "time", "history")


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())


def set_aside(path: Path, reason: str) -> Path:
    """Rename an unusable file to ``<name>.corrupt-<n>`` (the first free ``n``) with a warning; never
    deletes it, so that it can still be inspected (or recovered by hand)."""
    n = 1
    while (aside := path.with_name(f"{path.name}.corrupt-{n}")).exists():
        n += 1
    os.replace(path, aside)
    warnings.warn(
        f"checkpoint {path} cannot be used ({reason}); moved to {aside.name}, its run restarts",
        ResultsWarning,
        stacklevel=2,
    )
    return aside


def _error_text(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200] if lines else ''}"


def _load_checkpoint(path: Path) -> dict[str, Any] | None:
    """Rank 0 reads the checkpoint (if any) and every rank gets it; an unreadable one is set aside.

    ``weights_only`` loading: a checkpoint holds tensors and plain containers only, and a file in the
    results folder should not be able to run code when read.
    """
    state = None
    if distributed.is_main() and path.exists():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        # Truncated files, garbage and foreign pickles fail in many ways (RuntimeError from the zip
        # reader, UnpicklingError, EOFError, ...): any of them makes the file unusable. Torch's own
        # message is not repeated: for a garbage file it advises loading it with weights_only=False.
        except PermissionError:
            raise  # a good checkpoint this process may not read: named by the CLI, not set aside
        except Exception as error:
            set_aside(path, f"not a readable checkpoint, truncated or corrupt: {type(error).__name__}")
            state = None
        else:
            if not isinstance(state, dict) or any(key not in state for key in CHECKPOINT_KEYS):
                set_aside(path, f"not a checkpoint: expected the keys {list(CHECKPOINT_KEYS)}")
                state = None
    return distributed.broadcast(state)


def _empty_history() -> dict[str, list]:
    """What a run records as it trains (saved in its checkpoints and its record)."""
    history: dict[str, list] = {k: [] for k in ("loss", "reg_loss", "nfe", "reg_nfe", "backward_nfe")}
    # [iteration, ||grad reg_loss|| / ||grad task loss||] and [iteration, weight of each schedule]
    # every RATIO_EVERY iterations (.._diagnostics).
    history["grad_ratio"], history["weight"] = [], []
    return history


class _GradientMeasurement:
    """The ratio of the regularizer's gradient to the task's: measured every RATIO_EVERY iterations
    (a diagnostic, kept out of the training time) and whenever a ratio weight fed from here is due.
    ``backward_nfe``: the evaluations the last measurement made (the penalty's gradient runs the
    main solve's backward pass where the penalty reads the solution: global, RNODE, TayNODE), which
    the iteration's recorded backward NFE leaves out, as :attr:`RegularizationStats.nfe_backward`
    does a measuring weight's."""

    def __init__(self, spec: RunSpec, model: nn.Module, world: int) -> None:
        self.spec = spec
        self.model = model
        self.world = world
        self.backward_nfe = 0
        schedules = weight_schedules(model)
        self.tuned = [s for s in schedules if isinstance(s, RatioWeight)]
        self.ratio_weights = fed_ratio_weights(model, world)
        self.overall = GradientRatio(model.parameters())
        # A ratio weight of scope "field" compares the gradients on its vector field's parameters only.
        self.for_weight = self.overall
        if self.ratio_weights and isinstance(spec.weight, dict) and spec.weight.get("scope") == "field":
            (block,) = [m for m in solver_blocks(model) if m.weight is self.ratio_weights[0]]
            self.for_weight = GradientRatio(block.get_submodule("func").parameters())
        self.warned = False
        self.active = False
        self.recording = False

    def before_backward(self, reg: Tensor | None, iteration: int, train_time: Clock) -> None:
        self.recording = iteration % RATIO_EVERY == 0
        due = any(weight.due for weight in self.ratio_weights)
        # Not under DDP: the extra vector-Jacobian product would bypass its gradient sync.
        self.active = reg is not None and self.world == 1 and (self.recording or due)
        self.backward_nfe = 0
        if reg is None or not self.active:
            return
        before = solver_costs(self.model)["backward_nfe"]
        # Only a ratio weight fed from here needs the measurement; the recorded ratio alone is a
        # diagnostic, kept out of the training time.
        with train_time.excluded() if not due else contextlib.nullcontext():
            self.overall.before_backward(reg)
            if self.for_weight is not self.overall:
                self.for_weight.before_backward(reg)
        self.backward_nfe = solver_costs(self.model)["backward_nfe"] - before

    def after_backward(self, iteration: int, history: dict[str, list]) -> None:
        if not self.active:
            return
        ratio = self.overall.after_backward()
        if self.for_weight is not self.overall:
            self.for_weight.after_backward()
        for weight in self.ratio_weights:
            weight.observe_gradients(self.for_weight.penalty_norm, self.for_weight.task_norm)
        if not self.recording:
            return
        history["grad_ratio"].append([iteration, ratio])
        # A ratio weight sets its own strength: the warning is for fixed ones.
        if ratio > RATIO_WARNING and not self.warned and not self.tuned:
            self.warned = True
            warnings.warn(
                f"run {self.spec.run_id}: the regularizer's gradient is {ratio:.3g}x the task's "
                f"at iteration {iteration}: it, not the task, steers the training; "
                "consider a smaller weight",
                ResultsWarning,
                stacklevel=1,
            )


def _resume(
    checkpoint_path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, run_id: str | None = None
) -> tuple[int, int, Clock, dict[str, list], Tensor | None, list[Tensor] | None] | None:
    """``(epoch, iteration, train_time, history, rank_rng, rank_generators)`` from the run's
    checkpoint, its model (with rank 0's generators), optimizer and (rank 0's) RNG states loaded;
    ``rank_rng`` and ``rank_generators`` are this process's own global generator state and the states
    of its :func:`model_generators` under DDP (``None`` on rank 0, or when the checkpoint was written
    by another number of processes or before it held them). ``None`` (and nothing loaded) when there
    is none, or it is of another model or (where it names one) of another run than ``run_id``: a
    file moved to this run's name, whose weights a model of the same shapes would load silently."""
    state = _load_checkpoint(checkpoint_path)
    if state is None:
        return None
    fresh = (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()), torch.get_rng_state())
    try:
        written_for = state.get("run_id", run_id)
        if run_id is not None and written_for != run_id:
            raise ValueError(f"written for the run {written_for}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        history = state["history"]
        history.setdefault("grad_ratio", [])
        history.setdefault("weight", [])
        rank, world = distributed.rank(), distributed.world_size()
        ranks = state.get("rng_ranks") or []
        rank_rng = ranks[rank] if 0 < rank < len(ranks) == world else None
        generators = state.get("generator_ranks") or []
        # Checked on every rank (all read the same checkpoint), so that all of them restart together.
        expected = len(model_generators(model))
        if any(len(states) != expected for states in generators):
            raise ValueError("the checkpoint's generator states are not those of this model's generators")
        rank_generators = generators[rank] if 0 < rank < len(generators) == world else None
        return (
            int(state["epoch"]),
            int(state["iteration"]),
            Clock(**state["time"]),
            history,
            rank_rng,
            rank_generators,
        )
    # A checkpoint of another model (e.g. written by an older version of a task) cannot resume
    # this run: start it afresh, exactly as if there had been no checkpoint.
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as error:
        model.load_state_dict(fresh[0])
        optimizer.load_state_dict(fresh[1])
        torch.set_rng_state(fresh[2])
        if distributed.is_main():
            set_aside(checkpoint_path, _error_text(error))
        return None


def _progress(loss: Tensor, metrics: dict, costs: dict, history: dict, tuned: list) -> dict[str, str]:
    """The progress bar's fields after one iteration."""
    return {
        "loss": f"{loss.item():.3g}",
        **{k: f"{v:.3g}" for k, v in metrics.items()},
        "nfe": costs["nfe"],
        **({"grad_ratio": f"{history['grad_ratio'][-1][1]:.3g}"} if history["grad_ratio"] else {}),
        # The weight a ratio weight has chosen (the first block's, if several).
        **({"w": f"{tuned[0]():.3g}"} if tuned else {}),
    }


def rank_seed(seed: int, rank: int, iteration: int, generator_index: int | None = None) -> int:
    """The seed of a process other than rank 0 under DDP (see :func:`train_run`): of torch's global
    generator, or with ``generator_index`` of the model's generator of that index in
    :func:`model_generators`."""
    key = f"{seed}/{rank}/{iteration}" + ("" if generator_index is None else f"/generator{generator_index}")
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def start_rank_streams(
    seed: int,
    rank: int,
    iteration: int,
    generators: list[torch.Generator],
    rng_state: Tensor | None,
    generator_states: list[Tensor] | None,
) -> None:
    """The random streams of a process other than rank 0 under DDP: torch's global generator and the
    model's own (:func:`model_generators`) continue from this process's checkpointed states, or,
    without them, start from seeds of the run's seed, the rank, the iteration and which generator.

    Per-sample noise (an SDE's Brownian motion, a VAE's eps, the sampled t_reg, RNODE's Rademacher
    noise) must differ between the processes as it differs between the rows of one process's batch:
    every rank seeded alike gave its rows the noise of rank 0's. That goes for the model's own
    generators too, which every rank builds alike (so STEER draws an end time per process's share).
    Rank 0 keeps the single-process streams. Every rank's states are in the checkpoints (the
    model's ``state_dict`` holds rank 0's generators only), so a resumed run continues each stream
    where it stopped."""
    if rng_state is None:
        torch.manual_seed(rank_seed(seed, rank, iteration))
    else:
        torch.set_rng_state(rng_state)
    if generator_states is None:
        for index, generator in enumerate(generators):
            generator.manual_seed(rank_seed(seed, rank, iteration, index))
    else:
        for generator, state in zip(generators, generator_states, strict=True):
            generator.set_state(state)


def train_run(spec: RunSpec, out_dir: Path, *, progress: bool = True) -> dict[str, Any]:
    """Train, test and return the run's record (rank 0's view under DDP)."""
    task = REGISTRY[spec.task]
    settings = spec.settings()
    world = distributed.world_size()
    torch.manual_seed(spec.seed)
    data = task.load_data(settings, spec.seed)
    # The batch size is global: each of the ``world`` processes takes its share.
    per_rank = max(1, settings["batch_size"] // world)
    sampler: DistributedSampler[int] = DistributedSampler(
        data.train, num_replicas=world, rank=distributed.rank(), shuffle=True, seed=spec.seed, drop_last=True
    )
    loader = DataLoader(
        data.train, batch_size=_batch_size(sampler, per_rank), sampler=sampler, drop_last=True
    )
    epochs = settings["epochs"]
    total = epochs * len(loader)
    model = task.build_model(settings, ModelContext(METHODS[spec.method], spec.gradient, total))
    optimizer = torch.optim.Adam(
        model.parameters(), lr=settings["lr"], weight_decay=settings.get("weight_decay", 0.0)
    )
    schedules = weight_schedules(model)
    # Self-tuning weights measure on each process's batch: under DDP every process takes rank 0's.
    synced = [s for s in schedules if isinstance(s, (RatioWeight, AdaptiveWeight))] if world > 1 else []
    measurement = _GradientMeasurement(spec, model, world)
    start_epoch, iteration, train_time, history = 0, 0, Clock(), _empty_history()

    checkpoint_path = out_dir / "checkpoints" / f"{spec.run_id}.pt"
    resumed = _resume(checkpoint_path, model, optimizer, spec.run_id)
    rank_rng = rank_generators = None
    if resumed is not None:
        start_epoch, iteration, train_time, history, rank_rng, rank_generators = resumed
    generators = model_generators(model)

    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model)
        if distributed.rank() > 0:
            start_rank_streams(
                spec.seed, distributed.rank(), iteration, generators, rank_rng, rank_generators
            )

    bar = tqdm(
        total=total,
        initial=iteration,
        desc=f"{spec.task} {spec.method} seed {spec.seed}",
        disable=not (progress and distributed.is_main()),
        file=sys.stderr,
        dynamic_ncols=True,
    )
    saved = start_epoch  # epochs in the checkpoint
    record: dict[str, Any] = {}
    try:
        for epoch in range(start_epoch, epochs):
            sampler.set_epoch(epoch)
            for batch in loader:
                with train_time.running():
                    net.train()
                    loss, metrics = task.training_loss(net, batch)
                    # Read through the unwrapped model: DDP's wrapper does not forward attributes.
                    reg = regularization_loss(model)
                    optimizer.zero_grad(set_to_none=True)
                    measurement.before_backward(reg, iteration, train_time)
                    (loss if reg is None else loss + reg).backward()
                    measurement.after_backward(iteration, history)
                    optimizer.step()
                    costs = solver_costs(model)
                    costs["backward_nfe"] -= measurement.backward_nfe
                    if schedules and measurement.recording:
                        history["weight"].append([iteration, *(schedule() for schedule in schedules)])
                    for schedule in schedules:
                        # A self-tuning weight adapts to what it measures; a fixed schedule ignores it.
                        schedule.observe(loss.item(), costs["nfe"])
                        schedule.step()
                    for schedule in synced:
                        schedule.load_state_dict(distributed.broadcast(schedule.state_dict()))
                iteration += 1
                history["loss"].append(loss.item())
                history["reg_loss"].append(0.0 if reg is None else reg.item())
                for key, value in costs.items():
                    history[key].append(value)
                bar.set_postfix(_progress(loss, metrics, costs, history, measurement.tuned), refresh=False)
                bar.update()
                if STOP_REQUESTED.is_set():
                    raise KeyboardInterrupt
            rng_ranks = generator_ranks = None
            if world > 1:
                rng_ranks = distributed.gather(torch.get_rng_state())
                generator_ranks = distributed.gather([generator.get_state() for generator in generators])
            if distributed.is_main():
                _save_checkpoint(
                    checkpoint_path,
                    {
                        "run_id": spec.run_id,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "rng": torch.get_rng_state(),
                        **({"rng_ranks": rng_ranks} if rng_ranks is not None else {}),
                        **({"generator_ranks": generator_ranks} if generator_ranks is not None else {}),
                        "epoch": epoch + 1,
                        "iteration": iteration,
                        "time": dataclasses.asdict(train_time),
                        "history": history,
                    },
                )
            saved = epoch + 1
        bar.close()
        if distributed.is_main():
            record = _run_record(spec, task, model, data, settings, world, train_time, iteration, history)
    except KeyboardInterrupt:
        raise Interrupted(spec.run_id, checkpoint_path if saved else None, saved, epochs) from None
    finally:
        bar.close()
    distributed.barrier()
    return record


def _run_record(
    spec: RunSpec,
    task: Any,
    model: nn.Module,
    data: Any,
    settings: dict[str, Any],
    world: int,
    train_time: Clock,
    iteration: int,
    history: dict[str, list],
) -> dict[str, Any]:
    """The trained run's record: its settings, train and test evaluation, costs and history."""
    eval_batch = settings["eval_batch_size"]
    train_eval = evaluate(task, model, data.train, eval_batch, seed=spec.seed)
    test_eval = evaluate(task, model, data.test, eval_batch, repeats=TIMING_REPEATS, seed=spec.seed)
    return {
        "run_id": spec.run_id,
        "task": spec.task,
        "method": spec.method,
        "seed": spec.seed,
        "size": spec.size,
        "gradient": spec.gradient,
        "config_id": spec.config_id,
        "weight": spec.weight,
        "local": spec.local_options,
        # What the library resolved the settings to (a weight spec "default" means the
        # library's default of the day): each regularized block's penalty and final weight.
        "blocks": [
            {"penalty": repr(block.penalty), "weight": repr(block.weight)}
            for block in solver_blocks(model)
            if getattr(block, "penalty", None) is not None
        ],
        "label": spec.label,
        "settings": settings,
        "world_size": world,
        "metric": task.metric,
        "higher_is_better": task.higher_is_better,
        "train": train_eval["metrics"],
        "test": test_eval["metrics"],
        "test_nfe": test_eval["nfe"],
        "predict_time": test_eval["time_per_batch"].wall,
        "predict_cpu_time": test_eval["time_per_batch"].cpu,
        "train_time": train_time.wall,
        "train_cpu_time": train_time.cpu,
        "iterations": iteration,
        "history": history,
        # What wrote it (versions, local_reg's sources): a table may mix runs of several (the report says so).
        "local_reg": local_reg_version,
        "local_reg_source": local_reg_source(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),  # the times depend on it (--threads)
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


class RunLock:
    """An exclusive claim on one run: an ``flock`` on ``checkpoints/<run_id>.lock``.

    Lets several sweeps share one output folder (e.g. two processes on a 2-core machine): each run is
    trained by whichever sweep claims it first. The kernel drops the lock when its process ends, however
    it ends (a crash, SIGKILL, a container restart), so a lock can never outlive its holder, and no
    process ids are compared (a reused id cannot make a dead holder look alive). The file holds the
    holder's pid for people only. ``flock`` needs a local file system (or an NFS that supports it).
    """

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock without waiting; ``False`` when another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = open_lock_file(self.path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            # The previous holder unlinks the file before releasing it: if that happened after our
            # open, we hold a lock on a file no one else can see; lock the one at the path instead.
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            mine = os.fstat(fd)
            if current is not None and (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
                with contextlib.suppress(OSError):  # the pid is for people; a read-only file keeps none
                    os.ftruncate(fd, 0)
                    os.write(fd, f"{os.getpid()}\n".encode())
                self._fd = fd
                return True
            os.close(fd)

    def release(self) -> None:
        """Remove the lock file and drop the lock (unlinked first, while still held: see :meth:`acquire`)."""
        if self._fd is None:
            return
        # Another user's file in a sticky folder stays; it is locked by inode, so that is harmless.
        with contextlib.suppress(PermissionError):
            self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None


def sweep(
    task: str,
    methods: Iterable[str],
    seeds: Iterable[int],
    out_dir: str | Path,
    *,
    size: str = "quick",
    gradient: str = "direct",
    overrides: dict[str, Any] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run every (seed, method) not yet recorded in ``out_dir/results.jsonl``; return the new records.

    Seeds are the outer loop, so an interrupted sweep has whole comparisons for the seeds it finished.
    Runs that another sweep into the same folder is training are skipped too. A run whose solver
    fails (``SolverError``: a fit that diverged) is left unrecorded and the sweep goes on; at its end
    :class:`RunsFailed` names them (under torchrun the error is raised at once, on every process).
    """
    out_dir = Path(out_dir)
    results = ResultsFile(out_dir)
    if distributed.is_main() and results.path.parent.is_dir():
        results.check_writable()  # before training, as the command line does
    new = []
    failures: list[tuple[str, Exception]] = []
    for seed in seeds:
        for method in methods:
            spec = RunSpec(
                task, method, seed, size, gradient, dict(overrides or {}), distributed.world_size()
            )
            lock = RunLock(out_dir / "checkpoints" / f"{spec.run_id}.lock")
            status = None
            if distributed.is_main():
                if (recorded := recorded_as(results, spec)) is not None:
                    status = f"already in {results.path}" + (
                        f" as {recorded}" if recorded != spec.run_id else ""
                    )
                    # A sweep stopped between recording the run and removing its checkpoint left
                    # the checkpoint behind: remove it, unless another process holds the run.
                    checkpoint = out_dir / "checkpoints" / f"{spec.run_id}.pt"
                    if checkpoint.exists() and lock.acquire():
                        checkpoint.unlink(missing_ok=True)
                        lock.release()
                elif not lock.acquire():
                    status = "being trained by another process"
                elif (recorded := recorded_as(results, spec)) is not None:
                    # Another sweep recorded it and let go between our check and our claim.
                    lock.release()
                    status = f"already in {results.path}"
            status = distributed.broadcast(status)
            if status is not None:
                if distributed.is_main():
                    print(f"skip {spec.run_id}: {status}", file=sys.stderr)
                continue
            try:
                record = train_run(spec, out_dir, progress=progress)
                if distributed.is_main():
                    results.append(record)
                    (out_dir / "checkpoints" / f"{spec.run_id}.pt").unlink(missing_ok=True)
                    new.append(record)
            except SolverError as error:
                if distributed.world_size() > 1:
                    raise  # the other processes may still be inside the run: no one goes on alone
                print(f"local-reg: run {spec.run_id} failed, the sweep goes on: {error}", file=sys.stderr)
                failures.append((spec.run_id, error))
                continue
            finally:
                if distributed.is_main():
                    lock.release()
            distributed.barrier()
    if failures:
        raise RunsFailed(failures)
    return new
