"""On site: the MQTT subscriber that writes every line's model, swap, refusal and alert messages
into the fleet store. Retained `model` messages tell it what each line serves the moment it
subscribes; a persistent session (fixed client id, QoS 1) keeps what arrives while it is down.
"""

from __future__ import annotations

import logging
import threading

import paho.mqtt.client as paho

from cloud.ingest.announcements import BrokerSettings
from device.mqtt import apply_tls, describe_refusal

from .fleet_store import SqliteFleetStore
from .observations import TOPICS, parse

log = logging.getLogger(__name__)


class FleetWatcher:
    def __init__(self, broker: BrokerSettings, store: SqliteFleetStore, client_id: str | None = None,
                 persistent: bool = True) -> None:
        """`persistent`: a fixed client id whose session the broker keeps while we are down (`cloud
        serve`); a rollout listens only while it runs, under its own id."""
        self.broker, self.store = broker, store
        self.subscribed = threading.Event()
        self.client = paho.Client(callback_api_version=paho.CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"{broker.client_id}-fleet", protocol=paho.MQTTv311,
                                  clean_session=not persistent)
        if broker.username:
            self.client.username_pw_set(broker.username, broker.password.get_secret_value() if broker.password else None)
        apply_tls(self.client, broker.tls)
        self.client.reconnect_delay_set(1, 30)
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = lambda *a: log.warning("fleet: cannot connect to %s:%d; retrying",
                                                             broker.host, broker.port)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self.subscribed.set()

    def start(self) -> FleetWatcher:
        self.client.connect_async(self.broker.host, self.broker.port, keepalive=self.broker.keepalive_s)
        self.client.loop_start()
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("fleet: the broker refused the connection: %s", describe_refusal(reason_code))
            return
        client.subscribe([(f"{self.broker.topic_prefix}/+/{sub}", 1) for sub in TOPICS])

    def _on_message(self, client, userdata, message) -> None:
        observation = parse(message.topic, message.payload, self.broker.topic_prefix)
        if observation is not None:
            self.store.record(observation)
