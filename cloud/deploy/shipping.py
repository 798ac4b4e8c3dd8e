"""What an approved version ships as: the INT8 model when it reproduces the FP32 model's
detections, else the FP32 model, with the reason on the card either way.

The gate (cloud/quantize) runs on every image there is: all labelled photos of `gate_labels`
and the recent line frames (fidelity: INT8 must raise FP32's alerts at the same places), and the
photos the model never trained on (accuracy: mAP50 within a point). A refusal is not an error:
the lines get the FP32 model, a little slower, never a model that misses what FP32 would catch.
"""

from __future__ import annotations

import logging
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from cloud.dataset import image_inside
from cloud.label_table import approved, read_label_csv
from cloud.quantize.gate import QuantizationError
from cloud.quantize.inputs import spread
from cloud.registry.registry import ModelRegistry
from device.detector import file_sha256
from device.images import list_images
from device.model_card import ModelCard, card_path_for, write_self_test

from .settings import DeploySettings

log = logging.getLogger(__name__)

SELF_TEST_FRAMES = 5  # labelled photos with scratches that every device re-checks the model on
RECENT_FRAMES_LIMIT = 500  # the fidelity gate's share of line frames: an even spread of at most this many


class Shipment(BaseModel):
    """The files a version ships as. Crosses the Step Functions boundary as JSON."""

    model_config = ConfigDict(extra="forbid")

    version: str
    precision: Literal["fp32", "int8"]
    model_file: Path  # named model.onnx; its card beside it as model.card.json
    sha256: str
    reason: str  # why this precision, in words

    @property
    def card_file(self) -> Path:
        return card_path_for(self.model_file)


def _self_test_frames(labels_csv: Path, images_root: Path) -> list[Path]:
    with_boxes = [r for r in approved(read_label_csv(labels_csv)) if r.boxes]
    return [image_inside(images_root, r.source_ref) for r in spread(with_boxes, SELF_TEST_FRAMES)]


def _stamp(model: Path, version: str, precision: str, reason: str, source: ModelCard | None = None) -> None:
    """The card the lines see: the registry version (devices report it) and why this precision."""
    card_file = card_path_for(model)
    card = ModelCard.read(card_file) if card_file.is_file() else source
    assert card is not None
    card.model_file = model.name
    card.model_sha256 = file_sha256(model)
    extra = {"version": version, "shipping": {"precision": precision, "reason": reason,
                                              "decided": datetime.now(timezone.utc).isoformat(timespec="seconds")}}
    ModelCard(**{**card.model_dump(), **extra}).write(card_file)


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def prepare_shipment(registry: ModelRegistry, version: str, settings: DeploySettings) -> Shipment:
    """Download `version`, gate its INT8 model, and leave the shipment in work_dir/VERSION/ship/."""
    from cloud.quantize import quantize_model

    folder = settings.work_dir / version
    files = registry.download(version, folder / "registry")
    ship = folder / "ship"
    if ship.exists():
        shutil.rmtree(ship)
    fp32 = folder / "fp32" / "model.onnx"
    _copy(files.onnx, fp32)
    _copy(files.path("model.card.json"), card_path_for(fp32))
    out = ship / "model.onnx"
    if not settings.quantize:
        precision, reason = "fp32", "quantization is off (deploy.quantize: false)"
    else:
        labels = settings.gate_labels
        assert labels is not None  # the settings refuse quantize without it
        root = settings.gate_images_root or labels.parent
        if ModelCard.read(card_path_for(fp32)).self_test is None:
            # every device re-checks an INT8 model against its FP32 twin's detections on these frames
            write_self_test(fp32, fp32, _self_test_frames(labels, root))
        recent = spread(list_images([settings.recent_frames]), RECENT_FRAMES_LIMIT) if settings.recent_frames else []
        try:
            report = quantize_model(fp32, out, labels=labels, images_root=root, settings=settings.gate,
                                    calib=settings.calibration_frames, method=settings.calibration_method,
                                    only=settings.quantize_candidates,
                                    recent_frames=recent)
            precision = "int8"
            f = report["int8"]["fidelity"]
            reason = (f"INT8 raises {f['found']} of FP32's {f['fp32_alerts']} alerts (IoU >= {settings.gate.match_iou}, "
                      f"mean score difference {f['mean_score_diff']}) and keeps mAP50 {report['int8']['map50']:.4f} "
                      f"against FP32's {report['fp32']['map50']:.4f} on {report['gate']['photos']}")
        except QuantizationError as exc:
            precision, reason = "fp32", f"INT8 refused, FP32 ships: {exc}"
            log.warning("version %s: %s", version, reason)
    if precision == "fp32":
        ship.mkdir(parents=True, exist_ok=True)
        _copy(card_path_for(fp32), card_path_for(out))
        tmp = out.with_name(f".{out.name}.tmp")
        shutil.copyfile(fp32, tmp)
        os.replace(tmp, out)
    _stamp(out, version, precision, reason)
    shipment = Shipment(version=version, precision=precision, model_file=out, sha256=file_sha256(out), reason=reason)
    (folder / "shipment.json").write_text(shipment.model_dump_json(indent=2))
    log.info("version %s ships %s (%s): %s", version, precision.upper(), shipment.sha256[:12], reason)
    return shipment
