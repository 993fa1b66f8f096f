"""The report of a results file: a Markdown table per (task, settings) in the paper's columns, and plots.

Columns: train and test metric, training time and prediction time per test batch (the process's CPU
time, or wall time), test NFE, each the mean ± sample sd over seeds, and the NFE, training time and
prediction time of each method as a ratio to vanilla's (ratios of the means over the seeds both
have). Plots: the main solve's NFE over training, and the test metric against test NFE, for every
method.
"""

from __future__ import annotations

import functools
import io
import json
import math
import statistics
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

from .methods import METHODS, number_text, weight_text  # noqa: E402
from .results import ResultsError, ResultsWarning, atomic_write_bytes, check_replaceable, is_number  # noqa: E402
from .tasks import REGISTRY  # noqa: E402

REPORT_NAME = "report.md"


def report_name(task: str | None = None) -> str:
    """``report.md`` for every task; ``report-<task>.md`` for one, so that it never replaces the whole."""
    return REPORT_NAME if task is None else f"report-{task}.md"


_PERCENT_METRICS = {"accuracy"}
_TIME_FIELDS = {"cpu": ("train_cpu_time", "predict_cpu_time"), "wall": ("train_time", "predict_time")}
TIMINGS = tuple(_TIME_FIELDS)


@dataclass
class Group:
    """The runs of one table: same task and settings (``config_id``), any method, weight and seed.

    A row is a ``label``: the method, with its weight when that is not the task's default; where
    records of one label hold different weights (the task's default weight changed between the
    versions that wrote them), each weight is a row of its own, its weight appended (:meth:`row`)."""

    task: str
    config_id: str
    records: list[dict[str, Any]]
    # The duplicates warned about: runs() is read once per cell of a row, the warning is given once.
    _warned: set[tuple[str, str]] = field(default_factory=set, repr=False, compare=False)

    @functools.cached_property
    def _weights_by_label(self) -> dict[str, set[str]]:
        weights: dict[str, set[str]] = {}
        for record in self.records:
            if "weight" in record:  # a record without one (edited by hand) matches any, as in the runner
                weights.setdefault(record["label"], set()).add(_canonical(record["weight"]))
        return weights

    def row(self, record: dict[str, Any]) -> str:
        """The row of ``record``: its label, with its weight appended where the group holds another
        weight under that label (a weight spelled 1 or 1.0 is one)."""
        label = record["label"]
        if len(self._weights_by_label.get(label, ())) <= 1 or "weight" not in record:
            return label
        return f"{label} [w={weight_text(record['weight'])}]"

    @property
    def name(self) -> str:
        return f"{self.task}-{self.config_id}"

    @property
    def metric(self) -> str:
        return self.records[0]["metric"]

    def labels(self) -> list[str]:
        """Rows in the order of :data:`METHODS`; within a method the default weight first, then by
        increasing weight."""
        order = {m: i for i, m in enumerate(METHODS)}

        def key(record: dict[str, Any]) -> tuple:
            weight = record.get("weight")
            # A decay by its start, a ratio or adaptive weight by its target or initial value; a spec
            # without a size ("default") sorts as 0; then by label.
            if isinstance(weight, dict):
                size = next((weight[k] for k in ("start", "ratio", "adaptive") if k in weight), 0.0)
            else:
                size = weight
            size = size if isinstance(size, (int, float)) else 0.0
            return (
                order.get(record["method"], len(order)),
                record["method"],
                "w=" in record["label"],  # a label names its weight when not the task's (RunSpec.label)
                size,
                self.row(record),
            )

        first: dict[str, tuple] = {}
        for record in self.records:  # a row once, where its first-sorting record puts it
            record_key = key(record)
            row = record_key[-1]  # the key ends with the row
            first[row] = min(first.get(row, record_key), record_key)
        return sorted(first, key=first.__getitem__)

    def runs(self, label: str) -> list[dict[str, Any]]:
        """The row's runs by seed, each seed once: two records of one row and seed (the same
        settings spelled differently, e.g. a weight 1 and 1.0, in a folder written before the
        sweep recognized them) count once, the first, with a :class:`ResultsWarning`."""
        by_seed: dict[int, dict[str, Any]] = {}
        for record in self.records:
            if self.row(record) != label:
                continue
            if record["seed"] in by_seed:
                first = by_seed[record["seed"]]["run_id"]
                if (label, record["run_id"]) in self._warned:
                    continue
                self._warned.add((label, record["run_id"]))
                warnings.warn(
                    f"{self.task} {label!r} seed {record['seed']}: recorded as {first} and "
                    f"{record['run_id']}; counted once, as the first",
                    ResultsWarning,
                    stacklevel=2,
                )
                continue
            by_seed[record["seed"]] = record
        return [by_seed[seed] for seed in sorted(by_seed)]


def _canonical(weight: Any) -> str:
    """``weight`` as one string for every spelling of its value (``1`` and ``1.0``, a list or a
    tuple, keys in any order, a key set to ``None``, its default, or left out)."""

    def numbers_as_floats(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: numbers_as_floats(item) for key, item in value.items() if item is not None}
        if isinstance(value, (list, tuple)):
            return [numbers_as_floats(item) for item in value]
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value

    return json.dumps(numbers_as_floats(weight), sort_keys=True)


def group_records(records: Sequence[dict[str, Any]], task: str | None = None) -> list[Group]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in records:
        if task is None or record["task"] == task:
            groups.setdefault((record["task"], record["config_id"]), []).append(record)
    return [Group(t, c, rs) for (t, c), rs in sorted(groups.items())]


def _mean(values: Iterable[float]) -> float:
    """The mean, also of finite values whose sum overflows (a record edited by hand, near the float
    maximum: ``statistics.fmean`` raises), each divided first."""
    values = list(values)
    try:
        return statistics.fmean(values)
    except OverflowError:
        return math.fsum(value / len(values) for value in values)
    except ValueError:  # inf and -inf (diverged runs both ways): no mean
        return math.nan


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation; a non-finite value (a diverged run's metric) makes both
    ``nan`` or ``inf`` rather than stopping the report (``statistics.stdev`` raises on them)."""
    mean = _mean(values)
    if len(values) < 2:
        return mean, 0.0
    if not all(math.isfinite(v) for v in values):
        return mean, math.nan
    try:
        return mean, statistics.stdev(values)
    except OverflowError:  # as _mean's
        return mean, math.inf


def _number(x: float, digits: int) -> str:
    """``digits`` significant digits, but whole numbers past them rather than exponent notation
    (also where rounding reaches them: 999.6 at 3 digits is 1000, not 1e+03), up to 1e16; past it
    (beyond any count or time a run records: a record edited by hand) exponent notation, which keeps
    a value near the float maximum to a few characters rather than 309 digits."""
    text = f"{x:.{digits}g}"
    return f"{x:.0f}" if "e+" in text and abs(x) < _WHOLE_NUMBERS_BELOW else text


_WHOLE_NUMBERS_BELOW = 1e16


def _fmt(values: Sequence[float], scale: float = 1.0) -> str:
    mean, sd = _mean_sd([v * scale for v in values])
    return f"{_number(mean, 3)} ± {_number(sd, 2)}" if len(values) > 1 else _number(mean, 3)


def _columns(group: Group, timing: str) -> list[tuple[str, str, float]]:
    """(header, record path, scale) of the per-seed columns."""
    metric = group.metric
    scale, unit = (100.0, " (%)") if metric in _PERCENT_METRICS else (1.0, "")
    # Which way is better, as the task records it (accuracy up, mse and mae down).
    higher = group.records[0].get("higher_is_better")
    unit += "" if higher is None else " ↑" if higher else " ↓"
    return [
        (f"train {metric}{unit}", f"train.{metric}", scale),
        (f"test {metric}{unit}", f"test.{metric}", scale),
        (f"train {timing} (s)", _TIME_FIELDS[timing][0], 1.0),
        (f"predict {timing} (ms/batch)", _TIME_FIELDS[timing][1], 1000.0),
        ("test NFE", "test_nfe", 1.0),
    ]


def _get(record: dict[str, Any], path: str) -> float:
    """The number at ``path`` (dotted keys) of ``record``; a :class:`ResultsError` naming the field
    if it holds something else (a record edited by hand)."""
    value = _at(record, path)
    if not is_number(value):
        raise _not_numbers(record, path, value)
    return float(value)


def _series(record: dict[str, Any], path: str) -> list[float]:
    """The list of numbers at ``path`` of ``record`` (a training history), checked as :func:`_get`."""
    value = _at(record, path)
    if not (isinstance(value, list) and all(is_number(x) for x in value)):
        raise _not_numbers(record, path, value)
    return [float(x) for x in value]


def _at(record: dict[str, Any], path: str) -> Any:
    """The value at ``path`` (dotted keys) of ``record``: a ``KeyError`` for a missing key (the
    report names it), a :class:`ResultsError` where a key's value is no mapping to read on in."""
    value: Any = record
    for depth, key in enumerate(path.split(".")):
        if not isinstance(value, dict):
            raise _not_numbers(record, ".".join(path.split(".")[:depth]), value)
        value = value[key]
    return value


def _not_numbers(record: dict[str, Any], path: str, value: object) -> ResultsError:
    shown = repr(value) if len(repr(value)) <= 40 else f"a {type(value).__name__}"
    return ResultsError(
        f"run {record['run_id']} ({record['task']}) holds {shown} at {path}, where the report reads "
        "numbers (edited by hand, or written by another version of local_reg?)"
    )


def _baseline(group: Group, label: str) -> list[dict[str, Any]]:
    """The vanilla runs a row is compared with: those on as many processes (a run on several trains
    on other batches and times one process's share, so it has its own vanilla row)."""
    world = group.runs(label)[0].get("world_size", 1)
    labels = {
        group.row(record)
        for record in group.records
        if record.get("method") == "vanilla" and record.get("world_size", 1) == world
    }
    return group.runs(labels.pop()) if len(labels) == 1 else []


def _ratio(group: Group, label: str, path: str) -> str:
    """The row's mean over vanilla's, both over the seeds they share (on a partial sweep the means
    of different seed sets would mix the seeds' spread into the ratio); ``–`` without one."""
    baseline = {record["seed"]: record for record in _baseline(group, label)}
    runs = [record for record in group.runs(label) if record["seed"] in baseline]
    if not runs:
        return "–"
    reference = _mean(_get(baseline[r["seed"]], path) for r in runs)
    if reference == 0:  # e.g. a run recorded without training: no ratio rather than a crash
        return "–"
    ratio = _mean(_get(r, path) for r in runs) / reference
    return f"{ratio:.3f}" if abs(ratio) < _WHOLE_NUMBERS_BELOW else _number(ratio, 3)


def markdown_table(group: Group, timing: str = "cpu") -> str:
    """The group's table; times are this process's CPU time (``timing="cpu"``) or wall time."""
    columns = _columns(group, timing)
    header = ["method", "weight", "seeds"] + [c[0] for c in columns]
    header += ["NFE / vanilla", "train time / vanilla", "predict / vanilla"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label in group.labels():
        runs = group.runs(label)
        cells = [label, weight_text(runs[0].get("weight")), str(len(runs))]
        cells += [_fmt([_get(r, path) for r in runs], scale) for _, path, scale in columns]
        cells += [_ratio(group, label, p) for p in ("test_nfe", *_TIME_FIELDS[timing])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def describe(group: Group) -> str:
    first = group.records[0]
    s = first["settings"]
    solver = s.get("solver", {})
    parts = [f"size `{first['size']}`", f"gradient `{first['gradient']}`"]
    if solver:
        parts.append(
            f"{solver['method']} rtol={number_text(solver['rtol'])} atol={number_text(solver['atol'])}"
        )
    sizes = sorted({record.get("world_size", 1) for record in group.records})
    world = (
        f"world size {sizes[0]}" if len(sizes) == 1 else f"world sizes {', '.join(map(str, sizes))} (by row)"
    )
    threads = sorted({record.get("threads", 1) for record in group.records})
    torch_threads = (
        f"{threads[0]} torch thread(s)"
        if len(threads) == 1
        else f"torch threads {', '.join(map(str, threads))} mixed (their times do not compare)"
    )
    parts += [f"{s['epochs']} epochs", f"batch {s['batch_size']}", world, torch_threads]
    for name, what in _PROVENANCE.items():
        versions = sorted({record.get(name, "unrecorded") for record in group.records})
        if len(versions) > 1:
            parts.append(f"{what} {', '.join(versions)} mixed")
    changed = _changed_settings(group.task, first["size"], s)
    if changed:
        parts.append("set: " + ", ".join(f"{key}={value}" for key, value in changed))
    return ", ".join(parts)


_PROVENANCE = {
    "local_reg": "local_reg versions",
    "local_reg_source": "local_reg sources",
    "torch": "torch versions",
}
"""The fields of a record that name what wrote it, and how a table whose runs differ in one says so."""


def _changed_settings(task: str, size: str, settings: dict[str, Any]) -> list[tuple[str, str]]:
    """The settings (dotted keys, weights and local options aside: they label rows) that differ from
    the task's own at ``size``, so that tables of one task under other ``--set`` values differ in
    their description; none for a task or size this version does not know."""
    if task not in REGISTRY:
        return []
    try:
        defaults = REGISTRY[task].settings(size)
    except (KeyError, ValueError):
        return []

    def flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out = {}
        for key, value in values.items():
            if prefix == "" and key in ("weights", "local"):
                continue
            if isinstance(value, dict):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    mine, theirs = flat(settings), flat(defaults)
    return [(key, json.dumps(mine[key])) for key in sorted(mine) if mine[key] != theirs.get(key, object())]


def _smooth(values: Sequence[float], window: int) -> list[float]:
    """The trailing mean over ``window`` points of the finite values among them: a value that is not
    finite is left out of every window it falls in, and a window without a finite value gives
    ``nan`` (a gap in the curve)."""
    out, total, count = [], 0.0, 0
    for i, value in enumerate(values):
        leaving = values[i - window] if i >= window else math.nan
        # The running sum is exact while it stays below 2**53 after each subtraction and addition
        # (a rounded result is at least 2**53 too): one that reached it, even if only between the
        # two, may hold a rounding that would outlive its large values in the window.
        exact = abs(total) < _EXACT_SUMS_BELOW
        if exact and math.isfinite(leaving):
            total, count = total - leaving, count - 1
            exact = abs(total) < _EXACT_SUMS_BELOW
        if exact and math.isfinite(value):
            total, count = total + value, count + 1
            exact = abs(total) < _EXACT_SUMS_BELOW
        if exact:
            out.append(total / count if count else math.nan)
            continue
        finite = [v for v in values[max(0, i + 1 - window) : i + 1] if math.isfinite(v)]
        try:
            total = math.fsum(finite)  # correctly rounded: exact where the sum is below 2**53
        except OverflowError:
            total = math.inf  # summed afresh again at the next point
        count = len(finite)
        out.append(_mean(finite))
    return out


_EXACT_SUMS_BELOW = 2.0**53
"""Below it, whole numbers (counts of evaluations) add and subtract without rounding."""


def _save(fig: Any, ax: Any, path: Path | None) -> None:
    """A figure's legend, layout and PNG at ``path``, written whole or not at all (``None``: drawn,
    not written, to check the records); the figure is closed."""
    try:
        ax.legend(fontsize=8)
        fig.tight_layout()
        if path is not None:
            png = io.BytesIO()
            fig.savefig(png, format="png", dpi=90)
            atomic_write_bytes(path, png.getvalue())
    finally:
        plt.close(fig)


def plot_nfe(group: Group, path: Path | None) -> None:
    """Mean (over seeds) forward NFE of the main solve per training iteration, smoothed. An
    iteration whose mean is not finite (a record edited by hand) is left out of the smoothing
    (:func:`_smooth`), and the legend counts such iterations after the row's label."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for label in group.labels():
        curves = [_series(r, "history.nfe") for r in group.runs(label)]
        length = min(len(c) for c in curves)
        mean = [_mean(c[i] for c in curves) for i in range(length)]
        left_out = sum(not math.isfinite(value) for value in mean)
        legend = label
        if left_out:
            legend += f" ({left_out} iteration{'s' if left_out > 1 else ''} with a non-finite NFE left out)"
        ax.plot(_smooth(mean, max(1, length // 40)), label=legend)
    ax.set_xlabel("training iteration")
    ax.set_ylabel("NFE (forward, training)")
    ax.set_title(f"{group.task}: NFE over training")
    _save(fig, ax, path)


def plot_metric_vs_nfe(group: Group, path: Path | None) -> None:
    """Test metric against test NFE: one dot per seed, a cross at each method's mean."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    metric = group.metric
    scale = 100.0 if metric in _PERCENT_METRICS else 1.0
    for label in group.labels():
        runs = group.runs(label)
        nfe = [r["test_nfe"] for r in runs]
        values = [r["test"][metric] * scale for r in runs]
        dots = ax.scatter(nfe, values, alpha=0.5, label=label)
        ax.scatter([_mean(nfe)], [_mean(values)], marker="X", s=80, color=dots.get_facecolor())
    ax.set_xlabel("test NFE")
    ax.set_ylabel(f"test {metric}" + (" (%)" if metric in _PERCENT_METRICS else ""))
    ax.set_title(f"{group.task}: test {metric} vs NFE")
    _save(fig, ax, path)


def write_report(
    out_dir: str | Path, records: Sequence[dict[str, Any]], task: str | None = None, timing: str = "cpu"
) -> str:
    """Write :func:`report_name` (``report.md``, or ``report-<task>.md`` for one task) and the PNGs of
    every group into ``out_dir``; return the Markdown."""
    out_dir = Path(out_dir)
    text = _report(out_dir, records, task, timing, figures=out_dir)
    # surrogateescape: the text names the folder, whose name may hold bytes that are no UTF-8.
    atomic_write_bytes(out_dir / report_name(task), text.encode("utf-8", "surrogateescape"))
    return text


def check_report(out_dir: str | Path, records: Sequence[dict[str, Any]], *groups: tuple[str, str]) -> None:
    """Raise the :class:`ResultsError` :func:`write_report` (every task, CPU times, as a sweep
    writes it) would raise for ``records`` (a record another version wrote, lacking a field the
    report reads; a figure's name taken by a folder), writing nothing: a sweep checks the folder's
    records before it trains, not after. ``groups``: the ``(name, metric)`` of groups the sweep will
    add, whose figures' names are checked too. Its warnings (a row's seed recorded twice) are left
    to the report itself."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResultsWarning)
        _report(Path(out_dir), records, None, "cpu", figures=None)
    for name, metric in [*((group.name, group.metric) for group in group_records(records)), *groups]:
        for figure in figure_names(name, metric):
            check_replaceable(Path(out_dir) / figure)


def figure_names(group_name: str, metric: str) -> tuple[str, str]:
    """The file names of a group's two figures: NFE over training, and the metric against NFE."""
    return f"{group_name}_nfe.png", f"{group_name}_{metric}_vs_nfe.png"


def _report(
    out_dir: Path, records: Sequence[dict[str, Any]], task: str | None, timing: str, figures: Path | None
) -> str:
    """The report's Markdown, its PNGs written into ``figures`` (``None``: drawn, not written)."""
    sections = [
        "# Results\n",
        f"Generated from `{out_dir / 'results.jsonl'}`; mean ± sample sd over seeds; a ratio to "
        "vanilla is the ratio of the means over the seeds both rows have; times are "
        + ("the process's CPU time (robust to other jobs on the cores)." if timing == "cpu" else "wall time.")
        + "\n",
    ]
    for group in group_records(records, task):
        nfe_png, metric_png = figure_names(group.name, group.metric)
        try:
            shown = f"![NFE over training]({nfe_png}) ![test {group.metric} vs NFE]({metric_png})\n"
            try:
                plot_nfe(group, None if figures is None else figures / nfe_png)
                plot_metric_vs_nfe(group, None if figures is None else figures / metric_png)
            except (ValueError, OverflowError) as error:  # values matplotlib cannot place (~1e308)
                warnings.warn(
                    f"{group.task} (`{group.config_id}`): its figures are left out, as matplotlib "
                    f"cannot draw its values ({error})",
                    ResultsWarning,
                    stacklevel=2,
                )
                shown = "(figures left out: values matplotlib cannot draw)\n"
            sections += [
                f"## {group.task} (`{group.config_id}`)\n",
                describe(group) + "\n",
                markdown_table(group, timing) + "\n",
                shown,
            ]
        except KeyError as error:
            # A record another version wrote, or one edited by hand: name it, not a traceback.
            remedy = (
                " (records written before CPU times were kept: `local-reg report --timing wall` reads "
                "them; a sweep of this version needs its own --out)"
                if error.args and error.args[0] in _TIME_FIELDS["cpu"]
                else " (written by another version of local_reg?)"
            )
            raise ResultsError(
                f"a record of {group.task} (`{group.config_id}`) in {out_dir / 'results.jsonl'} lacks "
                f"the field {error} the report reads{remedy}"
            ) from None

    return "\n".join(sections)
