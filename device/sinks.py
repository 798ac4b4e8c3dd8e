"""Sinks: where messages go. One event stream feeds any number of sinks; each sink has its own
thread, so a slow broker or network never stalls inference. (Defect events are the exception
that proves it: `submit` writes them to the outbox file, fsynced, on the caller's thread, about
0.4 ms here, because an event must be on disk before it counts as published.)

Two lanes per sink:

- Durable messages (defect events), when the sink has an outbox file, wait on disk
  (`device.outbox`): bounded, oldest evicted first, kept across a restart, and sent ONE at a
  time: the next goes out only once the receiver acknowledged the last, which is when it is
  deleted from disk. So after a kill -9 the only message that can arrive twice is the one in
  flight at the kill, and it carries the same `message_id` both times.
- Everything else (stats, status, notices), and events of a sink without an outbox file, waits
  in a bounded queue in memory. When it is full the oldest message is dropped and counted
  (retained state messages such as `available` and camera status are re-sent on reconnect
  anyway).

Losses in either lane are counted in `figures()` and logged once per burst.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections import deque
from pathlib import Path

from device.messages import Outbound
from device.outbox import Outbox, Overflow, Queued

log = logging.getLogger(__name__)

RETRY_PAUSE_S = 0.05  # after the receiver said "not now"


class Sink:
    """Base: drained by the sink's own thread through `deliver` (and `deliver_durable` plus
    `confirmed` for the outbox lane)."""

    name = "sink"

    def __init__(self, max_queued: int = 10000, outbox_path: Path | None = None) -> None:
        self._memory: deque[Outbound] = deque()
        self._max_queued = max_queued
        self._cond = threading.Condition()
        self._closing = False
        self.delivered = 0
        self.unsendable = 0  # messages the receiver refused outright (dropped, never retried)
        self._dropped = Overflow(f"{self.name} queue ({max_queued} messages max)")
        self._events_dropped = Overflow(f"{self.name} queue of events in memory ({max_queued} max)")
        self._outbox = self._open_outbox(outbox_path, max_queued)
        self._inflight: Queued | None = None  # the one durable message sent and not yet acknowledged
        self._store_failing = self._read_failing = False  # log a failing disk once, not per attempt
        self._thread = threading.Thread(target=self._drain, name=f"sink-{self.name}", daemon=True)

    def _open_outbox(self, path: Path | None, max_queued: int) -> Outbox | None:
        if path is None:
            return None
        try:
            outbox = Outbox(path, max_queued, self.name)
        except (sqlite3.Error, OSError) as exc:  # no usable state dir: degrade, never stop the daemon
            log.error("%s: cannot open the outbox %s (%s); events wait in memory only", self.name, path, exc)
            return None
        if len(outbox):
            log.info("%s: %d event(s) left by the last run wait in the outbox", self.name, len(outbox))
        return outbox

    def start(self) -> None:
        self._thread.start()

    # --- producers (any thread) -----------------------------------------------------------------

    def submit(self, message: Outbound) -> None:
        if not (message.durable and self._outbox is not None and self._store(message)):
            self._enqueue(message)
        with self._cond:
            self._cond.notify_all()

    def _store(self, message: Outbound) -> bool:
        """On disk before returning; False when the disk refused (the message then waits in memory)."""
        try:
            self._outbox.put(message)
        except sqlite3.Error as exc:
            if not self._store_failing:
                log.error("%s: cannot write an event to the outbox (%s); events wait in memory until it works "
                          "again", self.name, exc)
            self._store_failing = True
            return False
        if self._store_failing:
            log.info("%s: the outbox takes events again", self.name)
            self._store_failing = False
        return True

    def _enqueue(self, message: Outbound) -> None:
        with self._cond:
            if len(self._memory) >= self._max_queued:
                oldest = self._memory.popleft()
                (self._events_dropped if oldest.durable else self._dropped).lost()
            self._memory.append(message)

    # --- what subclasses provide ----------------------------------------------------------------

    def ready(self) -> bool:
        """False while the sink cannot deliver (broker away): messages wait."""
        return True

    def deliver(self, message: Outbound) -> bool:
        """Hand one message on; False means "not now", and it is retried from the front."""
        raise NotImplementedError

    def deliver_durable(self, message: Outbound) -> bool:
        """Send the outbox's head; `confirmed` then tells when the receiver has it. By default
        delivery is synchronous: accepted means acknowledged."""
        return self.deliver(message)

    def confirmed(self) -> bool:
        """Has the receiver acknowledged the durable message in flight? Called under `_cond`."""
        return True

    def refused(self) -> bool:
        """Did the receiver acknowledge the message in flight only to refuse it (an MQTT 5 quota
        or ACL reason code)? Then it was not delivered: counted as such, never retried."""
        return False

    # --- the sink's thread ----------------------------------------------------------------------

    def _drain(self) -> None:
        while True:
            with self._cond:
                while not self._closing and not self._work_ready():
                    self._cond.wait(0.1)
                if self._closing:
                    return
            progressed = self._step_durable()
            progressed = self._step_memory() or progressed
            if progressed:
                with self._cond:
                    self._cond.notify_all()  # close() waits for the queues to empty
            else:
                time.sleep(RETRY_PAUSE_S)

    def _work_ready(self) -> bool:
        if self._inflight is not None and self.confirmed():
            return True
        if not self.ready():
            return False
        return bool(self._memory) or (self._inflight is None and self._outbox is not None and len(self._outbox) > 0)

    def _step_durable(self) -> bool:
        """Finish the message in flight once acknowledged, or send the next one. True on progress."""
        if self._outbox is None:
            return False
        try:
            if self._inflight is not None:
                with self._cond:
                    if not self.confirmed():
                        return False
                self._outbox.remove(self._inflight.seq)  # only now: a kill before this resends it
                self._inflight = None
                if self.refused():
                    self.unsendable += 1
                else:
                    self.delivered += 1
                return True
            head = self._outbox.head() if self.ready() else None
        except sqlite3.Error as exc:
            if not self._read_failing:  # retried every few ms: one line until it works again
                log.error("%s: cannot read or update the outbox (%s); retrying", self.name, exc)
            self._read_failing = True
            return False
        self._read_failing = False
        if head is None:
            return False
        if self._hand_on(head.message, self.deliver_durable):
            self._inflight = head
            return True
        return False

    def _step_memory(self) -> bool:
        with self._cond:
            if not self._memory or not self.ready():
                return False
            message = self._memory[0]
        if not self._hand_on(message, self.deliver):
            return False
        with self._cond:
            if self._memory and self._memory[0] is message:
                self._memory.popleft()
        self.delivered += 1
        self._dropped.drained()
        self._events_dropped.drained()
        return True

    def _hand_on(self, message: Outbound, deliver) -> bool:
        try:
            return deliver(message)
        except Exception:  # a message the receiver can never take must not block the queue forever
            log.exception("%s: cannot deliver a %s message to %s; dropping it", self.name, message.kind,
                          message.subtopic)
            self._drop_unsendable(message)
            return False

    def _drop_unsendable(self, message: Outbound) -> None:
        with self._cond:
            if self._memory and self._memory[0] is message:
                self._memory.popleft()
        if message.durable and self._outbox is not None:
            try:
                head = self._outbox.head()
                if head is not None and head.message.message_id == message.message_id:
                    self._outbox.remove(head.seq)
            except sqlite3.Error:
                pass  # the outbox lane logs its own read errors
        self.unsendable += 1

    # --- figures and shutdown -------------------------------------------------------------------

    @property
    def depth(self) -> int:
        return len(self._memory) + (len(self._outbox) if self._outbox is not None else 0)

    def figures(self) -> dict[str, int]:
        """For stats and Prometheus: waiting (events on disk included), delivered, events evicted
        (oldest first) from a full queue, other messages dropped from a full queue or refused."""
        evicted = self._events_dropped.total + (self._outbox.evicted if self._outbox is not None else 0)
        return {"queued": self.depth, "delivered": self.delivered, "evicted": evicted,
                "dropped": self._dropped.total + self.unsendable}

    def close(self, timeout: float) -> None:
        """Deliver what can be delivered within `timeout`, then stop the thread. Events not yet
        acknowledged stay in the outbox file for the next start."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.depth and self.ready() and time.monotonic() < deadline:
                self._cond.wait(0.05)
            self._closing = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(max(0.0, deadline - time.monotonic()) + 0.2)
        if self._outbox is not None:
            self._outbox.close()


class FileSink(Sink):
    """Every message as one JSON line: `{"topic": ..., "payload": ...}`. Appends, so a restart
    keeps the history; the line is flushed at once so a crash loses nothing already written.
    Written as soon as it comes, so it needs no outbox file."""

    name = "file"

    def __init__(self, path: Path, topic_root: str) -> None:
        super().__init__()
        self.path, self.topic_root = path, topic_root
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = path.open("a", encoding="utf-8")
        self._failing = False  # the last write failed (disk full): reopen, and log once per burst

    def deliver(self, message: Outbound) -> bool:
        """False while the disk refuses (a full disk passes): the message waits and is retried."""
        line = json.dumps({"topic": f"{self.topic_root}/{message.subtopic}", "payload": message.payload})
        try:
            if self._failing:  # a failed write may have left half a line: end it, so readers skip it
                self._handle = self.path.open("a", encoding="utf-8")
                line = "\n" + line
            self._handle.write(line + "\n")
            self._handle.flush()
        except OSError as exc:
            if not self._failing:
                log.error("file sink: cannot write to %s (%s); messages wait in memory and are retried",
                          self.path, exc.strerror or exc)
            self._failing = True
            self._discard_handle()
            return False
        if self._failing:
            log.info("file sink: writing to %s again", self.path)
            self._failing = False
        return True

    def _discard_handle(self) -> None:
        try:
            self._handle.close()  # flushes what is buffered: may fail again
        except OSError:
            pass

    def close(self, timeout: float) -> None:
        super().close(timeout)
        self._discard_handle()


class Dispatcher:
    """Fans every message out to every sink."""

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = sinks

    def publish(self, message: Outbound) -> None:
        for sink in self.sinks:
            sink.submit(message)

    def start(self) -> None:
        for sink in self.sinks:
            sink.start()

    def depths(self) -> dict[str, int]:
        return {sink.name: sink.depth for sink in self.sinks}

    def close(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for sink in self.sinks:
            sink.close(max(0.1, deadline - time.monotonic()))
