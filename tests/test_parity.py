"""The device detector must return what Ultralytics' own predict returns for the same ONNX model:
same count, each box IoU >= 0.99 with its counterpart, confidence within 1e-3."""

from __future__ import annotations

import numpy as np
import pytest
from ultralytics import YOLO  # the test environment has the train extra (make test installs it)

from device.detector import Detector
from device.images import list_images, read_image


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def assert_same_detections(ours, theirs, where: str) -> None:
    assert len(ours) == len(theirs), f"{where}: {len(ours)} boxes vs Ultralytics' {len(theirs)}"
    unmatched = list(range(len(theirs)))
    for det in ours:
        best = max(unmatched, key=lambda j: iou(det.box, theirs[j][:4]), default=None)
        assert best is not None
        assert iou(det.box, theirs[best][:4]) >= 0.99, f"{where}: {det} has no counterpart with IoU >= 0.99"
        assert abs(det.confidence - theirs[best][4]) <= 1e-3, f"{where}: confidence {det.confidence} vs {theirs[best][4]}"
        assert det.class_id == int(theirs[best][5])
        unmatched.remove(best)


@pytest.mark.parametrize("conf,iou_thr", [(0.25, 0.7), (0.05, 0.45)])
def test_parity_with_ultralytics_predict(bundled_model, metal_tags, conf, iou_thr):
    detector = Detector(bundled_model, conf=conf, iou=iou_thr)
    reference = YOLO(str(bundled_model), task="detect")
    images = list_images([metal_tags / "images"])
    assert len(images) == 175
    total = 0
    for path in images:
        frame = read_image(path)
        ours = detector.detect(frame)
        result = reference.predict(frame, conf=conf, iou=iou_thr, imgsz=list(detector.info.input_size),
                                   verbose=False, device="cpu")[0]
        theirs = np.column_stack([result.boxes.xyxy.numpy(), result.boxes.conf.numpy(), result.boxes.cls.numpy()])
        assert_same_detections(ours, theirs.tolist(), path.name)
        total += len(ours)
    assert total > 0, "the bundled model found nothing at all: parity would be vacuous"
