"""No secret leaves the box: not in logs, not in the file sink, not on MQTT, not in what the CLI
prints. One redaction function (`device.redact.redact`) covers every path; here it is attacked
with hostile passwords, in-process and through the real daemon."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import yaml
from conftest import REPO
from daemon_helpers import DaemonProcess, scratch_video, write_config
from mosquitto import Subscriber

from device.redact import redact, remember_secrets, secrets_in, secrets_in_text
from edge_inspect.loopback import free_port

HOSTILE = [
    "p@ss/w:rd",            # URL delimiters inside the password
    "a b c d",              # spaces
    "x'y\"z",               # quotes
    "ü-ß-密码-пароль",        # non-ASCII
    ".*+?[(|^$",            # regex metacharacters
    "user@host/path:9",     # looks like a URL itself
    "hunter2",
]


@pytest.mark.parametrize("password", HOSTILE)
def test_a_remembered_secret_is_masked_wherever_it_appears(password):
    remember_secrets([password])
    for text in (f"error near {password}", f"{password}{password}", f"'{password}' at line 3",
                 f"rtsp://admin:{password}@10.0.0.1/stream"):
        assert password not in redact(text)


@pytest.mark.parametrize("password", ["p@ss/w@rd", "pa/ss", "s3cr3t", "a@b@c"])
def test_url_credentials_are_masked_even_unescaped(password):
    url = f"rtsp://admin:{password}@10.0.0.21:554/stream1"
    out = redact(f"cannot open {url}")
    assert password not in out and "rtsp://admin:***@" in out and out.endswith("10.0.0.21:554/stream1")


def test_secret_pairs_in_yaml_and_key_value_text_are_masked():
    for text in ('  password: "unterminated', "password=hunter3 next", "'api_key': 'abc123'", "token: xyz999"):
        out = redact(text)
        for secret in ("unterminated", "hunter3", "abc123", "xyz999"):
            assert secret not in out


def test_secrets_are_found_in_raw_configuration():
    config = {"mqtt": {"password": "pw-one"}, "cameras": [{"source": "rtsp://u:pw/two@h/s"}],
              "nested": {"api_token": "pw-three"}}
    assert set(secrets_in(config)) == {"pw-one", "pw/two", "pw-three"}
    assert "pw-four" in secrets_in_text("mqtt:\n  password: 'pw-four'\n")


def _leaks(password: str, *texts: str) -> list[str]:
    return [t for t in texts if password in t]


@pytest.mark.parametrize("password", ["p@ss/w:rd s'q", "ü密码-$(x)"])
def test_yaml_error_on_the_password_line_never_reaches_logs_sinks_or_mqtt(tmp_path, broker, password):
    video = scratch_video(tmp_path / "v.avi", hold_frames=5, gap_frames=5)
    config_path = write_config(tmp_path / "config.yaml", broker.port,
                               [{"id": "cam", "source": str(video), "realtime": True, "loop": True}])
    good = yaml.safe_load(config_path.read_text())
    good["mqtt"]["username"] = "line-1"
    good["mqtt"]["password"] = password  # mosquitto allows anonymous: the password is not checked
    config_path.write_text(yaml.safe_dump(good, allow_unicode=True))
    sub = Subscriber(broker.port, "edge-inspect/#")
    daemon = DaemonProcess(config_path)
    try:
        assert sub.wait_for(lambda s: s.payloads("/stats"), 60), daemon.log_text()[-2000:]
        # the same file, with the password line broken: an unterminated quote, then a reload
        text = config_path.read_text(encoding="utf-8")
        broken = [line if "password" not in line else f'  password: "{password}' for line in text.splitlines()]
        config_path.write_text("\n".join(broken) + "\n", encoding="utf-8")
        daemon.signal(signal.SIGHUP)
        assert sub.wait_for(lambda s: any(p["type"] == "config_rejected" for p in s.payloads("/errors")), 20), \
            daemon.log_text()[-2000:]
        rejected = next(p for p in sub.payloads("/errors") if p["type"] == "config_rejected")
        assert "not valid YAML" in rejected["message"]
        check = subprocess.run([sys.executable, "-m", "edge_inspect", "run", "--config", str(config_path),
                                "--check-config"], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert check.returncode == 2 and "not valid YAML" in check.stderr
    finally:
        daemon.stop()
        sub.close()
    mqtt_text = "".join(p.decode("utf-8", "replace") for _, p, _ in sub.messages)
    assert not _leaks(password, daemon.log_text(), (tmp_path / "messages.jsonl").read_text(encoding="utf-8"),
                      mqtt_text, check.stdout, check.stderr)
    for part in password.split():  # not even a piece of it
        assert not _leaks(part, rejected["message"])


def test_stream_passwords_with_slash_and_at_are_masked_in_logs_and_retained_status(tmp_path, broker):
    password = "p@ss/w0rd@x"
    port = free_port()  # nothing listens: the camera goes offline, and says why
    source = f"rtsp://admin:{password}@127.0.0.1:{port}/stream1"
    config_path = write_config(tmp_path / "config.yaml", broker.port,
                               [{"id": "rtsp", "source": source, "watchdog_s": 1, "reconnect_min_s": 0.5,
                                 "reconnect_max_s": 1}])
    daemon = DaemonProcess(config_path)
    sub = Subscriber(broker.port, "edge-inspect/#")
    try:
        assert sub.wait_for(lambda s: any(p["state"] == "offline" for p in s.payloads("/rtsp/status")), 60), \
            daemon.log_text()[-2000:]
    finally:
        daemon.stop()
        sub.close()
    retained = Subscriber(broker.port, "edge-inspect/line-1/rtsp/status")
    try:
        assert retained.wait_for(lambda s: s.payloads("/status"), 10)
        statuses = sub.payloads("/rtsp/status") + retained.payloads("/status")
    finally:
        retained.close()
    assert any("rtsp://admin:***@127.0.0.1" in p["reason"] for p in statuses)
    assert not _leaks(password, daemon.log_text(), (tmp_path / "messages.jsonl").read_text(),
                      *(p["reason"] for p in statuses))
    assert not _leaks("w0rd", daemon.log_text())


@pytest.mark.parametrize("line", ['  password: correct horse battery: staple', '  password: "correct horse battery',
                                  "  password: 'correct horse\n    battery staple'"])
def test_a_first_load_with_a_broken_password_line_shows_no_piece_of_it(tmp_path, line):
    """A fresh process that has never seen the password: `--check-config` on a file whose
    password line breaks the YAML (plain value with spaces and a colon, an unterminated quote, a
    quoted value over two lines)."""
    config = tmp_path / "config.yaml"
    config.write_text(f"thing_name: line-1\nmqtt:\n  username: line-1\n{line}\n  port: [\n"
                      f"cameras: [{{id: c, source: {tmp_path}}}]\n")
    result = subprocess.run([sys.executable, "-m", "edge_inspect", "run", "--config", str(config), "--check-config"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "edge-inspect: error:" in result.stderr, result.stderr
    for word in ("correct", "horse", "battery", "staple"):
        assert word not in result.stdout + result.stderr, (word, result.stderr)
