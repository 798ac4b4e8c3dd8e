"""The model card: a JSON file beside each model (`<model>.card.json`) saying what it is, how it
was trained and how well it does. Written by the cloud side, read by the device (model name and
version in events) and by people. Lives in `device/` because both sides share it. The daemon serves
a model only when the card names the model's sha256 (device/custody.py), and, when configured,
only with a card the cloud signed (device/signing.py)."""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from device.drift import DriftReference
from device.self_test import SelfTestSpec
from device.signing import CardSignature

if TYPE_CHECKING:
    from device.detector import Detector

CARD_SUFFIX = ".card.json"
TRACKED_PACKAGES = ("edge-inspect", "ultralytics", "torch", "torchvision", "onnx", "onnxruntime",
                    "onnxslim", "numpy", "opencv-python", "opencv-python-headless")


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    created: str
    model_file: str
    model_sha256: str
    task: str = "detect"
    class_names: list[str]
    input_size: list[int]
    precision: str = "fp32"
    metrics: dict[str, Any] = {}
    data: dict[str, Any] = {}
    training: dict[str, Any] = {}
    packages: dict[str, str] = {}
    command: str = ""
    self_test: SelfTestSpec | None = None  # reference frames with the FP32 model's detections
    drift_reference: DriftReference | None = None  # what the model was trained on, as the drift monitor sees it
    # Ed25519 over every other field (device/signing.py), set by the cloud when it ships the card:
    # any later change to the card (a field added, changed or dropped) breaks it
    signature: CardSignature | None = None

    def write(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.model_dump(mode="json"), indent=2) + "\n")
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: str | Path) -> ModelCard:
        return cls.model_validate_json(Path(path).read_text())


def card_path_for(model_path: str | Path) -> Path:
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + CARD_SUFFIX)


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


MAX_REFERENCE_FRAME_BYTES = 512 * 1024  # the frames travel inside the card: keep it small


def write_self_test(model_path: Path, reference_path: Path, frames: list[Path], runtime: str = "auto") -> ModelCard:
    """Put a self-test into the card of `model_path`: `frames` with the detections of the FP32
    `reference_path` model on them (the model itself, for an FP32 model). The reference runs on
    its own file's runtime (auto: an IR on OpenVINO, an .onnx on ONNX Runtime); the model runs on
    `runtime` (auto: by its file) and must pass the new self-test here, or the card is not changed."""
    from device.detector import Detector, ModelError
    from device.runtimes import resolve_runtime
    from device.self_test import make_self_test

    card_file = card_path_for(model_path)
    if not card_file.is_file():
        raise ModelError(f"{model_path} has no model card ({card_file.name}) to write the self-test into")
    images = []
    for frame in frames:
        if not frame.is_file() or frame.stat().st_size > MAX_REFERENCE_FRAME_BYTES:
            raise ModelError(f"{frame}: not a file of at most {MAX_REFERENCE_FRAME_BYTES} bytes")
        images.append((frame.name, frame.read_bytes()))
    card = ModelCard.read(card_file)
    reference = Detector(reference_path, runtime=resolve_runtime("auto", reference_path))
    card.self_test = make_self_test(reference, images)
    _require_passing(model_path, resolve_runtime(runtime, model_path), reference, card.self_test)
    card.write(card_file)
    return card


def _require_passing(model_path: Path, runtime: str, reference: Detector, spec: SelfTestSpec) -> None:
    """The model passes the self-test just made, on `runtime`: a card whose self-test its own model
    fails here would have every load of it refused."""
    from device.detector import Detector, ModelError
    from device.self_test import run_self_test

    if Path(model_path).resolve() == reference.info.path.resolve() and runtime == reference.info.runtime:
        return  # the very same computation as the reference's: nothing to compare
    result = run_self_test(Detector(model_path, runtime=runtime), spec)
    if not result.passed:
        raise ModelError(f"{Path(model_path).name} fails the new self-test on {runtime} here "
                         f"({result.summary()}): its card is unchanged")
