"""Detection over image files: what `edge-inspect detect` does. One bad image is reported and
skipped; it never stops the others."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from device.detector import Detection, Detector
from device.images import ImageInputError, list_images, read_image
from device.model_manager import self_test
from device.runtimes import RuntimeName

log = logging.getLogger(__name__)

BOX_COLOUR = (0, 0, 255)  # red in BGR: a defect


@dataclass
class DetectSummary:
    images: int = 0
    with_defects: int = 0
    detections: int = 0
    failed: list[str] = field(default_factory=list)
    saved_to: Path | None = None

    def line(self) -> str:
        text = (
            f"{self.images} images, {self.with_defects} with defects, {self.detections} detections"
        )
        if self.failed:
            text += f", {len(self.failed)} unreadable"
        if self.saved_to:
            text += f"; annotated images in {self.saved_to}"
        return text


def annotate(frame: np.ndarray, detections: Sequence[Detection]) -> np.ndarray:
    canvas = frame.copy()
    thickness = max(1, round(min(frame.shape[:2]) / 200))
    for det in detections:
        x1, y1, x2, y2 = (int(round(v)) for v in det.box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), BOX_COLOUR, thickness)
        label = f"{det.class_name} {det.confidence:.2f}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        top = max(y1 - th - base - 2, 0)
        cv2.rectangle(canvas, (x1, top), (x1 + tw + 2, top + th + base + 2), BOX_COLOUR, -1)
        cv2.putText(canvas, label, (x1 + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1)
    return canvas


def detection_record(path: Path, frame: np.ndarray, detections: Sequence[Detection]) -> dict[str, object]:
    """The `--json` line for one image (pixels of the original image)."""
    return {
        "image": str(path),
        "width": int(frame.shape[1]),
        "height": int(frame.shape[0]),
        "detections": [d.to_dict() for d in detections],
    }


def detect_files(
    paths: Sequence[str | Path],
    *,
    model_path: str | Path,
    runtime: RuntimeName = "onnxruntime",
    conf: float = 0.25,
    iou: float = 0.7,
    save_dir: str | Path | None = None,
    emit: Callable[[dict[str, object]], None] | None = None,
) -> DetectSummary:
    images = list_images(paths)  # raises before the model loads: a wrong path is the likelier slip
    detector = Detector(model_path, conf=conf, iou=iou, runtime=runtime)
    self_test(detector)  # a model that does not see here what its FP32 reference saw is refused
    summary = DetectSummary(saved_to=Path(save_dir) if save_dir else None)
    if summary.saved_to:
        summary.saved_to.mkdir(parents=True, exist_ok=True)
    for path in images:
        try:
            frame = read_image(path)
        except ImageInputError as exc:
            log.error("%s", exc)
            summary.failed.append(str(path))
            continue
        found = detector.detect(frame)
        summary.images += 1
        summary.detections += len(found)
        summary.with_defects += bool(found)
        if emit:
            emit(detection_record(path, frame, found))
        if summary.saved_to:
            cv2.imwrite(str(summary.saved_to / path.name), annotate(frame, found))
    return summary
