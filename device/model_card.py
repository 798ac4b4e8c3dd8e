"""The model card: a JSON file beside each model (`<model>.card.json`) saying what it is, how it
was trained and how well it does. Written by the cloud side, read by the device (model name and
version in events) and by people. Lives in `device/` because both sides share it."""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

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


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions
