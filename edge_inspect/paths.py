"""Where the files that ship in the repository live: `models/` (the bundled model and its card)
and `samples/` (demo images). The project is installed editable from its clone (`make`), so
these are found beside the package; EDGE_INSPECT_MODEL points elsewhere when set."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO_ROOT / "models"
SAMPLES_DIR = REPO_ROOT / "samples"
BUNDLED_MODEL = "metal-tags-yolov8n.onnx"


def bundled_model_path() -> Path:
    return Path(os.environ.get("EDGE_INSPECT_MODEL") or MODELS_DIR / BUNDLED_MODEL)
