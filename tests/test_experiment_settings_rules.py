"""The experiments' settings schema, weight specs, labels and results file, each against the rule its
docstring states (computed by hand) or the file read back; and the helpers of the gradient methods
against counted calls and the exact solution."""

from __future__ import annotations

import json
import math
import warnings

import pytest

from local_reg.experiments.methods import local_options, number_text, weight_schedule, weight_text
from local_reg.experiments.results import ResultsError, ResultsFile, ResultsWarning
from local_reg.experiments.settings import (
    Directory,
    Integer,
    OneOf,
    Real,
    Requirement,
    Schema,
    SettingsError,
    Weight,
    apply_overrides,
    check_settings,
)
from local_reg.regularization import LocallyRegularized

# ---- rules: what a setting may hold ----------------------------------------------------------------


def test_an_integer_rule_holds_integers_from_its_minimum_and_null_only_when_nullable():
    # "An integer >= minimum (null too when nullable)".
    rule = Integer(3)
    assert rule.accepts(3) and rule.accepts(4) and not rule.accepts(2)
    assert not rule.accepts(3.0) and not rule.accepts(True)
    assert not rule.accepts(None)
    assert Integer(1, nullable=True).accepts(None)
    assert not Integer(1).accepts(None) and not Integer(1).accepts(True)


def test_a_real_rule_holds_finite_numbers_in_its_documented_interval():
    # "(low, high]", "[low, high] when closed", finite, integers too, not bools.
    assert not Real().accepts(0) and Real().accepts(1e-300) and Real().accepts(3)
    assert Real(closed=True).accepts(0) and Real(closed=True).accepts(0.0)
    assert not Real(closed=True).accepts(-1e-300)
    assert Real(high=1.0).accepts(1.0) and Real(high=1.0).accepts(1)
    assert not Real(high=1.0).accepts(math.nextafter(1.0, 2.0))
    for bad in (math.inf, -math.inf, math.nan, True, "1", None):
        assert not Real().accepts(bad) and not Real(closed=True).accepts(bad)


def test_one_of_compares_types_too():
    # A size fixed by the data: 10 is the setting, 10.0 (or True for 1) is another value.
    assert OneOf((10,)).accepts(10)
    assert not OneOf((10,)).accepts(10.0)
    assert not OneOf((1, "a")).accepts(True)
    assert OneOf(("a", "b")).accepts("b") and not OneOf(("a", "b")).accepts("c")


def test_a_directory_rule_refuses_a_file(tmp_path):
    path = tmp_path / "file.txt"
    path.write_text("x")
    assert Directory().accepts(None) and Directory().accepts(str(tmp_path))
    assert not Directory().accepts(str(path)) and not Directory().accepts(str(tmp_path / "none"))


def test_weight_specs_by_the_rule_in_the_docstring():
    rule = Weight()
    # A constant >= 0.
    assert rule.accepts(0) and rule.accepts(0.0) and rule.accepts(2.5) and not rule.accepts(-1e-9)
    # {"start": w0, "end": w1}, both > 0, those two keys exactly.
    assert rule.accepts({"start": 2.5, "end": 1.0})
    assert not rule.accepts({"start": 2.5}) and not rule.accepts({"end": 1.0})
    assert not rule.accepts({"start": 0.0, "end": 1.0}) and not rule.accepts({"start": 1.0, "end": 0})
    # {"adaptive": w0, ...}: w0 > 0; options numbers, target_nfe may be null.
    assert rule.accepts({"adaptive": 1.0, "target_nfe": None, "w_min": 0.01})
    assert not rule.accepts({"adaptive": 0.0}) and not rule.accepts({"adaptive": 1.0, "rate": -1.0})
    # Only target_nfe may be null, and warmup (iterations) is an integer.
    assert not rule.accepts({"adaptive": 1.0, "rate": None}) and not rule.accepts(
        {"adaptive": 1.0, "beta": None}
    )
    assert rule.accepts({"adaptive": 1.0, "warmup": 0}) and rule.accepts({"adaptive": 1.0, "warmup": 20})
    assert not rule.accepts({"adaptive": 1.0, "warmup": 2.5}) and not rule.accepts(
        {"adaptive": 1.0, "warmup": -1}
    )
    # {"ratio": rho, ...}: rho > 0, every an integer >= 1, floor <= 1, max_rise > 1, scope model or field.
    assert rule.accepts({"ratio": 0.2, "every": 1}) and not rule.accepts({"ratio": 0.2, "every": 0})
    assert rule.accepts({"ratio": 0.2, "floor": 1.0}) and rule.accepts({"ratio": 0.2, "floor": 1})
    assert not rule.accepts({"ratio": 0.2, "floor": 1.5})
    assert rule.accepts({"ratio": 0.03, "max_rise": 2}) and rule.accepts({"ratio": 0.03, "max_rise": 1.5})
    assert not rule.accepts({"ratio": 0.03, "max_rise": 1}) and not rule.accepts(
        {"ratio": 0.03, "max_rise": 0.5}
    )
    assert rule.accepts({"ratio": 0.2, "scope": "field"}) and not rule.accepts({"ratio": 0.2, "scope": "x"})
    # A self-tuning spec's numbers in the ranges its class takes, refused here rather than when the
    # model is made: w_min > 0, beta < 1, an initial weight within [w_min, w_max].
    for spec in (
        {"adaptive": 1.0, "w_min": 0.0},
        {"adaptive": 1.0, "beta": 1.0},
        {"adaptive": 2.0, "w_max": 1.0},
        {"ratio": 0.2, "initial": 0},
        {"ratio": 0.2, "beta": 1},
        {"ratio": 0.2, "initial": 5.0, "w_max": 1.0},
        {"ratio": 0.2, "w_min": 0.5, "w_max": 0.1},
    ):
        assert not rule.accepts(spec), spec
    assert rule.accepts({"ratio": 0.2, "initial": 1.0, "w_min": 1.0, "w_max": 1.0, "beta": 0.0})
    # "default": local methods only.
    assert rule.accepts("default") and not Weight(default=False).accepts("default")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"ratio": 0.2, "beta": 2}, "weights.w is refused by RatioWeight: beta must be in [0, 1), got 2"),
        ({"ratio": 0.2, "bogus": 1}, 'weights.w has unknown key(s) bogus (the "ratio" spec takes every,'),
        ({"ratio": -1}, 'weights.w holds "ratio": -1, which must be a finite number > 0'),
        ({"ratio": 0.2, "scope": "x"}, "holds \"scope\": the string 'x', which must be one of model, field"),
        ({"adaptive": 0.1, "rate": None}, 'weights.w holds "rate": null, which must be a finite number >= 0'),
        ({"adaptive": 0.1, "warmup": 1.5}, "by AdaptiveWeight: warmup must be a non-negative int, got float"),
        ({"adaptive": 0.1, "scope": "field"}, 'unknown key(s) scope (the "adaptive" spec takes loss_rise,'),
        (-1, "weights.w must be a number >= 0, "),
    ],
)
def test_a_refused_weight_spec_is_named_down_to_its_key(spec, message):
    """A self-tuning spec's message names the sub-key at fault (and the class's own reason), not
    only the setting followed by every form a weight may take."""
    with pytest.raises(SettingsError) as refused:
        check_settings(Schema({"weights": {"w": Weight()}}), {"weights": {"w": spec}})
    assert message in str(refused.value)


# ---- check_settings and apply_overrides ------------------------------------------------------------


def test_check_settings_makes_reals_floats_and_leaves_integers():
    schema = Schema({"x": Real(), "n": Integer(), "group": {"y": Real(closed=True)}})
    settings = {"x": 4, "n": 4, "group": {"y": 0}}
    check_settings(schema, settings)
    assert type(settings["x"]) is float and settings["x"] == 4.0
    assert type(settings["group"]["y"]) is float
    assert type(settings["n"]) is int
    # 4 and 4.0 are one setting: the same JSON after the check.
    other = {"x": 4.0, "n": 4, "group": {"y": 0.0}}
    check_settings(schema, other)
    assert json.dumps(settings, sort_keys=True) == json.dumps(other, sort_keys=True)


def test_check_settings_enforces_requirements():
    requirement = Requirement(("a", "b"), lambda s: s["a"] > s["b"], "a must exceed b")
    schema = Schema({"a": Integer(), "b": Integer()}, (requirement,))
    check_settings(schema, {"a": 3, "b": 2})
    with pytest.raises(SettingsError, match=r"a must exceed b \(got a=2, b=2\)"):
        check_settings(schema, {"a": 2, "b": 2})


def test_apply_overrides_replaces_existing_keys_only_and_copies():
    settings = {"epochs": 1, "solver": {"rtol": 1e-6}}
    new = apply_overrides(settings, {"solver.rtol": 1e-3, "epochs": 2}, "t")
    assert new == {"epochs": 2, "solver": {"rtol": 1e-3}}
    assert settings == {"epochs": 1, "solver": {"rtol": 1e-6}}  # the original is left as it was
    for key in ("epoch", "solver.atol", "nosuch.x"):
        with pytest.raises(SettingsError, match="has no setting"):
            apply_overrides(settings, {key: 1}, "t")


# ---- methods: weight specs and labels --------------------------------------------------------------


@pytest.mark.parametrize("value", [0.1, 1e-5, 4.0, 0.1234567, 1 / 3, 2.5, 1e300, 5e-324, 7])
def test_number_text_reads_back_as_the_value(value):
    text = number_text(value)
    assert float(text) == value
    if isinstance(value, int):
        assert text == str(value)
    elif float(f"{value:g}") == value:
        assert text == f"{value:g}"


def test_weight_text_leaves_out_null_options_and_orders_a_decay():
    assert weight_text({"adaptive": 1.0, "target_nfe": None}) == "adaptive 1"
    assert weight_text({"ratio": 0.5, "w_max": None, "every": 2}) == "ratio 0.5 (every=2)"
    assert weight_text({"start": 100.0, "end": 10.0}) == "100->10"
    assert weight_text(None) == "–" and weight_text("default") == "default"


def test_a_decay_over_no_iterations_is_one_step_from_start_to_end():
    schedule = weight_schedule({"start": 2.5, "end": 1.0}, 0, "local-random")
    # w(k) = w0 exp(-k ln(w0 / w1) / N), N = max(1, 0) = 1: w0 at k = 0, w1 from then on.
    assert float(schedule()) == pytest.approx(2.5)
    schedule.step()
    assert float(schedule()) == pytest.approx(1.0)


def test_local_options_follow_the_paper_unless_the_study_sets_them():
    paper = LocallyRegularized.PAPER_OPTIONS
    assert local_options(1.0, {}) == paper
    assert local_options(None, {}) == {}  # the library default: no paper options
    assert local_options(None, {"local": {"probe": "solver"}}) == {"probe": "solver"}
    # The study's options override the paper's ...
    assert local_options(1.0, {"local": {"probe": "solver"}}) == {**paper, "probe": "solver"}
    # ... and the kinetic penalty takes no probe.
    kinetic = local_options(1.0, {"local": {"penalty": "kinetic"}})
    assert "probe" not in kinetic and kinetic["penalty"] == "kinetic"
    assert kinetic == {k: v for k, v in {**paper, "penalty": "kinetic"}.items() if k != "probe"}


def test_a_ratio_specs_scope_is_not_passed_to_the_weight():
    schedule = weight_schedule({"ratio": 0.5, "scope": "field", "every": 3}, 10, "local-random")
    assert schedule.every == 3


# ---- results: what the file holds ------------------------------------------------------------------

FIELDS = ("task", "method", "label", "seed", "config_id", "metric", "test", "test_nfe")


def record(run_id: str, **extra) -> dict:
    typed = {"seed": 0, "test": {"accuracy": 0.5}, "test_nfe": 20.0}
    return {"run_id": run_id, **{k: typed.get(k, "x") for k in FIELDS}, **extra}


def test_a_repeated_run_is_counted_from_its_first_line(tmp_path):
    lines = [record("a", seed=1), record("b"), record("a", seed=2)]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    with pytest.warns(ResultsWarning, match="lines 3"):
        records = ResultsFile(tmp_path).load()
    assert [(r["run_id"], r["seed"]) for r in records] == [("a", 1), ("b", 0)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(ResultsFile(tmp_path).load(warn=False)) == 2
        assert ResultsFile(tmp_path).finished() == {"a", "b"}


def test_append_adds_a_line_after_one_without_a_newline_and_refuses_a_repeat(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(record("a")) + "\n\n" + json.dumps(record("b")))  # blank line, no newline
    results = ResultsFile(tmp_path)
    results.append(record("c", test={"accuracy": 1.5}))
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["run_id"] for line in lines if line.strip()] == ["a", "b", "c"]
    assert json.loads(lines[-1]) == record("c", test={"accuracy": 1.5})
    assert path.read_text(encoding="utf-8").endswith("\n")
    with pytest.raises(ResultsError, match="already recorded"):
        results.append(record("b"))
    assert [r["run_id"] for r in results.load()] == ["a", "b", "c"]
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("line", ["[1, 2]", "3", '"run_id"', "null"])
def test_a_json_line_that_is_not_an_object_is_not_a_run_record(tmp_path, line):
    (tmp_path / "results.jsonl").write_text(json.dumps(record("a")) + "\n" + line + "\n")
    with pytest.raises(ResultsError, match=":2: not a run record"):
        ResultsFile(tmp_path).load()


@pytest.mark.parametrize(
    "edit",
    [
        {"test_nfe": None},
        {"test_nfe": "abc"},
        {"test": None},
        {"test": {"accuracy": None}},
        {"seed": [0]},
        {"seed": True},
        {"label": 5},
        {"settings": None},  # not required, but the report reads it where it is (an AttributeError)
        {"settings": "x"},
        {"settings": {"solver": "tsit5"}},
        {"settings": {"solver": {"method": "tsit5", "rtol": "1e-6", "atol": 1e-6}}},
        {"test_nfe": 10**400},  # an int too large for a float: an OverflowError in the report
        {"weight": "abc"},
        {"weight": [1]},
        {"weight": {"start": 1}},
        {"weight": {"ratio": "x"}},
        # The report names its figures after these: a path would write outside the folder.
        {"task": "/tmp/elsewhere"},
        {"task": "../up"},
        {"config_id": "checkpoints/../../x"},
        {"metric": ".."},
    ],
)
def test_a_required_field_of_the_wrong_type_is_named_not_a_crash(tmp_path, edit):
    """A record edited by hand with a field of the wrong type crashed the report and the sweep (a
    TypeError from statistics, an unhashable seed) where a missing field was named."""
    (tmp_path / "results.jsonl").write_text(json.dumps(record("a")) + "\n" + json.dumps(record("b", **edit)))
    (key,) = edit
    with pytest.raises(ResultsError, match=rf":2: not a run record \(wrong types or values: \{{'{key}': "):
        ResultsFile(tmp_path).load()


def test_a_huge_integer_is_refused_not_a_crash():
    # json.loads("1" + "0" * 400) is an int too large for a float: "a finite number" it is not.
    assert not Real().accepts(10**400)


def test_a_task_takes_rtol_zero_as_the_solvers_do():
    """A pure absolute tolerance: the solvers take ``rtol=0``; the schema refused it."""
    from local_reg.experiments.tasks import REGISTRY

    for name in ("digits", "spiral_sde"):
        task = REGISTRY[name]
        settings = apply_overrides(task.settings("quick"), {"solver.rtol": 0, "solver.atol": 1e-6}, name)
        check_settings(task.schema, settings)
        with pytest.raises(SettingsError, match=r"solver\.atol must be a finite number > 0"):
            check_settings(task.schema, apply_overrides(settings, {"solver.atol": 0}, name))
