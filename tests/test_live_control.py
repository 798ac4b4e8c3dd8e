"""A live change is reported applied only when it is in effect: the notice names the keys in
effect now and the ones that wait for a restart, and a change that cannot be put into effect
(a Prometheus port already taken) is refused whole."""

from __future__ import annotations

import signal
import socket
import urllib.request

import yaml
from daemon_helpers import DaemonProcess, scratch_video, write_config
from mosquitto import Subscriber

from device.messages import validate
from edge_inspect.loopback import free_port


def serves_metrics(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            return b"edge_inspect_frames_processed" in response.read()
    except OSError:
        return False


def notices_and_errors(sub: Subscriber) -> list[dict]:
    out = []
    for payload in sub.payloads("/notices"):
        validate("notice", payload)
        out.append(payload)
    for payload in sub.payloads("/errors"):
        validate("error", payload)
        out.append(payload)
    return out


def test_prometheus_port_changes_live_and_a_taken_port_is_refused(tmp_path, broker):
    video = scratch_video(tmp_path / "v.avi", hold_frames=5, gap_frames=5)
    first, second = free_port(), free_port()
    config_path = write_config(tmp_path / "config.yaml", broker.port,
                               [{"id": "cam", "source": str(video), "realtime": True, "loop": True}],
                               stats={"interval_s": 1, "prometheus_port": first})
    config = yaml.safe_load(config_path.read_text())
    sub = Subscriber(broker.port, "edge-inspect/#")
    daemon = DaemonProcess(config_path)
    try:
        assert sub.wait_for(lambda s: s.payloads("/stats"), 60), daemon.log_text()[-2000:]
        assert serves_metrics(first)

        config["stats"]["prometheus_port"] = second
        config["model"] = {"watch": False}  # not live: waits for the next start, and says so
        config_path.write_text(yaml.safe_dump(config))
        daemon.signal(signal.SIGHUP)
        assert sub.wait_for(lambda s: any(p["type"] == "config_applied" for p in notices_and_errors(s)), 20), \
            daemon.log_text()[-2000:]
        applied = next(p for p in sub.payloads("/notices") if p["type"] == "config_applied")
        assert applied["applied"] == ["stats.prometheus_port"], applied
        assert applied["pending_restart"] == ["model.watch"], applied
        assert serves_metrics(second) and not serves_metrics(first)

        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            config["stats"]["prometheus_port"] = taken.getsockname()[1]
            config_path.write_text(yaml.safe_dump(config))
            daemon.signal(signal.SIGHUP)
            assert sub.wait_for(lambda s: any(p["type"] == "config_rejected" for p in s.payloads("/errors")), 20)
        rejected = next(p for p in sub.payloads("/errors") if p["type"] == "config_rejected")
        assert "Address already in use" in rejected["message"] or "in use" in rejected["message"], rejected
        assert serves_metrics(second), "the refused update must leave the last good one in force"
        assert len([p for p in sub.payloads("/notices") if p["type"] == "config_applied"]) == 1
    finally:
        daemon.stop()
        sub.close()


def test_a_shorter_stats_interval_takes_effect_at_once(tmp_path, broker):
    """The stats loop was asleep for the old interval (up to a day): a live change must not wait
    for it to end."""
    folder = tmp_path / "drop"
    folder.mkdir()
    config_path = write_config(tmp_path / "config.yaml", broker.port, [{"id": "drop", "source": str(folder)}],
                               stats={"interval_s": 3600})
    config = yaml.safe_load(config_path.read_text())
    sub = Subscriber(broker.port, "edge-inspect/#")
    daemon = DaemonProcess(config_path)
    try:
        assert sub.wait_for(lambda s: any(p["state"] == "online" for p in s.payloads("/drop/status")), 60)
        assert not sub.payloads("/stats")
        config["stats"]["interval_s"] = 0.5
        config_path.write_text(yaml.safe_dump(config))
        daemon.signal(signal.SIGHUP)
        assert sub.wait_for(lambda s: len(s.payloads("/stats")) >= 3, 15), daemon.log_text()[-2000:]
    finally:
        daemon.stop()
        sub.close()
