"""The devices' `{prefix}/{thing}/samples` messages, from the plant's broker: each names the keys
of frames just uploaded. A message that fails the device's `Samples` contract, or names another
bucket, is logged and dropped (the frames are still found by the next listing of the bucket).

Bounded: a payload over SAMPLES_MAX_PAYLOAD is dropped unparsed, and a message naming more than
SAMPLES_MAX_KEYS keys (the device's uploader never sends more) is cut to that many, with one
warning for the message: every key costs the one serve loop a bucket read, and 10,000 absent keys
once stalled it for over a minute. Both are counted (`SamplesSubscriber.dropped_*`).

The session is persistent (clean_session False, a fixed client id, QoS 1): while `cloud serve`
is down, the broker keeps the announcements for it.
"""

from __future__ import annotations

import logging
import queue
import threading

import paho.mqtt.client as paho
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from device.config import TlsConfig, check_topic_prefix, format_validation_error
from device.contracts import SAMPLES_MAX_KEYS, Samples
from device.mqtt import apply_tls, describe_refusal

log = logging.getLogger(__name__)

SAMPLES_MAX_PAYLOAD = 4 * 1024 * 1024  # 100 keys are ~11 KB; parsing 4 MB (~40,000 keys) takes milliseconds


class BrokerSettings(BaseModel):
    """`broker` in cloud.yaml: the broker the devices publish to (their `mqtt` section)."""

    model_config = ConfigDict(extra="forbid")

    host: str = "localhost"
    port: int = Field(1883, ge=1, le=65535)
    topic_prefix: str = Field("edge-inspect", pattern=r"^[A-Za-z0-9_/-]{1,100}$", description="the devices' mqtt.topic_prefix")
    client_id: str = Field("edge-inspect-cloud", pattern=r"^[A-Za-z0-9_-]{1,64}$",
                           description="fixed, so the broker keeps our session while we are down")
    username: str | None = None
    password: SecretStr | None = None  # never printed
    tls: TlsConfig = TlsConfig()
    keepalive_s: int = Field(30, ge=5, le=3600)

    _topic_prefix = field_validator("topic_prefix")(check_topic_prefix)

    @property
    def samples_topic(self) -> str:
        return f"{self.topic_prefix}/+/samples"


class Announced(BaseModel):
    model_config = ConfigDict(frozen=True)

    thing: str
    keys: list[str]
    dropped_keys: int = 0  # keys beyond SAMPLES_MAX_KEYS, left to the next listing


def parse_samples(payload: bytes, topic: str, bucket: str) -> Announced | None:
    if len(payload) > SAMPLES_MAX_PAYLOAD:
        log.warning("samples: a message on %s is %d bytes (the limit is %d), dropped unread",
                    topic, len(payload), SAMPLES_MAX_PAYLOAD)
        return None
    try:
        message = Samples.model_validate_json(payload)
    except ValidationError as exc:
        log.warning("samples: a message on %s does not match the device's schema, dropped: %s",
                    topic, format_validation_error(exc))
        return None
    if message.bucket != bucket:
        log.warning("samples: %s announces frames in bucket %s, not ours (%s): dropped", topic, message.bucket, bucket)
        return None
    keys = list(dict.fromkeys(message.keys))  # a key named twice is read once
    dropped = max(0, len(keys) - SAMPLES_MAX_KEYS)
    if dropped:
        log.warning("samples: a message on %s names %d keys; the first %d are taken, %d dropped (the next "
                    "listing of the bucket finds them)", topic, len(keys), SAMPLES_MAX_KEYS, dropped)
    return Announced(thing=message.thing, keys=keys[:SAMPLES_MAX_KEYS], dropped_keys=dropped)


INBOX_LIMIT = 1000  # announcements waiting for the loop (each names at most SAMPLES_MAX_KEYS keys)


class SamplesSubscriber:
    """paho's thread puts each valid announcement on `inbox`; the labeling loop takes them."""

    def __init__(self, settings: BrokerSettings, bucket: str) -> None:
        self.settings, self.bucket = settings, bucket
        # bounded: a flood of announcements (a looping device, a hostile client) must not grow memory;
        # what is dropped here the next listing of the bucket finds
        self.inbox: queue.Queue[Announced] = queue.Queue(maxsize=INBOX_LIMIT)
        self.subscribed = threading.Event()  # the broker acknowledged our subscription
        self.dropped_messages = 0  # refused whole (schema, size, other bucket)
        self.dropped_keys = 0  # keys cut from messages over SAMPLES_MAX_KEYS
        self._full = False  # the inbox was full at the last message: said once until it drains
        self.client = self._client()

    def _client(self) -> paho.Client:
        cfg = self.settings
        client = paho.Client(callback_api_version=paho.CallbackAPIVersion.VERSION2, client_id=cfg.client_id,
                             protocol=paho.MQTTv311, clean_session=False)
        if cfg.username:
            client.username_pw_set(cfg.username, cfg.password.get_secret_value() if cfg.password else None)
        apply_tls(client, cfg.tls)
        client.reconnect_delay_set(1, 30)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_message = self._on_message
        client.on_subscribe = lambda *args: self.subscribed.set()
        return client

    def start(self) -> None:
        cfg = self.settings
        log.info("samples: connecting to %s:%d (tls %s)", cfg.host, cfg.port, cfg.tls.enabled)
        self.client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("samples: the broker refused the connection: %s", describe_refusal(reason_code))
            return
        client.subscribe(self.settings.samples_topic, qos=1)
        log.info("samples: subscribed to %s", self.settings.samples_topic)

    def _on_connect_fail(self, client, userdata) -> None:
        log.warning("samples: cannot connect to %s:%d (broker down? check broker.host/port/tls); retrying",
                    self.settings.host, self.settings.port)

    def _on_message(self, client, userdata, message) -> None:
        announced = parse_samples(message.payload, message.topic, self.bucket)
        if announced is None:
            self.dropped_messages += 1
            return
        self.dropped_keys += announced.dropped_keys
        try:
            self.inbox.put_nowait(announced)
        except queue.Full:
            self.dropped_messages += 1
            if not self._full:
                log.warning("samples: %d announcements wait already; more are dropped until the loop catches up "
                            "(the next listing of the bucket finds their frames)", INBOX_LIMIT)
            self._full = True
        else:
            if self.inbox.qsize() <= 1:  # drained: a new flood is said again
                self._full = False
