"""SQLite files for the daemon's durable state under `state_dir` (the alert outbox, the defects
left open), opened crash-safe, with a damaged file set aside rather than fatal.

Why SQLite, when the spool of sampled frames is plain files: this state is many small records
that come and go one at a time (a row in when an event is raised, a row out when the broker
acknowledges it). As files, each would cost a create, an fsync, a rename and a directory fsync,
and a directory scan with a sort at every start. SQLite is in the standard library, and in WAL
mode with `synchronous=FULL` a commit is one append to the write-ahead log and one fsync; a
commit is atomic (a kill or a power cut mid-write loses only the commit in progress, which had
not returned yet), and the next open recovers by itself, keeping every commit that returned.
That is the spool's guarantee (a frame exists once its sidecar is renamed into place) for a
fraction of the I/O.

A file that is not a database, or that fails SQLite's quick check (a truncated copy, a disk
fault), is moved aside as `<name>.corrupt-<UTC time>` with a warning and replaced by an empty
one: a damaged state file costs its contents, never the daemon.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path

log = logging.getLogger(__name__)

# SQLite's primary result codes for "this file is damaged" (sqlite3 exposes them from 3.11 on)
SQLITE_CORRUPT, SQLITE_NOTADB = 11, 26


class DamagedDatabase(sqlite3.DatabaseError):
    """The quick check found the file inconsistent."""


def open_state_db(path: Path, schema: str, what: str) -> sqlite3.Connection:
    """A connection to the SQLite file at `path` with `schema` applied (idempotent DDL). One
    connection shared by threads: callers serialise their use of it with their own lock."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return _open(path, schema)
    except sqlite3.DatabaseError as exc:
        if not is_damage(exc):
            raise  # locked, read-only, no room: moving the file aside would not help
        set_aside(path, what, exc)
        return _open(path, schema)


def _open(path: Path, schema: str) -> sqlite3.Connection:
    # isolation_level=None: no implicit transactions; writers say BEGIN IMMEDIATE ... COMMIT
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # fsync the log at every commit: survives a power cut
        problems = [row[0] for row in db.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise DamagedDatabase("; ".join(problems[:3]))
        db.executescript(schema)
        return db
    except BaseException:
        db.close()
        raise


def is_damage(exc: sqlite3.DatabaseError) -> bool:
    if isinstance(exc, DamagedDatabase):
        return True
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return code & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB)
    text = str(exc).lower()
    return "not a database" in text or "malformed" in text


def set_aside(path: Path, what: str, reason: BaseException) -> Path:
    """Move the damaged file (and its write-ahead log and shared-memory index) out of the way."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        part = Path(f"{path}{suffix}")
        if part.exists():
            os.replace(part, f"{aside}{suffix}")
    log.warning("%s: %s is damaged (%s); moved aside to %s, starting empty", what, path, reason, aside.name)
    return aside
