"""Defects left open by a crash are ended after the restart, with the reason, so no subscriber
waits forever for their end; a clean stop ends them itself and leaves nothing for the next start.

The real daemon (`python -m edge_inspect run`, a subprocess) and a real mosquitto. The first run
watches a looping, real-time video of scratched tags held long in front of the camera, so a defect
is open (`new`, no `end`) when the daemon is stopped. Later runs watch an empty folder, so every
event they publish can only be about the defects of the first run. All runs share one `state_dir`
and one file sink (which writes every message in the order it was published)."""

from __future__ import annotations

import json
import signal
import sqlite3
from contextlib import closing
from pathlib import Path

from daemon_helpers import DaemonProcess, scratch_video, write_config
from mosquitto import Subscriber

from device.messages import validate

ROOT = "edge-inspect/line-1"
# A tag is held 40 s (the defect stays open); a detection missing for a frame or two must not end
# it on its own, so `end` comes only from the daemon stopping (or from the next start).
HOLD_FRAMES, GAP_FRAMES = 400, 30
EVENTS = {"end_after_s": 5.0}


class Runs:
    """Successive daemons on one state_dir and one file sink; each run has its own folder (config
    and log)."""

    def __init__(self, tmp_path: Path, port: int) -> None:
        self.tmp_path, self.port = tmp_path, port
        self.state = tmp_path / "state"
        self.file_sink = tmp_path / "messages.jsonl"
        self.empty = tmp_path / "empty"
        self.empty.mkdir()
        self.daemons: list[DaemonProcess] = []

    def start(self, camera: dict) -> DaemonProcess:
        run = self.tmp_path / f"run-{len(self.daemons) + 1}"
        run.mkdir()
        config = write_config(run / "config.yaml", self.port, [{"id": "cam", **camera}], state_dir=str(self.state),
                              file_sink={"path": str(self.file_sink)}, events=EVENTS)
        self.daemons.append(DaemonProcess(config))
        return self.daemons[-1]

    def on_video(self) -> DaemonProcess:
        video = scratch_video(self.tmp_path / "scratch.avi", hold_frames=HOLD_FRAMES, gap_frames=GAP_FRAMES)
        return self.start({"source": str(video), "realtime": True, "loop": True})

    def on_empty_folder(self) -> DaemonProcess:
        return self.start({"source": str(self.empty)})

    def file_lines(self) -> list[dict]:
        """The file sink's messages, in the order they were published (all runs)."""
        out = []
        for line in self.file_sink.read_text().splitlines() if self.file_sink.exists() else []:
            try:
                out.append(json.loads(line))
            except ValueError:  # a line being written, or cut by the kill
                pass
        return out

    def stop_all(self) -> None:
        for daemon in self.daemons:
            daemon.stop()


def events(messages: list[tuple[str, dict]]) -> list[dict]:
    return [p for t, p in messages if t == f"{ROOT}/events"]


def notices(messages: list[tuple[str, dict]]) -> list[dict]:
    return [p for t, p in messages if t == f"{ROOT}/notices"]


def received(sub: Subscriber, since: int = 0) -> list[tuple[str, dict]]:
    """(topic, JSON payload) of what the subscriber got, from its `since`-th message on."""
    return [(t, json.loads(p)) for t, p, _ in list(sub.messages)[since:]
            if t != f"{ROOT}/available"]  # `available` is bare text, not JSON


def open_ids(evts: list[dict]) -> set[str]:
    """Defects seen `new` and not `end`ed."""
    return {e["event_id"] for e in evts if e["type"] == "new"} - {e["event_id"] for e in evts if e["type"] == "end"}


def ends_of(evts: list[dict], ids: set[str]) -> dict[str, list[dict]]:
    """The `end` events of each of `ids`, repeats of one message (same message_id) counted once."""
    out: dict[str, dict[str, dict]] = {i: {} for i in ids}
    for e in evts:
        if e["type"] == "end" and e["event_id"] in ids:
            out[e["event_id"]].setdefault(e["message_id"], e)
    return {i: list(by_message.values()) for i, by_message in out.items()}


def left_in_state(runs: Runs) -> int:
    """Rows of the open-defects record the daemon keeps under state_dir (read after it stopped)."""
    with closing(sqlite3.connect(runs.state / "open-defects.sqlite")) as db:
        return db.execute("SELECT COUNT(*) FROM open_defects").fetchone()[0]


def wait_for_open_defect(sub: Subscriber, daemon: DaemonProcess) -> None:
    assert sub.wait_for(lambda s: open_ids(events(received(s))) or daemon.proc.poll() is not None, 120), \
        daemon.log_text()[-3000:]
    assert daemon.proc.poll() is None, daemon.log_text()[-3000:]


def wait_until_settled(sub: Subscriber, since: int, daemon: DaemonProcess) -> None:
    """The daemon has started (open defects of the last run are ended before its cameras start)
    and delivered all it published: a stats message from this run says the MQTT sink's queue,
    events on disk included, was empty."""
    assert sub.wait_for(lambda s: any(p["sinks"]["mqtt"]["queued"] == 0 for t, p in received(s, since)
                                      if t == f"{ROOT}/stats") or daemon.proc.poll() is not None, 60), \
        daemon.log_text()[-3000:]
    assert daemon.proc.poll() is None, daemon.log_text()[-3000:]


def test_defects_left_open_by_a_kill_9_are_ended_at_the_next_start_with_the_reason(tmp_path, broker):
    """kill -9 with defects open: the next start (on a camera that sees nothing) sends each of them
    an `end` whose reason starts "daemon restarted", valid against the event schema, and a
    `defects_closed` notice; after a clean stop, the start after that ends nothing more."""
    sub = Subscriber(broker.port, f"{ROOT}/#")
    runs = Runs(tmp_path, broker.port)
    try:
        first = runs.on_video()
        wait_for_open_defect(sub, first)
        first.signal(signal.SIGKILL)
        first.wait(10)
        left_open = open_ids(events(received(sub)))
        assert left_open, "a defect was open at the kill"
        before_restart, file_before_restart = len(sub.messages), len(runs.file_lines())

        second = runs.on_empty_folder()
        assert sub.wait_for(lambda s: all(ends_of(events(received(s)), left_open).values())
                            or second.proc.poll() is not None, 60), \
            f"no end after the restart for {left_open}: {second.log_text()[-3000:]}"
        assert sub.wait_for(lambda s: any(n["type"] == "defects_closed" for n in notices(received(s, before_restart))),
                            30), second.log_text()[-3000:]
        for notice in notices(received(sub, before_restart)):
            validate("notice", notice)

        everything = events(received(sub))
        for event_id, ends in ends_of(everything, left_open).items():
            assert len(ends) == 1, f"{event_id}: one end, got {ends}"
            end = ends[0]
            validate("event", end)
            assert end["reason"].startswith("daemon restarted"), end
            last = [e for e in everything if e["event_id"] == event_id and e["type"] != "end"][-1]
            assert (end["camera"], end["class"], end["box"]) == (last["camera"], last["class"], last["box"]), \
                "the end is built from the defect's last event"
        # the file sink agrees: the restart published those ends
        restart_ends = [m["payload"] for m in runs.file_lines()[file_before_restart:]
                        if m["topic"] == f"{ROOT}/events" and m["payload"]["type"] == "end"]
        assert left_open <= {e["event_id"] for e in restart_ends}
        assert all(e["reason"].startswith("daemon restarted") for e in restart_ends)

        wait_until_settled(sub, before_restart, second)
        second.signal(signal.SIGTERM)
        assert second.wait(10) == 0, second.log_text()[-3000:]
        assert left_in_state(runs) == 0, "nothing left open after a clean stop"

        before_third, file_before_third = len(sub.messages), len(runs.file_lines())
        third = runs.on_empty_folder()
        wait_until_settled(sub, before_third, third)
        assert not events(received(sub, before_third)), "the third start ends nothing"
        assert not any(n["type"] == "defects_closed" for n in notices(received(sub, before_third)))
        assert not [m for m in runs.file_lines()[file_before_third:] if m["topic"] == f"{ROOT}/events"]
        assert all(len(ends) == 1 for ends in ends_of(events(received(sub)), left_open).values())
        third.signal(signal.SIGTERM)
        assert third.wait(10) == 0, third.log_text()[-3000:]
    finally:
        runs.stop_all()
        sub.close()


def test_a_clean_stop_ends_open_defects_itself_and_leaves_nothing_for_the_next_start(tmp_path, broker):
    """SIGTERM with defects open: each gets an `end` with reason "daemon stopping" before the
    daemon exits 0, and the next start has nothing to end (no event, no `defects_closed`)."""
    sub = Subscriber(broker.port, f"{ROOT}/#")
    runs = Runs(tmp_path, broker.port)
    try:
        first = runs.on_video()
        wait_for_open_defect(sub, first)
        open_at_stop = open_ids(events(received(sub)))
        first.signal(signal.SIGTERM)
        assert first.wait(10) == 0, first.log_text()[-3000:]
        assert sub.wait_for(lambda s: not open_ids(events(received(s))), 30), \
            f"no end for {open_ids(events(received(sub)))}"
        evts = events(received(sub))
        for event_id, ends in ends_of(evts, open_at_stop).items():
            assert len(ends) == 1, f"{event_id}: one end, got {ends}"
            validate("event", ends[0])
            assert ends[0]["reason"] == "daemon stopping", ends[0]
        assert left_in_state(runs) == 0

        before_next, file_before_next = len(sub.messages), len(runs.file_lines())
        following = runs.on_empty_folder()
        wait_until_settled(sub, before_next, following)
        assert not events(received(sub, before_next)), "nothing was left open for this start to end"
        assert not any(n["type"] == "defects_closed" for n in notices(received(sub, before_next)))
        assert not [m for m in runs.file_lines()[file_before_next:] if m["topic"] == f"{ROOT}/events"]
        following.signal(signal.SIGTERM)
        assert following.wait(10) == 0, following.log_text()[-3000:]
    finally:
        runs.stop_all()
        sub.close()
