"""Transports: MQTT over TLS with client certificates, MQTT 5, the JSON-lines file sink and the
Prometheus endpoint, each against the real thing."""

from __future__ import annotations

import json
import urllib.request

from daemon_helpers import DaemonProcess, scratch_video, write_config
from mosquitto import Broker, Subscriber

from device.messages import validate
from edge_inspect.loopback import free_port


def test_tls_with_client_certificate(tmp_path, pki, tls_broker):
    sub = Subscriber(tls_broker.port, "edge-inspect/#")  # the plain listener, for the observer
    video = scratch_video(tmp_path / "v.avi", hold_frames=5, gap_frames=5)
    daemon = DaemonProcess(write_config(tmp_path / "config.yaml", tls_broker.tls_port,
                                        [{"id": "cam", "source": str(video), "realtime": True, "loop": True}],
                                        mqtt={"tls": {"enabled": True, "ca_certs": str(pki / "ca.pem"),
                                                      "certfile": str(pki / "client.pem"),
                                                      "keyfile": str(pki / "client.key")}}))
    try:
        assert sub.wait_for(lambda s: s.payloads("/stats"), 60), daemon.log_text()[-2000:]
        assert [p for t, p, _ in sub.messages if t.endswith("/available")][0] == b'online'
    finally:
        daemon.stop()
        sub.close()


def test_tls_without_client_certificate_is_refused_and_the_daemon_keeps_running(tmp_path, pki, tls_broker):
    sub = Subscriber(tls_broker.port, "edge-inspect/#")
    video = scratch_video(tmp_path / "v.avi", hold_frames=5, gap_frames=5)
    daemon = DaemonProcess(write_config(tmp_path / "config.yaml", tls_broker.tls_port,
                                        [{"id": "cam", "source": str(video), "realtime": True, "loop": True}],
                                        mqtt={"tls": {"enabled": True, "ca_certs": str(pki / "ca.pem")}}))
    try:
        assert not sub.wait_for(lambda s: s.messages, 6), "no certificate, no connection"
        assert daemon.proc.poll() is None
        lines = (tmp_path / "messages.jsonl").read_text().splitlines()
        assert any(json.loads(line)["topic"].endswith("/stats") for line in lines), "inference goes on meanwhile"
    finally:
        daemon.stop()
        sub.close()


def test_mqtt5_and_prometheus(tmp_path):
    broker = Broker(tmp_path).start()
    metrics_port = free_port()
    sub = Subscriber(broker.port, "edge-inspect/#")
    video = scratch_video(tmp_path / "v.avi", hold_frames=5, gap_frames=5)
    daemon = DaemonProcess(write_config(tmp_path / "config.yaml", broker.port,
                                        [{"id": "cam", "source": str(video), "realtime": True, "loop": True}],
                                        mqtt={"protocol": "5"}, stats={"interval_s": 1, "prometheus_port": metrics_port}))
    try:
        assert sub.wait_for(lambda s: len(s.payloads("/stats")) >= 2, 60), daemon.log_text()[-2000:]
        for payload in sub.payloads("/stats"):
            validate("stats", payload)
        body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        assert 'edge_inspect_frames_processed_total{camera="cam"}' in body
        assert 'edge_inspect_camera_online{camera="cam"} 1.0' in body
        assert 'edge_inspect_stage_seconds_bucket{le="0.1",stage="inference"}' in body
        assert "edge_inspect_model_info{" in body
        lines = [json.loads(line) for line in (tmp_path / "messages.jsonl").read_text().splitlines()]
        assert {m["topic"].rsplit("/", 1)[1] for m in lines} >= {"status", "stats"}
    finally:
        daemon.stop()
        sub.close()
        broker.stop()
