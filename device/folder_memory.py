"""What a folder source has inspected, remembered across restarts.

A folder camera inspects each image once, and "once" must survive a restart: otherwise every
restart inspects the whole folder again and raises the same alerts again. It must also tell a file
replaced under the same name from the one inspected before, so a file is known by its name, size
and mtime (`FileKey`); a different size or mtime is a new image.

A record is written only once the inference stage has processed the file's frame (see
`Camera.frame_done`): a crash between capture and inference inspects that image again, it never
loses it.

The records live in SQLite (one database per camera under the daemon's `state_dir`, opened by
`device.statedb`: WAL, a damaged file set aside): each record is its own small transaction, so a
crash leaves the old state or the new one, never a torn file. `synchronous=NORMAL` may lose the
last records on a power cut; that only means inspecting those images again. Records of files that
are no longer in the folder are forgotten, so the store never holds more than the folder does.

A store that cannot be opened (an unwritable state_dir, a file locked by another process) never
stops the camera: it remembers in memory only (a restart inspects the folder again), with an
error in the log.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from device.images import FileKey
from device.statedb import open_state_db

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS inspected (
    name TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    inspected_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def memory_path(state_dir: Path, camera_id: str) -> Path:
    return Path(state_dir) / "folder-sources" / f"{camera_id}.sqlite3"


class FolderMemory:
    """name -> FileKey of the images inspected, durable when `db_path` is given.

    Thread-safe: the camera thread asks and forgets, the inference thread remembers."""

    def __init__(self, folder: Path, db_path: Path | None = None) -> None:
        self.folder = str(Path(folder).absolute())
        self.db_path = db_path
        self._lock = threading.Lock()
        self._records: dict[str, FileKey] = {}
        self._db = self._connect(db_path)
        self._write_failed = False

    # --- opening --------------------------------------------------------------------------------

    def _connect(self, db_path: Path | None) -> sqlite3.Connection:
        if db_path is not None:
            try:
                db = open_state_db(db_path, SCHEMA, "folder memory")  # a damaged file is set aside there
                # One commit per inspected image, on the inference thread: no fsync each time. A
                # power cut may lose the last records, which only means inspecting those again.
                db.execute("PRAGMA synchronous=NORMAL")
                self._records = self._load(db)
                return db
            except (OSError, sqlite3.Error) as exc:  # unwritable, read-only, locked by another process
                log.error("folder memory %s cannot be used (%s); remembering in memory only: a restart will "
                          "inspect the folder again", db_path, exc)
                self.db_path = None
        db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        db.executescript(SCHEMA)
        self._records = self._load(db)
        return db

    def _load(self, db: sqlite3.Connection) -> dict[str, FileKey]:
        """The records, unless they were made for another folder (the camera's source changed)."""
        row = db.execute("SELECT value FROM meta WHERE key = 'folder'").fetchone()
        if row is None or row[0] != self.folder:
            with db:
                db.execute("BEGIN")
                db.execute("DELETE FROM inspected")
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('folder', ?)", (self.folder,))
            return {}
        return {name: FileKey(size, mtime_ns) for name, size, mtime_ns in
                db.execute("SELECT name, size, mtime_ns FROM inspected")}

    # --- use ------------------------------------------------------------------------------------

    def inspected(self, name: str, key: FileKey) -> bool:
        """True when this very version of the file was inspected already."""
        with self._lock:
            return self._records.get(name) == key

    def remember(self, name: str, key: FileKey) -> None:
        """Record `name` at `key` as inspected. Never raises: a failed write is logged (once) and
        the record kept in memory, so only a restart could inspect the image again."""
        with self._lock:
            self._records[name] = key
            self._write(lambda db: db.execute(
                "INSERT OR REPLACE INTO inspected (name, size, mtime_ns, inspected_at) VALUES (?, ?, ?, ?)",
                (name, key.size, key.mtime_ns, time.time())))

    def forget_missing(self, present: Iterable[str]) -> int:
        """Forget the files that are no longer in the folder; how many were forgotten."""
        present = set(present)
        with self._lock:
            gone = [name for name in self._records if name not in present]
            for name in gone:
                del self._records[name]
            if gone:
                self._write(lambda db: db.executemany("DELETE FROM inspected WHERE name = ?", [(n,) for n in gone]))
        return len(gone)

    def _write(self, statement) -> None:
        try:
            with self._db:  # one transaction: committed whole, or rolled back
                self._db.execute("BEGIN")
                statement(self._db)
        except sqlite3.Error as exc:
            if not self._write_failed:
                log.error("folder memory %s: write failed (%s); records kept in memory", self.db_path, exc)
            self._write_failed = True
        else:
            self._write_failed = False

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    def close(self) -> None:
        with self._lock:
            self._db.close()
