"""The experiments end to end at a tiny size: results lines, table and plots; resume; bad input."""

from __future__ import annotations

import json
import math
import re
import shlex
import sys
import types

import pytest
import torch

import local_reg
from local_reg import demo
from local_reg.experiments import runner
from local_reg.experiments.cli import main
from local_reg.experiments.results import ResultsError, ResultsFile
from local_reg.experiments.settings import SettingsError
from local_reg.experiments.tasks import REGISTRY
from local_reg.experiments.tasks.latent_ode import PHYSIONET_VARIABLES, load_physionet

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(out, *args: str) -> int:
    return main(["experiment", *args, "--size", "tiny", "--seeds", "1", "--out", str(out), "--no-progress"])


def check_outputs(out, task: str, methods: list[str]) -> list[dict]:
    records = ResultsFile(out).load()
    assert [r["method"] for r in records] == methods
    metric = REGISTRY[task].metric
    for record in records:
        assert record["task"] == task and record["world_size"] == 1 and record["threads"] == 1  # --threads
        assert record["test_nfe"] > 0 and record["predict_time"] > 0 and record["train_time"] > 0
        assert math.isfinite(record["test"][metric]) and math.isfinite(record["train"][metric])
        assert len(record["history"]["nfe"]) == record["iterations"] > 0
    report = (out / "report.md").read_text(encoding="utf-8")
    for method in methods:
        assert f"| {method} |" in report
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 2
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in pngs)
    return records


@pytest.mark.parametrize(
    "task",
    [
        "digits",
        "mnist",
        "latent_ode",
        "spiral",
        "synthetic",
        "lotka",
        "quantiles",
        "pendulum",
        "mnist1d",
        "vanderpol",
        "nsde_mnist1d",
    ],
)
def test_task_writes_results_table_and_plots(task, tmp_path, capsys):
    assert run(tmp_path, task, "--methods", "vanilla", "local-random") == 0
    records = check_outputs(tmp_path, task, ["vanilla", "local-random"])
    # Regularization is a training-time cost only: the regularizer evaluated the field in training.
    assert sum(records[1]["history"]["reg_nfe"]) > 0 and sum(records[0]["history"]["reg_nfe"]) == 0
    # A plain model has no penalty whose gradient ratio could be measured (it recorded NaN).
    assert records[0]["history"]["grad_ratio"] == [] and records[1]["history"]["grad_ratio"]
    table = capsys.readouterr().out
    assert "| method |" in table and "NFE / vanilla" in table
    better = "↑" if REGISTRY[task].higher_is_better else "↓"
    assert f"| test {REGISTRY[task].metric}" in table and f"{better} |" in table


def test_biased_and_global_methods_run(tmp_path):
    methods = ["local-biased", "global-error", "global-stiffness"]
    assert run(tmp_path, "digits", "--methods", *methods) == 0
    records = check_outputs(tmp_path, "digits", methods)
    assert all(max(r["history"]["reg_loss"]) > 0 for r in records)


def test_resume_skips_finished_runs(tmp_path, monkeypatch, capsys):
    assert run(tmp_path, "digits", "--methods", "vanilla") == 0
    before = (tmp_path / "results.jsonl").read_bytes()
    monkeypatch.setattr(runner, "train_run", lambda *a, **k: pytest.fail("a finished run was trained again"))
    assert run(tmp_path, "digits", "--methods", "vanilla") == 0
    assert (tmp_path / "results.jsonl").read_bytes() == before
    assert "skip digits-vanilla-seed0-" in capsys.readouterr().err


def test_a_run_whose_solver_fails_leaves_the_sweep_going(tmp_path, monkeypatch, capsys):
    """A fit that diverges (a SolverError) used to end the sweep with a traceback, the remaining
    runs untrained: now they train and are reported, and the exit code says runs failed."""
    train_run = runner.train_run

    def diverging_vanilla(spec, *args, **kwargs):
        if spec.method == "vanilla":
            raise local_reg.SolverError("max_steps=10000 exceeded", t=0.25, n_steps=10000)
        return train_run(spec, *args, **kwargs)

    monkeypatch.setattr(runner, "train_run", diverging_vanilla)
    assert run(tmp_path, "digits", "--methods", "vanilla", "local-random") == 3
    assert [r["method"] for r in ResultsFile(tmp_path).load()] == ["local-random"]
    err = capsys.readouterr().err
    assert "run digits-vanilla-seed0-" in err and "failed, the sweep goes on: max_steps=10000 exceeded" in err
    assert "1 run(s) failed" in err and (tmp_path / "report.md").exists()
    monkeypatch.setattr(runner, "train_run", train_run)
    assert run(tmp_path, "digits", "--methods", "vanilla", "local-random") == 0  # retried, recorded
    assert sorted(r["method"] for r in ResultsFile(tmp_path).load()) == ["local-random", "vanilla"]


def test_tables_of_one_task_under_other_settings_say_what_was_set(tmp_path):
    """Their descriptions were identical (only the config id told them apart)."""
    assert run(tmp_path, "digits", "--methods", "vanilla") == 0
    assert (
        run(tmp_path, "digits", "--methods", "vanilla", "--set", "lr=0.05", "--set", "solver.rtol=1e-5") == 0
    )
    descriptions = [
        line
        for line in (tmp_path / "report.md").read_text(encoding="utf-8").splitlines()
        if line.startswith("size ")
    ]
    assert len(descriptions) == 2
    assert sum(line.endswith("set: lr=0.05, solver.rtol=1e-05") for line in descriptions) == 1
    assert sum("set:" not in line for line in descriptions) == 1


def test_a_record_lacking_a_field_the_report_reads_is_named(tmp_path, capsys):
    assert run(tmp_path, "digits", "--methods", "vanilla") == 0
    (record,) = ResultsFile(tmp_path).load()
    del record["train_cpu_time"]
    (tmp_path / "results.jsonl").write_text(json.dumps(record) + "\n")
    capsys.readouterr()
    assert main(["report", "--out", str(tmp_path)]) == 2
    assert "lacks the field 'train_cpu_time' the report reads" in capsys.readouterr().err
    # A field of the wrong type (edited by hand) likewise: it was a TypeError's traceback.
    for field, value in (("train_cpu_time", None), ("history", None)):
        edited = {**record, "train_cpu_time": 1.0, field: value}
        (tmp_path / "results.jsonl").write_text(json.dumps(edited) + "\n")
        assert main(["report", "--out", str(tmp_path)]) == 2
        assert "where the report reads numbers" in capsys.readouterr().err


def test_a_sweep_names_a_record_the_report_cannot_read_before_it_trains(tmp_path, capsys, monkeypatch):
    """The sweep trained first and failed at the report after it."""
    assert run(tmp_path, "digits", "--methods", "vanilla") == 0
    (record,) = ResultsFile(tmp_path).load()
    del record["history"]
    (tmp_path / "results.jsonl").write_text(json.dumps(record) + "\n")
    trained = []
    monkeypatch.setattr("local_reg.experiments.cli.sweep", lambda *args, **kwargs: trained.append(args))
    capsys.readouterr()
    assert run(tmp_path, "digits", "--methods", "local-random") == 2
    assert "lacks the field 'history' the report reads" in capsys.readouterr().err
    assert trained == []


def test_the_runner_adds_every_solver_blocks_penalty_but_a_plain_models_zero():
    from torch import nn

    class OwnBlock(nn.Module):  # a task's own solver block: stats and reg_loss, no penalty attribute
        def __init__(self):
            super().__init__()
            self.stats, self.reg_loss = None, torch.tensor(0.1)

    plain = local_reg.Regularized(lambda t, y: -y, adjoint_params=())
    assert runner.regularization_loss(nn.Sequential(plain)) is None
    assert float(runner.regularization_loss(nn.Sequential(plain, OwnBlock()))) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("stop", "code"),
    [(KeyboardInterrupt(), 130), (local_reg.SolverError("step size underflow", t=0.5, n_steps=12), 3)],
    ids=["interrupted", "solver-failed"],
)
def test_a_stopped_run_continues_from_its_checkpoint(stop, code, tmp_path, monkeypatch):
    """Ctrl-C (exit 130) or a run whose solver failed (exit 3, the sweep going on without it): the
    same command again trains only what the checkpoint lacks."""
    task_type = type(REGISTRY["digits"])
    original = task_type.training_loss
    calls = []

    def stopped_in_second_epoch(self, model, batch):
        calls.append(1)
        if len(calls) > 2:  # tiny digits: 64 samples in batches of 32, two iterations per epoch
            raise stop
        return original(self, model, batch)

    monkeypatch.setattr(task_type, "training_loss", stopped_in_second_epoch)
    assert run(tmp_path, "digits", "--methods", "local-random", "--set", "epochs=2") == code
    checkpoints = list((tmp_path / "checkpoints").glob("*.pt"))
    assert len(checkpoints) == 1 and not (tmp_path / "results.jsonl").exists()
    saved_time = torch.load(checkpoints[0], weights_only=True)["time"]

    calls.clear()
    monkeypatch.setattr(
        task_type, "training_loss", lambda self, m, b: (calls.append(1), original(self, m, b))[1]
    )
    assert run(tmp_path, "digits", "--methods", "local-random", "--set", "epochs=2") == 0
    assert len(calls) == 2  # only the second epoch was trained
    (record,) = ResultsFile(tmp_path).load()
    assert record["iterations"] == 4 and len(record["history"]["loss"]) == 4
    assert not checkpoints[0].exists()  # removed once the result is recorded
    # The clock, the optimizer and the random streams carry on: the run is the uninterrupted one.
    assert record["train_cpu_time"] > saved_time["cpu"] > 0
    assert run(tmp_path / "whole", "digits", "--methods", "local-random", "--set", "epochs=2") == 0
    (whole,) = ResultsFile(tmp_path / "whole").load()
    assert record["history"]["loss"] == whole["history"]["loss"]
    assert (record["test"], record["test_nfe"]) == (whole["test"], whole["test_nfe"])


def test_a_checkpoint_moved_to_another_runs_name_is_set_aside_not_resumed(tmp_path, monkeypatch, capsys):
    """Seed 0's checkpoint renamed to seed 1's: the same model's shapes, so loading it succeeded and
    seed 1's record was trained mostly as seed 0 (test NFE 56 where its own run gives 50). The
    checkpoint names its run; another's is set aside and the run trained from its start."""
    task_type = type(REGISTRY["digits"])
    original = task_type.training_loss
    calls = []

    def stopped_in_second_epoch(self, model, batch):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return original(self, model, batch)

    monkeypatch.setattr(task_type, "training_loss", stopped_in_second_epoch)
    assert run(tmp_path, "digits", "--methods", "vanilla", "--set", "epochs=2") == 130
    (saved,) = (tmp_path / "checkpoints").glob("*.pt")
    assert torch.load(saved, weights_only=True)["run_id"] == saved.stem
    other = saved.with_name(saved.name.replace("seed0", "seed1"))
    saved.rename(other)
    calls.clear()
    monkeypatch.setattr(
        task_type, "training_loss", lambda self, m, b: (calls.append(1), original(self, m, b))[1]
    )
    capsys.readouterr()
    assert (
        main(
            [
                "experiment",
                "digits",
                "--methods",
                "vanilla",
                "--set",
                "epochs=2",
                "--seeds",
                "2",
                "--size",
                "tiny",
                "--no-progress",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert f"written for the run {saved.stem}); moved to {other.name}.corrupt-1, its run restarts" in err
    assert len(calls) == 8  # both seeds' two epochs, from their starts


def test_the_command_called_in_a_process_leaves_torchs_threads_and_generator_as_they_were(tmp_path):
    """``main`` set torch's thread count to ``--threads`` (1 by default) and seeded the global
    generator for its runs, and left both so: a notebook's training after an experiment ran on one
    thread and drew from a reseeded generator."""
    torch.set_num_threads(2)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    assert run(tmp_path, "digits", "--methods", "vanilla") == 0
    assert torch.get_num_threads() == 2
    assert torch.equal(torch.rand(3), expected)


def test_results_are_never_overwritten(tmp_path):
    results = ResultsFile(tmp_path)
    record = {
        "run_id": "r",
        "task": "t",
        "method": "m",
        "label": "m",
        "seed": 0,
        "config_id": "c",
        "metric": "accuracy",
        "test": {},
        "test_nfe": 1,
    }
    results.append(record)
    before = results.path.read_bytes()
    with pytest.raises(ResultsError, match="already recorded"):
        results.append({**record, "test_nfe": 2})
    assert results.path.read_bytes() == before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["experiment", "nope"], "invalid choice: 'nope'"),
        (["experiment", "digits", "--methods", "vanilla", "sparkly"], "unknown method(s) ['sparkly']"),
        (["experiment", "digits", "--set", "no_such_setting=1"], "bad --set"),
        # The default weight is local regularization's: named by the setting, not the gradient.
        (
            ["experiment", "digits", "--methods", "steer", "--set", "weights.steer=default"],
            "weights.steer must be",
        ),
        (["experiment", "digits", "--set", "epochs"], "--set expects KEY=VALUE"),
        (["experiment", "digits", "--set", "local.probe=xyz"], "bad --set: local.probe must be one of"),
        (
            ["experiment", "digits", "--methods", "vanilla", "--set", "local.probe=solver"],
            "--set local.probe sets the local regularizer, but no local method is run",
        ),
        (["experiment", "digits", "--seeds", "0"], "--seeds must be at least 1"),
        # Beyond float32's range the optimizer's first step overflows the parameters (a traceback).
        (
            ["experiment", "spiral", "--set", "lr=1e300"],
            "bad --set: lr must be a finite number > 0 and <= 3.4",
        ),
        (
            ["experiment", "digits", "--methods", "global-error", "--gradient", "symplectic"],
            "global-error with",
        ),
    ],
)
def test_bad_arguments_exit_2_with_a_message(argv, message, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_unwritable_output_folder_exits_2(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert run(blocker / "results", "digits", "--methods", "vanilla") == 2
    assert "cannot write to output folder" in capsys.readouterr().err


def test_unwritable_paths_inside_the_output_folder_exit_2_before_training(tmp_path, capsys, monkeypatch):
    """A file named ``checkpoints``, or a folder named ``report.md``, in a writable output folder
    crashed with a traceback (the latter after training): named before anything runs."""
    trained = []
    monkeypatch.setattr("local_reg.experiments.cli.sweep", lambda *args, **kwargs: trained.append(args))
    (tmp_path / "checkpoints").write_text("")
    assert run(tmp_path, "digits", "--methods", "vanilla") == 2
    assert f"cannot write to output folder {str(tmp_path / 'checkpoints')!r}" in capsys.readouterr().err
    (tmp_path / "checkpoints").unlink()
    (tmp_path / "report.md").mkdir()
    assert run(tmp_path, "digits", "--methods", "vanilla") == 2
    assert f"{tmp_path / 'report.md'} is not a file: move it away" in capsys.readouterr().err
    assert trained == []


def test_a_path_that_turns_unwritable_while_the_command_runs_exits_2_with_a_line(
    tmp_path, capsys, monkeypatch
):
    assert run(tmp_path, "digits", "--methods", "vanilla") == 0

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "report.md"))

    monkeypatch.setattr("local_reg.experiments.cli.write_report", refused)
    capsys.readouterr()
    assert main(["report", "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"local-reg: error: Permission denied: {str(tmp_path / 'report.md')!r}")
    assert "Traceback" not in error and len(ResultsFile(tmp_path).load()) == 1
    # An OSError of anything else (a network failure, a bug) is not a path of the output folder:
    # it keeps its traceback rather than a line blaming the folder.
    elsewhere = tmp_path.parent / "elsewhere.txt"

    def failing(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", str(elsewhere))

    monkeypatch.setattr("local_reg.experiments.cli.write_report", failing)
    with pytest.raises(FileNotFoundError):
        main(["report", "--out", str(tmp_path)])


def test_corrupt_results_file_exits_2_and_is_left_alone(tmp_path, capsys):
    path = tmp_path / "results.jsonl"
    good = json.dumps(
        {
            "run_id": "r",
            "task": "digits",
            "method": "vanilla",
            "label": "vanilla",
            "seed": 0,
            "config_id": "c",
            "metric": "accuracy",
            "test": {},
            "test_nfe": 1,
        }
    )
    path.write_text(good + "\n{truncated\n")
    before = path.read_bytes()
    assert run(tmp_path, "digits", "--methods", "vanilla") == 2
    assert "results.jsonl:2: not valid JSON" in capsys.readouterr().err
    assert main(["report", "--out", str(tmp_path)]) == 2
    assert path.read_bytes() == before


def test_physionet_loader_bins_hours_and_scales_each_variable(tmp_path):
    records = {
        "132539.txt": "Time,Parameter,Value\n00:00,RecordID,132539\n00:00,Age,54\n00:07,HR,80\n"
        "00:37,HR,100\n01:10,Temp,36.5\n47:59,HR,60\n",
        "132540.txt": "Time,Parameter,Value\n00:00,Weight,-1\n02:00,HR,120\n02:00,Temp,38.5\n",
    }
    for name, text in records.items():
        (tmp_path / name).write_text(text)
    values, mask = load_physionet(tmp_path)
    assert values.shape == mask.shape == (2, 48, len(PHYSIONET_VARIABLES))
    hr, temp = PHYSIONET_VARIABLES.index("HR"), PHYSIONET_VARIABLES.index("Temp")
    assert mask.sum() == 5  # Age and RecordID are not series; -1 marks a missing value
    assert values[0, 0, hr] == pytest.approx(0.5)  # mean of 80 and 100 on the 60..120 range
    assert values[0, 47, hr] == 0.0 and values[1, 2, hr] == 1.0
    assert values[0, 1, temp] == 0.0 and values[1, 2, temp] == 1.0


def test_physionet_values_near_the_float_maximum_average_within_their_hour(tmp_path):
    """Each value was checked finite, their sum in the hour bin was not: two near the float maximum
    made the bin inf, and the min-max scaling spread nan through every record's variable."""
    big = 1.7976931348623157e308
    (tmp_path / "1.txt").write_text(f"Time,Parameter,Value\n00:10,HR,{big!r}\n00:20,HR,{big!r}\n01:00,HR,0\n")
    (tmp_path / "2.txt").write_text(f"Time,Parameter,Value\n00:00,HR,{big / 2!r}\n")
    values, mask = load_physionet(tmp_path)
    hr = PHYSIONET_VARIABLES.index("HR")
    assert values[0, 0, hr] == 1.0 and values[0, 1, hr] == 0.0 and values[1, 0, hr] == 0.5
    assert int(mask.sum()) == 3


def test_a_physionet_folder_without_records_or_with_a_bad_line_is_a_settings_error(tmp_path, capsys):
    """Both were tracebacks (exit 1), after the settings had passed; the download's Outcomes-a.txt
    beside set-a, which is no record, failed the whole load and is now skipped."""
    (tmp_path / "set-a").mkdir()
    (tmp_path / "Outcomes-a.txt").write_text("RecordID,SAPS-I,SOFA,Length_of_stay,Survival\n1,6,1,5,-1\n")
    with pytest.raises(SettingsError, match="holds no PhysioNet records"):
        load_physionet(tmp_path)
    with pytest.raises(SettingsError, match="is not a directory"):  # it read as an empty folder
        load_physionet(tmp_path / "missing")
    (tmp_path / "set-a" / "1.txt").write_text("Time,Parameter,Value\n00:00,HR,80\n01:00,HR,90\n")
    values, mask = load_physionet(tmp_path)  # the outcomes file skipped
    assert values.shape[0] == 1 and int(mask.sum()) == 2
    # A byte-order mark, Windows line endings, a trailing blank line and a file of another
    # encoding beside the records are no obstacle.
    (tmp_path / "set-a" / "3.txt").write_bytes(b"\xef\xbb\xbfTime,Parameter,Value\r\n00:00,HR,100\r\n\r\n")
    (tmp_path / "README.txt").write_bytes(b"\xff\xfeR\x00")
    values, mask = load_physionet(tmp_path)
    assert values.shape[0] == 2 and int(mask.sum()) == 3
    (tmp_path / "set-a" / "2.txt").write_bytes(b"Time,Parameter,Value\n00:00,ICUType\xe9,2\n")
    with pytest.raises(SettingsError, match=r"2.txt is not UTF-8 text"):
        load_physionet(tmp_path)
    (tmp_path / "set-a" / "2.txt").write_text("Time,Parameter,Value\n00:00,HR,80,extra\n")
    with pytest.raises(SettingsError, match=r"2.txt, line 2: expected HH:MM,Parameter,Value"):
        load_physionet(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run(tmp_path / "out", "latent_ode", "--methods", "vanilla", "--set", f"physionet_dir={empty}") == 2
    assert "holds no PhysioNet records" in capsys.readouterr().err
    # Four records left no test set (a fifth of 4 is 0): a ZeroDivisionError after training.
    few = tmp_path / "few"
    few.mkdir()
    for number in range(4):
        (few / f"{number}.txt").write_text("Time,Parameter,Value\n00:00,HR,80\n01:00,HR,90\n")
    assert run(tmp_path / "out", "latent_ode", "--methods", "vanilla", "--set", f"physionet_dir={few}") == 2
    assert (
        "holds 4 record(s); the task tests on a fifth of them, so it needs at least 5"
        in capsys.readouterr().err
    )


def test_evaluate_weights_metrics_by_batch_size_and_counts_nfe_per_batch_once():
    """Five items in batches of 2, 2 and 1: the metric is the items' mean (3.0, not the batches'
    3.33), the NFE the main solve's per batch (not per item, not summed over the timing repeats)."""

    class Task:
        def evaluate(self, model, batch):
            model(batch[0], [0.0, 1.0])
            return {"value": float(batch[0].mean())}

    model = local_reg.LocallyRegularized(lambda t, y: -y, adjoint_params=())
    per_call = local_reg.odeint(lambda t, y: -y, torch.ones(2, 1, dtype=torch.float64), [0.0, 1.0]).stats.nfe
    items = torch.arange(1.0, 6.0, dtype=torch.float64).reshape(5, 1)
    result = runner.evaluate(
        Task(), model, torch.utils.data.TensorDataset(items, items), batch_size=2, repeats=3
    )
    assert result["metrics"] == {"value": 3.0}
    assert result["nfe"] == per_call


def test_evaluate_times_each_batch_and_keeps_the_fastest_pass(monkeypatch):
    """The prediction time is per batch (the pass's over its batches), the fastest of the repeats;
    a clock that advances by known amounts inside each batch gives them exactly."""
    now = {"wall": 0.0, "cpu": 0.0}
    monkeypatch.setattr(
        runner,
        "time",
        types.SimpleNamespace(perf_counter=lambda: now["wall"], process_time=lambda: now["cpu"]),
    )
    scales = [0.5, 0.25, 1.0]  # per pass of three batches: the second is the fastest

    class Task:
        batches = 0

        def evaluate(self, model, batch):
            model(batch[0], [0.0, 1.0])
            scale = scales[self.batches // 3]
            self.batches += 1
            now["wall"] += 0.05 * scale
            now["cpu"] += 0.02 * scale
            return {"value": 0.0}

    items = torch.ones(5, 1, dtype=torch.float64)
    model = local_reg.LocallyRegularized(lambda t, y: -y, adjoint_params=())
    result = runner.evaluate(
        Task(), model, torch.utils.data.TensorDataset(items, items), batch_size=2, repeats=3
    )
    assert result["time_per_batch"].wall == pytest.approx(0.05 * 0.25, rel=1e-12)
    assert result["time_per_batch"].cpu == pytest.approx(0.02 * 0.25, rel=1e-12)


def test_evaluate_draws_its_noise_from_the_seed_and_leaves_the_streams_where_they_were():
    """An SDE task's test metric read the paths of wherever training had left torch's global stream
    (another place per method: one model's test error moved up to 2x with it). Now each seed's
    methods are evaluated on one set of paths, and training's streams are not moved."""
    from local_reg.experiments.methods import METHODS
    from local_reg.experiments.tasks.base import ModelContext

    task = REGISTRY["spiral_sde"]
    settings = task.settings("tiny")
    torch.manual_seed(0)
    data = task.load_data(settings, 0)
    model = task.build_model(settings, ModelContext(METHODS["local-random"], "direct", 1))
    # With a generator of its own, the SDE block draws its paths from it: seeded and restored too.
    block = next(m for m in model.modules() if isinstance(m, local_reg.Regularized))
    generator = block.generator = torch.Generator()
    results = []
    for position in (1, 2):
        torch.manual_seed(position)
        generator.manual_seed(position)
        before, own_before = torch.get_rng_state(), generator.get_state()
        results.append(runner.evaluate(task, model, data.test, 4, seed=3))
        assert torch.equal(torch.get_rng_state(), before) and torch.equal(generator.get_state(), own_before)
    assert results[0]["metrics"] == results[1]["metrics"] and results[0]["nfe"] == results[1]["nfe"]
    other_seed = runner.evaluate(task, model, data.test, 4, seed=4)
    assert other_seed["metrics"] != results[0]["metrics"]  # the paths are the seed's


def test_solver_costs_are_the_main_solves_the_probes_and_the_backward_passes():
    """What the runner records per iteration (the NFE history, the progress bar, AdaptiveWeight's
    target) is each count in its place: the probe's evaluations are not the main solve's."""
    calls = {"n": 0}

    def field(t, y):
        calls["n"] += 1
        return -y

    model = local_reg.LocallyRegularized(field, penalty="error-dt", weight=1.0, adjoint_params=())
    y0 = torch.ones(3, 2, dtype=torch.float64, requires_grad=True)
    ys = model(y0, [0.0, 0.5, 1.0])
    stats = model.stats
    assert stats.nfe_reg > 0 and stats.nfe_main + stats.nfe_reg == calls["n"]
    assert runner.solver_costs(model) == {"nfe": stats.nfe_main, "reg_nfe": stats.nfe_reg, "backward_nfe": 0}
    (ys.sum() + model.reg_loss).backward()
    assert runner.solver_costs(model)["backward_nfe"] == model.stats.nfe_backward


def test_a_run_evaluates_its_training_and_test_splits(tmp_path, monkeypatch):
    sizes = []
    original = runner.evaluate

    results = []

    def spied(task, model, dataset, *args, **kwargs):
        sizes.append(len(dataset))
        results.append(original(task, model, dataset, *args, **kwargs))
        return results[-1]

    monkeypatch.setattr(runner, "evaluate", spied)
    assert (
        run(tmp_path, "digits", "--methods", "vanilla", "--set", "train_size=64", "--set", "test_size=32")
        == 0
    )
    assert sizes == [64, 32]
    # Each split's metrics recorded as its own (a train metric that was the test's passed).
    (record,) = ResultsFile(tmp_path).load()
    assert record["train"] == results[0]["metrics"] and record["test"] == results[1]["metrics"]


def test_a_sweep_runs_seeds_outermost_and_records_the_weight_every_ten_iterations(tmp_path):
    """Seeds are the outer loop (an interrupted sweep has whole comparisons for its finished seeds),
    and the weight history is read where the gradient ratio is measured: iterations 0 and 10 of 12."""
    argv = ["experiment", "digits", "--size", "tiny", "--seeds", "2", "--methods", "vanilla", "local-random"]
    assert main([*argv, "--set", "epochs=6", "--out", str(tmp_path), "--no-progress"]) == 0
    records = ResultsFile(tmp_path).load()
    assert [(r["seed"], r["method"]) for r in records] == [
        (0, "vanilla"), (0, "local-random"), (1, "vanilla"), (1, "local-random"),
    ]  # fmt: skip
    regularized = next(r for r in records if r["method"] == "local-random")
    assert regularized["iterations"] == 12
    assert [entry[0] for entry in regularized["history"]["weight"]] == [0, 10]


def test_a_fixed_weight_whose_penalty_dominates_warns_once_and_a_self_tuning_one_does_not(tmp_path, capsys):
    argv = ["digits", "--methods", "local-random"]
    assert run(tmp_path / "fixed", *argv, "--set", "weights.local-random=10000") == 0
    (record,) = ResultsFile(tmp_path / "fixed").load()
    assert max(ratio for _, ratio in record["history"]["grad_ratio"]) > runner.RATIO_WARNING
    assert (
        capsys.readouterr().err.count("it, not the task, steers the training; consider a smaller weight") == 1
    )
    assert run(tmp_path / "default", *argv) == 0  # the default RatioWeight sets its own strength
    assert "steers the training" not in capsys.readouterr().err


def test_the_gradient_ratio_measurement_is_not_counted_in_the_recorded_backward_nfe(tmp_path, monkeypatch):
    """The ratio measured every ten iterations differentiates the penalty, which for a global
    regularizer under a graph-free method runs the main solve's backward pass: its evaluations were
    added to that iteration's backward NFE (twice the others'). With the measurement and without it,
    the history is the same (the measurement changes no training step)."""

    def history(out) -> dict[str, list]:
        argv = ["digits", "--methods", "global-error", "--gradient", "checkpoint", "--set", "epochs=6"]
        assert run(out, *argv) == 0
        (record,) = ResultsFile(out).load()
        return record["history"]

    measured = history(tmp_path / "measured")
    assert [entry[0] for entry in measured["grad_ratio"]] == [0, 10]
    with_measurement = measured["backward_nfe"]
    monkeypatch.setattr(runner, "RATIO_EVERY", 10**9)
    monkeypatch.setattr(runner.GradientRatio, "before_backward", lambda self, reg: None)
    monkeypatch.setattr(runner.GradientRatio, "after_backward", lambda self: math.nan)
    assert with_measurement == history(tmp_path / "unmeasured")["backward_nfe"]
    assert min(with_measurement) > 0


def test_the_classification_accuracy_is_the_share_of_right_predictions():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 2.0]])
    labels = torch.tensor([0, 1, 0])
    metrics = REGISTRY["digits"].evaluate(lambda x: logits, (torch.zeros(3, 1), labels))
    assert metrics["accuracy"] == pytest.approx(2 / 3)


def test_a_decaying_weight_spec_goes_geometrically_from_start_to_end():
    from local_reg.experiments.methods import weight_schedule, weight_text
    from local_reg.experiments.settings import Weight

    schedule = weight_schedule({"start": 2.5, "end": 1.0}, 10, "local-random")
    values = []
    for _ in range(11):
        values.append(float(schedule()))
        schedule.step()
    assert (
        values[0] == pytest.approx(2.5)
        and values[5] == pytest.approx(2.5**0.5)
        and values[10] == pytest.approx(1.0)
    )
    assert weight_text({"start": 2.5, "end": 1.0}) == "2.5->1"
    assert Weight().accepts({"ratio": 1.0, "floor": 1.0}) and not Weight().accepts(
        {"ratio": 1.0, "floor": 2.0}
    )


def test_make_demo_runs_the_commands_its_docstring_shows_and_stops_at_a_failure(monkeypatch):
    # The docstring's commands, their continued lines joined.
    text = demo.__doc__.replace("\\\n", " ")
    documented = [shlex.split(line)[1:] for line in re.findall(r"local-reg experiment [^\n]*", text)]
    calls = []
    monkeypatch.setattr(demo, "cli_main", lambda argv: calls.append(argv) or 0)
    assert demo.main([]) == 0
    assert calls == documented and len(calls) == 3
    calls.clear()
    monkeypatch.setattr(demo, "cli_main", lambda argv: calls.append(argv) or 3)  # the first fails
    assert demo.main([]) == 3 and len(calls) == 1
    # --help runs nothing; --out moves every demo folder.
    calls.clear()
    assert demo.main(["--help"]) == 0 and calls == []
    monkeypatch.setattr(demo, "cli_main", lambda argv: calls.append(argv) or 0)
    assert demo.main(["--out", "elsewhere"]) == 0
    outs = [argv[argv.index("--out") + 1] for argv in calls]
    assert outs == [
        out.replace("results/", "elsewhere/", 1) for out in (a[a.index("--out") + 1] for a in documented)
    ]


def test_the_command_without_the_experiments_extra_names_it(monkeypatch, capsys):
    """Without a distribution of the ``experiments`` extra, ``local-reg`` (and ``make demo``) exits 2
    naming the extra, before importing what needs it."""
    import importlib.util

    import local_reg.experiments as experiments

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in ("tqdm", "sklearn") else real(name, *a)
    )
    assert experiments.main(["experiment", "digits"]) == 2
    assert (
        "pip install 'local_reg[experiments]' (not installed: tqdm, scikit-learn)" in capsys.readouterr().err
    )
    assert demo.main([]) == 2


@pytest.mark.parametrize(
    ("line", "what"),
    [
        ("-01:30,HR,90", "a negative hour (it indexed the last bin)"),
        ("00:30,HR,nan", "NaN"),
        ("00:30,HR,inf", "inf"),
    ],
)
def test_a_physionet_line_out_of_range_is_named_not_read(tmp_path, line, what):
    # A NaN value turned every record's HR into NaN through the min-max scaling.
    (tmp_path / "1.txt").write_text("Time,Parameter,Value\n00:00,HR,80\n" + line + "\n")
    with pytest.raises(SettingsError, match=r"1.txt, line 3: expected HH:MM,Parameter,Value with a time"):
        load_physionet(tmp_path)


def test_a_physionet_folder_or_broken_link_named_txt_is_no_record(tmp_path):
    (tmp_path / "1.txt").write_text("Time,Parameter,Value\n00:00,HR,80\n")
    (tmp_path / "notes.txt").mkdir()  # an IsADirectoryError, a traceback
    (tmp_path / "gone.txt").symlink_to(tmp_path / "nowhere.txt")  # a FileNotFoundError
    values, mask = load_physionet(tmp_path)
    assert values.shape[0] == 1 and int(mask.sum()) == 1


def test_the_command_on_windows_says_what_it_needs(monkeypatch, capsys):
    # It imports fcntl (the results files' locks): a ModuleNotFoundError traceback there.
    import local_reg.experiments as experiments

    monkeypatch.setattr(sys, "platform", "win32")
    assert experiments.main(["experiment", "digits"]) == 2
    assert "the experiments need Linux or macOS (on Windows, WSL)" in capsys.readouterr().err
