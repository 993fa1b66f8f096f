"""Data safety of the experiment CLI: bad settings refused up front, run locks that die with their
process, unreadable checkpoints set aside, runs recorded twice counted once, reports that never
replace another, and Ctrl-C that exits 130 with the command that resumes. Tiny runs only."""

from __future__ import annotations

import builtins
import contextlib
import errno
import hashlib
import io
import json
import math
import os
import pickle
import random
import shlex
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import pytest
import torch

import local_reg
from local_reg.experiments import report as report_module
from local_reg.experiments import runner
from local_reg.experiments.cli import main
from local_reg.experiments.report import (
    Group,
    _number,
    _smooth,
    check_report,
    describe,
    group_records,
    markdown_table,
)
from local_reg.experiments.results import ResultsError, ResultsFile, ResultsWarning
from local_reg.experiments.settings import Rule, SettingsError
from local_reg.experiments.tasks import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--size", "tiny", "--seeds", "1", "--no-progress"]


def run(out: Path, *args: str) -> int:
    return main(["experiment", *args, *TINY, "--out", str(out)])


def fake_record(task: str, method: str, seed: int, **fields) -> dict:
    """A finished run's record with every field the report reads."""
    metric = REGISTRY[task].metric
    return {
        "run_id": f"{task}-{method}-seed{seed}-cfg",
        "task": task,
        "method": method,
        "seed": seed,
        "size": "tiny",
        "gradient": "direct",
        "config_id": "cfg",
        "weight": None,
        "label": method,
        "settings": {
            "epochs": 1,
            "batch_size": 32,
            "solver": {"method": "tsit5", "rtol": 1e-6, "atol": 1e-6},
        },
        "world_size": 1,
        "metric": metric,
        "higher_is_better": REGISTRY[task].higher_is_better,
        "train": {metric: 0.5},
        "test": {metric: 0.5 + seed / 10},
        "test_nfe": 20.0,
        "predict_time": 0.01,
        "predict_cpu_time": 0.01,
        "train_time": 1.0,
        "train_cpu_time": 1.0,
        "iterations": 2,
        "history": {"nfe": [10, 12], "loss": [1.0, 0.9]},
        **fields,
    }


def write_records(out: Path, records: list[dict]) -> Path:
    path = out / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def count_training_calls(monkeypatch, task: str = "digits") -> list[int]:
    task_type = type(REGISTRY[task])
    original = task_type.training_loss
    calls: list[int] = []
    monkeypatch.setattr(
        task_type, "training_loss", lambda self, m, b: (calls.append(1), original(self, m, b))[1]
    )
    return calls


def no_training(monkeypatch) -> None:
    monkeypatch.setattr(runner, "train_run", lambda *a, **k: pytest.fail("a run was trained"))


# --- settings -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("epochs=0", "epochs must be an integer >= 1, got 0"),
        ("epochs=-1", "epochs must be an integer >= 1, got -1"),
        ("epochs=abc", "epochs must be an integer >= 1, got the string 'abc'"),
        ("epochs=1.5", "epochs must be an integer >= 1, got 1.5"),
        ("epochs=true", "epochs must be an integer >= 1, got true"),
        ("batch_size=abc", "batch_size must be an integer >= 1"),
        ("batch_size=0", "batch_size must be an integer >= 1, got 0"),
        ("eval_batch_size=0", "eval_batch_size must be an integer >= 1, got 0"),
        ("hidden=-5", "hidden must be an integer >= 1, got -5"),
        ("hidden=0", "hidden must be an integer >= 1, got 0"),
        ("lr=-1", "lr must be a finite number > 0 and <= 3.40282e+38, got -1"),
        ("lr=NaN", "lr must be a finite number > 0 and <= 3.40282e+38, got NaN"),
        ("solver.method=tsit55", "solver.method must be one of 'tsit5', 'dopri5'"),
        ("solver.method=euler", "solver.method must be one of"),  # fixed-step: the tasks solve adaptively
        ("solver.rtol=-1e-6", "solver.rtol must be a finite number >= 0, got -1e-06"),
        ("solver.rtol=abc", "solver.rtol must be a finite number >= 0, got the string 'abc'"),
        ("solver.atol=0", "solver.atol must be a finite number > 0, got 0"),
        ("solver.atol=-1e-6", "solver.atol must be a finite number > 0"),
        ("train_size=0", "train_size must be null or an integer >= 1, got 0"),
        ("dim=10", "dim must be 64 (fixed by the task), got 10"),
        ("epochs.x=1", "task 'digits' has no setting 'epochs.x': epochs is a single value"),
        ("nosuch.x=1", "task 'digits' has no setting 'nosuch.x' (settings: "),
        ("solver.order=5", "task 'digits' has no setting 'solver.order' (solver holds: method, rtol, atol)"),
        ("solver=3", "solver must be an object with the keys method, rtol, atol, got 3"),
        ('solver={"method": "tsit5"}', "solver: missing solver.rtol, solver.atol"),
        ("weights.local-random={}", 'weights.local-random must be a number >= 0, {"start": w0'),
        ('weights.local-random={"adaptive": 1, "nope": 2}', "weights.local-random has unknown key(s) nope"),
        ('weights.local-random={"start": 1, "end": 0}', "weights.local-random must be"),
        ('weights.local-random={"start": 1, "end": 2, "x": 3}', "weights.local-random must be"),
        ("weights.local-random=-1", "weights.local-random must be"),
        ("weights.vanilla=1", "no setting 'weights.vanilla'"),
    ],
)
def test_a_bad_setting_exits_2_naming_the_key_before_any_training(
    assignment, message, tmp_path, monkeypatch, capsys
):
    no_training(monkeypatch)
    assert run(tmp_path, "digits", "--methods", "vanilla", "local-random", "--set", assignment) == 2
    err = capsys.readouterr().err
    assert err.startswith("local-reg: error: bad --set: ") and err.count("\n") == 1
    assert message in err
    assert not (tmp_path / "results.jsonl").exists()


@pytest.mark.parametrize(
    ("task", "assignment", "message"),
    [
        ("spiral", "data_size=5", "data_size must exceed segment_length, or there is no training segment"),
        ("spiral", "data_size=10", "(got data_size=10, segment_length=10)"),
        ("spiral_sde", "test_stride=200", "data_size must exceed test_stride"),
        ("latent_ode", "n_test=0", "n_test must be an integer >= 1, got 0"),
        ("latent_ode", "obs_prob=1.5", "obs_prob must be a finite number > 0 and <= 1, got 1.5"),
        (
            "latent_ode",
            "physionet_dir=/no/such/folder",
            "physionet_dir must be null or the path of an existing",
        ),
        ("nsde_digits", "solver.method=tsit5", "solver.method must be one of 'euler_maruyama', 'milstein'"),
        ("nsde_digits", "weights.global-stiffness=1", "no setting 'weights.global-stiffness'"),
    ],
)
def test_data_sizes_must_leave_non_empty_splits(task, assignment, message, tmp_path, monkeypatch, capsys):
    no_training(monkeypatch)
    assert run(tmp_path, task, "--methods", "vanilla", "--set", assignment) == 2
    assert message in capsys.readouterr().err


def _leaves(fields, prefix=""):
    for key, rule in fields.items():
        if isinstance(rule, Rule):
            yield prefix + key
        else:
            yield from _leaves(rule, f"{prefix}{key}.")


@pytest.mark.parametrize("task", sorted(REGISTRY))
def test_every_setting_of_every_task_is_checked(task):
    # The defaults of every size pass their schema: it names every setting and allows the defaults.
    for size in ("tiny", "quick", "full"):
        runner.RunSpec(task, "vanilla", 0, size).settings()
    leaves = list(_leaves(REGISTRY[task].schema.fields))
    assert {leaf.split(".")[0] for leaf in leaves} == set(REGISTRY[task].settings("tiny"))
    for leaf in leaves:
        with pytest.raises(SettingsError, match=f"^{leaf} must be "):
            runner.RunSpec(task, "vanilla", 0, "tiny", overrides={leaf: "not a value"}).settings()


def test_the_smallest_allowed_spiral_trains(tmp_path):
    # One training segment, a two-point test trajectory: the boundary the schema allows.
    assert run(tmp_path, "spiral", "--methods", "vanilla", "--set", "data_size=11") == 0
    (record,) = ResultsFile(tmp_path).load()
    assert record["iterations"] == 1


def test_a_zero_baseline_from_an_old_folder_gives_no_ratio_rather_than_a_crash(tmp_path, capsys):
    write_records(
        tmp_path,
        [
            fake_record("digits", "vanilla", 0, train_cpu_time=0.0, iterations=0),
            fake_record("digits", "local-random", 0),
        ],
    )
    assert main(["report", "--out", str(tmp_path)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| local-random |"))
    assert row.split(" | ")[-2] == "–"  # train time / vanilla
    assert row.split(" | ")[-3] == "1.000"  # NFE / vanilla still there


# --- run locks and crashes ------------------------------------------------------------------------

STALLED_EXPERIMENT = """
import signal, sys, time
from local_reg.experiments.cli import main
from local_reg.experiments.tasks import REGISTRY

# A shell starts background jobs with SIGINT ignored; Ctrl-C at a terminal is what is tested here.
signal.signal(signal.SIGINT, signal.default_int_handler)
task_type = type(REGISTRY["digits"])
original = task_type.training_loss
calls = []

def stall_in_the_second_epoch(self, model, batch):
    calls.append(1)
    if len(calls) == 3:  # tiny digits: two batches an epoch, so epoch 1 is in the checkpoint
        print("stalled", flush=True)
        time.sleep(600)
    return original(self, model, batch)

task_type.training_loss = stall_in_the_second_epoch
sys.exit(main(sys.argv[1:]))
"""

EPOCHS_3 = ["digits", "--methods", "vanilla", "--set", "epochs=3"]


def start_stalled_experiment(tmp_path: Path) -> subprocess.Popen:
    """A tiny 3-epoch digits run in another process, stalled in its second epoch (checkpoint: epoch 1)."""
    script = tmp_path / "stalled.py"
    script.write_text(STALLED_EXPERIMENT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, str(script), "experiment", *EPOCHS_3, *TINY, "--out", str(out)],
        # Not the test process's stdin: under pytest-xdist that is the worker's command channel.
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    line = process.stdout.readline()  # "" if the process died first
    if line.strip() != "stalled":
        process.kill()
        pytest.fail(f"the experiment did not start: {process.communicate()[1][-2000:]}")
    return process


def the_run() -> runner.RunSpec:
    return runner.RunSpec("digits", "vanilla", 0, "tiny", overrides={"epochs": 3})


def test_a_killed_sweep_releases_its_lock_and_a_rerun_resumes_the_run(tmp_path, monkeypatch, capsys):
    process = start_stalled_experiment(tmp_path)
    out = tmp_path / "out"
    try:
        # While it lives, it holds the run: another sweep into the folder skips it.
        monkeypatch.setattr(runner, "train_run", lambda *a, **k: pytest.fail("trained a claimed run"))
        assert runner.sweep("digits", ["vanilla"], [0], out, size="tiny", overrides={"epochs": 3}) == []
        assert "being trained by another process" in capsys.readouterr().err
        monkeypatch.undo()
    finally:
        process.kill()  # SIGKILL: no handler runs, the lock file stays behind
        process.communicate()
    lock = out / "checkpoints" / f"{the_run().run_id}.lock"
    assert lock.exists() and int(lock.read_text(encoding="utf-8")) == process.pid
    calls = count_training_calls(monkeypatch)
    assert run(out, *EPOCHS_3) == 0
    assert len(calls) == 4  # epochs 2 and 3 only: the run resumed from its checkpoint
    (record,) = ResultsFile(out).load()
    assert record["iterations"] == 6 and len(record["history"]["loss"]) == 6
    assert not lock.exists() and not list((out / "checkpoints").glob("*.pt"))


def test_a_lock_file_naming_a_live_pid_but_unlocked_does_not_block_the_run(tmp_path, monkeypatch):
    # After a crash and a container restart the rerun may get the very pid the file names.
    lock = tmp_path / "checkpoints" / f"{runner.RunSpec('digits', 'vanilla', 0, 'tiny').run_id}.lock"
    lock.parent.mkdir()
    lock.write_text(str(os.getpid()))
    assert run(tmp_path, "digits", "--methods", "vanilla") == 0
    assert len(ResultsFile(tmp_path).load()) == 1 and not lock.exists()


def test_a_lock_is_exclusive_until_released_and_released_locks_leave_no_file(tmp_path):
    path = tmp_path / "checkpoints" / "r.lock"
    first, second = runner.RunLock(path), runner.RunLock(path)
    assert first.acquire()
    assert not second.acquire()  # flock is per open file description: a second claim fails even here
    first.release()
    assert not path.exists()
    assert second.acquire()
    second.release()


def test_a_run_recorded_between_the_check_and_the_claim_is_not_trained_again(tmp_path, monkeypatch, capsys):
    spec = runner.RunSpec("digits", "vanilla", 0, "tiny")
    results = ResultsFile(tmp_path)
    results.append(fake_record("digits", "vanilla", 0, run_id=spec.run_id))
    before = results.path.read_bytes()
    real = runner.recorded_as
    calls = []

    def recorded_just_after_the_first_check(results, spec):
        calls.append(1)
        return None if len(calls) == 1 else real(results, spec)

    monkeypatch.setattr(runner, "recorded_as", recorded_just_after_the_first_check)
    no_training(monkeypatch)
    assert runner.sweep("digits", ["vanilla"], [0], tmp_path, size="tiny", progress=False) == []
    assert results.path.read_bytes() == before
    assert len(calls) == 2 and "already in" in capsys.readouterr().err


def test_a_checkpoint_left_behind_by_a_recorded_run_is_removed_by_the_next_sweep(tmp_path, monkeypatch):
    """A sweep stopped after recording a run but before removing its checkpoint leaves the file; the
    next sweep skips the run and removes it (not while another process holds the run)."""
    spec = runner.RunSpec("digits", "vanilla", 0, "tiny")
    ResultsFile(tmp_path).append(fake_record("digits", "vanilla", 0, run_id=spec.run_id))
    checkpoint = tmp_path / "checkpoints" / f"{spec.run_id}.pt"
    checkpoint.parent.mkdir()
    no_training(monkeypatch)
    held = runner.RunLock(tmp_path / "checkpoints" / f"{spec.run_id}.lock")
    checkpoint.write_bytes(b"left behind")
    assert held.acquire()
    try:
        assert runner.sweep("digits", ["vanilla"], [0], tmp_path, size="tiny", progress=False) == []
        assert checkpoint.exists()
    finally:
        held.release()
    assert runner.sweep("digits", ["vanilla"], [0], tmp_path, size="tiny", progress=False) == []
    assert not checkpoint.exists() and not held.path.exists()


# Ctrl-C, and the stop a job scheduler (Slurm, Kubernetes, systemd, ``timeout``) or torchrun's agent sends.
STOP_SIGNALS = [pytest.param(signal.SIGINT, id="ctrl-c"), pytest.param(signal.SIGTERM, id="sigterm")]


@pytest.mark.parametrize("stop", STOP_SIGNALS)
def test_a_stop_signal_exits_with_one_line_and_the_command_that_resumes(tmp_path, monkeypatch, stop):
    process = start_stalled_experiment(tmp_path)
    process.send_signal(stop)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 128 + stop  # what a shell reports: 130 for Ctrl-C, 143 for SIGTERM
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("local-reg:")]
    out = tmp_path / "out"
    spec = the_run()
    assert line.startswith(
        f"local-reg: interrupted by {stop.name}: run {spec.run_id} is saved at epoch 1 of 3 ("
    )
    assert (out / "checkpoints" / f"{spec.run_id}.pt").exists()
    command = shlex.split(line.split("resume with: ", 1)[1])
    assert command[:2] == ["local-reg", "experiment"]
    assert not (out / "checkpoints" / f"{spec.run_id}.lock").exists()  # released on the way out

    calls = count_training_calls(monkeypatch)
    monkeypatch.chdir(tmp_path)  # the command is the one typed there
    assert main(command[1:]) == 0
    assert len(calls) == 4  # epochs 2 and 3
    (record,) = ResultsFile(out).load()
    assert record["iterations"] == 6
    assert run(tmp_path / "whole", *EPOCHS_3) == 0
    (whole,) = ResultsFile(tmp_path / "whole").load()
    assert record["history"]["loss"] == whole["history"]["loss"]
    assert (record["test"], record["test_nfe"]) == (whole["test"], whole["test_nfe"])


def test_ctrl_c_under_torchrun_prints_one_torchrun_command(tmp_path, monkeypatch, capsys):
    """Each process printed the resume line, and its command started one process, whose run (no
    ``-p2`` in its id) was a new one."""

    def interrupt(self, model, batch):
        raise KeyboardInterrupt

    monkeypatch.setattr(type(REGISTRY["digits"]), "training_loss", interrupt)
    monkeypatch.setattr("local_reg.experiments.distributed.init_from_env", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, lines in (("1", 0), ("0", 1)):
        monkeypatch.setenv("RANK", rank)
        assert run(tmp_path, "digits", "--methods", "vanilla", "--set", "batch_size=32") == 130
        err = capsys.readouterr().err
        assert err.count("\n") == lines
    assert "resume with: torchrun --nproc_per_node=2 -m local_reg.experiments experiment digits" in err


def test_ctrl_c_in_the_first_epoch_says_the_run_restarts(tmp_path, monkeypatch, capsys):
    def interrupt(self, model, batch):
        raise KeyboardInterrupt

    monkeypatch.setattr(type(REGISTRY["digits"]), "training_loss", interrupt)
    assert run(tmp_path, "digits", "--methods", "vanilla") == 130
    err = capsys.readouterr().err
    assert "had not finished an epoch and restarts" in err and err.count("\n") == 1
    assert "resume with: local-reg experiment digits --methods vanilla --size tiny" in err


@pytest.mark.parametrize("stop", STOP_SIGNALS)
def test_a_stop_signal_that_python_dropped_still_stops_the_run_at_its_iteration(
    tmp_path, monkeypatch, capsys, stop
):
    """A signal that lands in a ``__del__`` (a graph's hook remover, say) raises there, and Python
    prints "Exception ignored" and goes on: the run trained to its end and exited 0. The handler
    also sets a flag that the training loop reads after each iteration."""
    original = type(REGISTRY["digits"]).training_loss
    before = signal.getsignal(stop)
    calls = []

    def interrupted_where_python_drops_it(self, model, batch):
        calls.append(1)
        if len(calls) == 3:  # tiny digits: two batches an epoch, so epoch 1 is in the checkpoint
            # What Python does with an exception raised in a __del__: prints it and goes on.
            with contextlib.suppress(KeyboardInterrupt):
                signal.getsignal(stop)(stop, None)
        return original(self, model, batch)

    monkeypatch.setattr(type(REGISTRY["digits"]), "training_loss", interrupted_where_python_drops_it)
    assert run(tmp_path, "digits", "--methods", "vanilla", "--set", "epochs=3") == 128 + stop
    assert len(calls) == 3
    assert f"interrupted by {stop.name}: run digits-vanilla-seed0" in capsys.readouterr().err
    assert signal.getsignal(stop) == before  # put back on the way out
    # The request was answered: a later sweep in this process (a notebook's) trains, where it
    # stopped at once, interrupted by the signal of the command before.
    assert not runner.STOP_REQUESTED.is_set()
    (record,) = runner.sweep("digits", ["vanilla"], [0], tmp_path / "later", size="tiny", progress=False)
    assert record["iterations"] > 0


@pytest.mark.parametrize("stop", STOP_SIGNALS)
def test_a_repeated_stop_signal_does_not_cut_the_first_ones_saving_short(tmp_path, monkeypatch, capsys, stop):
    """The same signal twice within a millisecond (Slurm signals every process of a job and
    torchrun forwards its own copy): the second KeyboardInterrupt replaced the first's
    ``Interrupted`` while it unwound, and the line lost which run was saved at which epoch."""
    original = type(REGISTRY["digits"]).training_loss
    original_init = runner.Interrupted.__init__
    calls = []

    def signalled(self, model, batch):
        calls.append(1)
        if len(calls) == 3:  # tiny digits: two batches an epoch, so epoch 1 is in the checkpoint
            signal.getsignal(stop)(stop, None)
        return original(self, model, batch)

    def signalled_again(self, *args):  # while the first one unwinds
        signal.getsignal(stop)(stop, None)
        original_init(self, *args)

    monkeypatch.setattr(type(REGISTRY["digits"]), "training_loss", signalled)
    monkeypatch.setattr(runner.Interrupted, "__init__", signalled_again)
    assert run(tmp_path, "digits", "--methods", "vanilla", "--set", "epochs=3") == 128 + stop
    assert f"interrupted by {stop.name}: run digits-vanilla-seed0" in capsys.readouterr().err


@pytest.mark.parametrize("stop", STOP_SIGNALS)
def test_a_stop_signal_after_the_repeat_window_stops_a_command_whose_first_one_was_dropped(
    tmp_path, monkeypatch, capsys, stop
):
    """A first signal raised in a ``__del__`` is dropped by Python; a report reads no flag, so a
    later signal must raise, where only a near-simultaneous duplicate raises nothing."""
    from types import SimpleNamespace

    from local_reg.experiments import cli

    clock = [0.0]
    monkeypatch.setattr(cli, "time", SimpleNamespace(monotonic=lambda: clock[0]))

    def report(args):
        with contextlib.suppress(KeyboardInterrupt):  # dropped, as in a __del__
            signal.getsignal(stop)(stop, None)
        clock[0] += 0.5 * cli.REPEAT_WINDOW
        signal.getsignal(stop)(stop, None)  # its duplicate: nothing
        clock[0] += 2 * cli.REPEAT_WINDOW
        signal.getsignal(stop)(stop, None)  # the user again
        raise AssertionError("the report was not stopped")

    monkeypatch.setattr(cli, "_report", report)
    assert main(["report", "--out", str(tmp_path)]) == 128 + stop
    assert f"interrupted by {stop.name}" in capsys.readouterr().err


def test_the_repeat_window_runs_from_the_last_stop_signal_that_raised(monkeypatch):
    # Counted from the first signal, the torchrun copy of a later stop (the first one dropped) raised
    # again while that stop unwound.
    from types import SimpleNamespace

    from local_reg.experiments import cli

    clock = [100.0]
    monkeypatch.setattr(cli, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    monkeypatch.setattr(runner, "STOP_REQUESTED", threading.Event())  # this test's own
    received: list = []
    raised = []
    for at in (0.0, 0.01, 5.0, 5.01, 5.5):
        clock[0] = 100.0 + at * cli.REPEAT_WINDOW
        try:
            cli._request_stop(received, signal.SIGTERM, None)
            raised.append(False)
        except KeyboardInterrupt:
            raised.append(True)
    assert raised == [True, False, True, False, False] and runner.STOP_REQUESTED.is_set()


def someone_elses_handler(signum, frame):
    """A handler that another library (a notebook's kernel, a job runner) installed."""


@pytest.mark.parametrize(
    ("stop", "handler"),
    [
        # A shell's background job starts with SIGINT ignored.
        pytest.param(signal.SIGINT, signal.SIG_IGN, id="ignored-sigint"),
        pytest.param(signal.SIGINT, someone_elses_handler, id="handled-sigint"),
        pytest.param(signal.SIGTERM, signal.SIG_IGN, id="ignored-sigterm"),
        pytest.param(signal.SIGTERM, someone_elses_handler, id="handled-sigterm"),
    ],
)
def test_a_stop_signal_ignored_or_handled_by_someone_else_is_left_so(tmp_path, monkeypatch, stop, handler):
    """The command line takes over a stop signal only from Python's own default."""
    seen = []
    monkeypatch.setattr(
        "local_reg.experiments.cli.sweep", lambda *a, **k: seen.append(signal.getsignal(stop)) or []
    )
    previous = signal.signal(stop, handler)
    try:
        assert run(tmp_path, "digits", "--methods", "vanilla") == 0
        assert seen == [handler] and signal.getsignal(stop) == handler
    finally:
        signal.signal(stop, previous)


# --- checkpoints and the results file -------------------------------------------------------------


def _saved(value: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "content",
    [
        b"garbage, not a checkpoint",
        _saved({"model": {"w": torch.zeros(100)}, "epoch": 1})[:300],
        _saved({"a": 1}),
        _saved(
            {"model": {}, "optimizer": {}, "rng": None, "epoch": 1, "iteration": 2, "time": {}, "history": {}}
        ),
    ],
    ids=["garbage", "truncated", "foreign", "other-model"],
)
def test_an_unreadable_checkpoint_is_set_aside_named_and_its_run_restarts(
    content, tmp_path, monkeypatch, capsys
):
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    name = f"{runner.RunSpec('digits', 'vanilla', 0, 'tiny').run_id}.pt"
    (checkpoints / name).write_bytes(content)
    (checkpoints / f"{name}.corrupt-1").write_bytes(b"an earlier one")  # never overwritten
    calls = count_training_calls(monkeypatch)
    assert run(tmp_path, "digits", "--methods", "vanilla") == 0
    err = capsys.readouterr().err
    warning = f"local-reg: warning: checkpoint {checkpoints / name} cannot be used ("
    assert warning in err and f"moved to {name}.corrupt-2, its run restarts" in err
    # Torch's own advice for an unreadable file (load it with weights_only=False) is not passed on.
    assert "weights_only" not in err
    assert (checkpoints / f"{name}.corrupt-2").read_bytes() == content
    assert (checkpoints / f"{name}.corrupt-1").read_bytes() == b"an earlier one"
    assert len(calls) == 2  # the whole run, from the start
    (record,) = ResultsFile(tmp_path).load()
    assert record["iterations"] == 2


def test_a_results_path_that_is_a_folder_exits_2(tmp_path, monkeypatch, capsys):
    (tmp_path / "results.jsonl").mkdir()
    no_training(monkeypatch)
    assert run(tmp_path, "digits", "--methods", "vanilla") == 2
    assert main(["report", "--out", str(tmp_path)]) == 2
    path = tmp_path / "results.jsonl"
    message = f"local-reg: error: {path} is not a file: move it away, or choose another --out"
    assert capsys.readouterr().err.splitlines() == [message] * 2


def test_a_results_file_concatenated_with_itself_counts_each_run_once(tmp_path, capsys):
    records = [fake_record("digits", "vanilla", 0), fake_record("digits", "vanilla", 1)]
    path = write_records(tmp_path, records)
    path.write_bytes(path.read_bytes() * 2)
    before = path.read_bytes()
    with pytest.warns(ResultsWarning, match=r"2 line\(s\) repeat a run recorded earlier \(lines 3, 4\)"):
        assert ResultsFile(tmp_path).load() == records
    assert main(["report", "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("local-reg: warning:") == 1
    row = next(line for line in captured.out.splitlines() if line.startswith("| vanilla |"))
    assert row.split(" | ")[2] == "2"  # seeds: 2 runs, not 4
    assert path.read_bytes() == before  # the file is left as it is
    # A user's own filter (-W, PYTHONWARNINGS) decides first: the CLI's "always" came before it.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=ResultsWarning)
        assert main(["report", "--out", str(tmp_path)]) == 0
    assert "local-reg: warning:" not in capsys.readouterr().err
    # -W error makes it an error: said in one line (exit 2), as the command's other errors.
    with warnings.catch_warnings():
        warnings.filterwarnings("error", category=ResultsWarning)
        assert main(["report", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("local-reg: error: ")


def test_report_of_a_task_with_no_runs_exits_2_and_changes_nothing(tmp_path, capsys):
    write_records(tmp_path, [fake_record("spiral", "vanilla", 0)])
    (tmp_path / "report.md").write_text("the full report")
    assert main(["report", "--out", str(tmp_path), "--task", "digits"]) == 2
    assert "no digits runs in" in capsys.readouterr().err
    assert (tmp_path / "report.md").read_text(encoding="utf-8") == "the full report"
    assert not (tmp_path / "report-digits.md").exists()
    # One task's report goes into its own file, and never replaces the whole.
    assert main(["report", "--out", str(tmp_path), "--task", "spiral"]) == 0
    assert "| vanilla |" in (tmp_path / "report-spiral.md").read_text(encoding="utf-8")
    assert (tmp_path / "report.md").read_text(encoding="utf-8") == "the full report"


# --- one run, one row, one seed ---------------------------------------------------------------------


def test_one_setting_spelled_two_ways_is_one_run(tmp_path, capsys):
    """A weight 1 and 1.0 hash to two run ids but are one row: the second sweep skips the seed
    instead of training it again."""
    sweep = ["tabular", "--methods", "local-random", "--set", "epochs=1", "--set"]
    assert run(tmp_path, *sweep, "weights.local-random=1") == 0
    spellings = [
        runner.RunSpec(
            "tabular", "local-random", 0, "tiny", "direct", {"epochs": 1, "weights.local-random": w}
        )
        for w in (1, 1.0)
    ]
    assert spellings[0].run_id != spellings[1].run_id and spellings[0].label == spellings[1].label
    assert runner.recorded_as(ResultsFile(tmp_path), spellings[1]) == spellings[0].run_id
    capsys.readouterr()
    assert run(tmp_path, *sweep, "weights.local-random=1.0") == 0
    assert f"already in {tmp_path / 'results.jsonl'} as {spellings[0].run_id}" in capsys.readouterr().err
    assert len(ResultsFile(tmp_path).load()) == 1


def test_a_record_of_another_weight_under_the_same_label_is_another_run(tmp_path):
    """A label leaves out a weight that is the task's default, and defaults have changed between
    versions: a record an earlier version made with its default (label ``local-random``, weight 5)
    was taken for today's run of that seed, and the table averaged the two weights in one row."""
    spec = runner.RunSpec("digits", "local-random", 0, "tiny")
    assert spec.label == "local-random" and spec.weight != 5
    earlier = fake_record("digits", "local-random", 0, run_id="digits-earlier", label=spec.label, weight=5)
    earlier["config_id"] = spec.config_id
    write_records(tmp_path, [earlier])
    assert runner.recorded_as(ResultsFile(tmp_path), spec) is None
    earlier["weight"] = json.loads(json.dumps(spec.weight))  # the same weight, spelled by JSON
    write_records(tmp_path, [earlier])
    assert runner.recorded_as(ResultsFile(tmp_path), spec) == "digits-earlier"
    # The report keeps the two weights apart too: each a row of its own, today's seeds counted.
    earlier["weight"] = 5
    today = [
        fake_record("digits", "local-random", seed, run_id=f"today{seed}", label=spec.label)
        for seed in (0, 1)
    ]
    for record in today:
        record["weight"], record["config_id"] = json.loads(json.dumps(spec.weight)), spec.config_id
    (group,) = group_records([earlier, *today])
    rows = group.labels()
    assert rows == ["local-random [w=2.5->1]", "local-random [w=5]"]  # by the weight's size
    assert [len(group.runs(row)) for row in rows] == [2, 1]
    table = markdown_table(group)
    assert table.count("| local-random [w=5] |") == 1 and table.count("| local-random [w=2.5->1] |") == 1
    # One weight spelled two ways (a key at its default None, or left out) stays one row, as does a
    # record without a weight (edited by hand), which the runner takes for any.
    spelled = [fake_record("digits", "local-random", seed, run_id=f"r{seed}", weight=w) for seed, w in
               enumerate([{"ratio": 0.2, "beta": None}, {"ratio": 0.2}, {"ratio": 0.2}])]  # fmt: skip
    del spelled[2]["weight"]
    assert group_records(spelled)[0].labels() == ["local-random"]


def test_settings_spelled_as_an_int_or_a_float_are_one_table_and_row():
    """``solver.rtol=1`` and ``=1.0`` made two tables, ``local.probe_scale=4`` and ``=4.0`` two rows."""

    def spec(**overrides):
        return runner.RunSpec("tabular", "local-random", 0, "tiny", "direct", overrides)

    assert spec(**{"solver.rtol": 1}).config_id == spec(**{"solver.rtol": 1.0}).config_id
    as_int, as_float = spec(**{"local.probe_scale": 4}), spec(**{"local.probe_scale": 4.0})
    assert as_int.run_id == as_float.run_id and as_float.label == "local-random (probe_scale=4)"


def test_weights_that_print_alike_are_two_rows():
    """A label printed weights to 6 digits: 0.1234567 and 0.1234568 were one row, the second run
    skipped as recorded."""
    labels = [
        runner.RunSpec("tabular", "local-random", 0, "tiny", "direct", {"weights.local-random": w}).label
        for w in (0.1234567, 0.1234568, 0.1, 1e-5)
    ]
    assert labels == [
        "local-random (w=0.1234567)",
        "local-random (w=0.1234568)",
        "local-random (w=0.1)",
        "local-random (w=1e-05)",
    ]


def test_a_row_recorded_twice_for_one_seed_counts_once(tmp_path, capsys):
    twice = dict(fake_record("digits", "vanilla", 0), run_id="digits-vanilla-seed0-other")
    write_records(tmp_path, [fake_record("digits", "vanilla", 0), twice])
    assert main(["report", "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "local-reg: warning:" in captured.err and captured.err.count("counted once, as the first") == 1
    row = next(line for line in captured.out.splitlines() if line.startswith("| vanilla |"))
    assert row.split(" | ")[2] == "1"


def test_a_table_is_the_records_mean_and_sample_sd_in_its_timing_and_order(tmp_path):
    """Every cell from hand: sample sd (``stdev``: 50 and 60 give 7.1), the CPU table's prediction
    column read from ``predict_cpu_time`` (20 and 40 ms), ratios of the means, the task's default
    row before other weights; a row's repeated seed counts as its first record, and a run id on two
    lines as its first line."""
    records = [fake_record("digits", "vanilla", seed, predict_cpu_time=0.02 * (seed + 1)) for seed in (0, 1)]
    other = dict(label="local-random (w=0.1)", weight=0.1, test_nfe=10.0)
    records += [fake_record("digits", "local-random", seed, run_id=f"w{seed}", **other) for seed in (0, 1)]
    default = dict(weight={"start": 2.5, "end": 1}, test_nfe=12.0, label="local-random")
    records += [fake_record("digits", "local-random", seed, run_id=f"d{seed}", **default) for seed in (0, 1)]
    records.append(
        fake_record("digits", "local-random", 0, run_id="d0-again", **{**default, "test_nfe": 99.0})
    )
    path = write_records(tmp_path, records)
    path.write_text(path.read_text(encoding="utf-8") + json.dumps({**records[0], "test_nfe": 99.0}) + "\n")
    loaded = ResultsFile(tmp_path).load(warn=False)
    assert next(r for r in loaded if r["run_id"] == records[0]["run_id"])["test_nfe"] == 20.0
    with pytest.warns(ResultsWarning):
        (group,) = group_records(loaded)
        rows = markdown_table(group, "cpu").splitlines()[2:]
    assert rows == [
        "| vanilla | – | 2 | 50 ± 0 | 55 ± 7.1 | 1 ± 0 | 30 ± 14 | 20 ± 0 | 1.000 | 1.000 | 1.000 |",
        "| local-random | 2.5->1 | 2 | 50 ± 0 | 55 ± 7.1 | 1 ± 0 | 10 ± 0 | 12 ± 0 | 0.600 | 1.000 | 0.333 |",
        "| local-random (w=0.1) | 0.1 | 2 | 50 ± 0 | 55 ± 7.1 | 1 ± 0 | 10 ± 0 | 10 ± 0 | 0.500 | 1.000 "
        "| 0.333 |",
    ]
    assert markdown_table(group, "wall").splitlines()[2].split(" | ")[6] == "10 ± 0"  # predict_time


def test_appending_after_a_last_line_without_its_newline_keeps_both_records(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(fake_record("digits", "vanilla", 0)))  # no newline: an edited file
    ResultsFile(tmp_path).append(fake_record("digits", "vanilla", 1))
    assert [record["seed"] for record in ResultsFile(tmp_path).load()] == [0, 1]


def test_a_sweep_warns_of_a_seed_recorded_twice_once(tmp_path, monkeypatch, capsys):
    """The check of the folder before a sweep and the report after it both read the rows: the
    warning came twice."""
    spec = runner.RunSpec("digits", "vanilla", 0, "tiny")
    first = fake_record("digits", "vanilla", 0, run_id=spec.run_id, config_id=spec.config_id)
    write_records(tmp_path, [first, dict(first, run_id="digits-vanilla-seed0-other")])
    monkeypatch.setattr("local_reg.experiments.cli.sweep", lambda *args, **kwargs: [])
    assert run(tmp_path, "digits", "--methods", "vanilla") == 0
    assert capsys.readouterr().err.count("counted once, as the first") == 1


def test_processes_are_part_of_a_runs_identity_and_row():
    single = runner.RunSpec("digits", "vanilla", 0, "tiny")
    ddp = runner.RunSpec("digits", "vanilla", 0, "tiny", processes=2)
    assert "-p" not in single.run_id and ddp.run_id == f"{single.run_id}-p2"
    assert single.label == "vanilla" and ddp.label == "vanilla (2 processes)"


def test_a_ratio_weight_without_parameters_under_ddp_is_refused_before_any_training(
    tmp_path, monkeypatch, capsys
):
    # torchrun sets WORLD_SIZE; the check runs before the process group is joined.
    monkeypatch.setenv("WORLD_SIZE", "2")
    code = run(
        tmp_path,
        "digits",
        "--methods",
        "vanilla",
        "local-random",
        "--set",
        'weights.local-random={"ratio": 1}',
    )
    assert code == 2
    assert "ratio weight without its parameters" in capsys.readouterr().err
    assert not (tmp_path / "results.jsonl").exists()


def test_a_record_without_its_metric_or_label_is_named():
    record = fake_record("digits", "vanilla", 0)
    for field in ("metric", "label"):
        incomplete = {k: v for k, v in record.items() if k != field}
        with pytest.raises(ResultsError, match=rf"missing \['{field}'\]"):
            ResultsFile(Path("/nonexistent"))._parse(json.dumps(incomplete), 1)


def test_a_row_on_several_processes_is_compared_with_vanilla_on_as_many():
    """A torchrun row's label is "vanilla (2 processes)": the ratios once looked for "vanilla" alone,
    giving none for a DDP sweep and the single-process vanilla's in a mixed folder."""

    def row(method: str, label: str, world: int, nfe: float) -> dict:
        record = fake_record("digits", method, 0, label=label, world_size=world, test_nfe=nfe)
        record["run_id"] += f"-{label}"
        return record

    records = [
        row("vanilla", "vanilla", 1, 40.0),
        row("vanilla", "vanilla (2 processes)", 2, 20.0),
        row("steer", "steer (2 processes)", 2, 10.0),
        row("steer", "steer", 1, 30.0),
    ]
    lines = markdown_table(Group("digits", "cfg", records)).splitlines()
    nfe_ratio = {line.split(" | ")[0].strip("| "): line.split(" | ")[-3] for line in lines[2:]}
    assert nfe_ratio["steer (2 processes)"] == "0.500" and nfe_ratio["steer"] == "0.750"
    assert nfe_ratio["vanilla (2 processes)"] == "1.000"


def test_report_ratios_compare_the_seeds_a_row_shares_with_vanilla():
    """A partial sweep (vanilla without seed 2, a row without seed 0): each ratio is of the means over
    the seeds both have, so the seeds' spread does not enter it (per seed the NFE ratio is 0.5)."""
    records = [fake_record("digits", "vanilla", seed, test_nfe=10.0 * (seed + 1)) for seed in (0, 1)]
    records += [
        fake_record("digits", "steer", seed, label="steer", test_nfe=5.0 * (seed + 1)) for seed in (1, 2)
    ]
    lines = markdown_table(Group("digits", "cfg", records)).splitlines()
    nfe_ratio = {line.split(" | ")[0].strip("| "): line.split(" | ")[-3] for line in lines[2:]}
    assert nfe_ratio == {"vanilla": "1.000", "steer": "0.500"}


def test_ratio_weights_are_rows_in_the_order_of_their_targets():
    records = [fake_record("digits", "vanilla", 0)]
    for target in (0.001, 10.0, 1e-05, 2.0):
        label = f"local-random (w=ratio {target:g})"
        record = fake_record("digits", "local-random", 0, label=label, weight={"ratio": target})
        record["run_id"] += label
        records.append(record)
    labels = Group("digits", "cfg", records).labels()
    assert labels[1:] == [f"local-random (w=ratio {t:g})" for t in (1e-05, 0.001, 2.0, 10.0)]


def test_a_rows_default_weight_comes_first_whatever_its_other_notes():
    """The task's own weight first within a method, then by increasing weight: a row's process count
    or local options are not a weight."""
    weight = "weights.local-random"
    specs = [
        runner.RunSpec("digits", "local-random", 0, "tiny", overrides={weight: 0.1}, processes=2),
        runner.RunSpec("digits", "local-random", 0, "tiny", processes=2),
        runner.RunSpec("digits", "local-random", 0, "tiny", overrides={weight: 0.01}),
        runner.RunSpec("digits", "local-random", 0, "tiny", overrides={"local.probe_scale": 4}),
    ]
    records = [fake_record("digits", "vanilla", 0)]
    for spec in specs:
        record = fake_record("digits", "local-random", 0, label=spec.label, weight=spec.weight)
        record["run_id"] = spec.run_id
        records.append(record)
    labels = Group("digits", "cfg", records).labels()
    assert labels == ["vanilla", *(specs[i].label for i in (1, 3, 2, 0))]


def test_a_non_finite_metric_is_reported_not_a_crash(tmp_path):
    """A diverged run's NaN or inf metric shows as such in its row; the other rows are unchanged."""
    records = [fake_record("digits", "vanilla", seed) for seed in (0, 1)]
    records += [
        fake_record("digits", "steer", 0, label="steer"),
        fake_record("digits", "steer", 1, label="steer"),
    ]
    records[2]["test"]["accuracy"] = math.nan
    records[3]["test_nfe"] = math.inf
    lines = {
        line.split(" | ")[0].strip("| "): line
        for line in markdown_table(Group("digits", "cfg", records)).splitlines()[2:]
    }
    assert "nan ± nan" in lines["steer"] and "inf ± nan" in lines["steer"]
    assert "nan" not in lines["vanilla"] and "inf" not in lines["vanilla"]


def test_report_numbers_switch_to_exponents_only_past_1e16():
    assert _number(999.6, 3) == "1000"
    assert _number(99.8, 2) == "100"
    assert _number(12.34, 3) == "12.3"
    assert _number(123456.0, 3) == "123456"
    assert _number(9.99e15, 3) == "9990000000000000"
    # Near the float maximum it printed as a 309-digit integer.
    assert _number(1.7976931348623157e308, 3) == "1.8e+308"
    assert _number(-2.5e20, 2) == "-2.5e+20"


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # matplotlib placing the dot
def test_a_value_near_the_float_maximum_reads_in_the_table(tmp_path, capsys):
    """Its cell, and its ratio to vanilla's, printed as 309-digit integers."""
    big = 1.7976931348623157e308
    records = [
        fake_record("digits", "vanilla", 0),
        fake_record("digits", "steer", 0, label="steer", test_nfe=big),
    ]
    write_records(tmp_path, records)
    assert main(["report", "--out", str(tmp_path)]) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| steer |")]
    assert "| 1.8e+308 | 8.99e+306 |" in row and len(row) < 200


def test_time_excluded_inside_a_running_clock_is_not_counted(monkeypatch):
    now = {"wall": 0.0, "cpu": 0.0}
    monkeypatch.setattr(runner.time, "perf_counter", lambda: now["wall"])
    monkeypatch.setattr(runner.time, "process_time", lambda: now["cpu"])

    def spend(seconds: float) -> None:
        now["wall"] += seconds
        now["cpu"] += seconds

    clock = runner.Clock()
    with clock.running():
        spend(2.0)
        with clock.excluded():
            spend(5.0)
        spend(1.0)
    assert (clock.wall, clock.cpu) == (3.0, 3.0)


def test_the_kinetic_study_setting_drops_the_papers_probe():
    """``--set local.penalty=kinetic`` beside a weight: the paper's probe options go with the
    paper's penalty, not with the kinetic one (which refuses probe options)."""
    from local_reg.experiments.methods import local_options

    kinetic = local_options({"ratio": 1}, {"local": {"penalty": "kinetic"}})
    assert kinetic == {"penalty": "kinetic", "n_draws": 1}
    assert local_options({"ratio": 1}, {}) == {"probe": "initial", "penalty": "error-dt", "n_draws": 1}
    assert local_options({"ratio": 1}, {"local": {"n_draws": 2}})["n_draws"] == 2
    assert local_options(None, {}) == {}
    spec = runner.RunSpec(
        "digits",
        "local-random",
        0,
        "tiny",
        "direct",
        {"weights.local-random": {"ratio": 1}, "local.penalty": "kinetic"},
    )
    settings = spec.settings()
    model = REGISTRY["digits"].build_model(
        settings, runner.ModelContext(runner.METHODS["local-random"], "direct", 1)
    )
    (block,) = runner.solver_blocks(model)
    assert block.penalty.penalty == "kinetic"


STEER_TASKS = [name for name, task in REGISTRY.items() if "steer" in task.methods]


@pytest.mark.parametrize("task", STEER_TASKS)
def test_steer_stays_inside_each_tasks_last_interval(task, tmp_path, capsys):
    """STEER's half-width b must be smaller than the last output interval: the task's default is,
    the interval a task states is the one its training solves over (b just below it passes STEER's
    own check on a training batch), and b at it is refused before any training, naming the setting."""
    overrides = ["--set", "observation_times=grid"] if task == "latent_ode" else []
    settings = REGISTRY[task].settings("tiny")
    if task == "latent_ode":
        settings["observation_times"] = "grid"
    interval = REGISTRY[task].last_interval(settings)
    assert settings["weights"]["steer"] < interval
    settings["weights"]["steer"] = 0.999 * interval
    context = runner.ModelContext(runner.METHODS["steer"], "direct", 1)
    model = REGISTRY[task].build_model(settings, context)
    batch = next(iter(torch.utils.data.DataLoader(REGISTRY[task].load_data(settings, 0).train, batch_size=2)))
    REGISTRY[task].training_loss(model.train(), batch)  # draws an end time within b of the last
    assert run(tmp_path, task, "--methods", "steer", *overrides, "--set", f"weights.steer={interval!r}") == 2
    assert f"weights.steer={interval:g} must be smaller than the last interval" in capsys.readouterr().err
    assert not (tmp_path / "results.jsonl").exists()


def test_a_torchrun_environment_is_checked_before_any_training(tmp_path, monkeypatch, capsys):
    # A global batch the processes do not divide trained another batch than the recorded one;
    # WORLD_SIZE set by hand, without torchrun, was a 26-line traceback.
    no_training(monkeypatch)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert run(tmp_path, "digits", "--methods", "vanilla", "--set", "batch_size=3") == 2
    assert "batch_size=3 is not a multiple of the 2 processes torchrun started" in capsys.readouterr().err
    monkeypatch.delenv("RANK", raising=False)
    assert run(tmp_path, "digits", "--methods", "vanilla", "--set", "batch_size=4") == 2
    err = capsys.readouterr().err
    assert err.startswith("local-reg: error: WORLD_SIZE=2 but no process group to join")
    assert err.count("\n") == 1


@pytest.mark.parametrize("key", ["train_size", "test_size"])
def test_a_size_beyond_the_data_is_refused_not_recorded_as_asked(tmp_path, capsys, key):
    # It used to train on all of the part and record the larger size as the run's setting.
    assert run(tmp_path, "digits", "--methods", "vanilla", "--set", f"{key}=100000") == 2
    err = capsys.readouterr().err
    assert f"{key}=100000 is more than the" in err and "null for all of it" in err
    results = tmp_path / "results.jsonl"
    assert not results.exists() or not results.read_text(encoding="utf-8")


def test_the_held_out_script_refuses_to_mix_runs_of_other_settings(tmp_path):
    """Its result files are named by task, method and seed only: a rerun with other ``--epochs``
    skipped training and printed the earlier settings' table as the new one."""
    script = Path(__file__).parents[1] / "experiments" / "new_user_heldout.py"
    command = [sys.executable, str(script), "--out", str(tmp_path), "--tasks", "wine", "--methods", "vanilla"]
    command += ["--seeds", "1", "--epochs"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run([*command, "1"], capture_output=True, text=True, env=environment, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    saved = (tmp_path / "wine_vanilla_s0.json").read_text(encoding="utf-8")
    second = subprocess.run([*command, "2"], capture_output=True, text=True, env=environment, timeout=300)
    assert second.returncode != 0
    assert "was trained with epochs=1 (asked: 2): pass another --out" in second.stderr
    assert (tmp_path / "wine_vanilla_s0.json").read_text(encoding="utf-8") == saved


def test_decaying_weights_are_rows_in_the_order_of_their_start():
    records = [fake_record("digits", "vanilla", 0)]
    for start in (10.0, 2.5, 0.5):
        label = f"local-random (w={start:g}->1)"
        record = fake_record("digits", "local-random", 0, label=label, weight={"start": start, "end": 1.0})
        record["run_id"] += label
        records.append(record)
    labels = Group("digits", "cfg", records).labels()
    assert labels[1:] == [f"local-random (w={s:g}->1)" for s in (0.5, 2.5, 10.0)]


def test_small_numbers_keep_their_exponent_in_the_table():
    records = [
        fake_record("lotka", "vanilla", seed, train={"mse": 1.234e-05}, test={"mse": 2.5e-06 * (seed + 1)})
        for seed in (0, 1)
    ]
    row = markdown_table(Group("lotka", "cfg", records)).splitlines()[2].split(" | ")
    assert row[3:5] == ["1.23e-05 ± 0", "3.75e-06 ± 1.8e-06"]


def test_a_row_of_one_seed_shows_its_value_without_an_sd():
    (row,) = markdown_table(Group("digits", "cfg", [fake_record("digits", "vanilla", 0)])).splitlines()[2:]
    assert row == "| vanilla | – | 1 | 50 | 50 | 1 | 10 | 20 | 1.000 | 1.000 | 1.000 |"


def test_a_wall_time_report_reads_wall_times_in_its_ratios_and_says_so(tmp_path, capsys):
    records = [fake_record("digits", "vanilla", 0, train_time=4.0, predict_time=0.04)]
    records.append(fake_record("digits", "steer", 0, label="steer", train_time=2.0, predict_time=0.01))
    write_records(tmp_path, records)
    assert main(["report", "--out", str(tmp_path), "--timing", "wall"]) == 0
    out = capsys.readouterr().out
    assert "times are wall time." in out
    row = next(line for line in out.splitlines() if line.startswith("| steer |"))
    assert row.split(" | ")[-3:] == ["1.000", "0.500", "0.250 |"]  # CPU times are equal


def test_a_tables_description_names_its_tolerances_and_world_sizes(tmp_path, capsys):
    settings = {"epochs": 1, "batch_size": 32, "solver": {"method": "tsit5", "rtol": 1e-3, "atol": 1e-6}}
    ddp = dict(label="vanilla (2 processes)", world_size=2, run_id="p2")
    records = [fake_record("digits", "vanilla", 0, settings=settings)]
    records.append(fake_record("digits", "vanilla", 0, settings=settings, **ddp))
    write_records(tmp_path, records)
    assert main(["report", "--out", str(tmp_path)]) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("size ")]
    assert "tsit5 rtol=0.001 atol=1e-06" in line and "world sizes 1, 2 (by row)" in line


def test_a_table_whose_runs_used_different_torch_threads_says_so(tmp_path, capsys):
    """``--threads`` changes the times only, so its runs share a table: the description names the
    counts, and says when they are mixed (a row's times then do not compare)."""
    settings = {"epochs": 1, "batch_size": 32}
    records = [fake_record("digits", "vanilla", seed, settings=settings, threads=1) for seed in (0, 1)]
    records.append(fake_record("digits", "vanilla", 2, settings=settings, threads=2))
    group = Group("digits", "cfg", records)
    assert "torch threads 1, 2 mixed (their times do not compare)" in describe(group)
    assert "1 torch thread(s)" in describe(Group("digits", "cfg", records[:2]))


def test_a_record_names_the_versions_of_local_reg_and_torch_that_wrote_it(tmp_path):
    """And a hash of local_reg's sources, which changes with the code where its version (never
    bumped) does not: each .py file's path in the package, its length and its bytes, by path."""
    assert run(tmp_path, "spiral", "--methods", "vanilla") == 0
    (record,) = ResultsFile(tmp_path).load()
    assert (record["local_reg"], record["torch"]) == (local_reg.__version__, torch.__version__)
    package = Path(local_reg.__file__).parent
    sources = hashlib.sha256()
    for name in sorted(path.relative_to(package).as_posix() for path in package.rglob("*.py")):
        data = (package / name).read_bytes()
        sources.update(f"{name}\0{len(data)}\0".encode() + data)
    assert record["local_reg_source"] == sources.hexdigest()[:12]


def test_a_record_without_versions_loads_and_one_with_a_version_not_a_string_is_refused(tmp_path, capsys):
    write_records(tmp_path, [fake_record("digits", "vanilla", 0)])  # written before versions were
    assert main(["report", "--out", str(tmp_path)]) == 0
    assert "| vanilla | – | 1 |" in capsys.readouterr().out
    for field in ("local_reg", "local_reg_source", "torch"):
        write_records(tmp_path, [fake_record("digits", "vanilla", 0, **{field: 1.0})])
        with pytest.raises(ResultsError, match=f"wrong types or values: {{'{field}': 1.0}}"):
            ResultsFile(tmp_path).load()


def test_a_table_whose_runs_other_versions_wrote_says_so():
    settings = {"epochs": 1, "batch_size": 32}
    versions = {"local_reg": "0.1.0", "local_reg_source": "0123456789ab", "torch": "2.13.0"}
    records = [fake_record("digits", "vanilla", seed, settings=settings, **versions) for seed in (0, 1)]
    assert "version" not in describe(Group("digits", "cfg", records))
    # The same version from other sources (a rerun into the same --out after the code changed).
    newer = {**versions, "local_reg_source": "ba9876543210"}
    records.append(fake_record("digits", "vanilla", 2, settings=settings, **newer))
    text = describe(Group("digits", "cfg", records))
    assert "local_reg sources 0123456789ab, ba9876543210 mixed" in text and "versions" not in text
    records.append(fake_record("digits", "vanilla", 3, settings=settings, local_reg="0.2.0", torch="2.13.0"))
    records.append(fake_record("digits", "vanilla", 4, settings=settings))  # an older record
    text = describe(Group("digits", "cfg", records))
    assert "local_reg versions 0.1.0, 0.2.0, unrecorded mixed" in text
    assert "local_reg sources 0123456789ab, ba9876543210, unrecorded mixed" in text
    assert "torch versions 2.13.0, unrecorded mixed" in text


def test_weights_and_local_options_label_rows_not_the_tables_description():
    overrides = {"weights.local-random": 0.5, "local.probe_scale": 4, "lr": 0.05}
    spec = runner.RunSpec("digits", "local-random", 0, "tiny", overrides=overrides)
    settings = json.loads(json.dumps(spec.settings()))
    record = fake_record("digits", "local-random", 0, label=spec.label, weight=0.5, settings=settings)
    assert describe(Group("digits", spec.config_id, [record])).endswith(", set: lr=0.05")


def test_the_nfe_curve_is_smoothed_by_a_trailing_mean():
    assert _smooth([1.0, 3.0, 5.0, 7.0, 9.0], 2) == [1.0, 2.0, 4.0, 6.0, 8.0]
    assert _smooth([4.0, 2.0], 1) == [4.0, 2.0]


def test_the_nfe_curve_leaves_a_non_finite_value_out_of_its_windows():
    """One inf kept the running sum at inf (then nan) for the rest of the curve."""
    smoothed = _smooth([1.0, math.inf, 5.0, 7.0, math.nan, 9.0], 2)
    assert smoothed == [1.0, 1.0, 5.0, 6.0, 7.0, 9.0]
    gap = _smooth([1.0, math.inf, 3.0], 1)
    assert gap[0] == 1.0 and math.isnan(gap[1]) and gap[2] == 3.0  # a window of none: a gap
    # Finite values whose sum overflows: the windows past them are as without them.
    big = 1.7976931348623157e308
    assert _smooth([big, big, 2.0, 4.0], 2) == [big, big, big / 2 + 1.0, 3.0]


def test_the_nfe_curve_keeps_no_rounding_of_a_large_sum_past_its_window():
    """A running sum that passed 2**53 and came back below it in the same step (the large value
    entering, another leaving) kept its rounding for the rest of the curve."""
    assert _smooth([33.0, 2.0**53, 114.0, 10.0, 10.0], 1) == [33.0, 2.0**53, 114.0, 10.0, 10.0]
    assert _smooth([51.0, 49.0, 2.0**53 - 61, 10.0, 10.0, 10.0, 10.0], 2)[-3:] == [10.0] * 3
    draw = random.Random(0)
    for _ in range(2000):
        window = draw.randint(1, 4)
        values = [
            float(
                draw.choice(
                    [draw.randint(0, 200), 2**53 - draw.randint(0, 200), 2**53 + 2 * draw.randint(0, 100)]
                )
            )
            for _ in range(draw.randint(1, 10))
        ]
        windows = [values[max(0, i + 1 - window) : i + 1] for i in range(len(values))]
        assert _smooth(values, window) == [math.fsum(w) / len(w) for w in windows], (values, window)


def test_the_nfe_figure_names_the_iterations_it_leaves_out(tmp_path, monkeypatch):
    drawn = {}

    def keep(fig, ax, path):
        drawn[Path(path).name] = ax
        report_module.plt.close(fig)

    monkeypatch.setattr(report_module, "_save", keep)
    history = {"nfe": [10, math.inf, 30, 40], "loss": [1.0] * 4}
    report_module.write_report(tmp_path, [fake_record("digits", "vanilla", 0, history=history)])
    (nfe_axes,) = (ax for name, ax in drawn.items() if name.endswith("_nfe.png") and "_vs_" not in name)
    (line,) = nfe_axes.get_lines()
    assert line.get_label() == "vanilla (1 iteration with a non-finite NFE left out)"
    curve = list(line.get_ydata())  # one iteration's window: the left-out point is a gap
    assert curve[0] == 10.0 and math.isnan(curve[1]) and curve[2:] == [30.0, 40.0]


def test_the_figures_plot_the_seeds_mean_nfe_and_each_seeds_test_metric(tmp_path, monkeypatch):
    """What the two figures draw, read from their axes: the NFE curve is the mean over the seeds,
    the dots are each seed's test metric (in percent for accuracy) at its test NFE. Only their PNG
    signature was checked: a curve of the first seed, or the train metric, passed."""
    drawn = {}

    def keep(fig, ax, path):
        drawn[Path(path).name] = ax
        report_module.plt.close(fig)

    monkeypatch.setattr(report_module, "_save", keep)
    records = [
        fake_record("digits", "vanilla", 0, test_nfe=30.0, test={"accuracy": 0.9}, history={"nfe": [10, 20]}),
        fake_record("digits", "vanilla", 1, test_nfe=50.0, test={"accuracy": 0.7}, history={"nfe": [30, 40]}),
    ]
    report_module.write_report(tmp_path, records)
    (nfe_axes,) = (ax for name, ax in drawn.items() if name.endswith("_nfe.png") and "_vs_" not in name)
    (metric_axes,) = (ax for name, ax in drawn.items() if name.endswith("_accuracy_vs_nfe.png"))
    assert list(nfe_axes.get_lines()[0].get_ydata()) == [20.0, 30.0]
    dots = metric_axes.collections[0].get_offsets()
    assert [list(map(float, dot)) for dot in dots] == [[30.0, 90.0], [50.0, 70.0]]


def test_seeds_with_histories_of_other_lengths_are_plotted_to_the_shortest(tmp_path):
    longer = {"nfe": [10, 12, 14], "loss": [1.0, 0.9, 0.8]}
    records = [fake_record("digits", "vanilla", 0), fake_record("digits", "vanilla", 1, history=longer)]
    write_records(tmp_path, records)
    assert main(["report", "--out", str(tmp_path)]) == 0
    curves = list(tmp_path.glob("*_nfe.png"))  # the NFE curve over the iterations both seeds have
    assert curves and all(curve.stat().st_size > 0 for curve in curves)
    assert "| vanilla | – | 2 |" in (tmp_path / "report.md").read_text(encoding="utf-8")


def test_checking_a_folders_records_writes_nothing_into_it(tmp_path):
    write_records(tmp_path, [fake_record("digits", "vanilla", 0)])
    check_report(tmp_path, ResultsFile(tmp_path).load())
    assert sorted(path.name for path in tmp_path.iterdir()) == ["results.jsonl"]


def test_an_interrupted_atomic_write_leaves_the_file_and_no_stray_copy(tmp_path, monkeypatch):
    """Ctrl-C (or a full disk) during the write of a results file or checkpoint: the target stays
    as it was, and the temporary file goes too (it was left behind, one per process id, each the
    size of a checkpoint, never cleaned up)."""
    from local_reg.experiments.results import atomic_write_bytes

    target = tmp_path / "results.jsonl"
    target.write_bytes(b"kept\n")

    def interrupted(descriptor):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(target, b"kept\nnew\n")
    assert target.read_bytes() == b"kept\n" and sorted(p.name for p in tmp_path.iterdir()) == [
        "results.jsonl"
    ]


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path):
    """A SIGKILL between writing the temporary file and replacing the target left
    ``.<name>.<pid>.tmp`` for good (a checkpoint's size each). The next write of that file removes
    those of this host's processes no longer running; a running one's, and another host's (a
    shared folder), stay."""
    from local_reg.experiments.results import _host, atomic_write_bytes

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead, alive = int(finished.stdout), os.getppid()
    target = tmp_path / "results.jsonl"
    left = {
        "dead": tmp_path / f".results.jsonl.{_host()}.{dead}.tmp",
        "alive": tmp_path / f".results.jsonl.{_host()}.{alive}.tmp",
        "elsewhere": tmp_path / f".results.jsonl.another-host.{dead}.tmp",
        "other file": tmp_path / f".report.md.{_host()}.{dead}.tmp",
    }
    for path in left.values():
        path.write_bytes(b"partial")
    atomic_write_bytes(target, b"new\n")
    assert target.read_bytes() == b"new\n"
    assert not left["dead"].exists()
    assert all(left[name].exists() for name in ("alive", "elsewhere", "other file"))


def test_a_full_disk_exits_2_naming_the_file(tmp_path, monkeypatch, capsys):
    """A full disk's OSError names no file, so the CLI took it for one outside the results folder
    and printed a traceback (exit 1); it is now the one line, naming the file being written."""
    import errno

    def full(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    count_training_calls(monkeypatch)
    assert run(tmp_path, "digits", "--methods", "vanilla") == 2
    err = capsys.readouterr().err
    assert "local-reg: error: No space left on device: '" in err and str(tmp_path) in err
    assert "Traceback" not in err and not list(tmp_path.rglob("*.tmp"))


# --- folders shared with other users, other processes, and full disks -------------------------


def _refuse_writing(monkeypatch, *names: str) -> None:
    """Opening a file named in ``names`` for writing fails as for another user's file (mode 644) in
    a folder shared with write access; reading it works."""
    real_os_open, real_io_open = os.open, io.open

    def denied(path: object) -> bool:
        return isinstance(path, (str, os.PathLike)) and Path(path).name in names

    def os_open(path, flags, *args, **kwargs):
        if denied(path) and flags & (os.O_WRONLY | os.O_RDWR):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_os_open(path, flags, *args, **kwargs)

    def io_open(file, mode="r", *args, **kwargs):
        if denied(file) and any(c in mode for c in "wax+"):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_io_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(io, "open", io_open)


def test_lock_files_another_user_left_do_not_stop_a_sweep(tmp_path, monkeypatch):
    """A lock is an flock, which a file opened for reading takes: another user's lock files (a
    killed sweep's run lock, the results file's) stopped the sweep, one after training its run."""
    run_id = runner.RunSpec("digits", "vanilla", 0, "tiny").run_id
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / f"{run_id}.lock").write_text("4242\n")
    (tmp_path / ".results.jsonl.lock").touch()
    _refuse_writing(monkeypatch, f"{run_id}.lock", ".results.jsonl.lock")
    assert run(tmp_path, "digits", "--methods", "vanilla") == 0
    (record,) = ResultsFile(tmp_path).load()
    assert record["run_id"] == run_id


def test_a_read_only_results_file_is_refused_before_training(tmp_path, monkeypatch, capsys):
    # The atomic replace would have extended it regardless of its mode.
    path = write_records(tmp_path, [fake_record("digits", "vanilla", 1)])
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode, **k: False if Path(p) == path else real_access(p, mode, **k)
    )
    no_training(monkeypatch)
    assert run(tmp_path, "digits", "--methods", "vanilla") == 2
    message = f"local-reg: error: {path} is read-only: make it writable, or choose another --out"
    assert capsys.readouterr().err.splitlines() == [message]
    with pytest.raises(ResultsError, match="is read-only"):
        ResultsFile(tmp_path).append(fake_record("digits", "vanilla", 2))


def test_a_results_file_that_is_a_link_is_refused_and_a_file_keeps_its_mode(tmp_path, monkeypatch, capsys):
    """The replace made a linked results file one of its own, the file it named left behind."""
    store = tmp_path / "store"
    store.mkdir()
    shared = write_records(store, [fake_record("digits", "vanilla", 0)])
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.jsonl").symlink_to(shared)
    no_training(monkeypatch)
    assert run(out, "digits", "--methods", "vanilla") == 2
    assert "results.jsonl is a symbolic link, which the write would replace" in capsys.readouterr().err
    with pytest.raises(ResultsError, match="is a symbolic link"):
        ResultsFile(out).append(fake_record("digits", "vanilla", 1))
    assert (out / "results.jsonl").is_symlink() and len(ResultsFile(store).load()) == 1
    shared.chmod(0o640)
    ResultsFile(store).append(fake_record("digits", "vanilla", 1))
    assert stat.S_IMODE(shared.stat().st_mode) == 0o640  # it became 0o644 (the umask's)


def test_another_users_results_file_in_a_sticky_folder_is_refused_before_training(
    tmp_path, monkeypatch, capsys
):
    # The replace is not permitted there: the run trained, then could not be recorded.
    path = write_records(tmp_path, [fake_record("digits", "vanilla", 1)])
    tmp_path.chmod(0o1777)
    monkeypatch.setattr(
        os, "geteuid", lambda: os.stat(path).st_uid + 4242
    )  # neither the file's nor the folder's
    no_training(monkeypatch)
    assert run(tmp_path, "digits", "--methods", "vanilla") == 2
    assert "belongs to another user, in a folder with the sticky bit" in capsys.readouterr().err


def test_numbers_whose_sum_overflows_are_reported_not_a_crash(tmp_path):
    # Finite values near the float maximum (a diverged fit's loss, or a hand edit): fmean raised.
    records = [fake_record("digits", "vanilla", seed, test_nfe=8e307) for seed in (0, 1, 2)]
    write_records(tmp_path, records)
    assert main(["report", "--out", str(tmp_path)]) == 0
    assert "| vanilla | – | 3 | " in (tmp_path / "report.md").read_text(encoding="utf-8")


def test_a_linked_results_file_is_read_though_never_replaced(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    write_records(store, [fake_record("digits", "vanilla", 0)])
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.jsonl").symlink_to(store / "results.jsonl")
    assert main(["report", "--out", str(out)]) == 0  # the write refusal had made reading fail too


def test_values_matplotlib_cannot_draw_leave_their_figures_out_not_the_report(tmp_path, capsys):
    # test_nfe 1e308 raised matplotlib's ValueError (a traceback), before training too.
    write_records(tmp_path, [fake_record("digits", "vanilla", 0, test_nfe=1e308)])
    assert main(["report", "--out", str(tmp_path)]) == 0
    assert "its figures are left out, as matplotlib cannot draw its values" in capsys.readouterr().err
    assert "(figures left out" in (tmp_path / "report.md").read_text(encoding="utf-8")


def test_infinities_of_both_signs_make_a_mean_nan_not_a_crash(tmp_path):
    # A diverged metric is a number (is_number); -inf beside inf raised fsum's ValueError.
    records = [
        fake_record("digits", "vanilla", seed, test_nfe=v) for seed, v in enumerate((math.inf, -math.inf))
    ]
    write_records(tmp_path, records)
    assert main(["report", "--out", str(tmp_path)]) == 0


def test_a_sweep_called_from_python_refuses_a_linked_results_file_before_training(tmp_path, monkeypatch):
    store = tmp_path / "store"
    store.mkdir()
    write_records(store, [fake_record("digits", "vanilla", 0)])
    (tmp_path / "results.jsonl").symlink_to(store / "results.jsonl")
    no_training(monkeypatch)
    with pytest.raises(ResultsError, match="is a symbolic link"):
        runner.sweep("digits", ["vanilla"], [1], tmp_path, size="tiny", progress=False)


def test_a_figure_that_fails_to_write_leaves_the_one_before(tmp_path, monkeypatch, capsys):
    """A full disk truncated the previous report's PNG (written in place) and ended in a traceback."""
    write_records(tmp_path, [fake_record("digits", "vanilla", 0)])
    assert main(["report", "--out", str(tmp_path)]) == 0
    figures = sorted(tmp_path.glob("*.png"))
    before = [figure.read_bytes() for figure in figures]

    class FullDisk(io.BufferedWriter):
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    real_open = builtins.open

    def opened(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and ".png" in Path(file).name and "w" in mode:
            return FullDisk(io.FileIO(file, "w"))  # truncated, as a full disk leaves it
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", opened)
    monkeypatch.setattr(io, "open", opened)
    capsys.readouterr()
    assert main(["report", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and ".png" in err[0]  # not a traceback
    assert [figure.read_bytes() for figure in figures] == before
    assert not list(tmp_path.glob(".*.tmp"))


def test_checking_the_records_writes_no_figure_anywhere(tmp_path, monkeypatch):
    # Its figures went to a temporary folder: a full /tmp stopped every sweep before training.
    write_records(tmp_path, [fake_record("digits", "vanilla", 0)])
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no such folder"))
    check_report(tmp_path, ResultsFile(tmp_path).load())
    assert sorted(path.name for path in tmp_path.iterdir()) == ["results.jsonl"]


def test_a_folder_at_a_figures_name_is_refused_before_training(tmp_path, monkeypatch, capsys):
    """The run was trained, then its report failed."""
    config_id = runner.RunSpec("digits", "vanilla", 0, "tiny").config_id
    (tmp_path / f"digits-{config_id}_nfe.png").mkdir()
    no_training(monkeypatch)
    assert run(tmp_path, "digits", "--methods", "vanilla") == 2
    assert f"digits-{config_id}_nfe.png is not a file" in capsys.readouterr().err


def test_a_checkpoint_this_process_may_not_read_is_named_and_kept(tmp_path, monkeypatch, capsys):
    """It was moved aside as corrupt and its run restarted: the training in it was lost."""
    checkpoint = tmp_path / "checkpoints" / f"{runner.RunSpec('digits', 'vanilla', 0, 'tiny').run_id}.pt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"another user's checkpoint")

    def denied(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(runner.torch, "load", denied)
    assert run(tmp_path, "digits", "--methods", "vanilla") == 2
    assert f"Permission denied: '{checkpoint}'" in capsys.readouterr().err
    assert checkpoint.read_bytes() == b"another user's checkpoint"
    assert not list(checkpoint.parent.glob("*.corrupt-*"))


def test_a_checkpoint_with_a_history_of_another_shape_is_set_aside(tmp_path, monkeypatch, capsys):
    # An AttributeError escaped as a traceback.
    spec = runner.RunSpec("digits", "vanilla", 0, "tiny")
    runner.train_run(spec, tmp_path / "source", progress=False)
    state = torch.load(tmp_path / "source" / "checkpoints" / f"{spec.run_id}.pt", weights_only=True)
    state["history"] = [1, 2]
    (tmp_path / "checkpoints").mkdir()
    torch.save(state, tmp_path / "checkpoints" / f"{spec.run_id}.pt")
    assert run(tmp_path, "digits", "--methods", "vanilla") == 0
    assert "its run restarts" in capsys.readouterr().err
    assert (tmp_path / "checkpoints" / f"{spec.run_id}.pt.corrupt-1").exists()


def test_records_without_cpu_times_name_the_report_that_reads_them(tmp_path, capsys):
    old = fake_record("digits", "vanilla", 0)
    del old["train_cpu_time"], old["predict_cpu_time"]
    write_records(tmp_path, [old])
    assert main(["report", "--out", str(tmp_path)]) == 2
    assert "`local-reg report --timing wall` reads them" in capsys.readouterr().err
    assert main(["report", "--out", str(tmp_path), "--timing", "wall"]) == 0


def test_the_report_prints_on_a_stdout_that_cannot_show_its_symbols(tmp_path, monkeypatch):
    """A C locale without UTF-8 mode (or cp1252): ``±`` and ``↑`` stopped the command with a
    traceback after its runs were recorded, on every rerun."""
    write_records(tmp_path, [fake_record("digits", "vanilla", 0), fake_record("digits", "vanilla", 1)])
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    monkeypatch.setattr(sys, "stdout", stdout)
    assert main(["report", "--out", str(tmp_path)]) == 0
    stdout.flush()
    printed = stdout.buffer.getvalue().decode("ascii")
    assert "\\xb1" in printed  # the ± of "mean ± sd", escaped
    assert "±" in (tmp_path / "report.md").read_text(encoding="utf-8")


def test_a_folder_whose_name_is_no_utf8_gets_its_report(tmp_path, capsys):
    # Its name (held with surrogates) made writing report.md fail after the runs were recorded.
    out = tmp_path / os.fsdecode(b"out_\xe9")
    out.mkdir()
    write_records(out, [fake_record("digits", "vanilla", 0)])
    assert main(["report", "--out", str(out)]) == 0
    assert b"out_\xe9/results.jsonl" in (out / "report.md").read_bytes()
    assert "out_\\udce9" in capsys.readouterr().out


def test_a_sweeps_errors_come_back_from_a_worker_process():
    """They pickled as ``type(self)(*args)``, which their messages are not: a sweep that failed in
    a worker process broke a ``ProcessPoolExecutor`` and left ``multiprocessing.Pool.apply``
    waiting for ever (an ``Interrupted``, a ``KeyboardInterrupt``, ends a Pool's worker all the same)."""
    failed = runner.RunsFailed([("digits-vanilla-seed0-cfg", ValueError("diverged"))])
    again = pickle.loads(pickle.dumps(failed))
    assert str(again) == str(failed) and again.failures[0][0] == "digits-vanilla-seed0-cfg"
    interrupted = runner.Interrupted("digits-vanilla-seed0-cfg", Path("c.pt"), 1, 3)
    again = pickle.loads(pickle.dumps(interrupted))
    assert (again.run_id, again.checkpoint, again.epoch, again.epochs) == (
        "digits-vanilla-seed0-cfg",
        Path("c.pt"),
        1,
        3,
    )
