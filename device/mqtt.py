"""MQTT transport with paho-mqtt: MQTT 3.1.1 or 5, TLS with client certificates, QoS 1,
reconnect with backoff, `available` as a retained message and as the last will.

While the broker is away, messages wait in the sink's bounded outbox and go out in order once
it is back. A message handed to paho while connected is paho's to deliver: QoS 1 messages not yet
acknowledged when the connection drops are sent again after the reconnect.
"""

from __future__ import annotations

import logging
import ssl
import threading

import paho.mqtt.client as paho

from device.config import MqttConfig
from device.messages import Outbound, available
from device.sinks import Sink

log = logging.getLogger(__name__)


def topic_root(prefix: str, thing: str) -> str:
    return f"{prefix}/{thing}"


class MqttSink(Sink):
    name = "mqtt"

    def __init__(self, config: MqttConfig, thing: str) -> None:
        super().__init__(max_queued=config.max_queued_events)
        self.config, self.root = config, topic_root(config.topic_prefix, thing)
        self._connected = threading.Event()
        self.connections = 0
        self.client = self._make_client(thing)

    def _make_client(self, thing: str) -> paho.Client:
        cfg = self.config
        v5 = cfg.protocol == "5"
        client = paho.Client(
            callback_api_version=paho.CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id or f"edge-inspect-{thing}",
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            **({} if v5 else {"clean_session": True}),
        )
        offline = available(False)
        client.will_set(f"{self.root}/{offline.subtopic}", offline.body(), qos=1, retain=True)
        client.reconnect_delay_set(min_delay=max(1, round(cfg.reconnect_min_s)), max_delay=max(1, round(cfg.reconnect_max_s)))
        client.max_inflight_messages_set(100)
        if cfg.username:
            client.username_pw_set(cfg.username, cfg.password.get_secret_value() if cfg.password else None)
        if cfg.tls.enabled:
            client.tls_set(
                ca_certs=str(cfg.tls.ca_certs) if cfg.tls.ca_certs else None,
                certfile=str(cfg.tls.certfile) if cfg.tls.certfile else None,
                keyfile=str(cfg.tls.keyfile) if cfg.tls.keyfile else None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
            client.tls_insecure_set(cfg.tls.insecure)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        return client

    def submit(self, message: Outbound) -> None:
        if message.kind == "available":
            return  # this sink says `online` on every connect and has `offline` as its last will
        super().submit(message)

    def start(self) -> None:
        cfg = self.config
        log.info("mqtt: connecting to %s:%d (tls %s, MQTT %s)", cfg.host, cfg.port, cfg.tls.enabled, cfg.protocol)
        self.client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s)
        self.client.loop_start()  # paho's thread reconnects with the backoff set above
        super().start()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("mqtt: broker refused the connection: %s", reason_code)
            return
        self.connections += 1
        log.info("mqtt: connected (%d)", self.connections)
        online = available(True)
        # before anything queued: subscribers learn we are back first
        client.publish(f"{self.root}/{online.subtopic}", online.body(), qos=1, retain=True)
        self._connected.set()
        with self._cond:
            self._cond.notify_all()

    def _on_connect_fail(self, client, userdata) -> None:
        # TLS handshake refused, connection refused, DNS: paho retries with backoff
        log.warning("mqtt: cannot connect to %s:%d; retrying", self.config.host, self.config.port)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.clear()
        if self._closing:
            log.info("mqtt: disconnected")
        else:
            log.warning("mqtt: connection lost (%s); %d messages wait", reason_code, self.depth)

    def ready(self) -> bool:
        return self._connected.is_set()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def deliver(self, message: Outbound) -> bool:
        info = self.client.publish(f"{self.root}/{message.subtopic}", message.body(), qos=message.qos,
                                   retain=message.retain)
        return info.rc == paho.MQTT_ERR_SUCCESS

    def close(self, timeout: float) -> None:
        """Flush what the broker can take in `timeout`, say `offline`, disconnect."""
        super().close(timeout * 0.6)
        if self.connected:
            offline = available(False)
            info = self.client.publish(f"{self.root}/{offline.subtopic}", offline.body(), qos=1, retain=True)
            try:
                info.wait_for_publish(timeout * 0.3)
            except (RuntimeError, ValueError):
                pass
            self.client.disconnect()
        self.client.loop_stop()
