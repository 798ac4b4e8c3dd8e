"""Debouncing: N of M frames to start, meaningful rises to update, T seconds gone to end."""

from __future__ import annotations

from device.config import EventsConfig
from device.detector import Detection
from device.events import DefectTracker, FrameResult
from device.messages import validate

MODEL = {"name": "m", "version": "1", "sha256": "a" * 64}


def frame(t: float, *dets: tuple[float, tuple[float, float, float, float]], seq: int = 0) -> FrameResult:
    detections = tuple(Detection(0, "scratch", score, box) for score, box in dets)
    return FrameResult("cam", seq, 1_700_000_000 + t, t, 450, 300, detections,
                       {"queue": 1.0, "preprocess": 1.0, "inference": 10.0, "postprocess": 0.5}, MODEL)


BOX = (100.0, 100.0, 180.0, 200.0)
NEAR = (104.0, 98.0, 184.0, 203.0)  # the same scratch a frame later


def run(tracker: DefectTracker, frames: list[FrameResult]) -> list[dict]:
    out = []
    for f in frames:
        for message in tracker.update(f):
            validate("event", message.payload)
            out.append(message.payload)
    return out


def test_new_needs_n_of_m_frames():
    tracker = DefectTracker("thing", "cam", EventsConfig(min_hits=3, window=5, end_after_s=1.0))
    events = run(tracker, [frame(0.0, (0.8, BOX)), frame(0.1), frame(0.2, (0.8, NEAR))])
    assert events == []  # seen 2 of 3
    events = run(tracker, [frame(0.3, (0.8, BOX))])
    assert [e["type"] for e in events] == ["new"]
    assert events[0]["box"] == list(BOX) and events[0]["box_norm"][0] == round(100 / 450, 5)


def test_flicker_never_alerts():
    tracker = DefectTracker("thing", "cam", EventsConfig(min_hits=3, window=5, end_after_s=1.0))
    frames = [frame(i * 0.1, (0.9, BOX)) if i % 3 == 0 else frame(i * 0.1) for i in range(30)]
    assert run(tracker, frames) == []


def test_update_only_on_meaningful_rise_and_one_stable_id():
    tracker = DefectTracker("thing", "cam", EventsConfig(min_hits=2, window=3, update_min_delta=0.05, end_after_s=0.5))
    scores = [0.6, 0.6, 0.62, 0.63, 0.66, 0.67, 0.9, 0.85]
    events = run(tracker, [frame(i * 0.1, (s, BOX)) for i, s in enumerate(scores)])
    assert [e["type"] for e in events] == ["new", "update", "update"]
    assert [e["score"] for e in events] == [0.6, 0.66, 0.9]
    assert len({e["event_id"] for e in events}) == 1
    events = run(tracker, [frame(0.8 + i * 0.1) for i in range(6)])
    assert [e["type"] for e in events] == ["end"]
    assert events[0]["top_score"] == 0.9 and events[0]["score"] == 0.85


def test_end_after_t_seconds_of_stream_time_not_frames():
    tracker = DefectTracker("thing", "cam", EventsConfig(min_hits=1, window=1, end_after_s=2.0))
    assert [e["type"] for e in run(tracker, [frame(0.0, (0.8, BOX))])] == ["new"]
    assert run(tracker, [frame(t / 10) for t in range(1, 20)]) == []  # gone 1.9 s
    assert [e["type"] for e in run(tracker, [frame(2.0)])] == ["end"]


def test_short_gap_keeps_the_same_event():
    tracker = DefectTracker("thing", "cam", EventsConfig(min_hits=1, window=1, end_after_s=1.0))
    first = run(tracker, [frame(0.0, (0.8, BOX))])
    assert run(tracker, [frame(0.5), frame(0.9, (0.8, NEAR))]) == []
    assert run(tracker, [frame(1.5)]) == []
    last = run(tracker, [frame(2.0)])
    assert last[0]["type"] == "end" and last[0]["event_id"] == first[0]["event_id"]


def test_two_defects_two_ids_and_class_rules():
    config = EventsConfig(min_hits=1, window=1, end_after_s=1.0,
                          classes={"scratch": {"min_confidence": 0.5, "min_area_px": 1000}})
    tracker = DefectTracker("thing", "cam", config)
    small = (10.0, 10.0, 20.0, 20.0)  # 100 px^2: below min_area_px
    other = (300.0, 50.0, 400.0, 150.0)
    events = run(tracker, [frame(0.0, (0.8, BOX), (0.9, small), (0.7, other), (0.4, (0, 0, 100, 100)))])
    assert sorted(e["box"][0] for e in events) == [100.0, 300.0]
    assert len({e["event_id"] for e in events}) == 2


def test_finish_ends_open_defects():
    tracker = DefectTracker("thing", "cam", EventsConfig(min_hits=1, window=1))
    run(tracker, [frame(0.0, (0.8, BOX))])
    assert [m.payload["type"] for m in tracker.finish()] == ["end"]
    assert tracker.finish() == []
