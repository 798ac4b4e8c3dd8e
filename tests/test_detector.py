"""The detector's contract: typed detections in original-frame pixels, and a clear error for every
kind of bad model or frame."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_onnx

from device.detector import (
    Detector,
    FrameError,
    ModelError,
    ModelNotFoundError,
    NotADetectorError,
    letterbox,
)

YOLO_META = {"task": "detect", "names": "{0: 'scratch'}", "imgsz": "[64, 64]", "stride": "32"}


def test_missing_model_names_the_path(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"nope\.onnx does not exist"):
        Detector(tmp_path / "nope.onnx")


def test_corrupt_model_is_a_clear_error(tmp_path, bundled_model):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(bundled_model.read_bytes()[:5000])  # a truncated download
    with pytest.raises(ModelError, match="is not a loadable ONNX model"):
        Detector(corrupt)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf at all" * 10)
    with pytest.raises(ModelError, match="is not a loadable ONNX model"):
        Detector(garbage)


def test_onnx_without_ultralytics_metadata_is_refused(tmp_path):
    model = make_onnx(tmp_path / "plain.onnx", output_shape=(1, 5, 100))
    with pytest.raises(NotADetectorError, match="no class names in its metadata"):
        Detector(model)


def test_classifier_shaped_output_is_refused(tmp_path):
    model = make_onnx(tmp_path / "cls.onnx", output_shape=(1, 1000), metadata=YOLO_META)
    with pytest.raises(NotADetectorError, match=r"not YOLOv8 detection's \(1, 4\+1, N\)"):
        Detector(model)


def test_other_yolo_task_is_refused(tmp_path):
    model = make_onnx(tmp_path / "seg.onnx", metadata={**YOLO_META, "task": "segment"})
    with pytest.raises(NotADetectorError, match="is a YOLO 'segment' model"):
        Detector(model)


def test_unknown_execution_provider_is_refused(bundled_model):
    with pytest.raises(ModelError, match="not available here"):
        Detector(bundled_model, providers=["NoSuchExecutionProvider"])


def test_reads_names_size_and_stride_from_metadata(bundled_model):
    info = Detector(bundled_model).info
    assert info.class_names == ("scratch",)
    assert info.input_size == (448, 448)
    assert info.stride == 32
    assert len(info.sha256) == 64


@pytest.mark.parametrize("shape", [(300, 450), (450, 300), (37, 1000), (1, 1), (448, 448), (1200, 1600)])
def test_letterbox_fits_any_frame(shape):
    frame = np.full((*shape, 3), 200, np.uint8)
    padded, fit = letterbox(frame, (448, 448))
    assert padded.shape == (448, 448, 3)
    scale = min(448 / shape[0], 448 / shape[1])
    assert fit.gain_x == pytest.approx(scale, rel=0.05) and fit.gain_y == pytest.approx(scale, rel=0.05)
    # the image sits centred and the rest is Ultralytics' grey 114
    new_w, new_h = max(round(shape[1] * scale), 1), max(round(shape[0] * scale), 1)
    assert abs(2 * fit.pad_x + new_w - 448) <= 1 and abs(2 * fit.pad_y + new_h - 448) <= 1
    assert (padded[fit.pad_y : fit.pad_y + new_h, fit.pad_x : fit.pad_x + new_w] == 200).all()
    assert (padded == 200).sum() == new_w * new_h * 3


def test_detections_are_in_original_pixels(bundled_model, metal_tags):
    from device.images import read_image

    detector = Detector(bundled_model)
    frame = read_image(metal_tags / "images" / "image-2020-04-22-11-07-29-26-cropped-left-top.jpg")
    found = detector.detect(frame)
    assert found, "this photo has three labelled scratches"
    for det in found:
        x1, y1, x2, y2 = det.box
        assert 0 <= x1 < x2 <= frame.shape[1] and 0 <= y1 < y2 <= frame.shape[0]
        assert det.class_name == "scratch" and 0.25 < det.confidence <= 1
    # the same frame scaled up 2x gives the same boxes scaled 2x
    import cv2

    big = cv2.resize(frame, None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR)
    found_big = detector.detect(big)
    assert len(found_big) == len(found)
    for a, b in zip(sorted(found, key=lambda d: d.box), sorted(found_big, key=lambda d: d.box), strict=True):
        assert np.allclose(np.array(a.box) * 2, b.box, atol=6)


def test_grey_and_bgra_frames_are_accepted(bundled_model):
    detector = Detector(bundled_model)
    assert isinstance(detector.detect(np.zeros((120, 160), np.uint8)), list)
    assert isinstance(detector.detect(np.zeros((120, 160, 4), np.uint8)), list)


@pytest.mark.parametrize("frame", [None, np.zeros((10, 10, 3), np.float32), np.zeros((0, 10, 3), np.uint8),
                                   np.zeros((10, 10, 2), np.uint8), "frame.jpg"])
def test_bad_frames_are_a_clear_error(bundled_model, frame):
    with pytest.raises(FrameError, match="a frame must be"):
        Detector(bundled_model).detect(frame)
