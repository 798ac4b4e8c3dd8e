"""The durable alert outbox: `device.outbox` on its own (order, bound, reopen, kill -9 while
writing, a torn or damaged file), the MQTT sink's outbox lane against a real mosquitto (one event
in flight, deleted only after its PUBACK, delivered in order after a restart), and the real
daemon killed with -9 during a broker outage."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO
from daemon_helpers import DaemonProcess, scratch_video, wait_until, write_config
from mosquitto import Broker, Subscriber
from paho.mqtt import publish as paho_publish

from device.config import MqttConfig
from device.messages import Outbound
from device.mqtt import MqttSink
from device.outbox import Outbox
from device.sinks import Sink


def event(n: int) -> Outbound:
    return Outbound(kind="event", subtopic="events", body=json.dumps({"n": n}).encode(), durable=True)


def drain(outbox: Outbox) -> list[Outbound]:
    """Everything in the outbox, oldest first, removing it as a delivering sink would."""
    out = []
    while (head := outbox.head()) is not None:
        out.append(head.message)
        outbox.remove(head.seq)
    return out


def numbers(messages) -> list[int]:
    return [json.loads(m.body)["n"] for m in messages]


def rows_on_disk(path: Path) -> int:
    """Read by a second connection, as after a crash: what is committed to the file."""
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    finally:
        db.close()


def warnings(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


# --- the outbox on its own -------------------------------------------------------------------------

def test_messages_come_out_in_order_with_every_field_after_a_reopen(tmp_path):
    path = tmp_path / "outbox.sqlite"
    sent = [event(n) for n in range(5)]
    sent.append(Outbound(kind="event", subtopic="cam/x", body=b"\x00raw", retain=True, qos=0, durable=True))
    outbox = Outbox(path, 100)
    for message in sent:
        outbox.put(message)
    assert len(outbox) == 6
    outbox.close()

    reopened = Outbox(path, 100)
    assert len(reopened) == 6
    assert drain(reopened) == sent  # kind, subtopic, body, retain, qos, durable and message_id
    assert len(reopened) == 0
    reopened.close()
    assert len(Outbox(path, 100)) == 0, "a removed message stays removed"


def test_a_full_outbox_evicts_the_oldest_counts_and_warns_once_per_burst(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    outbox = Outbox(tmp_path / "outbox.sqlite", 10, "mqtt")
    for n in range(25):
        outbox.put(event(n))
    assert len(outbox) == 10 and outbox.evicted == 15
    assert len(warnings(caplog, "is full")) == 1, "one warning for the burst, not one per message"
    assert numbers([outbox.head().message]) == [15], "the oldest went first"

    outbox.remove(outbox.head().seq)  # delivery resumes: the burst is summed up
    assert any("15 message(s) were dropped" in r.getMessage() for r in caplog.records)
    for n in range(25, 27):  # 9 + 2: one more eviction, a new burst, a new warning
        outbox.put(event(n))
    assert outbox.evicted == 16 and len(warnings(caplog, "is full")) == 2
    assert numbers(drain(outbox)) == list(range(17, 27))


def test_a_smaller_bound_at_restart_evicts_down_to_it(tmp_path):
    path = tmp_path / "outbox.sqlite"
    outbox = Outbox(path, 100)
    for n in range(30):
        outbox.put(event(n))
    outbox.close()
    smaller = Outbox(path, 10)
    smaller.put(event(30))
    assert len(smaller) == 10 and smaller.evicted == 21
    assert numbers(drain(smaller)) == list(range(21, 31))


WRITER = """
import sys
from device.messages import Outbound
from device.outbox import Outbox

outbox = Outbox(sys.argv[1], 1_000_000)
for n in range(1_000_000):
    outbox.put(Outbound(kind="event", subtopic="events", body=b"%d" % n, durable=True, message_id="%032x" % n))
    print(n, flush=True)  # put() returned: the message must survive a kill from here on
"""


def test_a_kill_9_while_writing_keeps_every_message_whose_put_returned(tmp_path):
    path = tmp_path / "outbox.sqlite"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    for _ in range(300):
        writer.stdout.readline()
    writer.send_signal(signal.SIGKILL)
    writer.wait(10)
    confirmed = [int(line) for line in writer.stdout.read().split()]
    last_confirmed = confirmed[-1] if confirmed else 299

    kept = drain(Outbox(path, 1_000_000))
    ns = [int(m.body) for m in kept]
    assert ns == list(range(len(ns))), "in order, no gap"
    assert last_confirmed + 1 <= len(ns) <= last_confirmed + 2, "every returned put, at most the one in progress"
    assert [m.message_id for m in kept] == [f"{n:032x}" for n in ns], "each kept with its message_id"


def test_a_torn_write_ahead_log_loses_only_its_tail(tmp_path):
    path = tmp_path / "outbox.sqlite"
    outbox = Outbox(path, 1000)
    for n in range(50):
        outbox.put(event(n))
    wal = Path(f"{path}-wal")
    assert wal.stat().st_size > 0, "the commits are in the write-ahead log (not yet checkpointed)"
    crashed = tmp_path / "crashed"  # the files as a power cut mid-write leaves them
    crashed.mkdir()
    shutil.copy(path, crashed / path.name)
    torn = Path(f"{crashed / path.name}-wal")
    torn.write_bytes(wal.read_bytes()[: wal.stat().st_size * 6 // 10])
    outbox.close()

    ns = numbers(drain(Outbox(crashed / path.name, 1000)))
    assert 0 < len(ns) < 50 and ns == list(range(len(ns))), "a prefix of what was written, in order"


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_file_is_moved_aside_and_the_outbox_starts_empty(tmp_path, caplog, damage):
    path = tmp_path / "outbox.sqlite"
    if damage == "garbage":
        path.write_bytes(b"this is not a database " * 400)
    else:
        outbox = Outbox(path, 1000)
        for _ in range(300):
            outbox.put(Outbound(kind="event", subtopic="events", body=os.urandom(1000), durable=True))
        outbox.close()
        os.truncate(path, path.stat().st_size // 2)

    outbox = Outbox(path, 10)  # must not raise: a bad state file never stops the daemon
    assert len(outbox) == 0
    outbox.put(event(1))
    assert numbers(drain(outbox)) == [1], "the new file works"
    aside = list(tmp_path.glob("outbox.sqlite.corrupt-*"))
    assert len(aside) == 1 and aside[0].stat().st_size > 0, "the damaged file is kept for a look"
    assert any("damaged" in w and aside[0].name in w for w in warnings(caplog, str(path))), caplog.text


def test_a_full_memory_queue_counts_and_warns_once_per_burst(caplog):
    class Paused(Sink):
        name = "paused"
        open = False

        def ready(self) -> bool:
            return self.open

        def deliver(self, message: Outbound) -> bool:
            return True

    caplog.set_level(logging.INFO)
    sink = Paused(max_queued=10)
    sink.start()
    for _ in range(15):
        sink.submit(Outbound(kind="stats", subtopic="stats", body=b"{}", qos=0))
    assert sink.figures() == {"queued": 10, "delivered": 0, "evicted": 0, "dropped": 5}
    assert len(warnings(caplog, "is full")) == 1, "counted and logged once, not silently, not per message"
    sink.open = True
    assert wait_until(lambda: sink.figures()["delivered"] == 10, 10)
    assert any("5 message(s) were dropped" in r.getMessage() for r in caplog.records)
    sink.close(1)


class FakeNucleus:
    """Greengrass IPC's `publish_to_iot_core`: raises while `up` is False (the nucleus restarting);
    a call that returns is the nucleus taking the message."""

    def __init__(self, up: bool) -> None:
        self.up, self.taken = up, []

    def publish_to_iot_core(self, topic_name, qos, payload, retain=None):
        if not self.up:
            raise ConnectionError("nucleus away")
        self.taken.append((topic_name, json.loads(payload)["n"]))


def test_greengrass_events_wait_on_disk_and_leave_it_only_once_the_nucleus_took_them(tmp_path):
    from device.greengrass import GreengrassSink

    path = tmp_path / "outbox-greengrass.sqlite"
    away = FakeNucleus(up=False)
    first = GreengrassSink(away, "edge-inspect/line-1", 100, outbox_path=path)
    first.start()
    for n in range(12):
        first.submit(event(n))
    first.close(0.3)  # nothing taken: everything stays on disk
    assert away.taken == [] and rows_on_disk(path) == 12

    nucleus = FakeNucleus(up=True)
    second = GreengrassSink(nucleus, "edge-inspect/line-1", 100, outbox_path=path)
    second.start()
    assert wait_until(lambda: len(nucleus.taken) == 12, 10)
    assert nucleus.taken == [("edge-inspect/line-1/events", n) for n in range(12)]
    second.close(1)
    assert rows_on_disk(path) == 0 and second.figures()["delivered"] == 12


# --- the MQTT sink's outbox lane, against a real mosquitto --------------------------------------------

def mqtt_config(port: int) -> MqttConfig:
    return MqttConfig(host="127.0.0.1", port=port, reconnect_min_s=1, reconnect_max_s=1, max_queued_events=1000)


def subscribed(port: int, root: str = "edge-inspect/line-1", clean_session: bool = True) -> Subscriber:
    """A subscriber to `{root}/#` whose subscription is in place: a probe published under the
    root has come back to it."""
    sub = Subscriber(port, f"{root}/#", clean_session=clean_session)
    probe = lambda: paho_publish.single(f"{root}/probe", b"probe", qos=1, hostname="127.0.0.1", port=port)  # noqa: E731
    assert wait_until(lambda: probe() or any(t.endswith("/probe") for t, _, _ in sub.messages), 10, 0.2)
    return sub


def events_received(sub: Subscriber) -> list[dict]:
    return sub.payloads("/events")


def test_events_wait_on_disk_while_the_broker_is_away_and_arrive_in_order_after_a_restart(tmp_path, broker):
    path = tmp_path / "state" / "outbox-mqtt.sqlite"
    broker.stop()
    first = MqttSink(mqtt_config(broker.port), "line-1", outbox_path=path)
    first.start()
    sent = [event(n) for n in range(30)]
    for message in sent:
        first.submit(message)
    assert first.figures()["queued"] == 30
    first.close(0.5)  # stopped with the broker still away: the events stay on disk
    assert rows_on_disk(path) == 30

    broker.start()
    sub = subscribed(broker.port)
    second = MqttSink(mqtt_config(broker.port), "line-1", outbox_path=path)
    assert second.figures()["queued"] == 30, "reopened from disk at start"
    second.start()
    try:
        assert sub.wait_for(lambda s: len(events_received(s)) >= 30, 30)
        assert [e["n"] for e in events_received(sub)] == list(range(30)), "in order, each once"
        assert wait_until(lambda: second.figures() == {"queued": 0, "delivered": 30, "evicted": 0, "dropped": 0}, 10)
        assert rows_on_disk(path) == 0, "deleted once acknowledged"
    finally:
        second.close(2)
        sub.close()


def test_one_event_in_flight_and_none_deleted_before_its_puback(tmp_path, broker):
    path = tmp_path / "outbox-mqtt.sqlite"
    sub = subscribed(broker.port)
    sink = MqttSink(mqtt_config(broker.port), "line-1", outbox_path=path)
    published: list[int] = []
    real_publish = sink.client.publish

    def spy(topic, payload=None, *args, **kwargs):
        if topic.endswith("/events"):
            published.append(json.loads(payload)["n"])
        return real_publish(topic, payload, *args, **kwargs)

    sink.client.publish = spy
    sink.start()
    assert wait_until(lambda: sink.connected, 10)
    broker.proc.send_signal(signal.SIGSTOP)  # the broker takes the bytes but answers nothing: no PUBACK
    try:
        for n in range(20):
            sink.submit(event(n))
        assert wait_until(lambda: published == [0], 10)
        assert not wait_until(lambda: len(published) > 1, 2), f"sent without waiting for a PUBACK: {published}"
        assert rows_on_disk(path) == 20, "nothing leaves the disk before its PUBACK"
    finally:
        broker.proc.send_signal(signal.SIGCONT)
    try:
        assert sub.wait_for(lambda s: len(events_received(s)) >= 20, 30)
        assert [e["n"] for e in events_received(sub)] == list(range(20))
        assert published == list(range(20)), "each handed to paho once"
        assert wait_until(lambda: rows_on_disk(path) == 0, 10)
    finally:
        sink.close(2)
        sub.close()


# --- the real daemon, killed during an outage ------------------------------------------------------

def persistent_broker(tmp_path: Path) -> Broker:
    """A broker that keeps sessions across its own restart: a subscriber with a persistent
    session gets every QoS 1 message published while it was away."""
    broker = Broker(tmp_path, extra_conf=f"persistence true\npersistence_location {tmp_path}/\nautosave_interval 1\n")
    broker.conf.write_text(broker.conf.read_text().replace("persistence false\n", ""))
    return broker.start()


def file_events(tmp_path: Path) -> list[dict]:
    lines = (tmp_path / "messages.jsonl").read_text().splitlines() if (tmp_path / "messages.jsonl").exists() else []
    messages = [json.loads(line) for line in lines if line.endswith("}")]  # a line being written is skipped
    return [m["payload"] for m in messages if m["topic"].endswith("/events")]


def log_messages(daemon: DaemonProcess) -> list[str]:
    out = []
    for line in daemon.log_text().splitlines():
        try:
            out.append(json.loads(line)["message"])
        except (ValueError, KeyError):
            out.append(line)
    return out


def test_kill_9_during_an_outage_then_restart_delivers_every_event_in_order(tmp_path):
    broker = persistent_broker(tmp_path)
    sub = subscribed(broker.port, clean_session=False)
    video = scratch_video(tmp_path / "scratch.avi")
    config = write_config(tmp_path / "config.yaml", broker.port,
                          [{"id": "cam", "source": str(video), "realtime": True, "loop": True}],
                          state_dir=str(tmp_path / "state"))
    ids = lambda events: [e["message_id"] for e in events]  # noqa: E731
    daemons = [DaemonProcess(config)]
    try:
        assert sub.wait_for(lambda s: events_received(s) or daemons[0].proc.poll() is not None, 90)
        assert events_received(sub), daemons[0].log_text()[-3000:]
        broker.stop()
        outage_started = time.monotonic()
        received_before = len(events_received(sub))
        # events raised since the broker went away wait in the daemon's outbox
        assert wait_until(lambda: len(file_events(tmp_path)) >= received_before + 4, 30), daemons[0].log_text()[-3000:]
        assert daemons[0].proc.poll() is None, "killed below, not dead already"
        daemons[0].signal(signal.SIGKILL)
        daemons[0].wait(10)
        raised_by_first = ids(file_events(tmp_path))

        daemons.append(DaemonProcess(config))  # broker still away
        assert wait_until(lambda: any("left by the last run wait in the outbox" in m
                                      for m in log_messages(daemons[1])) or daemons[1].proc.poll() is not None, 60)
        assert daemons[1].proc.poll() is None, daemons[1].log_text()[-3000:]
        # the outage lasts 20 s, and the second run queues events of its own behind the first run's
        assert wait_until(lambda: time.monotonic() - outage_started >= 20
                          and len(file_events(tmp_path)) > len(raised_by_first), 60), daemons[1].log_text()[-3000:]
        broker.start()

        raised = ids(file_events(tmp_path))
        assert sub.wait_for(lambda s: set(raised) <= set(ids(events_received(s))), 60), \
            f"missing after the restart: {set(raised) - set(ids(events_received(sub)))}"
        received = ids(events_received(sub))
        unique = list(dict.fromkeys(received))
        assert unique[:len(raised)] == raised, "every event, in the order it was raised"
        repeats = [i for i in set(received) if received.count(i) > 1]
        assert len(received) - len(unique) <= 1 and len(repeats) <= 1, f"repeated: {repeats}"
        for repeat in repeats:  # the one message in flight at the kill, sent again as it was
            copies = [e for e in events_received(sub) if e["message_id"] == repeat]
            assert all(c == copies[0] for c in copies)
    finally:
        for daemon in daemons:
            daemon.stop()
        sub.close()
        broker.stop()


def test_an_overflowing_outbox_shows_in_stats_prometheus_and_the_log(tmp_path):
    """The broker is away and the outbox bound is small: the oldest events go, and the loss is
    counted in the stats message, served to Prometheus and logged, never silent."""
    import urllib.request

    from device.messages import validate
    from edge_inspect.loopback import free_port

    video = scratch_video(tmp_path / "v.avi", hold_frames=6, gap_frames=4)
    metrics_port = free_port()
    config = write_config(tmp_path / "config.yaml", free_port(),  # no broker there: it is away
                          [{"id": "cam", "source": str(video), "loop": True}],
                          mqtt={"max_queued_events": 10}, stats={"interval_s": 0.5, "prometheus_port": metrics_port})
    daemon = DaemonProcess(config)

    def stats() -> list[dict]:
        path = tmp_path / "messages.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return [m["payload"] for m in map(json.loads, lines) if m["topic"].endswith("/stats")]

    def evicted_metric() -> float:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as response:
                text = response.read().decode()
        except OSError:
            return 0.0
        line = next((x for x in text.splitlines()
                     if x.startswith('edge_inspect_sink_messages{') and 'figure="evicted"' in x and 'sink="mqtt"' in x), "")
        return float(line.rsplit(" ", 1)[1]) if line else 0.0

    try:
        assert wait_until(lambda: any(s["sinks"]["mqtt"]["evicted"] > 0 for s in stats()), 120), daemon.log_text()[-2000:]
        last = stats()[-1]
        validate("stats", last)
        # both lanes are bounded by max_queued_events: events on disk, other messages in memory
        assert last["sinks"]["mqtt"]["queued"] <= 2 * 10
        assert wait_until(lambda: evicted_metric() > 0, 20)
        assert "is full: dropping the oldest" in daemon.log_text()
    finally:
        daemon.stop()


def test_an_event_the_broker_refuses_is_not_counted_delivered(tmp_path):
    """MQTT 5: the broker acknowledges the publish with a failure reason (here its ACL denies the
    events topic). The event leaves the outbox (a retry would be refused again) but counts as
    dropped, never as delivered."""
    acl = tmp_path / "acl"
    acl.write_text("topic write edge-inspect/line-1/stats\n")  # anything else, events included, is denied
    broker = Broker(tmp_path, extra_conf=f"acl_file {acl}\n").start()
    sink = MqttSink(MqttConfig(host="127.0.0.1", port=broker.port, protocol="5"), "line-1",
                    outbox_path=tmp_path / "outbox.sqlite")
    sink.start()
    try:
        for n in range(3):
            sink.submit(event(n))
        assert wait_until(lambda: sink.figures()["queued"] == 0, 20), sink.figures()
        assert sink.figures() == {"queued": 0, "delivered": 0, "evicted": 0, "dropped": 3}
    finally:
        sink.close(2)
        broker.stop()
