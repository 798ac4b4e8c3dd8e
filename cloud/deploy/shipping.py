"""What an approved version ships as: the INT8 model when it reproduces the FP32 model's
detections, else the FP32 model, with the reason on the card either way.

The gate (cloud/quantize) runs on every image there is: all labelled photos of `gate_labels`
and the recent line frames (fidelity: INT8 must raise FP32's alerts at the same places), and the
photos the model never trained on (accuracy: mAP50 within a point). A refusal is not an error:
the lines get the FP32 model, a little slower, never a model that misses what FP32 would catch.

Custody: what ships is what was approved. The downloaded model.onnx must have the sha256 the
version card recorded at registration (`onnx_sha256`), the device card must describe those bytes,
and the model must load and pass its self-test with the device's own detector; otherwise a
DeployError says which version and why, and nothing ships. The INT8 model is made from that checked
file; the shipped card names the shipped file's sha256 and, with `deploy.signing_key`, is signed
(cloud/deploy/signing.py), last, so nothing changes it after.
"""

from __future__ import annotations

import logging
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from cloud.aws import AwsError
from cloud.dataset import image_inside
from cloud.label_table import approved, read_label_csv
from cloud.quantize.gate import QuantizationError
from cloud.quantize.inputs import spread
from cloud.registry.registry import DEVICE_CARD, ONNX, ModelRegistry, RegistryError, RegistryUnavailable
from device.custody import check_custody
from device.detector import ModelError, file_sha256
from device.images import list_images
from device.model_card import ModelCard, card_path_for, write_self_test
from device.model_manager import load_checked
from device.signing import TrustedKeys

from .settings import DeploySettings
from .signing import load_signing_key, sign_card

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
    signed_by: str | None = None  # the id of the key that signed the card (deploy.signing_key), if any

    @property
    def card_file(self) -> Path:
        return card_path_for(self.model_file)


def _self_test_frames(labels_csv: Path, images_root: Path) -> list[Path]:
    with_boxes = [r for r in approved(read_label_csv(labels_csv)) if r.boxes]
    return [image_inside(images_root, r.source_ref) for r in spread(with_boxes, SELF_TEST_FRAMES)]


def _refused(message: str, content: bool = True) -> Exception:
    """The version's content is wrong (ShipmentRefused), or (`content=False`) something around it
    failed and a retry may succeed."""
    from .deployer import DeployError, ShipmentRefused  # here: deployer imports Shipment from this module

    return ShipmentRefused(message) if content else DeployError(message)


def _stamp(model: Path, version: str, precision: str, reason: str) -> None:
    """The card the lines see: the registry version (devices report it) and why this precision.
    Its model_sha256 is checked, never re-stamped: it was written for the checked bytes."""
    card_file = card_path_for(model)
    card = ModelCard.read(card_file)
    actual = file_sha256(model)
    if card.model_sha256 != actual:
        raise _refused(f"version {version}: the {precision.upper()} card names sha256 {card.model_sha256[:12]} but "
                       f"the model made is {actual[:12]}: nothing shipped")
    card.model_file = model.name
    extra = {"version": version, "signature": None,  # an earlier signature would not cover this card
             "shipping": {"precision": precision, "reason": reason,
                          "decided": datetime.now(timezone.utc).isoformat(timespec="seconds")}}
    ModelCard(**{**card.model_dump(), **extra}).write(card_file)


def _checked_fp32(registry: ModelRegistry, version: str, folder: Path) -> Path:
    """The version's model and card from the registry into folder/fp32/, checked against the version
    card: the model approved, a card that describes it, and a model the lines' detector serves."""
    try:
        expected = registry.get(version).card.onnx_sha256
        files = registry.download(version, folder / "registry")
    except RegistryError as exc:  # its messages name the version; AWS or an unreadable registry: an outage
        raise _refused(str(exc), content=not isinstance(exc, (AwsError, RegistryUnavailable))) \
            from None
    missing = [name for name in (ONNX, DEVICE_CARD) if not files.path(name).is_file()]
    if missing:
        raise _refused(f"version {version}: the registry's files lack {' and '.join(missing)}: nothing shipped "
                       "(register the version again from its run)")
    actual = file_sha256(files.onnx)
    if actual != expected:
        raise _refused(f"version {version}: the registry's model.onnx has sha256 {actual[:12]}, but the version card "
                       f"approved {expected[:12]}: the file changed after registration; nothing shipped")
    try:
        card = ModelCard.read(files.path(DEVICE_CARD))
    except (ValueError, OSError) as exc:
        raise _refused(f"version {version}: {DEVICE_CARD} is not a readable model card "
                       f"({str(exc).splitlines()[0]}): nothing shipped") from None
    if card.model_sha256 != actual:
        raise _refused(f"version {version}: {DEVICE_CARD} describes sha256 {card.model_sha256[:12]}, not the "
                       f"approved model.onnx ({actual[:12]}): nothing shipped")
    fp32 = folder / "fp32" / "model.onnx"
    _copy(files.path(DEVICE_CARD), card_path_for(fp32))
    _copy(files.onnx, fp32)
    try:  # what each line will do with it: custody, load, a finite output, the card's self-test
        load_checked(fp32)
    except ModelError as exc:
        raise _refused(f"version {version}: model.onnx is not a model the lines can serve: {exc}") from None
    if file_sha256(fp32) != expected:
        raise _refused(f"version {version}: the copy of model.onnx in {fp32.parent} changed while it was checked")
    return fp32


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def prepare_shipment(registry: ModelRegistry, version: str, settings: DeploySettings) -> Shipment:
    """Download `version`, gate its INT8 model, and leave the shipment in work_dir/VERSION/ship/."""
    from cloud.quantize import quantize_model

    folder = settings.work_dir / version
    try:  # a key that cannot sign fails the shipment before any work
        key = load_signing_key(settings.signing_key) if settings.signing_key else None
    except ValueError as exc:  # the plant's key, not the version: fix it and run again
        raise _refused(f"version {version}: {exc}", content=False) from None
    ship = folder / "ship"
    if ship.exists():
        shutil.rmtree(ship)
    (folder / "shipment.json").unlink(missing_ok=True)  # a refused shipment leaves no record of an earlier one
    fp32 = _checked_fp32(registry, version, folder)
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
    signed_by = sign_card(card_path_for(out), key) if key is not None else None
    try:  # the daemon's own check on exactly what ships
        sha256 = check_custody(out, TrustedKeys([key.public_key()]) if key is not None else None).sha256
    except ModelError as exc:
        raise _refused(f"version {version}: the shipment fails the lines' check: {exc}") from None
    shipment = Shipment(version=version, precision=precision, model_file=out, sha256=sha256, reason=reason,
                        signed_by=signed_by)
    (folder / "shipment.json").write_text(shipment.model_dump_json(indent=2))
    log.info("version %s ships %s (%s)%s: %s", version, precision.upper(), shipment.sha256[:12],
             f", card signed by key {signed_by}" if signed_by else "", reason)
    return shipment
