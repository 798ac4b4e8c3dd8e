"""On site: the MQTT subscriber that writes every line's model, swap, refusal and alert messages
into the fleet store. Retained `model` messages tell it what each line serves the moment it
subscribes; a persistent session (fixed client id, QoS 1) keeps what arrives while it is down.

It also records when it listened (fleet_store.py, coverage): from the broker's SUBACK to a
disconnect or stop, with a heartbeat in between, so a rollout can tell a quiet line from a line
nobody heard. Coverage is claimed only for what is really recorded: a heartbeat only while the
client is connected, and a message that cannot be recorded ends the interval (a new one opens with
the next message recorded), so a broken state file never passes for a quiet line.
"""

from __future__ import annotations

import logging
import threading
import uuid

import paho.mqtt.client as paho

from cloud.ingest.announcements import BrokerSettings
from device.mqtt import apply_tls, describe_refusal

from .fleet_store import HEARTBEAT_S, SqliteFleetStore
from .observations import TOPICS, parse

log = logging.getLogger(__name__)


class FleetWatcher:
    def __init__(self, broker: BrokerSettings, store: SqliteFleetStore, client_id: str | None = None,
                 persistent: bool = True) -> None:
        """`persistent`: a fixed client id whose session the broker keeps while we are down (`cloud
        serve`); a rollout listens only while it runs, under its own id."""
        self.broker, self.store = broker, store
        self.subscribed = threading.Event()
        self.client_id = client_id or f"{broker.client_id}-fleet"
        self.client = paho.Client(callback_api_version=paho.CallbackAPIVersion.VERSION2,
                                  client_id=self.client_id, protocol=paho.MQTTv311, clean_session=not persistent)
        if broker.username:
            self.client.username_pw_set(broker.username, broker.password.get_secret_value() if broker.password else None)
        apply_tls(self.client, broker.tls)
        self.client.reconnect_delay_set(1, 30)
        # an exception out of a callback would end paho's network thread silently (no on_disconnect):
        # the callbacks handle their own errors, and paho logs and carries on past anything missed
        self.client.suppress_exceptions = True
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = lambda *a: log.warning("fleet: cannot connect to %s:%d; retrying",
                                                             broker.host, broker.port)
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect
        self._listener: str | None = None  # this subscription's row in the store's listeners
        self._listener_lock = threading.Lock()
        self._stop = threading.Event()
        self._recording_failed = False  # the last record() failed: coverage ended until one succeeds
        self._beat = threading.Thread(target=self._heartbeat, name="fleet-heartbeat", daemon=True)

    def start(self) -> FleetWatcher:
        self.client.connect_async(self.broker.host, self.broker.port, keepalive=self.broker.keepalive_s)
        self.client.loop_start()
        self._beat.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._ended()
        self.client.disconnect()
        self.client.loop_stop()
        if self._beat.is_alive():
            self._beat.join(5)

    def _heartbeat(self) -> None:
        failing = False
        while not self._stop.wait(HEARTBEAT_S):
            with self._listener_lock:
                listener = self._listener
            if listener is None or not self.client.is_connected():
                continue  # a dead connection hears nothing: let the interval lapse within the grace
            try:
                self.store.heartbeat(listener)
            except Exception as exc:  # a locked or full state file: the coverage ends there, the messages go on
                if not failing:  # once per streak, not every second
                    log.warning("fleet: cannot record that this watcher still listens (%s); a rollout will "
                                "measure its own baseline", exc)
                failing = True
            else:
                failing = False

    def _ended(self) -> None:
        with self._listener_lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            try:
                self.store.stopped(listener)
            except Exception as exc:  # its heartbeat stopped too: the coverage ends within the grace anyway
                log.warning("fleet: cannot record that this watcher stopped listening (%s)", exc)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("fleet: the broker refused the connection: %s", describe_refusal(reason_code))
            return
        client.subscribe([(f"{self.broker.topic_prefix}/+/{sub}", 1) for sub in TOPICS])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if any(getattr(rc, "is_failure", False) for rc in reason_codes):
            log.warning("fleet: the broker refused the subscription to the lines' messages")
            return
        self._ended()  # a re-subscription on a live connection: one interval at a time
        self._recording_failed = False
        self._open_listener()
        self.subscribed.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._ended()

    def _on_message(self, client, userdata, message) -> None:
        observation = parse(message.topic, message.payload, self.broker.topic_prefix)
        if observation is None:
            return
        try:
            self.store.record(observation)
        except Exception as exc:  # unrecorded: from here on this watcher covers nothing until it records again
            if not self._recording_failed:
                log.warning("fleet: cannot record a message from %s (%s); this watcher's coverage ends until it "
                            "records again", observation.thing, exc)
            self._recording_failed = True
            self._ended()
            return
        if self._recording_failed:
            self._recording_failed = False
            log.info("fleet: recording again; this watcher's coverage restarts now")
            self._open_listener()

    def _open_listener(self) -> None:
        listener = f"{self.client_id}-{uuid.uuid4().hex[:8]}"
        try:
            self.store.listening(listener)
        except Exception as exc:  # unrecorded, it covers nothing: a rollout measures its own baseline
            log.warning("fleet: cannot record that this watcher listens (%s)", exc)
        else:
            with self._listener_lock:
                self._listener = listener
