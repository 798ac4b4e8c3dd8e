"""Which split a photo belongs to, decided once and never again.

A test photo must stay a test photo as the data grows, or the gate would one day compare models on
photos the candidate trained on. So a photo's split is a pure function of the photo alone, never
of the other photos (a seeded shuffle of all photos, the old rule, moves photos when one is added):
- photos in `base_split.json` (the splits the first bundled model was made with) keep theirs;
- every other photo is placed by sha256(salt:photo_id), read as a number in [0, 1): below
  `test_fraction` is test, below `test_fraction + val_fraction` is val, the rest train.

Changing the fractions or the salt changes where new photos go (never the base photos); the card of
every version records both, and the gate always scores candidate and production on the same split.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from functools import cache
from importlib import resources
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cloud.dataset import SPLITS, DatasetSplit
from cloud.label_table import LabelRecord, LabelTableError, approved, table_fingerprint

SplitName = Literal["train", "val", "test"]


class SplitParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    val_fraction: float = Field(0.15, ge=0, lt=1, description="new photos that pick the epoch")
    test_fraction: float = Field(0.15, gt=0, lt=1, description="new photos that no model trains on")
    salt: str = Field("edge-inspect", min_length=1, max_length=64, description="hash salt for new photos")
    use_base: bool = Field(True, description="keep the first bundled model's splits for its photos")

    @model_validator(mode="after")
    def _leaves_training_photos(self) -> SplitParams:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must leave photos to train on (sum < 1)")
        return self


@cache
def base_assignment() -> Mapping[str, str]:
    text = resources.files("cloud.pipeline").joinpath("base_split.json").read_text()
    return json.loads(text)["photos"]


def hash_split(photo_id: str, params: SplitParams) -> SplitName:
    digest = hashlib.sha256(f"{params.salt}:{photo_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < params.test_fraction:
        return "test"
    if u < params.test_fraction + params.val_fraction:
        return "val"
    return "train"


def split_of(photo_id: str, params: SplitParams) -> SplitName:
    base = base_assignment() if params.use_base else {}
    return base.get(photo_id) or hash_split(photo_id, params)  # type: ignore[return-value]


def assign(records: Iterable[LabelRecord], params: SplitParams) -> DatasetSplit:
    """The approved records by split; a background image (no boxes) is kept like any other."""
    kept = approved(records)
    if not kept:
        raise LabelTableError("the label store has no APPROVED rows as of this time")
    split = DatasetSplit(records={name: [] for name in SPLITS}, table_sha256=table_fingerprint(kept))
    for record in sorted(kept, key=lambda r: r.source_ref):
        split.records[split_of(record.photo_id, params)].append(record)
    empty = [name for name in ("train", "test") if not split.records[name]]
    if empty:
        raise LabelTableError(f"no photo falls in the {' and '.join(empty)} split yet "
                              f"({len(kept)} approved images): label more photos")
    return split
