"""The report's accuracy: mAP of each model on the held-out photos (never on the line, never
labelled by the loop), as they are and as the drifted line would show them (re-encoded as the
spool does), through the device's detector and Ultralytics' metrics (cloud.evaluation)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import yaml

from cloud.dataset import DatasetSplit, write_yolo_dataset
from cloud.evaluation import evaluate
from device.images import read_image
from device.rehearsal import apply_drift

from .line import LinePhotos

SPLIT = "heldout"
SPOOL_JPEG_QUALITY = 90  # what a sampled frame goes through before anyone labels it


@dataclass(frozen=True)
class HeldoutSets:
    undrifted: Path  # data.yaml
    drifted: Path


def _rotate_labels(folder: Path) -> None:
    """YOLO boxes (class cx cy w h, normalised) of images turned a quarter clockwise."""
    for label in folder.glob("*.txt"):
        lines = []
        for line in label.read_text().splitlines():
            cls, cx, cy, w, h = line.split()
            lines.append(f"{cls} {1 - float(cy):.6f} {float(cx):.6f} {float(h):.6f} {float(w):.6f}")
        label.write_text("".join(f"{line}\n" for line in lines))


def write_heldout_sets(photos: LinePhotos, drift: str, out: Path, class_names: list[str]) -> HeldoutSets:
    sets = {}
    for name, drifted in (("undrifted", False), ("drifted", True)):
        data_yaml = write_yolo_dataset(DatasetSplit(records={SPLIT: photos.heldout}), photos.images_root, out / name,
                                       class_names)
        spec = {k: v for k, v in yaml.safe_load(data_yaml.read_text()).items() if k not in ("train", "val", "test")}
        spec[SPLIT] = f"images/{SPLIT}"
        data_yaml.write_text(yaml.safe_dump(spec, sort_keys=False))
        if drifted:
            for image_file in (out / name / "images" / SPLIT).iterdir():
                image = apply_drift(drift, read_image(image_file))
                cv2.imwrite(str(image_file), image, [cv2.IMWRITE_JPEG_QUALITY, SPOOL_JPEG_QUALITY])
            if drift == "rotate90":
                _rotate_labels(out / name / "labels" / SPLIT)
        sets[name] = data_yaml
    return HeldoutSets(**sets)


def score(model: Path, sets: HeldoutSets) -> dict[str, dict[str, float]]:
    """mAP50 and mAP50-95 of `model` on both sets."""
    out = {}
    for name, data_yaml in (("undrifted", sets.undrifted), ("drifted", sets.drifted)):
        result = evaluate(model, data_yaml, SPLIT)
        out[name] = {"map50": round(result.map50, 4), "map50_95": round(result.map50_95, 4), "images": result.images}
    return out
