"""Defects left open by a crash: a durable record (SQLite under `state_dir`, see
`device.statedb`) of every defect published `new` or `update` and not yet `end`ed, with the
payload of its last event. A clean stop ends every open defect, so the record is empty then; after
a kill or a power cut, what is left is read at the next start and each gets its `end`, so a
subscriber never waits forever for one."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

from device.statedb import open_state_db

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS open_defects (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,  -- when the defect was first seen: `left_open` order
    event_id TEXT    NOT NULL UNIQUE,
    payload  TEXT    NOT NULL                    -- its last event, JSON
);
"""


class OpenDefects:
    """Thread-safe. Storage failures are logged, never raised: the record is a safety net and
    must not stop inference."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._failing = False
        try:
            self._db = open_state_db(self.path, SCHEMA, "open defects")
        except (sqlite3.Error, OSError) as exc:
            log.error("open defects: cannot open %s (%s); defects open at a crash will not be ended at the next "
                      "start", self.path, exc)
            self._db = open_state_db(Path(":memory:"), SCHEMA, "open defects")

    def record(self, payload: dict[str, Any]) -> None:
        """Every defect event published: `new`/`update` keep its payload, `end` forgets it."""
        kind, event_id = payload.get("type"), payload.get("event_id")
        if event_id is None or kind not in ("new", "update", "end"):
            return
        if kind == "end":
            self._write("DELETE FROM open_defects WHERE event_id = ?", (event_id,))
        else:
            self._write("INSERT INTO open_defects (event_id, payload) VALUES (?, ?) "
                        "ON CONFLICT (event_id) DO UPDATE SET payload = excluded.payload",
                        (event_id, json.dumps(payload)))

    def left_open(self) -> list[dict[str, Any]]:
        """The last payload of each defect still open, in the order they were first seen."""
        with self._lock:
            try:
                rows = self._db.execute("SELECT event_id, payload FROM open_defects ORDER BY seq").fetchall()
            except sqlite3.Error as exc:
                log.error("open defects: cannot read %s (%s)", self.path, exc)
                return []
        payloads = []
        for event_id, payload in rows:
            try:
                payloads.append(json.loads(payload))
            except ValueError:  # a damaged row must not stop every start: dropped, with a word
                log.error("open defects: the record of %s is unreadable; dropped", event_id)
                self._write("DELETE FROM open_defects WHERE event_id = ?", (event_id,))
        return payloads

    def clear(self) -> None:
        self._write("DELETE FROM open_defects", ())

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM open_defects").fetchone()[0]

    def _write(self, sql: str, args: tuple) -> None:
        with self._lock:
            try:
                self._db.execute(sql, args)
            except sqlite3.Error as exc:
                if not self._failing:
                    log.error("open defects: cannot write %s (%s); further failures are not logged until it "
                              "works again", self.path, exc)
                self._failing = True
                return
            self._failing = False

    def close(self) -> None:
        with self._lock:
            self._db.close()
