"""The bundled model as the registry's first version, so the first retraining fine-tunes from its
weights (ONNX cannot be fine-tuned) and is gated against it.

The ONNX and its device card ship in device/models/ (the daemon needs them); the Ultralytics
checkpoint and the version card that made them ship here, in cloud/registry/bundled/. Registered
Approved, "by edge-inspect (bundled model)", and deployed (the daemons ship with it: it is what
the fleet runs until a rollout finishes), only into an empty registry: a plant that already has
versions keeps its own history.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from importlib import resources
from pathlib import Path

from cloud.pipeline.card import VersionCard
from cloud.registry.registry import (
    BUNDLED_BY,
    CHECKPOINT,
    DEVICE_CARD,
    ONNX,
    VERSION_CARD,
    Approval,
    DeploymentStatus,
    ModelRegistry,
    ModelVersion,
    RegistryError,
    VersionFiles,
)
from device.detector import file_sha256
from device.model_card import card_path_for

log = logging.getLogger(__name__)

__all__ = ["BUNDLED_BY", "NAME", "bundled_files", "seed_bundled"]

NAME = "metal-tags-yolov8n"


def bundled_files() -> dict[str, Path]:
    models = Path(str(resources.files("device").joinpath("models")))
    here = Path(str(resources.files("cloud.registry").joinpath("bundled")))
    onnx = models / f"{NAME}.onnx"
    return {ONNX: onnx, DEVICE_CARD: card_path_for(onnx), CHECKPOINT: here / f"{NAME}.pt",
            VERSION_CARD: here / f"{NAME}.version.card.json"}


def seed_bundled(registry: ModelRegistry) -> ModelVersion | None:
    if registry.versions():
        return None
    sources = bundled_files()
    missing = [str(p) for p in sources.values() if not p.is_file()]
    if missing:
        raise RegistryError(f"the bundled model is incomplete (missing {missing}); reinstall edge-inspect")
    card = VersionCard.model_validate_json(sources[VERSION_CARD].read_text())
    if file_sha256(sources[ONNX]) != card.onnx_sha256 or file_sha256(sources[CHECKPOINT]) != card.checkpoint_sha256:
        raise RegistryError("the bundled ONNX or checkpoint does not match its version card: they were not made together")
    with tempfile.TemporaryDirectory(prefix="bundled-") as scratch:
        for name, source in sources.items():
            shutil.copyfile(source, Path(scratch) / name)
        version = registry.register(VersionFiles(folder=Path(scratch)), card, Approval.APPROVED, BUNDLED_BY)
    version = registry.record_deployment(version.version, DeploymentStatus.DEPLOYED, "the daemons ship with it")
    log.info("registry: the bundled model is %s version %s (Approved)", registry.group, version.version)
    return version
