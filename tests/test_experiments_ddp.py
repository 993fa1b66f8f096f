"""Data-parallel training: two CPU processes under torchrun (gloo) through the unchanged CLI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from local_reg.experiments.results import ResultsFile
from local_reg.regularization.local import default_fingerprint

# Runs in each process: the CLI as a user would call it (its methods and settings are the worker's
# arguments after the output folder and whether to interrupt), plus a hook that keeps the model so
# the test can compare the ranks' parameters afterwards.
WORKER = """
import copy
import os
import sys
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
if sys.argv[2] == "interrupt":
    # Ctrl-C in the second epoch (tiny digits: two iterations per epoch), after one checkpoint.
    calls = []
    train = type(task).training_loss

    def interrupted(self, model, batch):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return train(self, model, batch)

    type(task).training_loss = interrupted
code = main(["experiment", "digits", *options, "--seeds", "1", "--size", "tiny", "--set", "epochs=2",
             "--out", str(out), "--no-progress"])
if code:
    sys.exit(code)
# The last model built is the one trained (the CLI builds one first to validate the arguments).
torch.save(initial[-1], out / f"initial_rank{rank}.pt")
torch.save(built[-1].state_dict(), out / f"params_rank{rank}.pt")
# The next draws of the global generator, where per-sample noise comes from.
torch.save(torch.rand(4), out / f"noise_rank{rank}.pt")
sys.exit(code)
"""
LOCAL_RANDOM = ("--methods", "local-random", "--set", "weights.local-random=default")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(out: Path, *options: str, interrupt: bool = False) -> subprocess.CompletedProcess:
    """The worker in two processes running the CLI with ``options``, writing to ``out``."""
    script = out.parent / "worker.py"
    script.write_text(WORKER)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        str(script),
        str(out),
        "interrupt" if interrupt else "whole",
        *options,
    ]
    # A process that aborts in native code (gloo's teardown) prints where it was.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    # stdin: not the test process's, which under pytest-xdist is the worker's command channel.
    return subprocess.run(
        command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "results"
    done = torchrun(out, *LOCAL_RANDOM)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


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


def test_an_interrupted_run_resumes_every_process_exactly_where_it_stopped(tmp_path, uninterrupted):
    # Each process's own noise stream is in the checkpoint: rank 1's used to restart from a seed
    # derived from the iteration, so a resumed run drew other t_reg than the uninterrupted one.
    out = tmp_path / "results"
    interrupted = torchrun(out, *LOCAL_RANDOM, interrupt=True)
    assert interrupted.returncode != 0 and list((out / "checkpoints").glob("*.pt"))
    assert not (out / "results.jsonl").exists()
    resumed = torchrun(out, *LOCAL_RANDOM)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
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
