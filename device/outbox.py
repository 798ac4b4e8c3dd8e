"""The durable outbox: defect events waiting for the broker, on disk (SQLite, see
`device.statedb` for why and how it survives a crash), oldest first.

A message is written before `put` returns and deleted only by `remove`, which the sink calls once
the receiver acknowledged it; so after a kill the outbox holds every message not yet
acknowledged, with the `message_id` it was first sent with. Bounded: when full, the OLDEST
message is evicted, counted, and logged once per burst of evictions (see `Overflow`).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from device.messages import Outbound
from device.statedb import open_state_db

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,  -- the order messages go out in; never reused
    message_id TEXT    NOT NULL,
    kind       TEXT    NOT NULL,
    subtopic   TEXT    NOT NULL,
    body       BLOB    NOT NULL,
    retain     INTEGER NOT NULL,
    qos        INTEGER NOT NULL,
    queued_at  REAL    NOT NULL
);
"""


class Overflow:
    """Messages lost to a full queue: counted one by one, logged once per burst. A burst starts
    with the first loss (one warning) and ends with the next message delivered (one info line
    with its size), so a long outage costs two log lines, not one per message. Producers and the
    sink's thread both call it: a lock keeps the counts whole."""

    def __init__(self, what: str, logger: logging.Logger = log) -> None:
        self.what, self.log = what, logger
        self.total = 0
        self._burst = 0
        self._lock = threading.Lock()

    def lost(self, count: int = 1) -> None:
        if count <= 0:
            return
        with self._lock:
            first = not self._burst
            self._burst += count
            self.total += count
        if first:
            self.log.warning("%s is full: dropping the oldest to make room; further losses are counted, and "
                             "summed up once messages flow again", self.what)

    def drained(self) -> None:
        with self._lock:
            burst, self._burst = self._burst, 0
        if burst:
            self.log.info("%s: %d message(s) were dropped while it was full (%d since start)",
                          self.what, burst, self.total)


@dataclass(frozen=True)
class Queued:
    """A message in the outbox; `seq` is its place in line."""

    seq: int
    message: Outbound


class Outbox:
    """A bounded FIFO of messages on disk. Thread-safe: producers `put`, one consumer reads the
    `head` and `remove`s it once delivered."""

    def __init__(self, path: Path, max_queued: int, name: str = "alert") -> None:
        self.path, self.max_queued, self.name = Path(path), max_queued, name
        self._lock = threading.Lock()
        self._db = open_state_db(self.path, SCHEMA, f"{name} outbox")
        self._count = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        self.overflow = Overflow(f"{name} outbox ({max_queued} events max)")

    @property
    def evicted(self) -> int:
        return self.overflow.total

    def __len__(self) -> int:
        return self._count

    def put(self, message: Outbound) -> None:
        """Store `message` at the back; durable once this returns. Raises sqlite3.Error when the
        disk refuses (full, read-only): the caller decides what to do with the message."""
        row = (message.message_id, message.kind, message.subtopic, message.body, int(message.retain),
               message.qos, time.time())
        with self._lock:
            excess = max(0, self._count + 1 - self.max_queued)
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if excess:
                    self._db.execute("DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT ?)",
                                     (excess,))
                self._db.execute("INSERT INTO outbox (message_id, kind, subtopic, body, retain, qos, queued_at) "
                                 "VALUES (?, ?, ?, ?, ?, ?, ?)", row)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._count += 1 - excess
        self.overflow.lost(excess)

    def head(self) -> Queued | None:
        """The oldest message, left in place."""
        with self._lock:
            row = self._db.execute("SELECT seq, message_id, kind, subtopic, body, retain, qos FROM outbox "
                                   "ORDER BY seq LIMIT 1").fetchone()
        if row is None:
            return None
        seq, message_id, kind, subtopic, body, retain, qos = row
        return Queued(seq, Outbound(kind=kind, subtopic=subtopic, body=bytes(body), retain=bool(retain), qos=qos,
                                    durable=True, message_id=message_id))

    def remove(self, seq: int) -> None:
        """The message was delivered: delete it (a no-op if it was evicted meanwhile)."""
        with self._lock:
            deleted = self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,)).rowcount
            self._count -= deleted
        self.overflow.drained()

    def close(self) -> None:
        with self._lock:
            self._db.close()
