"""Smoke tests of the scripts in ``examples/``: each runs a few iterations at tiny sizes, prints the
NFE before and after training and writes its plot."""

from __future__ import annotations

import importlib.util
import re
import sys
import warnings
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("matplotlib")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

TINY = {
    "ode_demo": ["--iterations", "2", "--data-size", "50", "--batch-size", "4", "--hidden", "8"],
    "latent_ode": [
        "--iterations",
        "2",
        "--n-train",
        "8",
        "--n-test",
        "4",
        "--batch-size",
        "4",
        "--n-times",
        "6",
        "--latent",
        "2",
        "--hidden",
        "8",
        "--rec-hidden",
        "4",
    ],  # fmt: skip
    "cnf": ["--iterations", "2", "--batch-size", "16", "--hidden", "8", "--grid", "5"],
    "switched_input": ["--iterations", "2", "--horizon", "3", "--n-times", "7", "--hidden", "8"],
}


def load(name: str) -> ModuleType:
    # By path: examples/ is a folder of scripts, not a package.
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Each script puts examples/ first on sys.path to import its _common: neither is left for the
    # tests after it (a top-level `import cnf` or `_common` would find the examples').
    path, had_common = list(sys.path), "_common" in sys.modules
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = path
        if not had_common:
            sys.modules.pop("_common", None)
    return module


@pytest.mark.parametrize(
    ("name", "regularize"),
    [
        ("ode_demo", "local"),
        ("latent_ode", "global"),
        ("cnf", "local"),
        ("cnf", "none"),
        ("switched_input", "local"),
    ],
)
def test_example_runs(name: str, regularize: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if name == "cnf":
        pytest.importorskip("sklearn")
    out = tmp_path / "plot.png"
    with warnings.catch_warnings():
        # A deprecation the example's calls trigger is an error (cnf plotted tensors through numpy's
        # deprecated __array__ protocol, warned inside matplotlib).
        warnings.filterwarnings("error", category=DeprecationWarning)
        result = load(name).main([*TINY[name], "--regularize", regularize, "--out", str(out)])
    printed = capsys.readouterr().out
    before = re.search(r"NFE before training: (\d+)", printed)
    after = re.search(r"NFE after training: (\d+)", printed)
    assert before and after, printed
    assert (int(before[1]), int(after[1])) == (result["nfe_before"], result["nfe_after"])
    # An adaptive solve takes at least one step of at least two evaluations.
    assert result["nfe_before"] >= 2 and result["nfe_after"] >= 2
    assert out.stat().st_size > 1000 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_switched_input_example_lands_on_the_switches(tmp_path: Path) -> None:
    # With the switching times the untrained model's test solve takes fewer evaluations than
    # stepping across them (the same initialization: one seed).
    example = load("switched_input")
    common = [
        *TINY["switched_input"],
        "--iterations",
        "0",
        "--regularize",
        "none",
        "--out",
        str(tmp_path / "plot.png"),
    ]
    with_jumps = example.main([*common, "--jumps"])
    without = example.main([*common, "--no-jumps"])
    assert with_jumps["nfe_before"] < without["nfe_before"]
    assert with_jumps["test_loss"] == pytest.approx(without["test_loss"], rel=1e-3)


def test_a_read_only_plot_folder_is_refused_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The save failed with a PermissionError after the whole training (os.access is what the check
    reads: the tests may run as root, for whom a folder's mode bits do not refuse writes)."""
    import os

    example = load("ode_demo")
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path)
    with pytest.raises(SystemExit) as exit_:
        example.main(["--out", str(tmp_path / "plot.png")])
    assert exit_.value.code == 2 and "is not writable" in capsys.readouterr().err


def test_cnf_takes_any_seed(tmp_path: Path) -> None:
    """Its batches' seeds, seed * 100000 + iteration, left make_moons' range [0, 2**32) for a
    negative seed or one of 42950 and above (sklearn refused them after the first evaluation)."""
    pytest.importorskip("sklearn")
    example = load("cnf")
    for seed in ("-1", "50000"):
        result = example.main([*TINY["cnf"], "--seed", seed, "--out", str(tmp_path / "plot.png")])
        assert result["nfe_after"] >= 2


def test_bad_regularize_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        load("ode_demo").main(["--regularize", "strong"])
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "argv", "message"),
    [
        ("ode_demo", ["--batch-size", "0"], "argument --batch-size: must be a positive integer, got 0"),
        ("ode_demo", ["--threads", "0"], "argument --threads: must be a positive integer, got 0"),
        ("ode_demo", ["--batch-time", "1"], "--batch-time must be at least 2"),
        ("ode_demo", ["--data-size", "5"], "--data-size (5) must exceed --batch-time (10)"),
        ("ode_demo", ["--weight", "-1"], "argument --weight: must be a finite number of at least 0, got -1"),
        ("latent_ode", ["--rtol", "0"], "argument --rtol: must be a positive finite number, got 0"),
        ("cnf", ["--out", "no_such_folder/x.png"], "the folder 'no_such_folder' does not exist"),
        # matplotlib added .png to a name without one (another file than the one named), and
        # refused an unknown extension after the whole training.
        ("ode_demo", ["--out", "plot"], "'plot' must end in a format matplotlib writes ("),
        ("latent_ode", ["--out", "plot.pngg"], "got '.pngg'"),
        ("switched_input", ["--out", "."], "'.' is a folder: name a file in it, e.g. 'plot.png'"),
        ("ode_demo", ["--out", "plot.png/"], "'plot.png/' is a folder"),  # saved as plot.png/.png
        ("cnf", ["--seed", str(2**64)], "argument --seed: must be an integer from -2**63 to 2**64 - 1"),
        ("switched_input", ["--horizon", "-3"], "argument --horizon: must be a positive finite number"),
        ("switched_input", ["--n-times", "1"], "--n-times must be at least 2"),
    ],
)
def test_bad_options_are_refused_before_training(
    name: str, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """They crashed with a traceback, a missing plot folder only after training."""
    with pytest.raises(SystemExit) as exit_:
        load(name).main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
