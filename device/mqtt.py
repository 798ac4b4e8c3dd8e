"""MQTT transport with paho-mqtt: MQTT 3.1.1 or 5, TLS with client certificates, QoS 1,
reconnect with backoff, `available` as a retained message and as the last will.

While the broker is away, messages wait in the sink (`device.sinks`: defect events on disk,
the rest in memory) and go out in order once it is back. A message handed to paho is paho's to
deliver: QoS 1 messages not yet acknowledged when the connection drops are sent again after the
reconnect, so the sink never publishes one twice itself. Defect events go one at a time: the next
is handed to paho only after the broker's PUBACK for the last (`on_publish` with its mid).

A connection that fails is logged with its cause in words, and what to check: the TLS
certificate problem, a refused client certificate, a refused login (never the password).
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho

from device.config import MqttConfig, TlsConfig
from device.messages import Outbound, available
from device.sinks import Sink

log = logging.getLogger(__name__)

REPEAT_LOG_S = 300.0  # the same connection failure is logged again at most this often


def topic_root(prefix: str, thing: str) -> str:
    return f"{prefix}/{thing}"


# --- why a connection failed, in words -----------------------------------------------------------

# OpenSSL's X509_V_ERR_* codes (ssl.SSLCertVerificationError.verify_code), grouped by what to check
UNTRUSTED_CODES = {2, 18, 19, 20, 21}  # issuer unknown, self-signed: not signed by a CA we trust
DATE_CODES = {9, 10}  # not yet valid, expired
NAME_CODES = {62, 64}  # host name or IP address mismatch
CLIENT_CERT_ALERTS = ("CERTIFICATE_REQUIRED", "BAD_CERTIFICATE", "UNKNOWN_CA", "CERTIFICATE_UNKNOWN",
                      "UNSUPPORTED_CERTIFICATE", "CERTIFICATE_EXPIRED", "CERTIFICATE_REVOKED", "ACCESS_DENIED")


def describe_verify_failure(exc: ssl.SSLCertVerificationError, host: str) -> str:
    """The broker's certificate was refused by this side."""
    what = f"TLS: certificate verify failed: {exc.verify_message or exc.reason}"
    if exc.verify_code in UNTRUSTED_CODES:
        return f"{what} — check mqtt.tls.ca_certs: the broker's certificate is not signed by a CA in it"
    if exc.verify_code in DATE_CODES:
        return f"{what} — check the broker certificate's validity dates and this device's clock"
    if exc.verify_code in NAME_CODES:
        return (f"{what} — the broker's certificate does not name {host!r}; set mqtt.host to a name the "
                "certificate lists (or fix the certificate)")
    return f"{what} — check mqtt.tls.ca_certs"


def describe_tls_text(text: str) -> str | None:
    """A TLS failure known only as text (paho logs socket errors after the handshake as text)."""
    upper = text.upper()
    alert = next((a for a in CLIENT_CERT_ALERTS if a in upper.replace(" ", "_")), None)
    if alert == "CERTIFICATE_REQUIRED":
        return (f"TLS: the broker requires a client certificate ({text.strip()}) — set mqtt.tls.certfile and "
                "mqtt.tls.keyfile")
    if alert:
        return (f"TLS: the broker refused this device's client certificate ({text.strip()}) — check "
                "mqtt.tls.certfile and mqtt.tls.keyfile, and that the broker trusts their CA")
    if "WRONG_VERSION_NUMBER" in upper or "UNKNOWN_PROTOCOL" in upper:
        return f"TLS: the broker does not speak TLS on this port ({text.strip()}) — check mqtt.port and mqtt.tls"
    if "EOF OCCURRED IN VIOLATION OF PROTOCOL" in upper or "UNEXPECTED_EOF" in upper:
        return (f"TLS: the broker closed the connection during the TLS exchange ({text.strip()}); a broker that "
                "checks client certificates does this when it refuses ours — check mqtt.tls.certfile and "
                "mqtt.tls.keyfile, and that the broker trusts their CA")
    return None


def describe_connect_error(exc: BaseException | None, host: str, port: int) -> str:
    """One line on why connecting to host:port failed, with what to check."""
    if exc is None:
        return "no cause reported"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return describe_verify_failure(exc, host)
    if isinstance(exc, ssl.SSLError):
        return describe_tls_text(str(exc)) or f"TLS: {exc} — check mqtt.tls"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused: nothing accepts connections on {host}:{port} (broker down? check mqtt.port)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve {host!r} ({exc.strerror}) — check mqtt.host and DNS"
    if isinstance(exc, TimeoutError):
        return f"timed out reaching {host}:{port} (network down, firewall?)"
    return f"{type(exc).__name__}: {exc}"


def describe_refusal(reason_code) -> str:
    """The broker answered CONNECT with a refusal (the password itself is never logged)."""
    text = str(reason_code)
    if any(word in text.lower() for word in ("password", "not authorized", "bad user")):
        return f"{text} — check mqtt.username and mqtt.password"
    if "identifier" in text.lower():
        return f"{text} — check mqtt.client_id"
    return text


def apply_tls(client: paho.Client, tls: TlsConfig) -> None:
    """Certificates verified always (CERT_REQUIRED); host names unless `insecure`."""
    if not tls.enabled:
        return
    client.tls_set(ca_certs=str(tls.ca_certs) if tls.ca_certs else None,
                   certfile=str(tls.certfile) if tls.certfile else None,
                   keyfile=str(tls.keyfile) if tls.keyfile else None,
                   cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    client.tls_insecure_set(tls.insecure)


class _Client(paho.Client):
    """paho's client, keeping the exception behind a failed connection attempt: paho's network
    loop calls `reconnect()` and, on OSError, `on_connect_fail` with no exception to read."""

    last_connect_error: OSError | None = None

    def reconnect(self):
        self.last_connect_error = None
        try:
            return super().reconnect()
        except OSError as exc:
            self.last_connect_error = exc
            raise


class AckWatch:
    """The PUBACK the outbox lane waits for. paho gives the mid only when `publish` returns, and
    its network thread may call `on_publish` before that: acks that arrive while the mid is not
    known yet are kept aside (a handful at most) and checked once it is."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting, self._mid, self._early, self.acked = False, None, {}, False
        self.refused = False  # MQTT 5: the broker acknowledged the message and refused it

    def expect(self) -> None:
        with self._lock:
            self._waiting, self._mid, self._early, self.acked, self.refused = True, None, {}, False, False

    def sent(self, mid: int) -> None:
        with self._lock:
            self._mid = mid
            if mid in self._early:
                self._waiting, self.acked, self.refused = False, True, self._early[mid]
            self._early.clear()

    def cancel(self) -> None:
        with self._lock:
            self._waiting, self._mid, self._early = False, None, {}

    def ack(self, mid: int, refused: bool = False) -> bool:
        """From paho's thread; True when this is the ack waited for."""
        with self._lock:
            if not self._waiting:
                return False
            if self._mid is None:
                self._early[mid] = refused
                return False
            if mid == self._mid:
                self._waiting, self.acked, self.refused = False, True, refused
                return True
            return False


class MqttSink(Sink):
    name = "mqtt"

    def __init__(self, config: MqttConfig, thing: str, outbox_path: Path | None = None) -> None:
        super().__init__(max_queued=config.max_queued_events, outbox_path=outbox_path)
        self.config, self.root = config, topic_root(config.topic_prefix, thing)
        self._connected = threading.Event()
        self.connections = 0
        self._acks = AckWatch()
        self._last_paho_error: str | None = None  # paho's text for a socket error after the handshake
        self._attempt_reported = False  # this connection attempt's failure is logged already
        self._last_failure: tuple[str, float] | None = None
        self._failures = 0
        self.client = self._make_client(thing)

    def _make_client(self, thing: str) -> paho.Client:
        cfg = self.config
        v5 = cfg.protocol == "5"
        client = _Client(
            callback_api_version=paho.CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id or f"edge-inspect-{thing}",
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            **({} if v5 else {"clean_session": True}),
        )
        offline = available(False)
        client.will_set(f"{self.root}/{offline.subtopic}", offline.body, qos=1, retain=True)
        client.reconnect_delay_set(min_delay=max(1, round(cfg.reconnect_min_s)),
                                   max_delay=max(1, round(cfg.reconnect_max_s)))
        client.max_inflight_messages_set(100)
        if cfg.username:
            client.username_pw_set(cfg.username, cfg.password.get_secret_value() if cfg.password else None)
        apply_tls(client, cfg.tls)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_publish = self._on_publish
        client.on_log = self._on_log
        client.on_pre_connect = self._on_pre_connect
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

    # --- paho's callbacks (paho's network thread) ---------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._report_failure(f"the broker refused the connection: {describe_refusal(reason_code)}")
            return
        self.connections += 1
        self._last_failure, self._failures = None, 0
        log.info("mqtt: connected (%d)", self.connections)
        online = available(True)
        # before anything queued: subscribers learn we are back first
        client.publish(f"{self.root}/{online.subtopic}", online.body, qos=1, retain=True)
        self._connected.set()
        with self._cond:
            self._cond.notify_all()

    def _on_connect_fail(self, client, userdata) -> None:
        # TCP refused, DNS, TLS handshake (our check of the broker's certificate): paho retries
        self._report_failure(describe_connect_error(client.last_connect_error, self.config.host, self.config.port))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if self._closing:
            log.info("mqtt: disconnected")
        elif was_connected:
            log.warning("mqtt: connection lost (%s); %d messages wait", reason_code, self.depth)
        elif not self._attempt_reported:  # closed before CONNACK (TLS 1.3: our client certificate refused)
            self._report_failure(self._closed_early_cause(reason_code))

    def _on_pre_connect(self, client, userdata) -> None:
        self._attempt_reported, self._last_paho_error = False, None

    def _closed_early_cause(self, reason_code) -> str:
        text = self._last_paho_error
        described = describe_tls_text(text) if text and self.config.tls.enabled else None
        return described or f"the broker closed the connection before accepting it ({text or reason_code})"

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        if reason_code.is_failure:  # MQTT 5: the broker took the message and refused it (quota, ACL)
            log.warning("mqtt: the broker refused message %d: %s", mid, reason_code)
        if self._acks.ack(mid, refused=reason_code.is_failure):
            with self._cond:
                self._cond.notify_all()

    def _on_log(self, client, userdata, level, text) -> None:
        # paho reports socket errors after the TLS handshake only here, as text
        if level == paho.MQTT_LOG_ERR and text.startswith("failed to receive on socket"):
            self._last_paho_error = text.split(":", 1)[1].strip()

    def _report_failure(self, cause: str) -> None:
        """Log a failed attempt; the same cause again only every REPEAT_LOG_S (paho retries forever)."""
        self._failures += 1
        self._attempt_reported = True
        now = time.monotonic()
        if self._last_failure and self._last_failure[0] == cause and now - self._last_failure[1] < REPEAT_LOG_S:
            log.debug("mqtt: cannot connect (attempt %d): %s", self._failures, cause)
            return
        self._last_failure = (cause, now)
        log.warning("mqtt: cannot connect to %s:%d: %s; retrying (attempt %d)", self.config.host, self.config.port,
                    cause, self._failures)

    # --- delivery (the sink's thread) ----------------------------------------------------------

    def ready(self) -> bool:
        return self._connected.is_set()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def _publish(self, message: Outbound) -> paho.MQTTMessageInfo | None:
        """paho's receipt once paho holds the message, else None. A QoS 1 message published just
        as the link dropped (MQTT_ERR_NO_CONN) is held too, and sent after the reconnect:
        publishing it again would send it twice."""
        info = self.client.publish(f"{self.root}/{message.subtopic}", message.body, qos=message.qos,
                                   retain=message.retain)
        held = info.rc == paho.MQTT_ERR_SUCCESS or (message.qos > 0 and info.rc == paho.MQTT_ERR_NO_CONN)
        return info if held else None

    def deliver(self, message: Outbound) -> bool:
        return self._publish(message) is not None

    def deliver_durable(self, message: Outbound) -> bool:
        self._acks.expect()  # before publishing: the PUBACK may beat publish() back
        info = self._publish(message)
        if info is None:
            self._acks.cancel()
            return False
        self._acks.sent(info.mid)
        if message.qos == 0:
            self._acks.ack(info.mid)  # QoS 0 has no PUBACK: handed on is all there is
        return True

    def confirmed(self) -> bool:
        return self._acks.acked

    def refused(self) -> bool:
        return self._acks.refused

    def close(self, timeout: float) -> None:
        """Flush what the broker can take in `timeout`, say `offline`, disconnect."""
        super().close(timeout * 0.6)
        if self.connected:
            offline = available(False)
            info = self.client.publish(f"{self.root}/{offline.subtopic}", offline.body, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout * 0.3)
            except (RuntimeError, ValueError):
                pass
            self.client.disconnect()
        self.client.loop_stop()
