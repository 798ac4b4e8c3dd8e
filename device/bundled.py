"""The model that ships inside the `device` package (`device/models/`, package data, so it is
there in an installed wheel as in a clone), used when the configuration names none.
EDGE_INSPECT_MODEL points elsewhere when set."""

from __future__ import annotations

import os
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent / "models"
BUNDLED_MODEL = "metal-tags-yolov8n.onnx"
BUNDLED_INT8_MODEL = "metal-tags-yolov8n-int8.onnx"


def bundled_model_path() -> Path:
    return Path(os.environ.get("EDGE_INSPECT_MODEL") or MODELS_DIR / BUNDLED_MODEL)
