"""Drift on the device (device/drift.py, device/rehearsal.py): the measure, the verdict and its
hysteresis, the bundled model's reference on the shipped photos (no false alarm on the undrifted
line, an alarm on each rehearsal drift), the `drift` sampling strategy, and the daemon publishing
its verdict over MQTT while the strategy spools the drifted frames."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from conftest import METAL_TAGS, REPO
from daemon_helpers import DaemonProcess, wait_until, write_config
from mosquitto import Subscriber

from device.config import ActiveLearningConfig, StrategyConfig
from device.detector import Detector
from device.drift import (
    IMAGE_FEATURES,
    DriftMonitor,
    DriftReference,
    DriftSettings,
    build_reference,
    distance,
    image_features,
    reference_of,
)
from device.images import list_images, read_image
from device.messages import validate
from device.model_card import ModelCard
from device.model_manager import drift_reference_of
from device.rehearsal import apply_drift
from device.sampler import Sampler

BUNDLED = REPO / "device" / "models" / "metal-tags-yolov8n.onnx"
PHOTOS = sorted((METAL_TAGS / "images").glob("*.jpg"))


@pytest.fixture(scope="module")
def line():
    """Every shipped labelled photo with the bundled model's detections on it (computed once: the
    detector is deterministic, so a line showing a photo again sees the same detections)."""
    detector = Detector(BUNDLED)
    photos = []
    for path in PHOTOS:
        image = read_image(path)
        photos.append((path.name, image, [d.confidence for d in detector.detect(image)]))
    return drift_reference_of(detector), photos


def monitor_for(reference: DriftReference, settings: DriftSettings | None = None, clock=None) -> DriftMonitor:
    monitor = DriftMonitor(settings or DriftSettings(), clock=clock or (lambda: 0.0))
    monitor.use(reference, "model-a")
    return monitor


def test_the_measure_is_wasserstein_in_reference_deviations():
    rng = np.random.default_rng(0)
    ref = reference_of(rng.normal(100, 10, 5000))
    assert distance(rng.normal(100, 10, 2000), ref, 1.0) < 0.1
    assert distance(rng.normal(130, 10, 2000), ref, 1.0) == pytest.approx(3.0, abs=0.15)  # shifted by 3 sd
    # a subset of the training variety (one photo, again and again) is at most as far as its own spread
    assert distance([100.0] * 50, ref, 1.0) == pytest.approx(0.8, abs=0.05)  # mean |x - mu| = 0.8 sd
    constant = reference_of([0.333] * 100)  # a feature constant in training keeps a scale: its resolution
    assert constant.std == 0 and distance([0.245] * 30, constant, 0.01) == pytest.approx(8.8, abs=0.01)


def test_settings_refuse_what_cannot_work():
    with pytest.raises(ValueError, match="unknown alarm features"):
        DriftSettings(alarm_features=["brightnes"])
    with pytest.raises(ValueError, match="clear_below"):
        DriftSettings(raise_at=2, clear_below=3)
    with pytest.raises(ValueError, match="min_frames"):
        DriftSettings(window_frames=10, min_frames=20)


def test_the_bundled_cards_carry_the_reference_of_their_training_photos():
    for card_file in sorted((REPO / "device" / "models").glob("*.card.json")):
        card = ModelCard.read(card_file)
        reference = card.drift_reference
        assert reference is not None, card_file.name
        assert set(reference.features) == {*IMAGE_FEATURES, "detections", "top_score"}
        assert reference.features["brightness"].count == 148  # the training crops
        assert "148 training images" in reference.made_from


def test_an_hour_of_the_undrifted_line_raises_no_alarm(line):
    """Accelerated: an hour at 2 fps (7200 frames) of the shipped photos in random order, each held
    1 to 10 frames, with stopped-line spells (one tag for 2 minutes) on the photos that are most
    unlike the rest; the window never leaves `ok`."""
    reference, photos = line
    rng = random.Random(7)
    monitor, highest, frames, states = monitor_for(reference), 0.0, 0, set()
    extremes = sorted(photos, key=lambda p: image_features(p[1])["sharpness"])
    while frames < 7200:
        name, image, confidences = rng.choice(photos)
        hold = rng.randint(1, 10)
        if rng.random() < 0.02:
            name, image, confidences = rng.choice(extremes[:3] + extremes[-3:])
            hold = 240
        for _ in range(hold):
            verdict = monitor.observe("cam", image, confidences)
            states.add(verdict.state)
            highest = max(highest, verdict.score)
            frames += 1
    assert states == {"unknown", "ok"}, f"a false alarm: highest score {highest:.2f}"
    assert highest < DriftSettings().raise_at / 2, highest


@pytest.mark.parametrize("drift,feature", [("warm-light", "blue_share"), ("rotate90", "aspect"),
                                           ("dim", None), ("blur", "sharpness")])
def test_each_rehearsal_drift_raises_the_alarm_and_the_line_coming_back_clears_it(line, drift, feature):
    reference, photos = line
    times = iter(range(10_000))
    monitor = monitor_for(reference, clock=lambda: float(next(times)))
    verdicts = [monitor.observe("cam", apply_drift(drift, image), c) for _, image, c in photos[:40]]
    raised = [v for v in verdicts if v.changed and v.state == "drifting"]
    assert len(raised) == 1 and monitor.drifting("cam"), [v.score for v in verdicts[-3:]]
    assert raised[0].frames == DriftSettings().min_frames, "the alarm comes with the first verdict"
    if feature:
        assert raised[0].worst == feature, raised[0].measures
    since = raised[0].since
    for _, image, c in photos[40:40 + DriftSettings().window_frames]:
        verdict = monitor.observe("cam", image, c)
        if verdict.state == "ok":
            break
    assert verdict.state == "ok" and verdict.changed and verdict.since > since and not monitor.drifting("cam")


def test_a_stopped_line_counts_once_and_a_new_model_starts_its_behaviour_window(line):
    reference, photos = line
    monitor = monitor_for(reference)
    name, image, confidences = photos[0]
    for _ in range(500):
        verdict = monitor.observe("cam", image, confidences)
    assert verdict.state == "unknown" and verdict.frames == 1, "500 identical frames are one picture"
    for _, image, c in photos[1:30]:
        monitor.observe("cam", image, c)
    assert len(monitor.cameras["cam"].behaviour) == 30
    monitor.use(reference, "model-a")
    assert len(monitor.cameras["cam"].behaviour) == 30, "the same model: nothing starts again"
    monitor.use(reference, "model-b")
    assert len(monitor.cameras["cam"].behaviour) == 0 and len(monitor.cameras["cam"].images) == 30


def test_a_model_that_learned_the_drifted_line_clears_the_alarm_at_the_swap(line):
    """The window still holds the drifted frames; judged against the new model's reference (whose
    training images include a quarter of drifted ones), the alarm clears at once."""
    reference, photos = line
    monitor = monitor_for(reference)
    for _, image, c in photos[:40]:
        monitor.observe("cam", apply_drift("warm-light", image), c)
    assert monitor.drifting("cam")
    assert monitor.use(reference, "model-a") == [], "the same model: nothing to judge again"
    training = [image for _, image, _ in photos[40:120]] + [apply_drift("warm-light", i) for _, i, _ in photos[120:150]]
    retrained = build_reference(training, [c for _, _, c in photos[:30]], 0.5, "retrained on the drifted line")
    [verdict] = monitor.use(retrained, "model-b")
    assert verdict.state == "ok" and verdict.changed and verdict.reference == "model-b", verdict.measures
    assert verdict.score < DriftSettings().clear_below and not monitor.drifting("cam")


def test_without_a_reference_the_monitor_stays_silent(line):
    _, photos = line
    monitor = DriftMonitor(DriftSettings())
    monitor.use(None, "model-without-reference")
    assert monitor.observe("cam", photos[0][1], []) is None and monitor.verdicts() == []


def test_a_reference_needs_images_for_every_feature():
    with pytest.raises(ValueError, match="no images to measure detections, top_score"):
        build_reference([np.zeros((30, 40, 3), np.uint8)], [], 0.5, "test")


def test_rehearsal_drifts_change_the_frame_as_named():
    image = np.full((300, 450, 3), 200, np.uint8)
    assert apply_drift("warm-light", image)[0, 0].tolist() == [120, 170, 200]
    assert apply_drift("rotate90", image).shape == (450, 300, 3)
    assert apply_drift(None, image) is image


def test_the_drift_strategy_samples_only_while_the_camera_drifts():
    config = ActiveLearningConfig(enabled=True, upload={"enabled": False}, dedup={"enabled": False},
                                  limits={"per_minute": None, "per_hour": None, "per_day": None},
                                  strategies=[StrategyConfig(name="drifted", type="drift", percent=100,
                                                             limits={"per_minute": 5})])
    now = [0.0]
    sampler = Sampler(config, 0.5, clock=lambda: now[0], rng=random.Random(0))
    image = np.zeros((30, 40, 3), np.uint8)
    assert all(sampler.decide("cam", image, []) is None for _ in range(20)), "a blind model on a normal line: nothing"
    taken = [sampler.decide("cam", image, [], drifting=True) for _ in range(20)]
    assert sum(t is not None for t in taken) == 5 and taken[0].strategies == ("drifted",), "its own limits apply"


def test_the_daemon_publishes_drift_and_samples_the_drifted_frames(tmp_path, broker):
    """A folder of held-out photos under a warm lamp: the retained drift message says `drifting`
    (valid against its schema), Prometheus-style figures are in the file sink, and the `drift`
    strategy spooled frames although the model finds almost nothing on them."""
    folder = tmp_path / "line"
    folder.mkdir()
    for path in list_images([METAL_TAGS / "images"])[:40]:
        (folder / path.name).write_bytes(path.read_bytes())
    spool = tmp_path / "spool"
    config = write_config(tmp_path / "config.yaml", broker.port,
                          [{"id": "tagcam", "source": str(folder), "drift": "warm-light"}],
                          active_learning={"enabled": True, "upload": {"enabled": False},
                                           "spool": {"path": str(spool)},
                                           "strategies": [{"name": "drifted", "type": "drift", "percent": 100}]})
    sub = Subscriber(broker.port, "edge-inspect/line-1/tagcam/drift")
    daemon = DaemonProcess(config)
    try:
        assert sub.wait_for(lambda s: any(json.loads(p)["state"] == "drifting" for _, p, _ in s.messages), 120), \
            daemon.log_text()[-3000:]
        topic, payload, retained = sub.messages[0]
        message = json.loads(payload)
        validate("drift", message)
        assert message["worst"] == "blue_share" and message["score"] >= message["raise_at"] == 3.0
        assert message["model"]["name"] == "metal-tags-yolov8n" and message["frames"] >= 20
        assert wait_until(lambda: len(list(spool.rglob("*.json"))) >= 10, 60), "the drift strategy spools frames"
        sidecar = json.loads(next(spool.rglob("*.json")).read_text())
        assert "drifted" in sidecar["strategies"]
        late = Subscriber(broker.port, "edge-inspect/line-1/tagcam/drift")  # a later subscriber gets it at once
        assert late.wait_for(lambda s: s.messages and s.messages[0][2], 10), "the verdict is retained"
        late.close()
        assert "drift drifting: blue_share" in daemon.log_text()
    finally:
        daemon.stop()
        sub.close()


@pytest.mark.parametrize("drift", ["warm-light", "rotate90"])
def test_the_replay_labeler_answers_the_drifted_line_it_is_told_about(drift):
    """Frames of the drifted line, re-encoded as the spool does, are matched to their own photo,
    and under rotate90 each box lands on the same pixels of the turned frame."""
    import cv2

    from cloud.label_table import approved, read_label_csv
    from cloud.labeling.replay import ReplaySettings, best_match, load_references

    refs = load_references(ReplaySettings(table=METAL_TAGS / "labels.csv", images=METAL_TAGS, drift=drift),
                           ["scratch"])
    records = approved(read_label_csv(METAL_TAGS / "labels.csv"))[::7]
    for record in records:
        photo = read_image(METAL_TAGS / record.source_ref)
        frame = apply_drift(drift, photo)
        frame = cv2.imdecode(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])[1], cv2.IMREAD_COLOR)
        match = best_match(refs, frame)
        assert match is not None and match.source_ref == record.source_ref, record.source_ref
        assert (match.width, match.height) == (frame.shape[1], frame.shape[0])
        for box, label in zip(match.boxes, record.boxes, strict=True):
            x, y, w, h = (round(v) for v in (box.left, box.top, box.width, box.height))
            lx, ly, lw, lh = (round(v) for v in (label.left, label.top, label.width, label.height))
            turned = apply_drift(drift, photo[ly:ly + lh, lx:lx + lw])
            assert np.array_equal(apply_drift(drift, photo)[y:y + h, x:x + w], turned)
    if drift == "rotate90":
        blind = load_references(ReplaySettings(table=METAL_TAGS / "labels.csv", images=METAL_TAGS), ["scratch"])
        assert best_match(blind, apply_drift(drift, read_image(METAL_TAGS / records[0].source_ref))) is None
