"""Which photos calibrate a quantization and which gate it.

Calibration sees only photos the FP32 model trained on (or a folder the user names, e.g. the
device spool); the accuracy gate sees only photos it never trained on. Mixing the two would let a
candidate's activation ranges be fitted to the very photos that then judge its accuracy.

Fidelity (does INT8 raise FP32's alerts?) needs no ground truth, so it is measured on every
labelled photo: a model trained on all but the 7 test photos leaves ~30 alerts held out, where one
miss is already 3% and a 98% floor could not tell a faithful model from a lossy one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cloud.dataset import image_inside
from cloud.evaluation import split_images
from cloud.heldout import HELDOUT, HeldoutError, heldout_dataset, split_by_training
from cloud.label_table import LabelTableError
from cloud.quantize.gate import QuantizationError
from device.images import list_images
from device.model_card import ModelCard


@dataclass(frozen=True)
class GateData:
    data_yaml: Path
    split: str
    images: list[Path]  # the accuracy gate's photos (data_yaml's split)
    source: str  # in words, for the card
    fidelity_images: list[Path] | None = None  # the fidelity gate's photos; None: `images`

    @property
    def alert_images(self) -> list[Path]:
        return self.fidelity_images if self.fidelity_images is not None else self.images


def spread(images: list[Path], limit: int) -> list[Path]:
    """An even spread of at most `limit`, not the first N of a sorted folder."""
    if len(images) <= limit:
        return images
    return [images[i] for i in np.linspace(0, len(images) - 1, limit).round().astype(int)]


def training_photos(card: ModelCard, labels_csv: Path, images_root: Path) -> list[Path]:
    """The photos the FP32 model trained on, each checked to stay inside `images_root`."""
    try:
        records = split_by_training(card, labels_csv).trained
        paths = [image_inside(images_root, r.source_ref) for r in records]
    except (HeldoutError, LabelTableError) as exc:
        raise QuantizationError(f"{exc}: pass --calib FOLDER, or --images-root") from None
    if not paths:
        raise QuantizationError(f"none of {card.name!r}'s training photos is in {labels_csv}: pass --calib FOLDER")
    return paths


def calibration_images(card: ModelCard | None, labels_csv: Path | None, images_root: Path | None,
                       calib: Path | None, limit: int) -> list[Path]:
    if calib is not None:
        images = list_images([calib])
    elif card is not None and labels_csv is not None:
        images = training_photos(card, labels_csv, images_root or labels_csv.parent)
    else:
        raise QuantizationError("nothing to calibrate on: pass --calib FOLDER, or --labels with a model card "
                                "that lists its training photos")
    if not images:
        raise QuantizationError(f"no images to calibrate on in {calib}")
    return spread(images, limit)


def gate_data(card: ModelCard | None, labels_csv: Path | None, images_root: Path | None, data: Path | None,
              split: str, workdir: Path, recent_frames: list[Path] | None = None) -> GateData:
    gate = _gate_data(card, labels_csv, images_root, data, split, workdir)
    if not recent_frames:
        return gate
    return GateData(gate.data_yaml, gate.split, gate.images,
                    f"{gate.source}, and {len(recent_frames)} recent line frames (fidelity)",
                    gate.alert_images + recent_frames)


def _gate_data(card: ModelCard | None, labels_csv: Path | None, images_root: Path | None, data: Path | None,
               split: str, workdir: Path) -> GateData:
    if data is not None:  # a dataset the user names: its split gates
        return GateData(data, split, split_images(data, split), f"split {split!r} of {data}")
    if card is None or labels_csv is None:
        raise QuantizationError("nothing to gate on: pass --data DATA.yaml, or --labels with a model card")
    data_yaml = heldout_dataset(card, labels_csv, workdir / "heldout", images_root)
    images = split_images(data_yaml, HELDOUT)
    every = images + training_photos(card, labels_csv, images_root or labels_csv.parent)
    return GateData(data_yaml, HELDOUT, images,
                    f"{len(images)} labelled photos of {labels_csv.name} outside {card.name}'s training split "
                    f"(accuracy); all {len(every)} labelled photos (fidelity to FP32's alerts)", every)
