"""The fleet store: every line's observations, and the questions the promotion rule and
`cloud fleet` ask of them. On site a SQLite file fed by `watcher.py`; on AWS a DynamoDB table
that an IoT topic rule writes each device message into (cloud/infra), read here as the same
observations.

Coverage: "0 alerts" means something only if someone was listening. On site every watcher
(`cloud serve`'s and each rollout's own) records when it listened: a row per subscription with
its start and a heartbeat, ended when it disconnects. A window is covered when those intervals,
merged, span it; the rule judges a rate only over covered windows. On AWS the IoT rule writes
every message for as long as the stack exists, so a window there is always covered: that choice
is DynamoFleetStore.covered's.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from .observations import Observation, parse

HEARTBEAT_S = 1.0  # how often a watcher says it is still listening
# a listener is taken to have heard everything up to its last heartbeat plus this: the next beat
# is due within HEARTBEAT_S, and a listener killed outright overstates its coverage by no more
LISTEN_GRACE_S = 3 * HEARTBEAT_S


class Serving(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    thing: str
    name: str
    version: str
    sha256: str
    since: float  # device clock
    received: float  # cloud clock: when the report arrived


class ThingView(BaseModel):
    """One row of `cloud fleet`."""

    model_config = ConfigDict(extra="forbid")

    thing: str
    online: bool | None
    model: str | None
    version: str | None
    sha256: str | None
    since: float | None
    last_seen: float | None
    alerts_per_minute: float | None  # over the window before its last message
    last_rejection: str | None


class FleetReader(Protocol):
    """What the promotion rule asks: the same on site and on AWS."""

    def serving(self, thing: str) -> Serving | None: ...

    def rejections(self, thing: str, received_after: float) -> list[Observation]: ...

    def alerts(self, thing: str, start: float, end: float) -> int: ...

    def covered(self, start: float, end: float) -> bool:
        """Whether someone listened to every line's messages from `start` to `end` (the cloud's
        clock): only then is a count of alerts over that window a measurement."""
        ...


def merged_since(intervals: list[tuple[float, float]], at: float) -> float | None:
    """The start of the unbroken listening that reaches `at`, from (start, end) intervals; None
    when nobody listened at `at`."""
    if not any(start <= at <= end for start, end in intervals):
        return None
    since, extended = at, True
    while extended:  # walk back through every interval that overlaps or touches what is covered so far
        extended = False
        for start, end in intervals:
            if start < since <= end:
                since, extended = start, True
    return since


def _view(store: FleetReader, thing: str, observations: list[Observation], window_s: float) -> ThingView:
    serving = store.serving(thing)
    last = max((o.time for o in observations), default=None)
    online = next((o.detail == "online" for o in sorted(observations, key=lambda o: o.received, reverse=True)
                   if o.kind == "available"), None)
    rejected = [o for o in observations if o.kind == "rejected"]
    rate = None
    if last is not None:
        start = max(last - window_s, serving.since if serving else last - window_s)
        span = max(last - start, 1.0)
        rate = round(store.alerts(thing, start, last + 1e-3) * 60.0 / span, 3)
    return ThingView(thing=thing, online=online, model=serving.name if serving else None,
                     version=serving.version if serving else None, sha256=serving.sha256 if serving else None,
                     since=serving.since if serving else None, last_seen=last, alerts_per_minute=rate,
                     last_rejection=max(rejected, key=lambda o: o.received).detail if rejected else None)


SCHEMA = """
CREATE TABLE IF NOT EXISTS observations (
    id INTEGER PRIMARY KEY, thing TEXT NOT NULL, kind TEXT NOT NULL, time REAL NOT NULL, received REAL NOT NULL,
    name TEXT, version TEXT, sha256 TEXT, since REAL, detail TEXT NOT NULL DEFAULT '',
    message_id TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS by_thing ON observations (thing, kind, time);
-- the same message heard twice (`cloud serve` and a rollout both listening; a retained message
-- re-sent on every subscribe) is one observation
CREATE UNIQUE INDEX IF NOT EXISTS once ON observations (thing, kind, time, COALESCE(sha256, ''), detail, message_id);
-- who listened when (the cloud's clock): one row per subscription of a watcher
CREATE TABLE IF NOT EXISTS listeners (
    listener TEXT PRIMARY KEY, started REAL NOT NULL, heartbeat REAL NOT NULL, ended REAL);
"""


class SqliteFleetStore:
    """On site. WAL mode: `cloud fleet` reads while the watcher writes."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def record(self, o: Observation) -> None:
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO observations (thing, kind, time, received, name, version, sha256, "
                             "since, detail, message_id) VALUES (?,?,?,?,?,?,?,?,?,?)",
                             (o.thing, o.kind, o.time, o.received, o.name, o.version, o.sha256, o.since, o.detail,
                              o.message_id))

    def _rows(self, sql: str, *args: Any) -> list[Observation]:
        with self._lock:
            cursor = self._db.execute(f"SELECT thing, kind, time, received, name, version, sha256, since, detail, "
                                      f"message_id FROM observations {sql}", args)
            names = [d[0] for d in cursor.description]
            return [Observation(**{k: v for k, v in zip(names, row, strict=True) if v is not None})
                    for row in cursor.fetchall()]

    # --- coverage: who listened when ----------------------------------------------------------
    def listening(self, listener: str, now: float | None = None) -> None:
        """A watcher's subscription is in place: its listening starts now."""
        now = time.time() if now is None else now
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO listeners (listener, started, heartbeat, ended) "
                             "VALUES (?, ?, ?, NULL)", (listener, now, now))

    def heartbeat(self, listener: str, now: float | None = None) -> None:
        with self._lock:
            self._db.execute("UPDATE listeners SET heartbeat = ? WHERE listener = ? AND ended IS NULL",
                             (time.time() if now is None else now, listener))

    def stopped(self, listener: str, now: float | None = None) -> None:
        """The watcher lost its connection or stopped: what follows was not heard by it."""
        with self._lock:
            self._db.execute("UPDATE listeners SET ended = ? WHERE listener = ? AND ended IS NULL",
                             (time.time() if now is None else now, listener))

    def listened_since(self, at: float) -> float | None:
        """The start of the unbroken listening (any watcher's, merged) that reaches `at`."""
        with self._lock:
            rows = self._db.execute("SELECT started, COALESCE(ended, heartbeat + ?) FROM listeners",
                                    (LISTEN_GRACE_S,)).fetchall()
        return merged_since([(float(a), float(b)) for a, b in rows], at)

    def covered(self, start: float, end: float) -> bool:
        since = self.listened_since(end)
        return since is not None and since <= start

    def things(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT DISTINCT thing FROM observations ORDER BY thing")]

    def serving(self, thing: str) -> Serving | None:
        """The latest model the thing reported serving (retained `model` message or a swap notice)."""
        rows = self._rows("WHERE thing = ? AND kind IN ('serving', 'swapped') ORDER BY since DESC, received DESC LIMIT 1",
                          thing)
        if not rows:
            return None
        o = rows[0]
        return Serving(thing=thing, name=o.name or "", version=o.version or "", sha256=o.sha256 or "",
                       since=o.since or o.time, received=o.received)

    def rejections(self, thing: str, received_after: float) -> list[Observation]:
        return self._rows("WHERE thing = ? AND kind = 'rejected' AND received >= ? ORDER BY received", thing,
                          received_after)

    def alerts(self, thing: str, start: float, end: float) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM observations WHERE thing = ? AND kind = 'alert' "
                                    "AND time >= ? AND time < ?", (thing, start, end)).fetchone()[0]

    def view(self, window_s: float) -> list[ThingView]:
        return [_view(self, thing, self._rows("WHERE thing = ?", thing), window_s) for thing in self.things()]


class DynamoFleetStore:
    """On AWS: the table the IoT rule fills (partition key `thing_from_topic`: the topic's thing,
    which the IoT policy ties to the device's certificate, unlike the `thing` a message body claims;
    sort key `sk` = the receive time in ms, '-', a uuid; `kind` the topic's last level,
    `received_ms`, and the message's own fields: cloud/infra/devices.py's rule). Items are turned
    back into observations by the same parser as on site."""

    def __init__(self, table: str, dynamodb: Any, topic_prefix: str) -> None:
        self.table, self.dynamodb, self.prefix = table, dynamodb, topic_prefix

    def _items(self, thing: str, after_ms: int | None = None) -> list[dict[str, Any]]:
        from boto3.dynamodb.types import TypeDeserializer

        deserialize = TypeDeserializer().deserialize
        condition, values = "thing_from_topic = :t", {":t": {"S": thing}}
        if after_ms is not None:
            condition += " AND sk >= :after"
            values[":after"] = {"S": f"{after_ms:013d}"}
        items, start = [], None
        while True:
            extra = {"ExclusiveStartKey": start} if start else {}
            page = self.dynamodb.query(TableName=self.table, KeyConditionExpression=condition,
                                       ExpressionAttributeValues=values, **extra)
            items += [{k: deserialize(v) for k, v in item.items()} for item in page.get("Items", [])]
            start = page.get("LastEvaluatedKey")
            if not start:
                return items

    def _observations(self, thing: str, after_ms: int | None = None) -> list[Observation]:
        import json
        from decimal import Decimal

        out = []
        for item in self._items(thing, after_ms):
            kind, received = str(item.pop("kind", "")), float(item.pop("received_ms", 0)) / 1000
            for key in ("sk", "thing_from_topic", "expires_at"):
                item.pop(key, None)
            body = json.dumps(item, default=lambda v: int(v) if isinstance(v, Decimal) and v == int(v) else float(v))
            o = parse(f"{self.prefix}/{thing}/{kind}", body.encode(), self.prefix, received)
            if o is not None:
                out.append(o)
        return out

    def serving(self, thing: str) -> Serving | None:
        latest = max((o for o in self._observations(thing) if o.kind in ("serving", "swapped")),
                     key=lambda o: (o.since or o.time, o.received), default=None)
        if latest is None:
            return None
        return Serving(thing=thing, name=latest.name or "", version=latest.version or "", sha256=latest.sha256 or "",
                       since=latest.since or latest.time, received=latest.received)

    def rejections(self, thing: str, received_after: float) -> list[Observation]:
        return [o for o in self._observations(thing, int(received_after * 1000)) if o.kind == "rejected"]

    def covered(self, start: float, end: float) -> bool:
        """Always: the IoT rule writes every device message into the table for as long as the
        stack exists (and keeps it 30 days), whoever else listens; a rollout on AWS never needs to
        measure a baseline of its own."""
        return True

    def alerts(self, thing: str, start: float, end: float) -> int:
        # the device clock decides the window; received time bounds the query (a day of slack)
        return sum(1 for o in self._observations(thing, int((start - 86400) * 1000))
                   if o.kind == "alert" and start <= o.time < end)

    def view(self, window_s: float, things: list[str]) -> list[ThingView]:
        """`things`: the thing groups' members (the table has no cheap list of its partition keys)."""
        since = int((time.time() - 7 * 86400) * 1000)
        return [_view(self, thing, self._observations(thing, since), window_s) for thing in things]
