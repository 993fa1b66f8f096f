"""The results file: one JSON object per finished run, appended atomically, never overwritten."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import warnings
from collections.abc import Callable, Iterator
from glob import escape as glob_escape
from pathlib import Path
from typing import Any

RESULTS_NAME = "results.jsonl"
REQUIRED_FIELDS = ("run_id", "task", "method", "label", "seed", "config_id", "metric", "test", "test_nfe")


def is_number(value: object) -> bool:
    """Whether a JSON value is a number (not a bool, which Python counts as an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_REQUIRED_TYPES: dict[str, Callable[[object], bool]] = {
    **dict.fromkeys(
        ("run_id", "task", "method", "label", "config_id", "metric"), lambda v: isinstance(v, str)
    ),
    "seed": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "test": lambda v: isinstance(v, dict) and all(is_number(x) for x in v.values()),
    "test_nfe": is_number,
}
"""What each required field of a run record holds (a record edited by hand is named, not a traceback)."""
_OPTIONAL_TYPES: dict[str, Callable[[object], bool]] = {"settings": lambda v: isinstance(v, dict)}
"""What a field the report reads holds where a record has it."""


class ResultsError(Exception):
    """The results file cannot be read (corrupt, not a file) or a record would overwrite a finished run."""


class ResultsWarning(UserWarning):
    """Something in the results folder was repaired on the fly: a run recorded twice (counted once), an
    unreadable checkpoint (moved aside)."""


class ResultsFile:
    """``out/results.jsonl``: each line a finished run's record, keyed by ``run_id``.

    Appending rewrites the file into a temporary file and renames it over the old one, under an
    exclusive lock, so a reader never sees half a line and concurrent sweeps into the same folder
    do not lose each other's records.
    """

    def __init__(self, out_dir: str | os.PathLike[str]):
        self.path = Path(out_dir) / RESULTS_NAME
        self._lock_path = Path(out_dir) / f".{RESULTS_NAME}.lock"

    def load(self, *, warn: bool = True) -> list[dict[str, Any]]:
        """Every record, each ``run_id`` once; raises :class:`ResultsError` naming the first bad line.

        A ``run_id`` on several lines (e.g. the file concatenated with itself) is one run: the first line
        is kept, so that seeds are never counted twice, and a :class:`ResultsWarning` names the repeats
        (when ``warn``). The file itself is left as it is.
        """
        if not self.path.exists():
            return []
        check_replaceable(self.path)
        records: dict[str, dict[str, Any]] = {}
        repeats: list[int] = []
        try:
            with self.path.open(encoding="utf-8") as f:
                for number, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    record = self._parse(line, number)
                    if record["run_id"] in records:
                        repeats.append(number)
                    else:
                        records[record["run_id"]] = record
        except UnicodeDecodeError as error:
            raise ResultsError(f"{self.path}: not UTF-8 text ({error.reason})") from None
        except OSError as error:
            raise ResultsError(f"{self.path}: cannot be read ({error.strerror or error})") from None
        if repeats and warn:
            shown = ", ".join(map(str, repeats[:10])) + (", ..." if len(repeats) > 10 else "")
            warnings.warn(
                f"{self.path}: {len(repeats)} line(s) repeat a run recorded earlier (lines {shown}); "
                "each run is counted once, from its first line",
                ResultsWarning,
                stacklevel=2,
            )
        return list(records.values())

    def _parse(self, line: str, number: int) -> dict[str, Any]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ResultsError(f"{self.path}:{number}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict):
            record = {}
        missing = [k for k in REQUIRED_FIELDS if k not in record]
        if missing:
            raise ResultsError(f"{self.path}:{number}: not a run record (missing {missing})")
        wrong = [k for k in REQUIRED_FIELDS if not _REQUIRED_TYPES[k](record[k])]
        wrong += [k for k, holds in _OPTIONAL_TYPES.items() if k in record and not holds(record[k])]
        if wrong:
            values = {k: record[k] for k in wrong}
            raise ResultsError(f"{self.path}:{number}: not a run record (wrong types: {values})")
        return record

    def finished(self) -> set[str]:
        """The ``run_id`` s recorded (no warning about repeats: the sweep asks before every run)."""
        return {record["run_id"] for record in self.load(warn=False)}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def append(self, record: dict[str, Any]) -> None:
        """Add one finished run; refuses a ``run_id`` already recorded."""
        line = json.dumps(record, sort_keys=True) + "\n"
        with self._locked():
            if record["run_id"] in self.finished():
                raise ResultsError(f"run {record['run_id']} is already recorded in {self.path}")
            old = self.path.read_bytes() if self.path.exists() else b""
            if old and not old.endswith(b"\n"):
                old += b"\n"
            atomic_write_bytes(self.path, old + line.encode("utf-8"))


def _host() -> str:
    """This host's name as a temporary file's name may hold it (no dots: they separate its parts)."""
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in os.uname().nodename) or "host"


def _remove_left_behind(path: Path) -> None:
    """Remove the temporary files of ``path`` that a process of this host no longer running left."""
    prefix = f".{path.name}.{_host()}."
    for left in path.parent.glob(f".{glob_escape(path.name)}.*.tmp"):
        pid = left.name[len(prefix) : -len(".tmp")] if left.name.startswith(prefix) else ""
        if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
            left.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def check_replaceable(path: Path) -> None:
    """Raise :class:`ResultsError` if ``path``, a file the command replaces, is something else (a
    folder of that name)."""
    if path.exists() and not path.is_file():
        raise ResultsError(f"{path} is not a file: move it away, or choose another --out")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``: all or nothing. The
    temporary file names this host and process; those a killed process of this host left behind
    (a SIGKILL cannot be caught) are removed after the write. Another host's (a folder shared over
    a network) are left alone: a process there may still be writing."""
    tmp = path.with_name(f".{path.name}.{_host()}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _remove_left_behind(path)
    except BaseException as error:
        # An interrupted write (Ctrl-C, a full disk) leaves the target as it was and no stray file:
        # the next process has another pid, and would never clean this one up.
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.filename is None:
            # A full disk's write names no file: name the one written, so that it is told as one
            # inside the results folder (the CLI's one line) rather than as a traceback.
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise
