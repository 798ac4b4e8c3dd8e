"""The labeling side's memory, in one SQLite file: which frames it has seen (by sha256), which
batch each is in, what each batch's backend reference is, and which answers were written to the
label store. It is what makes `cloud serve` safe to restart: a frame is batched once, a batch is
submitted once, an answer is written once.

Unlike the daemon's state files (device.statedb), a damaged file here is an error, not a fresh
start: forgetting which frames were already sent to labelers would send them again, and labelers'
time is what this whole capability saves. So a fresh state is made only where no file exists (built
under a temporary name and renamed into place, so a half-made one is never taken for a state); a
file that is empty, truncated, corrupt or holds no labeling tables is refused, unless the operator
asks for a rebuild (`cloud serve --rebuild-state`): the file is then kept aside under another name
and a new one is marked "rebuilding" until the loop has filled it from the label store
(`cloud.labeling.rebuild`); a rebuild cut short is refused like a damaged file.

A lost file is no first start either: where no file exists but the label store already holds rows
for this bucket's frames (a volume not mounted at boot, a changed `labeling.state_path`), the
caller refuses (cloud.labeling.rebuild). A file the service cannot open or write (permissions, a
read-only file, a folder at the path) is a plain `StateError` naming that fix: it is not damaged,
and setting it aside would throw its memory away.

A write that fails for want of space (or on a disk error) raises `StateFull` with nothing written,
and so does opening or creating the file on a full disk: the caller pauses and tries again; it is
no reason to stop.

Frame states: pending -> batched -> labelled, or set_aside (with the reason) at any step.
Batch states: created -> submitted -> done | failed.
"""

from __future__ import annotations

import errno
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cloud.ingest.state_file import (  # noqa: F401 (the errors are this module's too: callers import them here)
    ACCESS_HINT,
    REBUILD_HINT,
    SCHEMA,
    SCHEMA_VERSION,
    StateDamaged,
    StateError,
    StateFull,
    StateMissing,
    cannot_write,
    create_state,
    keep_aside,
    no_space,
    open_state,
    state_exists,
)
from cloud.labeling.service import Batch

log = logging.getLogger(__name__)

FRAME_STATES = ("pending", "batched", "labelled", "set_aside")
BATCH_STATES = ("created", "submitted", "done", "failed")


class BatchConflict(RuntimeError):
    """A frame of a batch to make is no longer pending; the batch was not made."""


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
    def __init__(self, path: Path, rebuild: bool = False) -> None:
        """Open the state at `path`, made fresh only when no file is there. `rebuild`: a file that
        cannot be used is kept aside (renamed) and a new one marked `rebuilding` replaces it; the
        caller then fills it (`cloud.labeling.rebuild`) and calls `rebuild_done`."""
        self.path = path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StateFull(f"cannot make the labeling state's folder {path.parent} ({exc.strerror}): is its disk "
                                "full? Free some space there") from None
            raise StateError(f"cannot make the labeling state's folder {path.parent} ({exc.strerror or exc}): fix "
                             "`labeling.state_path`, or let the service's user write there") from None
        self._lock = threading.Lock()
        self.lock: object | None = None  # the loop's StateLock (cloud.ingest.state_lock), held while this is
        if not state_exists(path):
            create_state(path, rebuilding=rebuild)
        try:
            self.db = open_state(path)
        except StateDamaged as exc:  # not a full disk, nor a newer schema: those files are kept as they are
            if not rebuild:
                raise
            kept = keep_aside(path)
            log.warning("labeling state: %s; kept as %s, rebuilding a new one from the label store", exc, kept.name)
            create_state(path, rebuilding=True)
            self.db = open_state(path)
        self.rebuilding = self._meta("rebuilding") is not None
        if self.rebuilding and not rebuild:
            self.db.close()
            raise StateError(f"labeling state {path}: a rebuild from the label store did not finish; run "
                             "`edge-inspect cloud serve --rebuild-state` again to finish it")

    def close(self) -> None:
        self.db.close()

    def _meta(self, key: str) -> str | None:
        with self._lock:
            row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def probe_write(self) -> None:
        """A loop that will write (`cloud serve`, `cloud label`) learns at start whether it can: a
        read-only file or folder is refused now, with the fix, rather than at the first frame. A row
        written and rolled back: in WAL mode `BEGIN IMMEDIATE` alone passes on a read-only file."""
        with self._lock:
            try:
                self.db.execute("BEGIN IMMEDIATE")
                try:
                    self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('write_probe', '1')")
                finally:
                    if self.db.in_transaction:
                        self.db.execute("ROLLBACK")
            except sqlite3.OperationalError as exc:
                raise self._write_error(exc) from None

    def rebuild_done(self) -> None:
        with self._write() as db:
            db.execute("DELETE FROM meta WHERE key = 'rebuilding'")
        self.rebuilding = False

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self.db.execute("BEGIN IMMEDIATE")
                try:
                    yield self.db
                    self.db.execute("COMMIT")
                except BaseException:
                    if self.db.in_transaction:  # SQLite rolls back by itself on SQLITE_FULL
                        self.db.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                raise self._write_error(exc) from None

    def _write_error(self, exc: sqlite3.OperationalError) -> Exception:
        """What a failed write means: StateFull (wait), StateError (the fix is access), or itself."""
        if no_space(exc):
            return StateFull(f"cannot write the labeling state {self.path} ({exc}): is its disk full? "
                             "Nothing was written; trying again later")
        if cannot_write(exc):
            return StateError(f"cannot write the labeling state {self.path} ({exc}): {ACCESS_HINT}")
        return exc

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

    def add_known(self, frames: list[tuple[PendingFrame, str, str | None]]) -> tuple[int, int]:
        """Frames a rebuild found in the label store, each with its state (`labelled` or
        `set_aside`) and reason, in one transaction. A frame known here already keeps its state,
        but for one still pending or batched that the store holds as labelled: it is marked
        labelled (an older backup restored), and a batch not yet submitted whose frames are all
        labelled is closed unsent. Returns (frames new here, frames marked labelled)."""
        added = marked = 0
        with self._write() as db:
            for frame, state, reason in frames:
                assert state in ("labelled", "set_aside")
                added += db.execute(
                    "INSERT OR IGNORE INTO frames (sha256, key, thing, camera, width, height, state, reason, seen) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (frame.sha256, frame.key, frame.thing, frame.camera, frame.width, frame.height, state, reason,
                     frame.seen)).rowcount
                if state == "labelled":
                    marked += db.execute("UPDATE frames SET state = 'labelled' WHERE sha256 = ? "
                                         "AND state IN ('pending', 'batched')", (frame.sha256,)).rowcount
            if marked:
                db.execute("UPDATE batches SET state = 'done', updated = ?, reason = 'every frame was labelled "
                           "already (label store)' WHERE state = 'created' AND NOT EXISTS (SELECT 1 FROM frames f "
                           "WHERE f.batch_id = batches.batch_id AND f.state != 'labelled')", (time.time(),))
        return added, marked

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
                    raise BatchConflict(f"frame {task.sha256[:12]} is no longer pending: batch {batch.batch_id} not made")
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

    def note_answer_problem(self, batch_id: str, sha256: str, problem: str) -> None:
        """The noted answer cannot be a label row: it is set aside (kept here with the reason)."""
        with self._write() as db:
            db.execute("UPDATE answers SET problem = ? WHERE batch_id = ? AND sha256 = ?", (problem, batch_id, sha256))

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
