"""Where the files that ship in the repository beside the package live: `samples/` (demo images)
and `data/metal-tags/` (the labelled photos, MIT-0). The bundled model is the device's own
(`device.bundled`)."""

from __future__ import annotations

from pathlib import Path

from device.bundled import MODELS_DIR, bundled_model_path

__all__ = ["MODELS_DIR", "REPO_ROOT", "SAMPLES_DIR", "METAL_TAGS_DIR", "bundled_model_path"]

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES_DIR = REPO_ROOT / "samples"
METAL_TAGS_DIR = REPO_ROOT / "data" / "metal-tags"
