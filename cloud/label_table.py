"""The label table: one approved record per image, in the shape of a SageMaker Feature Store
feature group (record identifier `source_ref`, event time `event_time`).

Where the rows come from (a CSV export, an offline-store query, the local label store) is not this
module's business: everything downstream takes `LabelRecord`s, built from plain row mappings by
`records_from_rows`. `read_label_csv` is one such source.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

APPROVED = "APPROVED"
REQUIRED_COLUMNS = ("source_ref", "image_width", "image_height", "annotations", "status")
MAX_ANNOTATIONS_TEXT = 1_000_000  # characters: 1000 boxes (cloud.labels.rules.MAX_BOXES) take ~100 000


class LabelTableError(ValueError):
    """A label table row that cannot be used; the message names the row and the problem."""


@dataclass(frozen=True)
class BoxLabel:
    """One labelled box in pixels of the original image (Ground Truth's top/left/height/width)."""

    class_id: int
    left: float
    top: float
    width: float
    height: float


@dataclass(frozen=True)
class LabelRecord:
    """One row of the label table. `source_ref` is a relative POSIX path, checked to stay inside
    the folder it is resolved against."""

    source_ref: str
    image_width: int
    image_height: int
    boxes: tuple[BoxLabel, ...]
    status: str
    event_time: float = 0.0
    labeling_job: str = ""

    @property
    def photo_id(self) -> str:
        """The physical photo this image was cut from: crops of one photo share the file name up
        to `-cropped`, and must land in the same split or the test figures leak."""
        stem = PurePosixPath(self.source_ref).stem
        return stem.split("-cropped", 1)[0]


def safe_relative_path(source_ref: str) -> PurePosixPath:
    """`source_ref` comes from labelers and tables we do not control: refuse absolute paths and
    any `..` so that joining it to a root can never leave that root."""
    path = PurePosixPath(source_ref.replace("\\", "/"))
    if not source_ref or path.is_absolute() or ".." in path.parts or path.parts[:1] == ("",):
        raise LabelTableError(f"source_ref {source_ref!r} must be a relative path without '..'")
    return path


def _parse_boxes(raw: object, where: str) -> tuple[BoxLabel, ...]:
    if isinstance(raw, str):
        if len(raw) > MAX_ANNOTATIONS_TEXT:  # parsing is not free: a hostile cell could hold anything
            raise LabelTableError(f"{where}: annotations are {len(raw)} characters, at most {MAX_ANNOTATIONS_TEXT}")
        try:
            raw = ast.literal_eval(raw) if raw.strip() else []
        except (ValueError, SyntaxError, RecursionError, MemoryError) as exc:  # deep nesting: the last two
            raise LabelTableError(f"{where}: annotations are not a list literal ({type(exc).__name__}: {exc})") from None
    if not isinstance(raw, list):
        raise LabelTableError(f"{where}: annotations must be a list, got {type(raw).__name__}")
    boxes = []
    for n, item in enumerate(raw):
        try:
            box = BoxLabel(
                class_id=int(item["class_id"]),
                left=float(item["left"]),
                top=float(item["top"]),
                width=float(item["width"]),
                height=float(item["height"]),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise LabelTableError(f"{where}: annotation {n} is malformed ({exc!r})") from None
        if not all(math.isfinite(v) for v in (box.left, box.top, box.width, box.height)):
            # `1e999` and `nan` parse as floats; nothing downstream can use them
            raise LabelTableError(f"{where}: annotation {n} has a coordinate that is not a finite number")
        if box.width <= 0 or box.height <= 0 or box.class_id < 0:
            raise LabelTableError(f"{where}: annotation {n} has a non-positive size or class")
        boxes.append(box)
    return tuple(boxes)


def record_from_row(row: Mapping[str, object], where: str) -> LabelRecord:
    """One row of the label table (from any source) as a record; `where` names it in errors."""
    missing = [c for c in REQUIRED_COLUMNS if row.get(c) is None]  # None: a short CSV line, a NULL in the store
    if missing:
        raise LabelTableError(f"{where}: missing column(s) {', '.join(missing)}")
    source_ref = str(row["source_ref"])
    safe_relative_path(source_ref)
    try:
        width, height = int(float(row["image_width"])), int(float(row["image_height"]))
        event_time = float(row.get("event_time") or 0.0)
    except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: int(float("1e999"))
        raise LabelTableError(f"{where}: bad number ({exc})") from None
    if not math.isfinite(event_time):
        raise LabelTableError(f"{where}: event_time {event_time} is not a finite number")
    if width <= 0 or height <= 0:
        raise LabelTableError(f"{where}: image size must be positive")
    return LabelRecord(
        source_ref=source_ref,
        image_width=width,
        image_height=height,
        boxes=_parse_boxes(row["annotations"], where),
        status=str(row["status"]).strip().upper(),
        event_time=event_time,
        labeling_job=str(row.get("labeling_job") or ""),
    )


def records_from_rows(rows: Iterable[Mapping[str, object]]) -> list[LabelRecord]:
    """Validate rows of the label table (from any source) into records, in the order given."""
    return [record_from_row(row, f"row {index} ({row.get('source_ref', '?')})") for index, row in enumerate(rows)]


def read_label_csv(path: str | Path) -> list[LabelRecord]:
    """The label table as exported to CSV (the shape of `shared/data/metal-tags/labels.csv`)."""
    path = Path(path)
    if not path.is_file():
        raise LabelTableError(f"label table {path} does not exist")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        return records_from_rows(csv.DictReader(handle))


def approved(records: Iterable[LabelRecord]) -> list[LabelRecord]:
    """Only APPROVED rows train a model; an empty box list is a background image and is kept."""
    return [r for r in records if r.status == APPROVED]


def table_fingerprint(records: Iterable[LabelRecord]) -> str:
    """sha256 of the records in a canonical order, so the same labels give the same fingerprint
    whatever order the source returned them in."""
    canonical = sorted((asdict(r) for r in records), key=lambda r: r["source_ref"])
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()
