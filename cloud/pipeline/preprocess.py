"""Step 1, preprocess: the label store as of T -> photos split for good (split.py) -> an
Ultralytics dataset folder. Its output says exactly which labels the model will be made of: the
fingerprint of the approved rows, the as-of time and the photos of every split."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict

from cloud.dataset import ImageSource, write_yolo_dataset
from cloud.labels.store import LabelStore
from cloud.pipeline.split import SplitParams, assign

OUTPUT = "preprocess.json"


class DatasetSummary(BaseModel):
    """What a model was made of; goes into its card."""

    model_config = ConfigDict(extra="forbid")

    as_of: float
    fingerprint: str  # sha256 of the approved rows (cloud.label_table.table_fingerprint)
    split_sha256: str  # sha256 of which image went to which split
    images: dict[str, int]
    photos: dict[str, list[str]]
    split: SplitParams
    val_is_train: bool = False  # no photo fell in val yet: the epoch is picked on the training photos
    # labelled images left out, and why (a frame deleted, expired or overwritten in the bucket since it
    # was labelled): the card says what the model was not made of, so a shrinking dataset is seen
    set_aside: dict[str, str] = {}


class PreprocessOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data_yaml: Path
    dataset: DatasetSummary


def preprocess(store: LabelStore, images: ImageSource, as_of: float, split: SplitParams,
               class_names: list[str], out: Path) -> PreprocessOutput:
    assigned = assign(store.as_of(as_of), split)
    data_yaml = write_yolo_dataset(assigned, images, out, class_names)
    val_is_train = not assigned.records["val"]
    if val_is_train:
        spec = yaml.safe_load(data_yaml.read_text())
        spec["val"] = spec["train"]
        data_yaml.write_text(yaml.safe_dump(spec, sort_keys=False))
    summary = assigned.summary()
    result = PreprocessOutput(data_yaml=data_yaml, dataset=DatasetSummary(
        as_of=as_of, fingerprint=assigned.table_sha256, split_sha256=assigned.split_sha256,
        images=summary["images"], photos=summary["photos"], split=split, val_is_train=val_is_train,
        set_aside=assigned.set_aside))
    (out / OUTPUT).write_text(result.model_dump_json(indent=2))
    return result


def read_output(out: Path) -> PreprocessOutput | None:
    path = out / OUTPUT
    return PreprocessOutput.model_validate(json.loads(path.read_text())) if path.is_file() else None
