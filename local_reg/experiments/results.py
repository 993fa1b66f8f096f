"""The results file: one JSON object per finished run, appended atomically, never overwritten."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import stat
import warnings
from collections.abc import Callable, Iterator
from glob import escape as glob_escape
from pathlib import Path
from typing import Any

RESULTS_NAME = "results.jsonl"
REQUIRED_FIELDS = ("run_id", "task", "method", "label", "seed", "config_id", "metric", "test", "test_nfe")


def is_number(value: object) -> bool:
    """Whether a JSON value is a number a float holds: not a bool (which Python counts as an int),
    nor an int too large for a float (it stopped the report)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        float(value)
    except OverflowError:
        return False
    return True


def _is_name(value: object) -> bool:
    """Whether ``value`` may be part of a file name in the results folder: the report names its
    figures after a record's task, settings and metric, so one with a ``/`` or starting ``..``
    would write outside the folder."""
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _is_weight(value: object) -> bool:
    """Whether ``value`` is a weight spec as the runner records it (:mod:`.methods`), in the shape
    the report's :func:`~.methods.weight_text` reads (not checked against today's ranges: a record
    of an older version stays readable)."""
    if value is None or value == "default" or is_number(value):
        return True
    if not isinstance(value, dict):
        return False
    kind = next((k for k in ("adaptive", "ratio") if k in value), None)
    if kind is None:
        return is_number(value.get("start")) and is_number(value.get("end"))
    return is_number(value[kind]) and all(
        v is None or isinstance(v, str) or is_number(v) for v in value.values()
    )


def _is_solver(value: object) -> bool:
    """Whether a record's ``settings.solver`` holds what the report prints: numbers for tolerances."""
    return isinstance(value, dict) and all(is_number(value[k]) for k in ("rtol", "atol") if k in value)


_REQUIRED_TYPES: dict[str, Callable[[object], bool]] = {
    **dict.fromkeys(("run_id", "method", "label"), lambda v: isinstance(v, str)),
    **dict.fromkeys(("task", "config_id", "metric"), _is_name),
    "seed": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "test": lambda v: isinstance(v, dict) and all(is_number(x) for x in v.values()),
    "test_nfe": is_number,
}
"""What each required field of a run record holds (a record edited by hand is named, not a traceback)."""
_OPTIONAL_TYPES: dict[str, Callable[[object], bool]] = {
    "settings": lambda v: isinstance(v, dict) and _is_solver(v.get("solver", {})),
    "weight": _is_weight,
    # The versions (and local_reg's sources) that wrote it.
    **dict.fromkeys(("local_reg", "local_reg_source", "torch"), lambda v: isinstance(v, str)),
}
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
        check_file(self.path)  # read through a link (writing refuses one)
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
            names = {"task", "config_id", "metric"}.intersection(wrong)
            rule = f"; {', '.join(sorted(names))}: letters, digits, '_', '.' and '-'" if names else ""
            raise ResultsError(
                f"{self.path}:{number}: not a run record (wrong types or values: {values}{rule})"
            )
        return record

    def finished(self) -> set[str]:
        """The ``run_id`` s recorded (no warning about repeats: the sweep asks before every run)."""
        return {record["run_id"] for record in self.load(warn=False)}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock = open_lock_file(self._lock_path)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        finally:
            os.close(lock)

    def check_writable(self) -> None:
        """Raise :class:`ResultsError` where :meth:`append` would fail: the file or its lock is not
        a file, the file is read-only, or the lock cannot be taken (a sweep asks before it trains)."""
        check_replaceable(self._lock_path)
        self._check_replaceable()
        try:
            with self._locked():
                pass
        except OSError as error:
            raise ResultsError(f"{self._lock_path}: cannot be locked ({error.strerror or error})") from None

    def _check_replaceable(self) -> None:
        check_replaceable(self.path)
        if not self.path.exists():
            return
        # The write replaces the file, which a read-only mode would not stop: honour it as open() would.
        if not os.access(self.path, os.W_OK):
            raise ResultsError(f"{self.path} is read-only: make it writable, or choose another --out")
        folder, user = os.stat(self.path.parent), os.geteuid()
        if folder.st_mode & stat.S_ISVTX and user not in (0, folder.st_uid, os.stat(self.path).st_uid):
            raise ResultsError(
                f"{self.path} belongs to another user, in a folder with the sticky bit (as /tmp), "
                "where it cannot be replaced: choose another --out"
            )

    def append(self, record: dict[str, Any]) -> None:
        """Add one finished run; refuses a ``run_id`` already recorded."""
        line = json.dumps(record, sort_keys=True) + "\n"
        with self._locked():
            self._check_replaceable()
            if record["run_id"] in self.finished():
                raise ResultsError(f"run {record['run_id']} is already recorded in {self.path}")
            old = self.path.read_bytes() if self.path.exists() else b""
            if old and not old.endswith(b"\n"):
                old += b"\n"
            atomic_write_bytes(self.path, old + line.encode("utf-8"))


def open_lock_file(path: Path) -> int:
    """A descriptor of the lock file ``path`` (made if missing) for ``flock``: opened for writing
    where it can be (NFS emulates ``flock`` with ``fcntl`` locks, which need it), else for reading
    (another user's lock file in a shared folder: a local ``flock`` needs no more)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except PermissionError:
        return os.open(path, os.O_RDONLY)


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


def check_file(path: Path) -> None:
    """Raise :class:`ResultsError` if ``path``, a file the command reads, is something else (a
    folder of that name)."""
    if path.exists() and not path.is_file():
        raise ResultsError(f"{path} is not a file: move it away, or choose another --out")


def check_replaceable(path: Path) -> None:
    """Raise :class:`ResultsError` if ``path``, a file the command replaces, is something else (a
    folder of that name, or a link the replace would not write through)."""
    if path.is_symlink():
        raise ResultsError(
            f"{path} is a symbolic link, which the write would replace by a file (the file it names "
            "left as it was): copy the file in, or choose another --out"
        )
    check_file(path)


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
        if path.exists():  # the file keeps its permissions
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
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
