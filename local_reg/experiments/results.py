"""The results file: one JSON object per finished run, appended atomically, never overwritten."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

RESULTS_NAME = "results.jsonl"
REQUIRED_FIELDS = ("run_id", "task", "method", "seed", "config_id", "test", "test_nfe")


class ResultsError(Exception):
    """The results file cannot be read (corrupt) or a record would overwrite a finished run."""


class ResultsFile:
    """``out/results.jsonl``: each line a finished run's record, keyed by ``run_id``.

    Appending rewrites the file into a temporary file and renames it over the old one, under an
    exclusive lock, so a reader never sees half a line and concurrent sweeps into the same folder
    do not lose each other's records.
    """

    def __init__(self, out_dir: str | os.PathLike[str]):
        self.path = Path(out_dir) / RESULTS_NAME
        self._lock_path = Path(out_dir) / f".{RESULTS_NAME}.lock"

    def load(self) -> list[dict[str, Any]]:
        """Every record; raises :class:`ResultsError` naming the first bad line."""
        if not self.path.exists():
            return []
        records = []
        with self.path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ResultsError(f"{self.path}:{number}: not valid JSON ({error.msg})") from None
                missing = (
                    [k for k in REQUIRED_FIELDS if k not in record]
                    if isinstance(record, dict)
                    else list(REQUIRED_FIELDS)
                )
                if missing:
                    raise ResultsError(f"{self.path}:{number}: not a run record (missing {missing})")
                records.append(record)
        return records

    def finished(self) -> set[str]:
        return {record["run_id"] for record in self.load()}

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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``: all or nothing."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
