"""mAP of an ONNX model run through the project's own detector, scored by Ultralytics' metrics.

Predictions come from `device.detector.Detector` (what ships to the device); matching
(`DetectionValidator.match_predictions`) and AP (`DetMetrics`) are Ultralytics' own, so the figures
are comparable with `yolo val`. Ultralytics (the `train` extra) is imported only when called.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import yaml

from device.detector import Detector
from device.images import list_images, read_image

# Ultralytics' validation settings: a low confidence floor so the whole PR curve is scored.
EVAL_CONF = 0.001
EVAL_IOU = 0.7


class EvaluationError(ValueError):
    pass


@dataclass(frozen=True)
class EvalResult:
    map50: float
    map50_95: float
    precision: float
    recall: float
    images: int
    instances: int
    alert_conf: float | None = None
    recall_at_alert: float | None = None  # share of true boxes found at IoU >= 0.5 by a detection >= alert_conf

    def to_dict(self) -> dict[str, float | int]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()
                if not (k in ("alert_conf", "recall_at_alert") and v is None)}


def _images_dir(data: Path, split: str) -> Path:
    """`data` is an Ultralytics data.yaml (its `split` entry is used) or a folder of images with
    YOLO labels in a sibling `labels/` folder."""
    if data.suffix in (".yaml", ".yml"):
        spec = yaml.safe_load(data.read_text())
        if split not in spec or not spec[split]:
            raise EvaluationError(f"{data} has no '{split}' split")
        root = Path(spec.get("path") or data.parent)
        return root / spec[split] if not Path(spec[split]).is_absolute() else Path(spec[split])
    return data


def _label_path(image: Path) -> Path:
    """Ultralytics' convention: .../images/<split>/x.jpg -> .../labels/<split>/x.txt."""
    parts = list(image.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")


def _read_targets(image: Path, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    label = _label_path(image)
    rows = np.loadtxt(label, ndmin=2) if label.is_file() and label.stat().st_size else np.zeros((0, 5))
    classes = rows[:, 0]
    cx, cy, w, h = rows[:, 1] * width, rows[:, 2] * height, rows[:, 3] * width, rows[:, 4] * height
    boxes = np.column_stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    return classes, boxes


def split_images(data: str | Path, split: str) -> list[Path]:
    return list_images([Path(_images_dir(Path(data), split))])


def _matched_at(matcher, found, true_cls: np.ndarray, iou, alert_conf: float) -> int:
    """True boxes matched one-to-one at IoU >= 0.5 by detections the daemon would alert on."""
    import torch

    keep = [i for i, d in enumerate(found) if d.confidence >= alert_conf]
    if not keep or not len(true_cls):
        return 0
    pred_cls = torch.tensor([found[i].class_id for i in keep], dtype=torch.float32)
    tp = matcher.match_predictions(pred_cls, torch.tensor(true_cls, dtype=torch.float32), iou[:, keep])
    return int(tp[:, 0].sum())


def evaluate(model: str | Path, data: str | Path, split: str = "test", runtime: str = "onnxruntime",
             alert_conf: float | None = None) -> EvalResult:
    try:
        import torch
        from ultralytics.models.yolo.detect import DetectionValidator
        from ultralytics.utils.metrics import DetMetrics, box_iou
    except ImportError as exc:
        raise EvaluationError(f"evaluation needs Ultralytics: pip install 'edge-inspect[train]' ({exc})") from None

    detector = Detector(model, conf=EVAL_CONF, iou=EVAL_IOU, runtime=runtime)
    images = split_images(data, split)
    names = dict(enumerate(detector.class_names))
    metrics = DetMetrics(names=names)
    # matching needs only the validator's IoU thresholds; a save_dir of its own keeps it from
    # creating runs/detect/train-N in the working directory on every call
    with tempfile.TemporaryDirectory(prefix="eval-") as scratch:
        matcher = DetectionValidator(save_dir=Path(scratch))
    instances = matched = 0
    for image_path in images:
        frame = read_image(image_path)
        height, width = frame.shape[:2]
        true_cls, true_boxes = _read_targets(image_path, width, height)
        instances += len(true_cls)
        found = detector.detect(frame)
        pred_cls = np.array([d.class_id for d in found], dtype=np.float32)
        conf = np.array([d.confidence for d in found], dtype=np.float32)
        tp = np.zeros((len(found), 10), dtype=bool)
        if len(found) and len(true_cls):
            iou = box_iou(torch.tensor(true_boxes, dtype=torch.float32), torch.tensor([d.box for d in found]))
            tp = matcher.match_predictions(
                torch.tensor(pred_cls), torch.tensor(true_cls, dtype=torch.float32), iou
            ).numpy()
            if alert_conf is not None:
                matched += _matched_at(matcher, found, true_cls, iou, alert_conf)
        metrics.update_stats(
            {"tp": tp, "conf": conf, "pred_cls": pred_cls, "target_cls": true_cls,
             "target_img": np.unique(true_cls), "im_name": image_path.name}
        )
    metrics.process()
    results = metrics.results_dict
    return EvalResult(
        map50=float(results["metrics/mAP50(B)"]),
        map50_95=float(results["metrics/mAP50-95(B)"]),
        precision=float(results["metrics/precision(B)"]),
        recall=float(results["metrics/recall(B)"]),
        images=len(images),
        instances=instances,
        alert_conf=alert_conf,
        recall_at_alert=(matched / instances if instances else 0.0) if alert_conf is not None else None,
    )


