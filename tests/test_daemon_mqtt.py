"""The daemon against a real mosquitto: events, schemas, outages, last will, clean stop."""

from __future__ import annotations

import json
import signal
import time

from daemon_helpers import DaemonProcess, clean_video, scratch_video, wait_until, write_config
from mosquitto import Broker, Subscriber

from device.messages import validate


def validate_all(sub: Subscriber) -> dict[str, int]:
    """Every message received is valid against the schema of its kind; returns counts per kind."""
    counts: dict[str, int] = {}
    for topic, payload, _ in list(sub.messages):
        kind = {"events": "event", "stats": "stats", "errors": "error", "notices": "notice",
                "available": "available", "status": "status", "model": "model", "drift": "drift"}[topic.rsplit("/", 1)[1]]
        validate(kind, payload.decode() if kind == "available" else json.loads(payload))
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def file_payloads(tmp_path, suffix: str) -> list[dict]:
    lines = (tmp_path / "messages.jsonl").read_text().splitlines()
    return [m["payload"] for m in map(json.loads, lines) if m["topic"].endswith(suffix)]


def file_events(tmp_path) -> list[dict]:
    return file_payloads(tmp_path, "/events")


def test_scratch_video_raises_new_update_end_and_clean_video_nothing(tmp_path, broker):
    sub = Subscriber(broker.port, "edge-inspect/#")
    scratch = scratch_video(tmp_path / "scratch.avi")
    clean = clean_video(tmp_path / "clean.avi")
    config = write_config(tmp_path / "config.yaml", broker.port,
                          [{"id": "scratchcam", "source": str(scratch)}, {"id": "cleancam", "source": str(clean)}])
    daemon = DaemonProcess(config)
    assert daemon.wait(180) == 0, daemon.log_text()[-3000:]
    assert sub.wait_for(lambda s: any(t.endswith("available") and p == b'offline' for t, p, _ in s.messages), 10)
    counts = validate_all(sub)
    events = sub.payloads("/events")
    assert {e["type"] for e in events} == {"new", "update", "end"}, [e["type"] for e in events]
    assert {e["camera"] for e in events} == {"scratchcam"}, "the clean video must raise no event"
    by_id: dict[str, list[str]] = {}
    for e in events:
        by_id.setdefault(e["event_id"], []).append(e["type"])
    for kinds in by_id.values():
        assert kinds[0] == "new" and kinds[-1] == "end" and kinds.count("new") == 1 and kinds.count("end") == 1
    assert len(by_id) >= 3, "at least three of the four scratched tags become defects"
    assert counts.get("stats", 0) >= 1 and counts.get("status", 0) >= 4
    [serving] = sub.payloads("/model")  # retained: what this line serves, for any later subscriber
    assert serving["model"]["sha256"] == events[0]["model"]["sha256"] and "previous" not in serving  # none at start
    e = events[0]
    assert e["thing"] == "line-1" and e["model"]["name"] == "metal-tags-yolov8n" and len(e["model"]["sha256"]) == 64
    sub.close()


def test_broker_outage_loses_no_event(tmp_path):
    broker = Broker(tmp_path, extra_conf=f"persistence true\npersistence_location {tmp_path}/\nautosave_interval 1\n")
    broker.conf.write_text(broker.conf.read_text().replace("persistence false\n", ""))
    broker.start()
    sub = Subscriber(broker.port, "edge-inspect/#", clean_session=False)
    video = scratch_video(tmp_path / "scratch.avi")
    config = write_config(tmp_path / "config.yaml", broker.port,
                          [{"id": "cam", "source": str(video), "realtime": True, "loop": True}])
    daemon = DaemonProcess(config)
    try:
        assert sub.wait_for(lambda s: s.payloads("/events"), 60), daemon.log_text()[-2000:]
        broker.stop()
        outage_started = time.time()
        # the outage lasts 20 s, and events keep being raised meanwhile
        assert wait_until(lambda: time.time() - outage_started >= 20 and any(
            e["sent_time"] >= _iso(outage_started) for e in file_events(tmp_path)), 60)
        raised_during = [e for e in file_events(tmp_path) if e["sent_time"] >= _iso(outage_started)]
        stats_during = [s for s in file_payloads(tmp_path, "/stats") if s["time"] >= _iso(outage_started + 2)]
        broker.start()
        assert raised_during, "events kept being raised while the broker was away"
        processed = [s["cameras"]["cam"]["frames_processed"] for s in stats_during]
        assert len(processed) >= 10 and processed[-1] > processed[0] + 50, "inference never waited for the broker"
        wanted = {(e["event_id"], e["type"]) for e in raised_during}
        assert sub.wait_for(lambda s: wanted <= {(e["event_id"], e["type"]) for e in s.payloads("/events")}, 60), \
            f"missing after reconnect: {wanted - {(e['event_id'], e['type']) for e in sub.payloads('/events')}}"
        last_available = lambda s: [p for t, p, _ in s.messages if t.endswith("/available")][-1:]  # noqa: E731
        assert sub.wait_for(lambda s: last_available(s) == [b'online'], 30)
        validate_all(sub)
    finally:
        daemon.stop()
        sub.close()
        broker.stop()


def _iso(epoch: float) -> str:
    from device.messages import utc_iso

    return utc_iso(epoch)


def test_kill_9_leaves_offline_as_last_will(tmp_path, broker):
    sub = Subscriber(broker.port, "edge-inspect/line-1/available")
    video = scratch_video(tmp_path / "scratch.avi")
    daemon = DaemonProcess(write_config(tmp_path / "config.yaml", broker.port,
                                        [{"id": "cam", "source": str(video), "realtime": True, "loop": True}]))
    assert sub.wait_for(lambda s: s.messages and s.messages[-1][1] == b'online', 60), daemon.log_text()
    daemon.signal(signal.SIGKILL)
    daemon.wait(10)
    assert sub.wait_for(lambda s: s.messages[-1][1] == b'offline', 10)
    sub.close()


def test_sigterm_says_offline_and_exits_0_within_5_s(tmp_path, broker):
    sub = Subscriber(broker.port, "edge-inspect/line-1/#")
    video = scratch_video(tmp_path / "scratch.avi")
    daemon = DaemonProcess(write_config(tmp_path / "config.yaml", broker.port,
                                        [{"id": "cam", "source": str(video), "realtime": True, "loop": True}]))
    assert sub.wait_for(lambda s: s.payloads("/stats"), 60), daemon.log_text()
    started = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(5) == 0
    assert time.monotonic() - started < 5
    assert sub.wait_for(lambda s: [p for t, p, _ in s.messages if t.endswith("/available")][-1] == b'offline', 5)
    assert sub.wait_for(lambda s: s.payloads("/cam/status")[-1]["state"] == "stopped", 5)
    validate_all(sub)
    sub.close()
