"""Label table to an Ultralytics YOLO dataset, split by photo.

The split is decided on photo ids (see `LabelRecord.photo_id`), sorted and shuffled with a seeded
generator, so the same table and seed always give the same split, on any machine.

The dataset's `split.json` (`SplitFile`) records which image went where, the photo each shows and
each image file's sha256, so that a later step (cloud.pipeline.evaluate) reads exactly the bytes
that were written. An image whose source no longer holds the labelled bytes (a device frame
overwritten or deleted in the bucket: `ImageSetAside`) is left out with one log line, recorded in
split.json's `set_aside` with the reason, and the rest of the dataset is built.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from cloud.label_table import LabelRecord, LabelTableError, approved, safe_relative_path, table_fingerprint
from device.config import format_validation_error
from device.runtimes import file_sha256

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SPLIT_FILE = "split.json"


class ImageSetAside(LabelTableError):
    """This one image cannot go into the dataset as labelled (its bytes are not the ones its name
    promises, or it is gone); the dataset is built without it."""


@dataclass(frozen=True)
class SplitFractions:
    train: float = 0.70
    val: float = 0.15
    test: float = 0.15

    def __post_init__(self) -> None:
        if min(self.train, self.val, self.test) < 0 or abs(self.train + self.val + self.test - 1) > 1e-6:
            raise ValueError(f"split fractions must be >= 0 and sum to 1, got {self}")


@dataclass
class DatasetSplit:
    """Which records went where, and a fingerprint of the labels and of the assignment."""

    records: dict[str, list[LabelRecord]] = field(default_factory=dict)
    seed: int = 0
    table_sha256: str = ""
    set_aside: dict[str, str] = field(default_factory=dict)  # source_ref -> why it is not in the dataset

    @property
    def split_sha256(self) -> str:
        assignment = {name: sorted(r.source_ref for r in recs) for name, recs in self.records.items()}
        return hashlib.sha256(json.dumps(assignment, sort_keys=True).encode()).hexdigest()

    def photos(self, name: str) -> list[str]:
        return sorted({r.photo_id for r in self.records.get(name, [])})

    def files(self) -> dict[str, dict[str, str]]:
        """Each split's image files (as `write_yolo_dataset` names them) and the photo they show."""
        return {name: {safe_relative_path(r.source_ref).name: r.photo_id for r in recs}
                for name, recs in self.records.items()}

    def summary(self) -> dict[str, object]:
        return {
            "seed": self.seed,
            "table_sha256": self.table_sha256,
            "split_sha256": self.split_sha256,
            "images": {name: len(recs) for name, recs in self.records.items()},
            "photos": {name: self.photos(name) for name in self.records},
            # only when something was left out: a card's data keeps its shape otherwise
            **({"set_aside": dict(sorted(self.set_aside.items()))} if self.set_aside else {}),
        }


class SplitFile(BaseModel):
    """`split.json` in a dataset folder, as `write_yolo_dataset` writes it. Read with
    `read_split_file`: it may come from another machine (a pipeline step's S3 output)."""

    model_config = ConfigDict(extra="ignore")

    seed: int = 0
    table_sha256: str = ""
    split_sha256: str = ""
    images: dict[str, int] = {}
    photos: dict[str, list[str]] = {}
    set_aside: dict[str, str] = {}
    files: dict[str, dict[str, str]] | None = None  # split -> image file -> photo id (None: an older dataset)
    sha256: dict[str, dict[str, str]] = {}  # split -> image file -> sha256 of the file written


def read_split_file(path: Path) -> SplitFile:
    """The dataset's split.json; LabelTableError naming the fix when it is not one."""
    try:
        return SplitFile.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        raise LabelTableError(f"{path} is not a dataset's split.json ({format_validation_error(exc)}): "
                              "build the dataset again (start a new run)") from None
    except OSError as exc:
        raise LabelTableError(f"{path} cannot be read ({exc.strerror or exc})") from None


def split_by_photo(
    records: Sequence[LabelRecord], seed: int = 0, fractions: SplitFractions = SplitFractions()
) -> DatasetSplit:
    """Approved records split train/val/test by photo. With `fractions.test == 0` (training the
    shipped model on everything) the test split is simply empty."""
    kept = approved(records)
    if not kept:
        raise LabelTableError("the label table has no APPROVED rows")
    photo_ids = sorted({r.photo_id for r in kept})
    random.Random(seed).shuffle(photo_ids)
    n = len(photo_ids)
    n_test = round(n * fractions.test)
    n_val = round(n * fractions.val)
    if fractions.test > 0:
        n_test = max(n_test, 1)
    if fractions.val > 0:
        n_val = max(n_val, 1)
    if n_test + n_val >= n:
        raise LabelTableError(f"{n} photos are too few to split {fractions}")
    bucket = {pid: "test" for pid in photo_ids[:n_test]}
    bucket.update({pid: "val" for pid in photo_ids[n_test : n_test + n_val]})
    bucket.update({pid: "train" for pid in photo_ids[n_test + n_val :]})
    split = DatasetSplit(records={name: [] for name in SPLITS}, seed=seed, table_sha256=table_fingerprint(kept))
    for record in sorted(kept, key=lambda r: r.source_ref):
        split.records[bucket[record.photo_id]].append(record)
    return split


def yolo_label_lines(record: LabelRecord) -> list[str]:
    """Ground Truth boxes (pixels, top-left corner) to YOLO lines (class cx cy w h, normalised),
    clipped to the image so a box drawn past the edge still trains."""
    lines = []
    for box in record.boxes:
        x1 = min(max(box.left, 0.0), record.image_width)
        y1 = min(max(box.top, 0.0), record.image_height)
        x2 = min(max(box.left + box.width, 0.0), record.image_width)
        y2 = min(max(box.top + box.height, 0.0), record.image_height)
        if x2 - x1 < 1 or y2 - y1 < 1:
            continue  # wholly outside the image after clipping: nothing to learn from
        cx, cy = (x1 + x2) / 2 / record.image_width, (y1 + y2) / 2 / record.image_height
        w, h = (x2 - x1) / record.image_width, (y2 - y1) / record.image_height
        lines.append(f"{box.class_id} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
    return lines


def image_inside(images_root: Path, source_ref: str) -> Path:
    root = images_root.resolve()
    path = (root / safe_relative_path(source_ref)).resolve()
    if root not in path.parents:
        raise LabelTableError(f"source_ref {source_ref!r} resolves outside {root}")
    if not path.is_file():
        raise LabelTableError(f"image for {source_ref!r} not found at {path}")
    return path


class ImageSource(Protocol):
    """Where the images named by `source_ref` are: a folder (`LocalImages`) or the frames' bucket
    (`cloud.pipeline.images.BucketImages`)."""

    def copy(self, source_ref: str, dest: Path) -> None: ...


@dataclass(frozen=True)
class LocalImages:
    root: Path

    def copy(self, source_ref: str, dest: Path) -> None:
        shutil.copy2(image_inside(self.root, source_ref), dest)


def write_yolo_dataset(
    split: DatasetSplit, images: str | Path | ImageSource, out_dir: str | Path, class_names: Sequence[str]
) -> Path:
    """Write `out_dir/{images,labels}/{split}/` and `out_dir/data.yaml`; returns data.yaml.

    Images are copied, not linked, so the dataset stays valid if the source folder moves. File
    names are the records' base names; two records with the same base name would overwrite each
    other, so that is an error. An image its source sets aside (`ImageSetAside`) is left out of
    `split` (its records and summary then say what the dataset really holds) and listed in
    `split.set_aside` with the reason.
    """
    source_of = LocalImages(Path(images)) if isinstance(images, (str, Path)) else images
    out_dir = Path(out_dir)
    for sub in ("images", "labels"):
        shutil.rmtree(out_dir / sub, ignore_errors=True)
    seen: dict[str, str] = {}
    kept: dict[str, list[LabelRecord]] = {}
    digests: dict[str, dict[str, str]] = {}
    for name, records in split.records.items():
        (out_dir / "images" / name).mkdir(parents=True, exist_ok=True)
        (out_dir / "labels" / name).mkdir(parents=True, exist_ok=True)
        kept[name], digests[name] = [], {}
        for record in records:
            source = safe_relative_path(record.source_ref)
            if source.name in seen:
                raise LabelTableError(f"{record.source_ref!r} and {seen[source.name]!r} share a file name")
            seen[source.name] = record.source_ref
            image = out_dir / "images" / name / source.name
            try:
                source_of.copy(record.source_ref, image)
            except ImageSetAside as exc:
                log.warning("dataset: set aside %s (its label is not trained on): %s", record.source_ref, exc)
                split.set_aside[record.source_ref] = str(exc)
                continue
            digests[name][source.name] = file_sha256(image)
            label_file = out_dir / "labels" / name / f"{source.stem}.txt"
            label_file.write_text("".join(line + "\n" for line in yolo_label_lines(record)))
            kept[name].append(record)
    split.records = kept
    if split.set_aside and not any(kept.values()):
        raise LabelTableError(f"every one of the {len(split.set_aside)} images was set aside (see the log): "
                              "no dataset to build")
    data_yaml = out_dir / "data.yaml"
    data = {
        "path": str(out_dir.resolve()),
        "train": "images/train",
        "val": "images/val",
        "test": "images/test",
        "names": dict(enumerate(class_names)),
    }
    data_yaml.write_text(yaml.safe_dump(data, sort_keys=False))
    # the files' photos let a later step pick a split's images by photo (cloud.pipeline.evaluate)
    index = SplitFile.model_validate({**split.summary(), "files": split.files(), "sha256": digests})
    (out_dir / SPLIT_FILE).write_text(index.model_dump_json(indent=2))
    return data_yaml
