"""Sinks: where messages go. One event stream feeds any number of sinks; each sink has its own
thread and a bounded queue, so a slow broker, disk or network never stalls inference. When a
sink's queue is full its oldest message is dropped and counted (retained state messages such as
`available` and camera status are re-sent on reconnect anyway)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from pathlib import Path

from device.messages import Outbound

log = logging.getLogger(__name__)


class Sink:
    """Base: a bounded outbox drained by the sink's own thread through `deliver`."""

    name = "sink"

    def __init__(self, max_queued: int = 10000) -> None:
        self._outbox: deque[Outbound] = deque()
        self._max_queued = max_queued
        self._cond = threading.Condition()
        self._closing = False
        self.dropped = 0
        self.delivered = 0
        self._thread = threading.Thread(target=self._drain, name=f"sink-{self.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, message: Outbound) -> None:
        with self._cond:
            if len(self._outbox) >= self._max_queued:
                self._outbox.popleft()
                self.dropped += 1
            self._outbox.append(message)
            self._cond.notify_all()

    @property
    def depth(self) -> int:
        return len(self._outbox)

    def ready(self) -> bool:
        """False while the sink cannot deliver (broker away): messages wait in the outbox."""
        return True

    def deliver(self, message: Outbound) -> bool:
        """Hand one message on; False means "not now", and it is retried from the front."""
        raise NotImplementedError

    def _drain(self) -> None:
        while True:
            with self._cond:
                while not self._closing and (not self._outbox or not self.ready()):
                    self._cond.wait(0.1)
                if not self._outbox or not self.ready():
                    return  # closing, and nothing (more) can be delivered
                message = self._outbox[0]
            if self.deliver(message):
                with self._cond:
                    if self._outbox and self._outbox[0] is message:
                        self._outbox.popleft()
                    self.delivered += 1
                    self._cond.notify_all()
            else:
                time.sleep(0.05)

    def close(self, timeout: float) -> None:
        """Deliver what can be delivered within `timeout`, then stop the thread."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._outbox and self.ready() and time.monotonic() < deadline:
                self._cond.wait(0.05)
            self._closing = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(max(0.0, deadline - time.monotonic()) + 0.2)


class FileSink(Sink):
    """Every message as one JSON line: `{"topic": ..., "payload": ...}`. Appends, so a restart
    keeps the history; the line is flushed at once so a crash loses nothing already written."""

    name = "file"

    def __init__(self, path: Path, topic_root: str) -> None:
        super().__init__()
        self.path, self.topic_root = path, topic_root
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = path.open("a", encoding="utf-8")

    def deliver(self, message: Outbound) -> bool:
        line = json.dumps({"topic": f"{self.topic_root}/{message.subtopic}", "payload": message.payload})
        self._handle.write(line + "\n")
        self._handle.flush()
        return True

    def close(self, timeout: float) -> None:
        super().close(timeout)
        self._handle.close()


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
