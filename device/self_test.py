"""Self-test at model load: does this model, on THIS machine, see what the FP32 model saw?

Integer kernels differ between CPUs: an INT8 model that is exact on an AVX-512 VNNI machine can
lose a third of its detections on an AVX2-only one (u8s8 products saturate without VNNI), and
nothing else would tell. So a model card carries a few reference frames (JPEG bytes, with their
sha256) and the FP32 model's detections on them; whoever loads the model (the daemon at start,
a hot swap, `edge-inspect detect`) runs them first and refuses a model that disagrees.

The comparison leaves a margin around the threshold so that a box scoring 0.26 in FP32 and 0.24
in INT8 is not a failure: every reference box scoring at least `strong` must be found (same
class, IoU >= `iou`, score within `score_tolerance`) among the detections scoring at least
`weak`, and no detection scoring at least `strong` may be missing from the reference (scored at
least `weak` there).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from device.detector import Detection, Detector
from device.events import box_iou

DEFAULT_WEAK, DEFAULT_STRONG = 0.15, 0.35


class ReferenceBox(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    class_id: int = Field(ge=0)
    confidence: float = Field(ge=0, le=1)
    box: list[float] = Field(min_length=4, max_length=4)


class ReferenceFrame(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    jpeg_base64: str
    detections: list[ReferenceBox]

    def jpeg(self) -> bytes:
        """The frame's bytes, checked against its sha256."""
        data = base64.b64decode(self.jpeg_base64)
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise ValueError(f"reference frame {self.name}: its bytes do not match its sha256")
        return data

    def image(self) -> np.ndarray:
        image = cv2.imdecode(np.frombuffer(self.jpeg(), np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"reference frame {self.name} does not decode")
        return image


class SelfTestSpec(BaseModel):
    """The `self_test` section of a model card."""

    model_config = ConfigDict(extra="forbid")

    reference_model_sha256: str = Field(pattern=r"^[0-9a-f]{64}$",
                                        description="the FP32 model whose detections are the reference")
    weak: float = Field(DEFAULT_WEAK, ge=0, le=1, description="detections kept for matching")
    strong: float = Field(DEFAULT_STRONG, ge=0, le=1, description="detections that must match")
    # Room for an honest INT8 model: its boxes sit a little looser than FP32's, and the bundled
    # INT8 model's output scale clips scores at 0.767 (found at IoU >= 0.87, within 0.13, on a
    # VNNI machine); a CPU that breaks the integer maths loses or invents whole boxes instead.
    iou: float = Field(0.75, gt=0, le=1)
    score_tolerance: float = Field(0.15, ge=0, le=1)
    frames: list[ReferenceFrame] = Field(min_length=1)


@dataclass(frozen=True)
class SelfTestResult:
    passed: bool
    reference_boxes: int  # reference boxes that had to be found
    found: int
    extra: int  # strong detections the reference does not have
    worst_score_diff: float

    def summary(self) -> str:
        return (f"found {self.found} of {self.reference_boxes} reference boxes, {self.extra} box(es) the reference "
                f"does not have, largest score difference {self.worst_score_diff:.3f}")


def _matches(ref: ReferenceBox | Detection, det: Detection | ReferenceBox, iou: float) -> bool:
    return ref.class_id == det.class_id and box_iou(tuple(ref.box), tuple(det.box)) >= iou


def compare(reference: list[ReferenceBox], found: list[Detection], spec: SelfTestSpec) -> tuple[int, int, int, float]:
    """(boxes to find, found, extra, worst score difference) for one frame."""
    must = [r for r in reference if r.confidence >= spec.strong]
    candidates = [d for d in found if d.confidence >= spec.weak]
    hits, worst = 0, 0.0
    for ref in must:
        match = max((d for d in candidates if _matches(ref, d, spec.iou)), key=lambda d: d.confidence, default=None)
        if match is not None and abs(match.confidence - ref.confidence) <= spec.score_tolerance:
            hits += 1
        worst = max(worst, abs(match.confidence - ref.confidence) if match else ref.confidence)
    known = [r for r in reference if r.confidence >= spec.weak]
    extra = sum(1 for d in found if d.confidence >= spec.strong and not any(_matches(r, d, spec.iou) for r in known))
    return len(must), hits, extra, worst


def run_self_test(detector: Detector, spec: SelfTestSpec) -> SelfTestResult:
    total = hits = extra = 0
    worst = 0.0
    for frame in spec.frames:
        found = detector.detect(frame.image(), conf=spec.weak)
        t, h, e, w = compare(frame.detections, found, spec)
        total, hits, extra, worst = total + t, hits + h, extra + e, max(worst, w)
    return SelfTestResult(hits == total and extra == 0, total, hits, extra, round(worst, 4))


def make_self_test(reference: Detector, images: list[tuple[str, bytes]], weak: float = DEFAULT_WEAK,
                   strong: float = DEFAULT_STRONG) -> SelfTestSpec:
    """The section for a card: `images` are (name, JPEG bytes); `reference` is the FP32 model."""
    frames = []
    for name, data in images:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"{name} is not a readable image")
        boxes = [ReferenceBox(class_id=d.class_id, confidence=round(d.confidence, 5), box=[round(v, 2) for v in d.box])
                 for d in reference.detect(image, conf=weak)]
        frames.append(ReferenceFrame(name=name, sha256=hashlib.sha256(data).hexdigest(),
                                     jpeg_base64=base64.b64encode(data).decode(), detections=boxes))
    return SelfTestSpec(reference_model_sha256=reference.info.sha256, weak=weak, strong=strong, frames=frames)
