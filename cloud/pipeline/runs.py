"""The on-site pipeline's memory: one SQLite row per run (its parameters, the step it is at, how it
ended), and a lock file so that one run goes at a time across processes (`cloud train` and
`cloud serve` may both want to start one). A run that was interrupted stays `running` with no lock
holder; the next start resumes it instead of starting another.

States: running -> registered | refused (the gate said no, with the reason) | failed (an error
that a retry would repeat: bad labels, no photos, a production version whose files are broken; the
reason says which).

A run that fails with an error that may pass (anything not known to repeat) stays `running` and is
resumed, but each failure is counted against the step it happened at: after MAX_ATTEMPTS failures
of the same step the run is abandoned with the reason, instead of failing at every retrain check
for ever. A run killed outright (kill -9, a stop) counts nothing: it resumes from its last epoch.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from cloud.pipeline.params import PipelineParams

RunState = Literal["running", "registered", "refused", "failed"]
MAX_ATTEMPTS = 3  # failures of one step before the run is abandoned

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('running', 'registered', 'refused', 'failed')),
    step TEXT NOT NULL,
    params TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    version TEXT,
    reason TEXT
);
"""
# columns added after the first release: a state file written before them gains them on open
MIGRATIONS = {"attempts": "ALTER TABLE runs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0",
              "failed_step": "ALTER TABLE runs ADD COLUMN failed_step TEXT",
              "last_error": "ALTER TABLE runs ADD COLUMN last_error TEXT"}


class RunBusy(RuntimeError):
    """Another process is running the pipeline."""


class RunRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: str
    state: RunState
    step: str
    params: PipelineParams
    created: float
    updated: float
    version: str | None = None
    reason: str | None = None
    attempts: int = 0  # failures of `failed_step` so far
    failed_step: str | None = None
    last_error: str | None = None

    def line(self) -> str:
        when = datetime.fromtimestamp(self.created, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
        outcome = f"version {self.version}" if self.version else (self.reason or "")
        if self.state == "running" and self.attempts:
            outcome = f"{self.attempts} failed attempt(s) at {self.failed_step}: {self.last_error}"
        return f"{self.run_id}  {when}  {self.state:<10} {self.step:<10} {outcome}"


class RunStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        have = {row[1] for row in self.db.execute("PRAGMA table_info(runs)")}
        for column, sql in MIGRATIONS.items():
            if column not in have:
                self.db.execute(sql)
        self._lock = threading.Lock()

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the pipeline for this process (the kernel lets go at exit, kill -9 included)."""
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                raise RunBusy(f"a pipeline run is in progress (pid {holder}); `cloud runs list` shows it") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)

    def _rows(self, where: str = "", args: tuple = ()) -> list[RunRecord]:
        with self._lock:
            rows = self.db.execute(
                f"SELECT run_id, state, step, params, created, updated, version, reason, attempts, failed_step, "
                f"last_error FROM runs {where} ORDER BY created, run_id", args).fetchall()
        return [RunRecord(run_id=r[0], state=r[1], step=r[2], params=PipelineParams.model_validate_json(r[3]),
                          created=r[4], updated=r[5], version=r[6], reason=r[7], attempts=r[8], failed_step=r[9],
                          last_error=r[10]) for r in rows]

    def runs(self) -> list[RunRecord]:
        return self._rows()

    def unfinished(self) -> RunRecord | None:
        found = self._rows("WHERE state = 'running'")
        return found[0] if found else None

    def create(self, run_id: str, params: PipelineParams) -> RunRecord:
        now = time.time()
        with self._lock:
            self.db.execute("INSERT INTO runs (run_id, state, step, params, created, updated) "
                            "VALUES (?, 'running', 'preprocess', ?, ?, ?)", (run_id, params.model_dump_json(), now, now))
        return self._rows("WHERE run_id = ?", (run_id,))[0]

    def step(self, run_id: str, step: str) -> None:
        with self._lock:
            self.db.execute("UPDATE runs SET step = ?, updated = ? WHERE run_id = ?", (step, time.time(), run_id))

    def failed_attempt(self, run_id: str, error: str) -> RunRecord:
        """Count a failure at the run's current step (a failure at another step starts again at 1)."""
        with self._lock:
            self.db.execute("UPDATE runs SET attempts = CASE WHEN failed_step = step THEN attempts + 1 ELSE 1 END, "
                            "failed_step = step, last_error = ?, updated = ? WHERE run_id = ?",
                            (error, time.time(), run_id))
        return self._rows("WHERE run_id = ?", (run_id,))[0]

    def finish(self, run_id: str, state: RunState, version: str | None = None, reason: str | None = None) -> RunRecord:
        with self._lock:
            self.db.execute("UPDATE runs SET state = ?, step = 'done', version = ?, reason = ?, updated = ? "
                            "WHERE run_id = ?", (state, version, reason, time.time(), run_id))
        return self._rows("WHERE run_id = ?", (run_id,))[0]
