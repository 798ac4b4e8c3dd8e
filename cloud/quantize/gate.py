"""The gate every INT8 candidate passes, whichever runtime made it.

Two questions, answered through the device's own detector and the runtime the device will use,
on this machine:
- accuracy, on the photos the FP32 model never trained on: mAP50 (and mAP50-95) within the
  allowed drop of the FP32 model's;
- fidelity, on every labelled photo (no ground truth needed): the alerts. A candidate can keep
  its mAP while its scores move across the alert threshold: the line would then alert on
  different scratches than the FP32 model it replaces.
  So the FP32 model's detections at the alert threshold must be found by the candidate at that
  threshold (IoU >= `match_iou`), and the candidate may not add alerts the FP32 model scores well
  below it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from cloud.evaluation import EvalResult
from device.detector import Detection, Detector
from device.events import box_iou
from device.images import read_image

# the confidence below which the fidelity check ignores detections: far under any alert threshold
FIDELITY_FLOOR = 0.05


class QuantizationError(RuntimeError):
    pass


class GateSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_drop: float = Field(0.01, ge=0, le=1, description="largest mAP50 loss allowed")
    max_drop_map50_95: float | None = Field(0.02, ge=0, le=1, description="largest mAP50-95 loss (None: not gated)")
    alert_threshold: float = Field(0.5, gt=0, lt=1, description="the line's alert confidence (events min_confidence)")
    min_fidelity: float = Field(0.98, ge=0, le=1, description="share of FP32 alerts the candidate must raise too")
    max_extra: float = Field(0.02, ge=0, le=1, description="alerts FP32 would not raise, per FP32 alert")
    extra_slack: float = Field(0.1, ge=0, le=1, description="an alert FP32 scores this close below the threshold "
                                                             "is a borderline case, not an extra alert")
    match_iou: float = Field(0.5, gt=0, le=1)
    max_mean_score_diff: float | None = Field(None, ge=0, le=1, description="largest mean |INT8 - FP32| score over "
                                                                           "FP32's alerts (None: not gated)")


@dataclass(frozen=True)
class Fidelity:
    fp32_alerts: int
    found: int  # FP32 alerts the candidate also raises
    extra: int  # candidate alerts the FP32 model scores below threshold - slack
    worst_score_diff: float  # over FP32 alerts: |candidate score - FP32 score| of the best match
    mean_score_diff: float = 0.0  # the same, averaged over FP32 alerts

    @property
    def recall(self) -> float:
        return self.found / self.fp32_alerts if self.fp32_alerts else 1.0

    @property
    def extra_rate(self) -> float:
        return self.extra / max(self.fp32_alerts, 1)

    def to_dict(self) -> dict[str, float | int]:
        return {**asdict(self), "recall": round(self.recall, 4), "extra_rate": round(self.extra_rate, 4)}


@dataclass
class Measured:
    """One model through the gate."""

    accuracy: EvalResult
    fidelity: Fidelity | None = None  # None for the FP32 reference itself
    latency_ms: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        return {**self.accuracy.to_dict(), "latency_ms": round(self.latency_ms, 2),
                "fidelity": self.fidelity.to_dict() if self.fidelity else None, "failures": self.failures}


Reference = dict[str, list[Detection]]


def reference_detections(fp32: Detector, images: Sequence[Path]) -> Reference:
    return {str(p): fp32.detect(read_image(p), conf=FIDELITY_FLOOR) for p in images}


def _best_match(box: Detection, among: list[Detection], iou: float) -> float:
    """The highest score at `box`'s place: would the line alert there?"""
    return max((d.confidence for d in among if d.class_id == box.class_id and box_iou(d.box, box.box) >= iou),
               default=0.0)


def _twin_score(box: Detection, among: list[Detection], iou: float) -> float:
    """The score of `box`'s own counterpart, the best-overlapping box. Not the highest score
    nearby: two overlapping scratches (NMS keeps boxes below its IoU) would otherwise compare one
    box's score with its neighbour's."""
    twins = [(box_iou(d.box, box.box), d.confidence) for d in among if d.class_id == box.class_id]
    overlap, score = max(twins, default=(0.0, 0.0))
    return score if overlap >= iou else 0.0


def fidelity(candidate: Detector, reference: Reference, settings: GateSettings) -> Fidelity:
    threshold = settings.alert_threshold
    alerts = found = extra = 0
    diffs: list[float] = []
    for image, fp32_boxes in reference.items():
        boxes = candidate.detect(read_image(Path(image)), conf=FIDELITY_FLOOR)
        for ref in (b for b in fp32_boxes if b.confidence >= threshold):
            alerts += 1
            found += _best_match(ref, boxes, settings.match_iou) >= threshold
            diffs.append(abs(_twin_score(ref, boxes, settings.match_iou) - ref.confidence))
        for box in (b for b in boxes if b.confidence >= threshold):
            extra += _best_match(box, fp32_boxes, settings.match_iou) < threshold - settings.extra_slack
    return Fidelity(alerts, found, extra, round(max(diffs, default=0.0), 4),
                    round(sum(diffs) / len(diffs), 4) if diffs else 0.0)


def failures(fp32: EvalResult, measured: Measured, settings: GateSettings) -> list[str]:
    """Why `measured` fails the gate, in words; empty when it passes."""
    out = []
    drop = fp32.map50 - measured.accuracy.map50
    if drop > settings.max_drop:
        out.append(f"mAP50 {measured.accuracy.map50:.4f} is {drop:.4f} below FP32's {fp32.map50:.4f} "
                   f"(allowed {settings.max_drop})")
    drop_95 = fp32.map50_95 - measured.accuracy.map50_95
    if settings.max_drop_map50_95 is not None and drop_95 > settings.max_drop_map50_95:
        out.append(f"mAP50-95 {measured.accuracy.map50_95:.4f} is {drop_95:.4f} below FP32's {fp32.map50_95:.4f} "
                   f"(allowed {settings.max_drop_map50_95})")
    f = measured.fidelity
    if f is not None and f.recall < settings.min_fidelity:
        out.append(f"raises {f.found} of FP32's {f.fp32_alerts} alerts at {settings.alert_threshold} "
                   f"({f.recall:.3f} < {settings.min_fidelity})")
    if f is not None and settings.max_mean_score_diff is not None and f.mean_score_diff > settings.max_mean_score_diff:
        out.append(f"scores FP32's alerts {f.mean_score_diff:.3f} off on average (allowed {settings.max_mean_score_diff})")
    if f is not None and f.extra_rate > settings.max_extra:
        out.append(f"raises {f.extra} alert(s) FP32 does not ({f.extra_rate:.3f} per FP32 alert > {settings.max_extra})")
    return out
