"""Every message the rehearsal's line sends, with when it arrived: the report's time series (alerts,
drift, the model served) and what the turns wait on. An MQTT subscriber of its own, like any plant
system that listens to the lines."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as paho


@dataclass(frozen=True)
class Alert:
    t: float
    score: float


@dataclass(frozen=True)
class DriftPoint:
    t: float
    state: str
    score: float
    worst: str
    sha256: str  # the model whose reference the frames were compared with


@dataclass(frozen=True)
class Served:
    t: float
    version: str
    sha256: str


class Timeline:
    def __init__(self, port: int, prefix: str, thing: str, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.alerts: list[Alert] = []
        self.drift: list[DriftPoint] = []
        self.served: list[Served] = []
        self.last_sample: float | None = None  # when the line last announced a frame it uploaded
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._root = f"{prefix}/{thing}/"
        self._client = paho.Client(callback_api_version=paho.CallbackAPIVersion.VERSION2,
                                   client_id=f"edge-inspect-loop-timeline-{thing}")
        self._client.on_connect = lambda c, u, f, rc, p: c.subscribe(self._root + "#", qos=1)
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)

    def start(self) -> Timeline:
        self._client.loop_start()
        return self

    def stop(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()

    def _on_message(self, client, userdata, msg) -> None:
        sub = msg.topic.removeprefix(self._root)
        try:
            payload = json.loads(msg.payload)
        except ValueError:
            return  # `available` is bare text
        now = self.clock()
        with self._changed:
            if sub == "events" and payload.get("type") == "new":
                self.alerts.append(Alert(now, float(payload["score"])))
            elif sub.endswith("/drift"):
                self.drift.append(DriftPoint(now, payload["state"], float(payload["score"]), payload["worst"],
                                             payload["model"]["sha256"]))
            elif sub == "samples":
                self.last_sample = now
            elif sub == "model":
                model = payload["model"]
                self.served.append(Served(now, model["version"], model["sha256"]))
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[Timeline], bool], timeout: float) -> bool:
        """Block until `predicate(self)` holds (checked on every message), or `timeout` s."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 1.0))
        return True

    def drift_state(self) -> str | None:
        return self.drift[-1].state if self.drift else None

    def serving(self) -> str | None:
        return self.served[-1].sha256 if self.served else None
