"""Train and test one run, and sweep over methods and seeds with resume.

A *run* is one (task, method, seed, size, gradient, settings) combination; its ``run_id`` embeds a
hash of the resolved settings, so a run with other settings is a new run and never replaces a
recorded one. A sweep skips every run already in ``results.jsonl``; a run interrupted mid-way
continues from its last checkpoint (``checkpoints/<run_id>.pt``, written at the end of each epoch).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import hashlib
import io
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from . import distributed
from .methods import METHODS, weight_text
from .results import ResultsFile, atomic_write_bytes
from .tasks import REGISTRY, ModelContext, Task

SIZES = ("tiny", "quick", "full")
LOCAL_OPTIONS = ("probe", "probe_scale", "penalty", "n_draws", "step_size", "reg_method")
GRADIENTS = ("direct", "adjoint", "checkpoint", "symplectic")
# Prediction time is the fastest of this many passes over the test set: a single pass is at the
# mercy of whatever else the machine is doing.
TIMING_REPEATS = 10


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


@dataclass(frozen=True)
class RunSpec:
    """One run. ``overrides`` replace settings by dotted key (``{"solver.rtol": 1e-5}``)."""

    task: str
    method: str
    seed: int
    size: str = "quick"
    gradient: str = "direct"
    overrides: dict[str, Any] = field(default_factory=dict)

    def settings(self) -> dict[str, Any]:
        settings = copy.deepcopy(REGISTRY[self.task].settings(self.size))
        for key, value in self.overrides.items():
            *parents, leaf = key.split(".")
            if parents == ["local"]:
                # Options of the local regularizer: no task lists them, so any of them may be set.
                if leaf not in LOCAL_OPTIONS:
                    raise KeyError(f"{key!r} is not a local regularization option {LOCAL_OPTIONS}")
                settings.setdefault("local", {})[leaf] = value
                continue
            node = settings
            for parent in parents:
                node = node[parent]
            if leaf not in node:
                raise KeyError(f"task {self.task!r} has no setting {key!r}")
            node[leaf] = value
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
        if not self.method.startswith("local-"):
            return {}
        return dict(sorted(self.settings().get("local", {}).items()))

    @property
    def label(self) -> str:
        """The method's name, with its weight when that is not the task's default, and its local
        regularization options if any."""
        default = REGISTRY[self.task].settings(self.size).get("weights", {}).get(self.method)
        notes = [] if self.weight == default else [f"w={weight_text(self.weight)}"]
        notes += [f"{k}={v}" for k, v in self.local_options.items()]
        return f"{self.method} ({', '.join(notes)})" if notes else self.method

    @property
    def run_id(self) -> str:
        weight = "" if self.weight is None else f"-w{_digest(self.weight)[:6]}"
        local = f"-l{_digest(self.local_options)[:6]}" if self.local_options else ""
        return f"{self.task}-{self.method}-seed{self.seed}-{self.config_id}{weight}{local}"


def _digest(value: Any) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True).encode()).hexdigest()[:8]


def solver_blocks(model: nn.Module) -> list[nn.Module]:
    """The submodules that solve a differential equation: those with a ``stats`` attribute."""
    return [m for m in model.modules() if hasattr(m, "stats")]


def regularization_loss(model: nn.Module) -> Tensor | None:
    """Sum of the solver blocks' ``reg_loss`` of the last forward pass (already weighted)."""
    losses = [m.reg_loss for m in solver_blocks(model) if getattr(m, "reg_loss", None) is not None]
    return torch.stack(losses).sum() if losses else None


def solver_costs(model: nn.Module) -> dict[str, int]:
    """Function evaluations of the last forward (and backward) pass, summed over the solver blocks."""
    costs = {"nfe": 0, "reg_nfe": 0, "backward_nfe": 0}
    for block in solver_blocks(model):
        stats = block.stats
        if stats is None:  # not called yet
            continue
        costs["nfe"] += stats.nfe_main
        costs["reg_nfe"] += stats.nfe_reg
        costs["backward_nfe"] += stats.nfe_backward or 0
    return costs


def weight_schedules(model: nn.Module) -> list[Any]:
    """The weight schedules of the solver blocks (advanced once per optimizer step; their state is in
    the model's ``state_dict``)."""
    return [m.weight for m in solver_blocks(model) if hasattr(getattr(m, "weight", None), "step")]


def _batch_size(dataset: Dataset, wanted: int) -> int:
    return max(1, min(wanted, len(dataset)))


def evaluate(task: Task, model: nn.Module, dataset: Dataset, batch_size: int, repeats: int = 1) -> dict:
    """Batch-weighted metrics, mean test NFE per batch and the prediction time per batch (eval mode).

    The NFE is the main solve's, counted by the solver; eval mode means no regularization.
    """
    loader = DataLoader(dataset, batch_size=_batch_size(dataset, batch_size))
    model.eval()
    sums: dict[str, float] = {}
    nfe, n = 0, 0
    fastest = Clock(wall=float("inf"), cpu=float("inf"))
    with torch.no_grad():
        for repeat in range(repeats):
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
    result = {key: value / n for key, value in sums.items()}
    return {"metrics": result, "nfe": nfe / len(loader), "time_per_batch": fastest}


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())


def _load_checkpoint(path: Path) -> dict[str, Any] | None:
    """Rank 0 reads the checkpoint (if any) and every rank gets it."""
    state = None
    if distributed.is_main() and path.exists():
        state = torch.load(path, map_location="cpu", weights_only=False)
    return distributed.broadcast(state)


def train_run(spec: RunSpec, out_dir: Path, *, progress: bool = True) -> dict[str, Any]:
    """Train, test and return the run's record (rank 0's view under DDP)."""
    task = REGISTRY[spec.task]
    settings = spec.settings()
    world = distributed.world_size()
    torch.manual_seed(spec.seed)
    data = task.load_data(settings, spec.seed)
    # The batch size is global: each of the ``world`` processes takes its share.
    per_rank = max(1, settings["batch_size"] // world)
    sampler = DistributedSampler(
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
    history: dict[str, list[float]] = {k: [] for k in ("loss", "reg_loss", "nfe", "reg_nfe", "backward_nfe")}
    start_epoch, iteration, train_time = 0, 0, Clock()

    checkpoint_path = out_dir / "checkpoints" / f"{spec.run_id}.pt"
    state = _load_checkpoint(checkpoint_path)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        start_epoch, iteration, train_time, history = (
            state["epoch"],
            state["iteration"],
            Clock(**state["time"]),
            state["history"],
        )

    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model)

    bar = tqdm(
        total=total,
        initial=iteration,
        desc=f"{spec.task} {spec.method} seed {spec.seed}",
        disable=not (progress and distributed.is_main()),
        file=sys.stderr,
        dynamic_ncols=True,
    )
    for epoch in range(start_epoch, epochs):
        sampler.set_epoch(epoch)
        for batch in loader:
            with train_time.running():
                net.train()
                loss, metrics = task.training_loss(net, batch)
                # Read through the unwrapped model: DDP's wrapper does not forward attributes.
                reg = regularization_loss(model)
                optimizer.zero_grad(set_to_none=True)
                (loss if reg is None else loss + reg).backward()
                optimizer.step()
                costs = solver_costs(model)
                for schedule in schedules:
                    # A self-tuning weight adapts to what it measures; a fixed schedule ignores it.
                    schedule.observe(loss.item(), costs["nfe"])
                    schedule.step()
            iteration += 1
            history["loss"].append(loss.item())
            history["reg_loss"].append(0.0 if reg is None else reg.item())
            for key, value in costs.items():
                history[key].append(value)
            bar.set_postfix(
                {
                    "loss": f"{loss.item():.3g}",
                    **{k: f"{v:.3g}" for k, v in metrics.items()},
                    "nfe": costs["nfe"],
                },
                refresh=False,
            )
            bar.update()
        if distributed.is_main():
            _save_checkpoint(
                checkpoint_path,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "rng": torch.get_rng_state(),
                    "epoch": epoch + 1,
                    "iteration": iteration,
                    "time": dataclasses.asdict(train_time),
                    "history": history,
                },
            )
    bar.close()

    record: dict[str, Any] = {}
    if distributed.is_main():
        eval_batch = settings["eval_batch_size"]
        train_eval = evaluate(task, model, data.train, eval_batch)
        test_eval = evaluate(task, model, data.test, eval_batch, repeats=TIMING_REPEATS)
        record = {
            "run_id": spec.run_id,
            "task": spec.task,
            "method": spec.method,
            "seed": spec.seed,
            "size": spec.size,
            "gradient": spec.gradient,
            "config_id": spec.config_id,
            "weight": spec.weight,
            "local": spec.local_options,
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
            "torch": torch.__version__,
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
    distributed.barrier()
    return record


def _claim(lock: Path) -> bool:
    """Take the run's lock file for this process; ``False`` if a live process on this host holds it.

    Lets several sweeps share one output folder (e.g. two processes on a 2-core machine): each run
    is trained by whichever sweep claims it first. A lock left by a dead process is taken over.
    """
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                owner = int(lock.read_text() or "0")
                os.kill(owner, 0)
                return False
            except (ProcessLookupError, ValueError, FileNotFoundError):
                lock.unlink(missing_ok=True)  # stale: its process is gone
                continue
            except PermissionError:  # alive, owned by another user
                return False
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


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
    Runs that another sweep into the same folder is training are skipped too.
    """
    out_dir = Path(out_dir)
    results = ResultsFile(out_dir)
    new = []
    for seed in seeds:
        for method in methods:
            spec = RunSpec(task, method, seed, size, gradient, dict(overrides or {}))
            lock = out_dir / "checkpoints" / f"{spec.run_id}.lock"
            status = None
            if distributed.is_main():
                if spec.run_id in results.finished():
                    status = f"already in {results.path}"
                elif not _claim(lock):
                    status = "being trained by another process"
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
            finally:
                if distributed.is_main():
                    lock.unlink(missing_ok=True)
            distributed.barrier()
    return new
