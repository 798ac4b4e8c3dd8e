"""A connection that fails says why, against a real mosquitto: a broker certificate from a CA we do
not trust, a certificate for another host name, a broker that wants a client certificate we do not
send or does not trust ours, a refused login. Never with the password."""

from __future__ import annotations

import json
import logging
import subprocess

from daemon_helpers import DaemonProcess, scratch_video, wait_until, write_config
from mosquitto import Broker

from device.config import MqttConfig
from device.mqtt import MqttSink

PASSWORD = "s3cret-Pa55"


def tls_config(pki, port: int, host: str = "127.0.0.1", ca: str = "ca", client: str | None = "client") -> MqttConfig:
    tls = {"enabled": True, "ca_certs": pki / f"{ca}.pem"}
    if client:
        tls |= {"certfile": pki / f"{client}.pem", "keyfile": pki / f"{client}.key"}
    return MqttConfig(host=host, port=port, tls=tls, reconnect_min_s=1, reconnect_max_s=1,
                      username="line-1", password=PASSWORD)


def first_failure(caplog, config: MqttConfig) -> str:
    """Run an MQTT sink until it logs its first failed connection; that line."""
    caplog.set_level(logging.INFO)
    sink = MqttSink(config, "line-1")
    sink.start()
    try:
        failed = lambda: [r.getMessage() for r in caplog.records if "cannot connect" in r.getMessage()]  # noqa: E731
        assert wait_until(failed, 20), caplog.text
        assert not sink.connected
        assert PASSWORD not in caplog.text
        return failed()[0]
    finally:
        sink.close(0.5)


def test_a_broker_certificate_from_an_untrusted_ca_names_the_ca_setting(caplog, pki, tls_broker):
    line = first_failure(caplog, tls_config(pki, tls_broker.tls_port, ca="rogue"))
    assert "TLS: certificate verify failed" in line and "mqtt.tls.ca_certs" in line, line


def test_a_certificate_for_another_host_names_the_host_setting(caplog, pki, tls_broker):
    line = first_failure(caplog, tls_config(pki, tls_broker.tls_port, host="localhost"))
    assert "certificate verify failed" in line and "does not name 'localhost'" in line and "mqtt.host" in line, line


def test_a_missing_client_certificate_says_the_broker_requires_one(caplog, pki, tls_broker):
    line = first_failure(caplog, tls_config(pki, tls_broker.tls_port, client=None))
    assert "requires a client certificate" in line and "mqtt.tls.certfile" in line, line


def test_a_client_certificate_the_broker_does_not_trust_names_the_certificate_settings(caplog, pki, tls_broker):
    line = first_failure(caplog, tls_config(pki, tls_broker.tls_port, client="rogue-client"))
    assert "TLS" in line and "mqtt.tls.certfile" in line, line


def test_a_refused_login_names_the_credentials_but_never_the_password(tmp_path, caplog):
    passwords = tmp_path / "passwords"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwords), "line-1", "the-right-one"], check=True,
                   capture_output=True)
    broker = Broker(tmp_path, extra_conf=f"password_file {passwords}\n")
    broker.conf.write_text(broker.conf.read_text().replace("allow_anonymous true", "allow_anonymous false"))
    broker.start()
    try:
        config = MqttConfig(host="127.0.0.1", port=broker.port, reconnect_min_s=1, reconnect_max_s=1,
                            username="line-1", password=PASSWORD)
        line = first_failure(caplog, config)
        assert "refused" in line and "mqtt.username and mqtt.password" in line, line
    finally:
        broker.stop()


def test_the_daemon_log_names_the_certificate_problem(tmp_path, pki, tls_broker):
    video = scratch_video(tmp_path / "v.avi", hold_frames=5, gap_frames=5)
    daemon = DaemonProcess(write_config(tmp_path / "config.yaml", tls_broker.tls_port,
                                        [{"id": "cam", "source": str(video), "realtime": True, "loop": True}],
                                        mqtt={"username": "line-1", "password": PASSWORD,
                                              "tls": {"enabled": True, "ca_certs": str(pki / "rogue.pem"),
                                                      "certfile": str(pki / "client.pem"),
                                                      "keyfile": str(pki / "client.key")}}))

    def failures() -> list[str]:
        lines = [json.loads(line) for line in daemon.log_text().splitlines() if line.startswith("{")]
        return [e["message"] for e in lines if "cannot connect" in e["message"]]

    try:
        assert wait_until(lambda: failures() or daemon.proc.poll() is not None, 60) and failures(), \
            daemon.log_text()[-3000:]
        assert "TLS: certificate verify failed" in failures()[0] and "mqtt.tls.ca_certs" in failures()[0]
        assert daemon.proc.poll() is None, "the daemon keeps running and retrying"
        assert PASSWORD not in daemon.log_text()
    finally:
        daemon.stop()
