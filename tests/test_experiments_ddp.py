"""Data-parallel training: two CPU processes under torchrun (gloo) through the unchanged CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from local_reg import LocallyRegularized, Regularized, RNODERegularized, SteerRegularized
from local_reg.experiments import runner
from local_reg.experiments.results import ResultsFile
from local_reg.regularization.local import default_fingerprint

# Runs in each process: the CLI as a user would call it (its methods and settings are the worker's
# arguments after the output folder and how it stops: "whole", "interrupt" or "sigterm"), plus a
# hook that keeps the model so the test can compare the ranks' parameters afterwards.
WORKER = """
import copy
import os
import signal
import sys
import time
from pathlib import Path

import torch

from local_reg.experiments.cli import main
from local_reg.experiments.tasks import REGISTRY

out = Path(sys.argv[1])
options = sys.argv[3:]
rank = int(os.environ["RANK"])
task = REGISTRY["digits"]
built = []
initial = []
build = task.build_model


def keep(settings, context):
    built.append(build(settings, context))
    initial.append(copy.deepcopy(built[-1].state_dict()))
    return built[-1]


task.build_model = keep
calls = []
after_training = []
train = type(task).training_loss


def training_loss(self, model, batch):
    calls.append(1)
    if sys.argv[2] == "interrupt" and len(calls) > 2:
        # Ctrl-C in the second epoch (tiny digits: two iterations per epoch), after one checkpoint.
        raise KeyboardInterrupt
    if sys.argv[2] == "sigterm" and len(calls) == 3:
        # A job scheduler's stop at the same point: SIGTERM to torchrun, which forwards it to every
        # process, each waiting here for it (not inside a collective, which the others never join).
        if rank == 0:
            os.kill(os.getppid(), signal.SIGTERM)
        time.sleep(120)
    loss = train(self, model, batch)
    # The global generator as training leaves it, where per-sample noise comes from: main() puts
    # back the one it found when it returns.
    after_training.append(torch.get_rng_state())
    return loss


type(task).training_loss = training_loss
code = main(["experiment", "digits", *options, "--seeds", "1", "--size", "tiny", "--set", "epochs=2",
             "--out", str(out), "--no-progress"])
if code:
    sys.exit(code)
# The last model built is the one trained (the CLI builds one first to validate the arguments).
torch.save(initial[-1], out / f"initial_rank{rank}.pt")
torch.save(built[-1].state_dict(), out / f"params_rank{rank}.pt")
# The global generator's next draws after training.
torch.set_rng_state(after_training[-1])
torch.save(torch.rand(4), out / f"noise_rank{rank}.pt")
# The states of the model's own generators (RNODE's noise, STEER's end times): every
# torch.Generator attribute of its modules.
generators = [v for m in built[-1].modules() for v in vars(m).values() if isinstance(v, torch.Generator)]
torch.save([g.get_state() for g in generators], out / f"generators_rank{rank}.pt")
sys.exit(code)
"""
LOCAL_RANDOM = ("--methods", "local-random", "--set", "weights.local-random=default")
# RNODE's Rademacher noise comes from the model's own generator, not torch's global one.
RNODE = ("--methods", "rnode")
ROOT = Path(__file__).resolve().parents[1]


def torchrun(out: Path, *options: str, stop: str = "whole") -> subprocess.CompletedProcess:
    """The worker in two processes running the CLI with ``options``, writing to ``out``; ``stop``:
    how the run ends (see ``WORKER``)."""
    script = out.parent / "worker.py"
    script.write_text(WORKER)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        # A rendezvous on a port the agent binds itself: a free port picked here could be taken
        # by another process before torchrun bound it. On the loopback address: by default the
        # agent names its store by the machine's hostname, which some machines cannot resolve.
        "--standalone",
        "--local-addr=127.0.0.1",
        str(script),
        str(out),
        stop,
        *options,
    ]
    # A process that aborts in native code (gloo's teardown) prints where it was.
    # The processes import this checkout's local_reg, not whichever the environment installed.
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    # stdin: not the test process's, which under pytest-xdist is the worker's command channel.
    process = subprocess.Popen(
        command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = process.communicate(timeout=180)
    except BaseException:
        # A hang (the timeout), pytest-timeout's alarm or Ctrl-C: torchrun forwards SIGTERM to its
        # workers, which run in sessions of their own; killed outright it left them retrying its
        # store for the better part of an hour.
        process.terminate()
        try:
            process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def failure(result: subprocess.CompletedProcess) -> str:
    """What a failed run printed: from a process's fatal error on (faulthandler's stacks, which the
    list of extension modules after them would push out of the end), else the end."""
    start = result.stderr.find("Fatal Python error")
    return result.stderr[start : start + 6000] if start >= 0 else result.stderr[-3000:]


def trained(tmp_path_factory, name: str, options: tuple[str, ...]) -> Path:
    """A finished two-process run of the worker with ``options``, in a folder of its own."""
    out = tmp_path_factory.mktemp(name) / "results"
    done = torchrun(out, *options)
    assert done.returncode == 0, failure(done)
    return out


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    return trained(tmp_path_factory, "ddp", LOCAL_RANDOM)


def test_two_processes_keep_identical_parameters_and_weights_and_record_once(uninterrupted):
    out = uninterrupted

    (record,) = ResultsFile(out).load()
    assert record["world_size"] == 2 and record["iterations"] == 4
    # Its own row and run: two processes train on other batches than one.
    assert (
        record["run_id"].endswith("-p2")
        and record["label"] == f"local-random (w=default {default_fingerprint()}, 2 processes)"
    )
    assert (out / "report.md").exists()
    rank0 = torch.load(out / "params_rank0.pt")
    rank1 = torch.load(out / "params_rank1.pt")
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        if isinstance(rank0[name], torch.Tensor):
            assert torch.equal(rank0[name], rank1[name]), name
    # The self-tuning weight (the library's default) measures on each process's batch; every
    # process takes rank 0's, so the weights (in the model's extra state) agree too.
    states = [name for name in rank0 if name.endswith("_extra_state")]
    assert states and all(rank0[name] == rank1[name] for name in states)
    # ... and training moved them: the ranks agree because gradients were averaged, not by accident.
    initial = torch.load(out / "initial_rank0.pt")
    assert any(not torch.equal(initial[k], rank0[k]) for k in rank0 if isinstance(rank0[k], torch.Tensor))
    # Per-sample noise (an SDE's Brownian motion, a VAE's eps) differs between the processes, as
    # between the rows of one batch: every rank seeded alike drew rank 0's.
    assert not torch.equal(torch.load(out / "noise_rank0.pt"), torch.load(out / "noise_rank1.pt"))


@pytest.mark.parametrize("stop", ["interrupt", "sigterm"])
def test_an_interrupted_run_resumes_every_process_exactly_where_it_stopped(tmp_path, uninterrupted, stop):
    # Each process's own noise stream is in the checkpoint: rank 1's used to restart from a seed
    # derived from the iteration, so a resumed run drew other t_reg than the uninterrupted one.
    out = tmp_path / "results"
    interrupted = torchrun(out, *LOCAL_RANDOM, stop=stop)
    assert interrupted.returncode != 0 and list((out / "checkpoints").glob("*.pt"))
    assert not (out / "results.jsonl").exists()
    if stop == "sigterm":
        # Every process stops as at Ctrl-C rather than dying on the spot: one line, from rank 0,
        # and the run's lock released on the way out.
        (line,) = [line for line in interrupted.stderr.splitlines() if line.startswith("local-reg:")]
        assert not list((out / "checkpoints").glob("*.lock"))
        assert line.startswith("local-reg: interrupted by SIGTERM: run ") and "saved at epoch 1 of 2" in line
        assert "resume with: torchrun --nproc_per_node=2 -m local_reg.experiments experiment digits" in line
    resumed = torchrun(out, *LOCAL_RANDOM)
    assert resumed.returncode == 0, failure(resumed)
    (record,) = ResultsFile(out).load()
    (whole,) = ResultsFile(uninterrupted).load()
    assert record["history"]["loss"] == whole["history"]["loss"]
    for rank in (0, 1):
        assert torch.equal(
            torch.load(out / f"noise_rank{rank}.pt"), torch.load(uninterrupted / f"noise_rank{rank}.pt")
        )
        params, expected = (torch.load(folder / f"params_rank{rank}.pt") for folder in (out, uninterrupted))
        for name, value in expected.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(params[name], value), name


@pytest.fixture(scope="module")
def rnode(tmp_path_factory) -> Path:
    return trained(tmp_path_factory, "ddp-rnode", RNODE)


def test_a_models_own_generator_draws_other_noise_on_each_process(rnode):
    # RNODE's noise is per sample: rank 1's rows must not get the noise of rank 0's, as the rows of
    # one batch do not share theirs. Every rank builds the model alike, so its generator used to be
    # seeded alike (and draw alike) on every process.
    (record,) = ResultsFile(rnode).load()
    assert record["world_size"] == 2 and record["iterations"] == 4
    rank0, rank1 = (torch.load(rnode / f"generators_rank{rank}.pt") for rank in (0, 1))
    assert len(rank0) == len(rank1) == 1
    assert not torch.equal(rank0[0], rank1[0])
    # The parameters still agree: the noise differs, the averaged gradients do not.
    params0, params1 = (torch.load(rnode / f"params_rank{rank}.pt") for rank in (0, 1))
    for name, value in params0.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(params1[name], value), name


def test_an_interrupted_run_resumes_every_processs_model_generators(tmp_path, rnode):
    # Checkpoints are written by rank 0, and the model's state_dict holds its generators: without
    # every rank's states in the checkpoint, rank 1 would resume with rank 0's.
    out = tmp_path / "results"
    interrupted = torchrun(out, *RNODE, stop="interrupt")
    assert interrupted.returncode != 0
    (checkpoint,) = (out / "checkpoints").glob("*.pt")
    assert len(torch.load(checkpoint)["generator_ranks"]) == 2
    resumed = torchrun(out, *RNODE)
    assert resumed.returncode == 0, failure(resumed)
    for rank in (0, 1):
        states, expected = (torch.load(folder / f"generators_rank{rank}.pt") for folder in (out, rnode))
        assert len(states) == len(expected) == 1 and torch.equal(states[0], expected[0])
        params, whole = (torch.load(folder / f"params_rank{rank}.pt") for folder in (out, rnode))
        for name, value in whole.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(params[name], value), name


class Linear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 2)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.layer(y)


def test_model_generators_are_every_modules_own_once_in_module_order():
    shared = torch.Generator()
    rnode, steer = RNODERegularized(Linear(), weight=1.0), SteerRegularized(Linear())
    model = torch.nn.Sequential(
        Regularized(Linear()),
        rnode,
        LocallyRegularized(Linear(), generator=shared),
        steer,
        LocallyRegularized(Linear(), generator=shared),
        LocallyRegularized(Linear()),  # draws from torch's global generator
    )
    assert runner.model_generators(model) == [rnode.generator, shared, steer.generator]
    assert runner.model_generators(Regularized(Linear())) == []


def test_rank_seeds_give_every_process_and_generator_its_own_stream():
    # The global generator's seed is unchanged by the model's generators' (a resumed run of an
    # earlier version, and any recorded DDP run, keep their streams).
    assert runner.rank_seed(1, 1, 0) == 8802904196093038847
    seeds = {runner.rank_seed(1, rank, 0, index) for rank in (1, 2) for index in (None, 0, 1)}
    assert len(seeds) == 6
    assert runner.rank_seed(1, 1, 0, 0) != runner.rank_seed(1, 1, 2, 0)


def test_a_later_process_starts_each_stream_from_its_own_seed_or_its_saved_state():
    generators = [torch.Generator(), torch.Generator()]
    before = torch.get_rng_state()
    try:
        runner.start_rank_streams(7, 1, 12, generators, None, None)
        assert torch.initial_seed() == runner.rank_seed(7, 1, 12)
        assert [g.initial_seed() for g in generators] == [runner.rank_seed(7, 1, 12, i) for i in (0, 1)]
        # From a checkpoint: each stream where this process left it, whatever the seeds would be.
        saved = [torch.Generator().manual_seed(s).get_state() for s in (3, 4)]
        global_state = torch.Generator().manual_seed(5).get_state()
        runner.start_rank_streams(7, 1, 12, generators, global_state, saved)
        assert torch.equal(torch.get_rng_state(), global_state)
        assert all(torch.equal(g.get_state(), s) for g, s in zip(generators, saved, strict=True))
    finally:
        torch.set_rng_state(before)


def test_a_process_resumes_its_own_generator_states_when_the_checkpoint_has_them(monkeypatch, tmp_path):
    model = RNODERegularized(Linear(), weight=1.0)
    optimizer = torch.optim.Adam(model.parameters())
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": torch.get_rng_state(),
        "epoch": 1,
        "iteration": 2,
        "time": {"wall": 0.0, "cpu": 0.0},
        "history": runner._empty_history(),
    }
    monkeypatch.setattr(runner, "_load_checkpoint", lambda path: state)
    monkeypatch.setattr(runner.distributed, "rank", lambda: 1)
    monkeypatch.setattr(runner.distributed, "world_size", lambda: 2)
    path = tmp_path / "run.pt"
    # A checkpoint written before it held them still resumes (rank 1 reseeds as on a fresh start).
    assert runner._resume(path, model, optimizer)[-1] is None
    rank0, rank1 = (torch.Generator().manual_seed(seed).get_state() for seed in (0, 1))
    state["generator_ranks"] = [[rank0], [rank1]]
    (resumed,) = runner._resume(path, model, optimizer)[-1]
    assert torch.equal(resumed, rank1)
    # Written by another number of processes: as on a fresh start.
    state["generator_ranks"] = [[rank0], [rank1], [rank1]]
    assert runner._resume(path, model, optimizer)[-1] is None
    # Not this model's generators: the run restarts.
    state["generator_ranks"] = [[], []]
    assert runner._resume(path, model, optimizer) is None
