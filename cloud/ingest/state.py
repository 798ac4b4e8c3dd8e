"""The labeling side's memory, in one SQLite file: which frames it has seen (by sha256), which
batch each is in, what each batch's backend reference is, and which answers were written to the
label store. It is what makes `cloud serve` safe to restart: a frame is batched once, a batch is
submitted once, an answer is written once.

Unlike the daemon's state files (device.statedb), a damaged file here is an error, not a fresh
start: forgetting which frames were already sent to labelers would send them again, and labelers'
time is what this whole capability saves.

Frame states: pending -> batched -> labelled, or set_aside (with the reason) at any step.
Batch states: created -> submitted -> done | failed.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cloud.labeling.service import Batch

SCHEMA = """
CREATE TABLE IF NOT EXISTS frames (
    sha256 TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    thing TEXT NOT NULL,
    camera TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'batched', 'labelled', 'set_aside')),
    batch_id TEXT,
    reason TEXT,
    seen REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS frames_state ON frames (state, thing, seen);
-- keys refused before their sha256 could be trusted (bad sidecar, undecodable image): remembered
-- so that the next listing does not log them again; the objects stay in the bucket.
CREATE TABLE IF NOT EXISTS set_aside_keys (key TEXT PRIMARY KEY, reason TEXT NOT NULL, time REAL NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY,
    line TEXT NOT NULL,
    backend TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('created', 'submitted', 'done', 'failed')),
    ref TEXT,
    batch TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    reason TEXT
);
-- one row per (batch, frame) answer written to the label store: `digest` is the answer's content;
-- `written` 0 means the write was started and may or may not have reached the store (a crash).
CREATE TABLE IF NOT EXISTS answers (
    batch_id TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    digest TEXT NOT NULL,
    written INTEGER NOT NULL,
    answer TEXT NOT NULL,
    problem TEXT,
    PRIMARY KEY (batch_id, sha256)
);
"""

FRAME_STATES = ("pending", "batched", "labelled", "set_aside")
BATCH_STATES = ("created", "submitted", "done", "failed")


class StateError(RuntimeError):
    pass


@dataclass(frozen=True)
class PendingFrame:
    sha256: str
    key: str
    thing: str
    camera: str
    width: int
    height: int
    seen: float


@dataclass(frozen=True)
class StoredBatch:
    batch: Batch
    state: str
    ref: str | None
    backend: str


@dataclass(frozen=True)
class WrittenAnswer:
    digest: str
    written: bool


@dataclass(frozen=True)
class OpenBatch:
    batch_id: str
    line: str
    backend: str
    state: str
    created: float
    frames: int
    answers_written: int


@dataclass(frozen=True)
class Status:
    frames: dict[str, int]  # state -> count
    batches: dict[str, int]
    open_batches: list[OpenBatch]
    set_aside_keys: int


class LabelingState:
    def __init__(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")  # a commit that returned survives a power cut
            problems = [row[0] for row in self.db.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise StateError(f"labeling state {path} is damaged ({'; '.join(problems[:3])}): restore it from "
                                 "a backup; starting empty would send labelled frames to labelers again")
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise StateError(f"labeling state {path} cannot be opened: {exc}") from None
        self._lock = threading.Lock()

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    # --- frames -------------------------------------------------------------------------------

    def known(self, sha256: str) -> bool:
        with self._lock:
            return self.db.execute("SELECT 1 FROM frames WHERE sha256 = ?", (sha256,)).fetchone() is not None

    def key_set_aside(self, key: str) -> bool:
        with self._lock:
            return self.db.execute("SELECT 1 FROM set_aside_keys WHERE key = ?", (key,)).fetchone() is not None

    def add_pending(self, frame: PendingFrame) -> bool:
        """Remember a new frame; False when its sha256 is known already (any state)."""
        with self._write() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO frames (sha256, key, thing, camera, width, height, state, seen) "
                "VALUES (?, ?, ?, ?, ?, ?, 'pending', ?)",
                (frame.sha256, frame.key, frame.thing, frame.camera, frame.width, frame.height, frame.seen))
            return cursor.rowcount == 1

    def set_key_aside(self, key: str, reason: str) -> None:
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO set_aside_keys (key, reason, time) VALUES (?, ?, ?)",
                       (key, reason, time.time()))

    def set_frame_aside(self, sha256: str, reason: str) -> None:
        with self._write() as db:
            db.execute("UPDATE frames SET state = 'set_aside', reason = ? WHERE sha256 = ?", (reason, sha256))

    def pending(self) -> list[PendingFrame]:
        """Pending frames, oldest first."""
        with self._lock:
            rows = self.db.execute("SELECT sha256, key, thing, camera, width, height, seen FROM frames "
                                   "WHERE state = 'pending' ORDER BY seen, sha256").fetchall()
        return [PendingFrame(*row) for row in rows]

    # --- batches ------------------------------------------------------------------------------

    def create_batch(self, batch: Batch, backend: str) -> None:
        """The batch and its frames' move to `batched`, in one transaction: a crash leaves either
        both or neither. A frame no longer pending (batched by a concurrent `cloud label`) fails
        the whole batch rather than label it twice."""
        now = time.time()
        with self._write() as db:
            for task in batch.tasks:
                moved = db.execute("UPDATE frames SET state = 'batched', batch_id = ? WHERE sha256 = ? "
                                   "AND state = 'pending'", (batch.batch_id, task.sha256)).rowcount
                if moved != 1:
                    raise StateError(f"frame {task.sha256[:12]} is no longer pending: batch {batch.batch_id} not made")
            db.execute("INSERT INTO batches (batch_id, line, backend, state, batch, created, updated) "
                       "VALUES (?, ?, ?, 'created', ?, ?, ?)",
                       (batch.batch_id, batch.line, backend, batch.model_dump_json(), now, now))

    def mark_submitted(self, batch_id: str, ref: str) -> None:
        with self._write() as db:
            db.execute("UPDATE batches SET state = 'submitted', ref = ?, updated = ? WHERE batch_id = ?",
                       (ref, time.time(), batch_id))

    def finish_batch(self, batch_id: str, state: str, reason: str | None = None) -> None:
        """Close a batch: its frames that got a label row are `labelled`; the others are set aside
        with the reason (they stay in the bucket and in this file: nothing is lost)."""
        assert state in ("done", "failed")
        with self._write() as db:
            db.execute("UPDATE batches SET state = ?, reason = ?, updated = ? WHERE batch_id = ?",
                       (state, reason, time.time(), batch_id))
            db.execute("UPDATE frames SET state = 'labelled' WHERE batch_id = ? AND state = 'batched' AND sha256 IN "
                       "(SELECT sha256 FROM answers WHERE batch_id = ? AND written = 1 AND problem IS NULL)",
                       (batch_id, batch_id))
            db.execute("UPDATE frames SET state = 'set_aside', reason = ? WHERE batch_id = ? AND state = 'batched'",
                       (reason or "the labeling job ended without a usable answer for this frame", batch_id))

    def batches(self, *states: str) -> list[StoredBatch]:
        with self._lock:
            marks = ",".join("?" * len(states))
            rows = self.db.execute(f"SELECT batch, state, ref, backend FROM batches WHERE state IN ({marks}) "
                                   "ORDER BY created", states).fetchall()
        return [StoredBatch(Batch.model_validate_json(b), s, r, be) for b, s, r, be in rows]

    # --- answers ------------------------------------------------------------------------------

    def answer(self, batch_id: str, sha256: str) -> WrittenAnswer | None:
        with self._lock:
            row = self.db.execute("SELECT digest, written FROM answers WHERE batch_id = ? AND sha256 = ?",
                                  (batch_id, sha256)).fetchone()
        return WrittenAnswer(row[0], bool(row[1])) if row else None

    def begin_answer(self, batch_id: str, sha256: str, digest: str, answer: dict, problem: str | None) -> None:
        """Before writing to the label store: if we crash after this, `unconfirmed` finds it."""
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO answers (batch_id, sha256, digest, written, answer, problem) "
                       "VALUES (?, ?, ?, 0, ?, ?)", (batch_id, sha256, digest, json.dumps(answer), problem))

    def confirm_answer(self, batch_id: str, sha256: str) -> None:
        with self._write() as db:
            db.execute("UPDATE answers SET written = 1 WHERE batch_id = ? AND sha256 = ?", (batch_id, sha256))

    def unconfirmed(self) -> list[tuple[str, str, str]]:
        """(batch_id, sha256, answer JSON) of writes a crash may have cut short."""
        with self._lock:
            return self.db.execute("SELECT batch_id, sha256, answer FROM answers WHERE written = 0").fetchall()

    # --- status -------------------------------------------------------------------------------

    def status(self) -> Status:
        with self._lock:
            frames = dict(self.db.execute("SELECT state, COUNT(*) FROM frames GROUP BY state").fetchall())
            batches = dict(self.db.execute("SELECT state, COUNT(*) FROM batches GROUP BY state").fetchall())
            open_rows = self.db.execute(
                "SELECT b.batch_id, b.line, b.backend, b.state, b.created, "
                "(SELECT COUNT(*) FROM frames f WHERE f.batch_id = b.batch_id), "
                "(SELECT COUNT(*) FROM answers a WHERE a.batch_id = b.batch_id AND a.written = 1) "
                "FROM batches b WHERE b.state IN ('created', 'submitted') ORDER BY b.created").fetchall()
            aside = self.db.execute("SELECT COUNT(*) FROM set_aside_keys").fetchone()[0]
        return Status(
            frames={s: frames.get(s, 0) for s in FRAME_STATES},
            batches={s: batches.get(s, 0) for s in BATCH_STATES},
            open_batches=[OpenBatch(*row) for row in open_rows],
            set_aside_keys=aside)
