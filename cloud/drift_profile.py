"""The drift reference a model's card carries (device/drift.py): measured on the images the model
was trained on and on its own validation photos, through the device's detector.

Two sources of those images: a pipeline run's Ultralytics dataset (`from_dataset`, for every
candidate the pipeline makes) and a label table with the card's training photos (`from_labels`,
for a model made before drift was watched, such as the bundled ones).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from cloud.dataset import image_inside
from cloud.heldout import split_by_training
from device.detector import Detector
from device.drift import DriftReference, profile_model
from device.images import list_images
from device.model_card import ModelCard, card_path_for
from device.runtimes import resolve_runtime


def _detector(model: Path) -> Detector:
    return Detector(model, runtime=resolve_runtime("auto", model))  # an IR on OpenVINO, an .onnx on ONNX Runtime


def _split_images(data_yaml: Path, split: str) -> list[Path]:
    spec = yaml.safe_load(data_yaml.read_text())
    root = Path(spec.get("path") or data_yaml.parent)
    if not root.is_absolute():
        root = data_yaml.parent / root
    folder = spec.get(split)
    if not folder or not (root / folder).is_dir() or not any((root / folder).iterdir()):
        return []
    return list_images([root / folder])


def from_dataset(model: Path, data_yaml: Path, train_on_val: bool, alert_threshold: float) -> DriftReference:
    """Training images: the dataset's train split (and val when the run trained on it too).
    Behaviour: the model's detections on its val photos (test when val is empty)."""
    training = _split_images(data_yaml, "train") + (_split_images(data_yaml, "val") if train_on_val else [])
    validation = _split_images(data_yaml, "val") or _split_images(data_yaml, "test")
    return profile_model(_detector(model), training, validation, alert_threshold,
                         f"{len(training)} training images and {len(validation)} validation images of the run's dataset")


def from_labels(model: Path, labels_csv: Path, images_root: Path | None, alert_threshold: float) -> DriftReference:
    """Training images: the approved photos of `labels_csv` in the card's training split.
    Behaviour: the model's detections on the others (held out)."""
    card = ModelCard.read(card_path_for(model))
    split = split_by_training(card, labels_csv)
    root = images_root or labels_csv.parent
    training = [image_inside(root, r.source_ref) for r in split.trained]
    validation = [image_inside(root, r.source_ref) for r in split.heldout]
    return profile_model(_detector(model), training, validation, alert_threshold,
                         f"{len(training)} training images and {len(validation)} held-out images of {labels_csv.name}")


def write_reference(model: Path, reference: DriftReference) -> ModelCard:
    """Put `reference` into the model's card (by atomic rename)."""
    card_file = card_path_for(model)
    card = ModelCard.read(card_file)
    card.drift_reference = reference
    card.write(card_file)
    return card
