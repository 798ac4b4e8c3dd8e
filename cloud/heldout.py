"""The photos a model has never learned from, as a YOLO dataset: every approved labelled photo
outside the model card's training split.

Why not the card's small test split: on 175 crops of 37 photos, the test split is 7 photos. A gate
(quantization, a new export shape, the benchmark's accuracy) measured on so few photos misses
losses that a third of the line's scratches would show. The validation photos only chose the best
epoch; the weights never learned from them, so they count as held out too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cloud.dataset import DatasetSplit, write_yolo_dataset
from cloud.label_table import LabelRecord, LabelTableError, approved, read_label_csv, table_fingerprint
from device.model_card import ModelCard

HELDOUT = "heldout"


class HeldoutError(ValueError):
    pass


@dataclass(frozen=True)
class PhotoSplit:
    """The approved records of a label table, by whether the card's model trained on their photo."""

    trained: list[LabelRecord]
    heldout: list[LabelRecord]
    table_sha256: str


def split_by_training(card: ModelCard, labels_csv: Path) -> PhotoSplit:
    photos = (card.data or {}).get("photos") or {}
    if not photos.get("train"):
        raise HeldoutError(f"model card {card.name!r} does not list its training photos (data.photos.train): "
                           "which photos are held out cannot be known")
    trained = set(photos["train"])
    records = approved(read_label_csv(labels_csv))
    return PhotoSplit([r for r in records if r.photo_id in trained], [r for r in records if r.photo_id not in trained],
                      table_fingerprint(records))


def heldout_split(card: ModelCard, labels_csv: Path) -> DatasetSplit:
    """The approved records of `labels_csv` whose photo is not in the card's training photos."""
    split = split_by_training(card, labels_csv)
    if not split.heldout:
        raise HeldoutError(f"every approved photo in {labels_csv} is in {card.name!r}'s training split")
    return DatasetSplit(records={HELDOUT: split.heldout}, table_sha256=split.table_sha256)


def heldout_dataset(card: ModelCard, labels_csv: Path, out_dir: Path, images_root: Path | None = None) -> Path:
    """Write the held-out photos as a YOLO dataset under `out_dir`; returns its data.yaml, whose
    split `heldout` lists them (evaluate(model, data_yaml, split="heldout"))."""
    import yaml

    split = heldout_split(card, labels_csv)
    try:
        data_yaml = write_yolo_dataset(split, images_root or labels_csv.parent, out_dir, card.class_names)
    except LabelTableError as exc:
        raise HeldoutError(str(exc)) from None
    spec = yaml.safe_load(data_yaml.read_text())
    spec = {k: v for k, v in spec.items() if k not in ("train", "val", "test")}
    spec[HELDOUT] = f"images/{HELDOUT}"
    data_yaml.write_text(yaml.safe_dump(spec, sort_keys=False))
    return data_yaml
