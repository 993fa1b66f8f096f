"""``local-reg``: run the experiments and report them.

    local-reg experiment TASK [--methods M ...] [--seeds N] [--out DIR] [--quick | --paper | --size S]
                              [--gradient G] [--set KEY=VALUE ...] [--threads N] [--no-progress]
    local-reg report [--out DIR] [--task TASK] [--timing cpu|wall]

Exit codes: 0 success; 2 bad input (unknown task, method or setting, a setting's value its task does
not allow, an output folder that cannot be written, a corrupt results file, nothing to report), with
the reason in one line on stderr; 3 some runs failed (diverged), named on stderr, the others kept
and reported (the same command retries the failed ones); 130 interrupted by Ctrl-C (SIGINT), 143
stopped by SIGTERM (a job scheduler's or torchrun's stop), with the command that resumes.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shlex
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import torch

from ..gradients import GRADIENT_METHODS
from . import distributed, runner
from .methods import METHODS
from .report import TIMINGS, check_report, group_records, markdown_table, report_name, write_report
from .results import ResultsError, ResultsFile, ResultsWarning, check_replaceable
from .runner import SIZES, Interrupted, RunsFailed, RunSpec, fed_ratio_weights, sweep
from .settings import SettingsError
from .tasks import REGISTRY, ModelContext

EXIT_BAD_INPUT = 2
EXIT_RUNS_FAILED = 3  # some runs' solver failed; the others are recorded and reported
# Plus the signal's number, what a shell reports for a command a signal stopped: 130 for Ctrl-C.
EXIT_SIGNALLED = 128
REPEAT_WINDOW = 1.0
"""Seconds after a stop signal that raised within which a repeat is taken for its duplicate."""
# Ctrl-C, and the stop that job schedulers (Slurm, Kubernetes, systemd, ``timeout``) send and
# torchrun forwards to its processes; each with the handler Python starts a process with.
_STOP_SIGNALS: dict[signal.Signals, Callable[..., Any] | int] = {
    signal.SIGINT: signal.default_int_handler,
    signal.SIGTERM: signal.SIG_DFL,
}


class BadInput(Exception):
    """A user error: reported in one line, exit code 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="local-reg", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("experiment", help="train and test TASK with each method and seed, then report")
    run.add_argument("task", choices=sorted(REGISTRY), help="the task")
    run.add_argument(
        "--methods", nargs="+", metavar="M", help="methods to compare (default: all of the task's)"
    )
    run.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    run.add_argument("--out", type=Path, default=Path("results"), help="results folder (default results/)")
    sizes = run.add_mutually_exclusive_group()
    sizes.add_argument("--quick", dest="size", action="store_const", const="quick", help="CPU-sized run")
    sizes.add_argument(
        "--paper", dest="size", action="store_const", const="full", help="the paper's settings"
    )
    sizes.add_argument(
        "--size", choices=SIZES, help="tiny (tests), quick (CPU) or full (paper); default full"
    )
    run.add_argument(
        "--gradient", choices=GRADIENT_METHODS, default="direct", help="gradient of the main solve"
    )
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, e.g. --set epochs=5 --set solver.rtol=1e-5 (VALUE is JSON)",
    )
    run.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads per process (default 1: these small models gain little from more, "
        "and oversubscribed cores slow them down many times)",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bars")

    report = commands.add_parser("report", help="write report.md and the plots of a results folder")
    report.add_argument("--out", type=Path, default=Path("results"), help="results folder (default results/)")
    report.add_argument(
        "--task",
        choices=sorted(REGISTRY),
        help="only this task, into report-TASK.md (report.md is left as it is)",
    )
    report.add_argument(
        "--timing", choices=TIMINGS, default="cpu", help="times as process CPU time (default) or wall time"
    )
    return parser


def _parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    overrides = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise BadInput(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            overrides[key] = json.loads(text)
        except json.JSONDecodeError:
            overrides[key] = text  # a bare word is a string: --set solver.method=dopri5
    return overrides


def _echo(text: str) -> None:
    """Print ``text`` to stdout as far as its encoding can show it: a table's ``±`` and ``↑`` in a C
    locale, a folder's bytes that are no UTF-8, as escapes (they stopped the command with a
    traceback after its runs were recorded). stderr does this by itself."""
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    print(text.encode(encoding, "backslashreplace").decode(encoding), flush=True)


def _writable_folder(path: Path, *inner: str) -> None:
    """Refuse an output folder, or one of the folders ``inner`` inside it, that cannot be written
    (a file of that name included), before anything runs."""
    for folder in (path, *(path / name for name in inner)):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as error:
            raise BadInput(
                f"cannot write to output folder {str(folder)!r}: {error.strerror or error}"
            ) from None


def _experiment(args: argparse.Namespace) -> int:
    spec, methods, world = _planned_sweep(args)
    results = _checked_output(args, spec)
    return _sweep_and_report(args, spec, methods, world, results)


def _planned_sweep(args: argparse.Namespace) -> tuple[RunSpec, list[str], int]:
    """The first run's spec (whose size, gradient and overrides every run shares), the methods to
    run and the number of processes torchrun started, once the arguments are checked and each
    method's model is built."""
    task = REGISTRY[args.task]
    unknown = [m for m in args.methods or () if m not in task.methods]
    if unknown:
        raise BadInput(
            f"unknown method(s) {unknown} for task {args.task!r}; choose from {list(task.methods)}"
        )
    if args.seeds < 1:
        raise BadInput(f"--seeds must be at least 1, got {args.seeds}")
    if args.threads < 1:
        raise BadInput(f"--threads must be at least 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    size = args.size or "full"
    overrides = _parse_overrides(args.overrides)
    spec = RunSpec(args.task, (args.methods or task.methods)[0], 0, size, args.gradient, overrides)
    try:
        settings = spec.settings()
    except SettingsError as error:
        raise BadInput(f"bad --set: {error}") from None
    world = distributed.requested_world_size()
    batch_size = settings.get("batch_size")
    if world > 1 and isinstance(batch_size, int) and batch_size % world:
        # Each process takes batch_size / world: another global batch would train than the recorded one.
        raise BadInput(
            f"batch_size={batch_size} is not a multiple of the {world} processes torchrun started: "
            f"pass --set batch_size=N with N a multiple of {world}"
        )
    methods = args.methods or list(task.default_methods(settings))
    local_options = sorted(key for key in overrides if key.startswith("local."))
    if local_options and not any(METHODS[method].family == "local" for method in methods):
        raise BadInput(f"--set {local_options[0]} sets the local regularizer, but no local method is run")
    for method in methods:
        # Building each model once up front lets the library reject a combination it does not
        # support (e.g. a global method with --gradient symplectic) before any training.
        try:
            model = task.build_model(settings, ModelContext(METHODS[method], args.gradient, 1))
            fed_ratio_weights(model, world)
        except (ValueError, TypeError, KeyError) as error:
            raise BadInput(f"{method} with --gradient {args.gradient}: {error}") from None
        except NotImplementedError as error:  # a task that lacks a part of the interface its method reads
            raise BadInput(f"{method}: {error}") from None
    return spec, methods, world


def _checked_output(args: argparse.Namespace, spec: RunSpec) -> ResultsFile:
    """The results file in ``--out``, once the folder, the report it replaces and the records the
    report reads are checked."""
    _writable_folder(args.out, "checkpoints")
    check_replaceable(args.out / report_name(None))
    results = ResultsFile(args.out)
    # A corrupt file, or a record the report cannot read, is reported before hours of training, not after.
    records = results.load()
    if distributed.launched_rank() == 0:
        results.check_writable()
        check_report(args.out, records, (f"{args.task}-{spec.config_id}", REGISTRY[args.task].metric))
    return results


def _sweep_and_report(
    args: argparse.Namespace, spec: RunSpec, methods: list[str], world: int, results: ResultsFile
) -> int:
    """The exit code of the sweep of ``methods`` over ``--seeds``, after reporting its finished
    runs (the main process writes the report and prints the spec's table)."""
    try:
        distributed.init_from_env()
    except ValueError as error:  # WORLD_SIZE set by hand, without the rest of torchrun's environment
        raise BadInput(
            f"WORLD_SIZE={world} but no process group to join ({error}): launch with torchrun"
        ) from None
    failed = None
    finished = False
    try:
        try:
            sweep(
                args.task,
                methods,
                range(args.seeds),
                args.out,
                size=spec.size,
                gradient=args.gradient,
                overrides=spec.overrides,
                progress=not args.no_progress,
            )
        except RunsFailed as error:  # the finished runs are reported all the same
            failed = error
        if distributed.is_main():
            records = results.load(warn=False)  # repeats were reported before the sweep
            if records:
                write_report(args.out, records)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ResultsWarning)  # the report has warned of them
                    for group in group_records(records, args.task):
                        if group.config_id == spec.config_id:
                            _echo(markdown_table(group))
                _echo(f"\nreport: {args.out / 'report.md'}")
            elif failed is None:  # every run is being trained elsewhere: nothing to report yet
                print(f"no finished runs in {results.path} yet", file=sys.stderr)
        finished = True
        if failed is not None:
            print(f"local-reg: error: {failed}", file=sys.stderr)
            return EXIT_RUNS_FAILED
    except SettingsError as error:  # a setting only the data can check (e.g. train_size)
        raise BadInput(f"bad settings: {error}") from None
    finally:
        distributed.shutdown(together=finished)
    return 0


def _report(args: argparse.Namespace) -> int:
    results = ResultsFile(args.out)
    if not results.path.exists():
        raise BadInput(f"no results file {str(results.path)!r}")
    records = results.load()
    if not group_records(records, args.task):
        tasks = sorted({r["task"] for r in records})
        raise BadInput(
            f"no {args.task + ' ' if args.task else ''}runs in {str(results.path)!r} "
            f"(tasks there: {', '.join(tasks) or 'none'}); {report_name(args.task)} left unchanged"
        )
    _writable_folder(args.out)
    check_replaceable(args.out / report_name(args.task))
    _echo(write_report(args.out, records, args.task, args.timing))
    return 0


def _inside(path: object, folder: Path) -> bool:
    """Whether ``path`` (an ``OSError``'s ``filename``: a string, bytes, or ``None``) lies in
    ``folder``."""
    if not isinstance(path, (str, os.PathLike)):
        return False
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


def _interrupted(
    interrupt: KeyboardInterrupt, stop: signal.Signals, args: argparse.Namespace, argv: Sequence[str]
) -> str:
    """One line: the signal ``stop`` that interrupted the command, what was saved, and the command
    that carries on from there (under torchrun, a torchrun command: the run's identity includes its
    number of processes)."""
    world = distributed.requested_world_size()
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    nodes = [f"--nnodes={world // per_node}"] if per_node < world else []
    launcher = ["torchrun", *nodes, f"--nproc_per_node={per_node}", "-m", "local_reg.experiments"]
    command = shlex.join([*(launcher if world > 1 else ["local-reg"]), *argv])
    interrupted = f"local-reg: interrupted by {stop.name}"
    if args.command != "experiment":
        return f"{interrupted}; rerun with: {command}"
    results = args.out / "results.jsonl"
    if isinstance(interrupt, Interrupted):
        if interrupt.checkpoint is not None:
            saved = f"run {interrupt.run_id} is saved at epoch {interrupt.epoch} of {interrupt.epochs} "
            saved += f"({interrupt.checkpoint})"
        else:
            saved = f"run {interrupt.run_id} had not finished an epoch and restarts"
        return f"{interrupted}: {saved}, finished runs are in {results}; resume with: {command}"
    return f"{interrupted}: finished runs are in {results}; resume with: {command}"


def _one_line_warnings(show: Callable[..., None]) -> Callable[..., None]:
    """``warnings.showwarning`` that prints a :class:`ResultsWarning` as one line, others as ``show`` does."""

    def showwarning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, ResultsWarning):
            print(f"local-reg: warning: {message}", file=sys.stderr)
        else:
            show(message, category, *args, **kwargs)

    return showwarning


@contextlib.contextmanager
def _torch_state_kept() -> Iterator[None]:
    """The command sets torch's thread count (``--threads``) and seeds its global generators for
    each run: called in a process that goes on (a notebook's later training), it leaves them as
    they were."""
    threads = torch.get_num_threads()
    try:
        with torch.random.fork_rng():
            yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def _signals_stop_the_run(received: list[tuple[signal.Signals, float, bool]]) -> Iterator[None]:
    """Ctrl-C (SIGINT) and SIGTERM raise ``KeyboardInterrupt``, as Python's own SIGINT handler
    does (a repeat within :data:`REPEAT_WINDOW` seconds of the last that raised raises nothing),
    set :data:`runner.STOP_REQUESTED`, which the training loop checks, and are appended to
    ``received`` with their times and whether they raised. A signal that is ignored (SIGINT in a
    shell's background job) or handled by someone else is left as it is; each replaced handler is
    put back on the way out."""
    runner.STOP_REQUESTED.clear()
    replaced = {}
    if threading.current_thread() is threading.main_thread():
        replaced = {
            signum: default
            for signum, default in _STOP_SIGNALS.items()
            if signal.getsignal(signum) == default
        }
    request_stop = functools.partial(_request_stop, received)
    for signum in replaced:
        signal.signal(signum, request_stop)
    try:
        yield
    finally:
        for signum, default in replaced.items():
            signal.signal(signum, default)
        # Answered: a later sweep in this process (a notebook's, after an interrupted command) trains.
        runner.STOP_REQUESTED.clear()


def _request_stop(
    received: list[tuple[signal.Signals, float, bool]], signum: int, frame: FrameType | None
) -> None:
    now = time.monotonic()
    # A repeat within the window of the last signal that raised (Slurm signals every process of a
    # job, and torchrun forwards its own copy, milliseconds apart) would land while that one
    # unwinds and cut its saving short. A later one raises: the first may have been dropped
    # (raised in a __del__), and a command that is not training (a report) reads no flag.
    raised = [at for _, at, raising in received if raising]
    raising = not raised or now - raised[-1] > REPEAT_WINDOW
    received.append((signal.Signals(signum), now, raising))
    runner.STOP_REQUESTED.set()
    if raising:
        raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (2 for bad input, 3 when runs failed, 128 plus
    the signal's number when a signal stopped it: 130 for Ctrl-C, 143 for SIGTERM)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:  # argparse has already printed the reason
        return int(exit_.code or 0)
    with warnings.catch_warnings():
        # After the user's own filters (-W, PYTHONWARNINGS), which decide first.
        warnings.filterwarnings("always", category=ResultsWarning, append=True)
        warnings.showwarning = _one_line_warnings(warnings.showwarning)
        received: list[tuple[signal.Signals, float, bool]] = []
        try:
            with _signals_stop_the_run(received), _torch_state_kept():
                return _experiment(args) if args.command == "experiment" else _report(args)
        except (BadInput, ResultsError, ResultsWarning) as error:
            # A ResultsWarning raised: the user's -W error made it one.
            print(f"local-reg: error: {error}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except OSError as error:
            # A path in the output folder that turned unwritable while the command ran (the
            # folders were checked before it): each finished run is in results.jsonl already.
            # Any other OSError (a network failure, a bug) keeps its traceback.
            if not _inside(error.filename, args.out):
                raise
            print(
                f"local-reg: error: {error.strerror or error}: {str(error.filename)!r} (the runs "
                "recorded so far are kept: run the command again once that is fixed)",
                file=sys.stderr,
            )
            return EXIT_BAD_INPUT
        except KeyboardInterrupt as interrupt:
            # The first signal is the one that stopped the command; a KeyboardInterrupt that no
            # handler of ours raised is Python's own, for SIGINT.
            stop = received[0][0] if received else signal.SIGINT
            if distributed.launched_rank() == 0:  # one line, not one per process
                print(_interrupted(interrupt, stop, args, argv), file=sys.stderr)
            return EXIT_SIGNALLED + stop


if __name__ == "__main__":
    sys.exit(main())
