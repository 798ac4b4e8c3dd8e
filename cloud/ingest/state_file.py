"""The labeling state's file (cloud.ingest.state is what it holds): its schema, the errors that say
why a file cannot be used, and opening, creating and keeping aside, each telling a damaged file
(`StateDamaged`: what `--rebuild-state` replaces) from one the service cannot open or write (a
plain `StateError` naming the access fix) and from a full disk (`StateFull`: wait and try again).
"""

from __future__ import annotations

import errno
import os
import sqlite3
import time
from pathlib import Path

SCHEMA_VERSION = "1"
SCHEMA = """
-- what makes this file a labeling state (an emptied file has no such row): schema_version, created,
-- and `rebuilding` while a rebuild from the label store has not finished
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
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

REBUILD_HINT = ("restore it from a backup, or run `edge-inspect cloud serve --rebuild-state` once to rebuild it "
                "from the label store (frames with label rows are not sent to labelers again)")


class StateError(RuntimeError):
    """The state file cannot be used (damaged, emptied, in use, newer): the loop stops; the message
    names the file and the fix."""


class StateDamaged(StateError):
    """The file is no usable state (empty, truncated, corrupt, emptied): what `--rebuild-state` replaces."""


class StateMissing(StateError):
    """No state file, though the label store holds rows for this bucket's frames: not a first start."""


class StateFull(StateError):
    """A write (or opening, or creating the file) failed for want of space, or on a disk error;
    nothing was written. Not the file's fault: `cloud serve` pauses and tries again (catch it before
    StateError); a one-shot command (`cloud label`) stops with this line."""


# --- opening, creating, keeping aside -------------------------------------------------------------


ACCESS_HINT = ("the file is not damaged, the service cannot use it: make the file and its folder readable and "
               "writable by the user `cloud serve` runs as (and the volume writable), then start again; do not set "
               "it aside or rebuild it")


def state_exists(path: Path) -> bool:
    """A state is there if its file is, or only its write-ahead log (the main file deleted)."""
    try:
        return any(Path(f"{path}{suffix}").exists() for suffix in ("", "-wal"))
    except OSError as exc:  # a folder on the way the service may not look into
        raise StateError(f"labeling state {path} cannot be looked at ({exc.strerror or exc}): {ACCESS_HINT}") from None


def open_state(path: Path) -> sqlite3.Connection:
    """Connect to an existing state, or refuse it with the reason and the fix."""
    try:
        folder, size = path.is_dir(), path.stat().st_size if path.exists() else None
    except OSError as exc:
        raise StateError(f"labeling state {path} cannot be looked at ({exc.strerror or exc}): {ACCESS_HINT}") from None
    if folder:
        raise StateError(f"labeling state {path} is a folder, not a file: fix `labeling.state_path` to name a file "
                         "in it (nothing was changed)")
    if not size:
        what = "is empty (0 bytes)" if size == 0 else "is missing (only its -wal file is there)"
        raise StateDamaged(f"labeling state {path} {what}: it is not taken as a new one, which would send every "
                         f"labelled frame to labelers again; {REBUILD_HINT}")
    db = None
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # a commit that returned survives a power cut
        problems = [row[0] for row in db.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise StateDamaged(f"labeling state {path} is damaged ({'; '.join(problems[:3])}): {REBUILD_HINT}")
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "meta" not in tables and "frames" not in tables:
            raise StateDamaged(f"labeling state {path} holds no labeling tables (emptied or another file): {REBUILD_HINT}")
        if "meta" not in tables:  # a sound state from before the meta table: it gets one, nothing else changes
            columns = {row[1] for row in db.execute("PRAGMA table_info(frames)")}
            if not {"sha256", "key", "thing", "state", "batch_id", "seen"} <= columns or "batches" not in tables:
                raise StateDamaged(f"labeling state {path} holds no labeling tables (another file with a `frames` "
                                   f"table): {REBUILD_HINT}")
            db.executescript(SCHEMA)
            db.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = row[0] if row else "(none)"
        if version != SCHEMA_VERSION:
            raise StateError(f"labeling state {path} has schema version {version}; this edge-inspect reads "
                             f"{SCHEMA_VERSION}: run the edge-inspect that wrote it")
    except sqlite3.DatabaseError as exc:
        if db is not None:
            db.close()
        if _damaged(exc):
            raise StateDamaged(f"labeling state {path} cannot be opened ({exc}): {REBUILD_HINT}") from None
        if isinstance(exc, sqlite3.OperationalError) and no_space(exc):
            raise StateFull(f"labeling state {path} cannot be opened ({exc}): is the disk under {path.parent} "
                            "full? Free some space there") from None
        raise StateError(f"labeling state {path} cannot be opened ({exc}): {ACCESS_HINT}") from None
    except StateError:
        if db is not None:
            db.close()
        raise
    return db


def create_state(path: Path, rebuilding: bool) -> None:
    """A new, complete state at `path`: built under a temporary name and renamed into place, so
    that whatever is at `path` is either a whole state or not ours."""
    tmp = path.with_name(path.name + ".new")
    for suffix in ("", "-journal", "-wal", "-shm"):
        Path(f"{tmp}{suffix}").unlink(missing_ok=True)
    try:
        db = sqlite3.connect(tmp, isolation_level=None)
        try:
            db.executescript(SCHEMA)
            rows = [("schema_version", SCHEMA_VERSION), ("created", str(time.time()))]
            rows += [("rebuilding", "1")] if rebuilding else []
            db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", rows)
        finally:
            db.close()
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except (OSError, sqlite3.Error) as exc:
        tmp.unlink(missing_ok=True)
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT) if isinstance(exc, OSError) else \
            isinstance(exc, sqlite3.OperationalError) and no_space(exc)
        if full:
            raise StateFull(f"cannot create the labeling state {path} ({exc}): is the disk under {path.parent} "
                            "full? Free some space there") from None
        raise StateError(f"cannot create the labeling state {path}: {exc}") from None


def keep_aside(path: Path) -> Path:
    """Rename an unusable state (and its -wal/-shm) out of the way; nothing is deleted."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    kept, n = path.with_name(f"{path.name}.damaged-{stamp}"), 1
    while any(Path(f"{kept}{suffix}").exists() for suffix in ("", "-wal", "-shm")):  # two in one second
        n += 1
        kept = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            os.replace(source, Path(f"{kept}{suffix}"))
    return kept


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def _damaged(exc: sqlite3.DatabaseError) -> bool:
    """The bytes are wrong (corrupt, not a database, not our tables: SQLite's generic error): what a
    rebuild replaces. Anything else (cannot open, read-only, permission, locked) is about access,
    not content."""
    code = _code(exc)
    if code is None:
        return any(word in str(exc) for word in ("malformed", "not a database", "no such "))
    return code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_ERROR)


def cannot_write(exc: sqlite3.OperationalError) -> bool:
    code = _code(exc)
    if code is None:
        return "readonly" in str(exc) or "unable to open" in str(exc)
    return code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM, sqlite3.SQLITE_AUTH)


def no_space(exc: sqlite3.OperationalError) -> bool:
    """SQLITE_FULL (a full disk, or max_page_count) or an I/O error: the write may work later."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return "disk is full" in str(exc) or "disk I/O error" in str(exc)
    return code & 0xFF in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR)
