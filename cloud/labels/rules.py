"""What a label row must be: the one set of rules every writer and every reader of the label store
applies, so that one hostile or broken row can neither enter the store nor stop it.

- Writing: `LocalLabelStore.append` and `FeatureStoreLabelStore.append` check every version with
  `check_version` and write nothing when one fails (`InvalidLabelRow`); the writers before them
  check first, to set one item aside with its reason instead: `cloud.labeling.rows.to_version`
  (Label Studio and Ground Truth answers) and `cloud.labels.table_io.import_csv` (`cloud labels
  import`, which refuses the file listing every bad line).
- Reading: `versions_from_rows` turns stored rows back into versions and sets aside, with one log
  line each, the rows that fail (a row written before these rules, or by hand): every other row
  is read, so one bad row never fails an export, a training run or a retrain check.

The rules: every number finite; the image 1..65535 pixels a side (JPEG's own limit); at most
`MAX_BOXES` boxes; each box a known class, positive size, inside the image (an overshoot up to
`EDGE_TOLERANCE_PX`, float rounding, is clipped; more is refused); times between the epoch and
the end of year 9999; text fields short and without control characters.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from cloud.label_table import BoxLabel, LabelRecord, LabelTableError, safe_relative_path
from cloud.labels.versions import LabelVersion

log = logging.getLogger(__name__)

MAX_BOXES = 1000  # per image: far above any real frame, far below what stalls a training step
MAX_IMAGE_SIDE = 65_535  # JPEG cannot be larger
MAX_CLASS_ID = 999  # a class id beyond any model this project trains
EDGE_TOLERANCE_PX = 1.0  # percent <-> pixel conversion and rounding overshoot the edge by a hair
MAX_TEXT = 1024  # source_ref, labeling_job, status
FUTURE_SKEW_S = 300.0  # clock skew allowed between a labeling tool and this host
LATEST_TIME = 253_402_300_799.0  # 9999-12-31T23:59:59Z: the last second a datetime can name


class InvalidLabelRow(LabelTableError):
    """A label row the store must not keep (a ValueError, like every LabelTableError); the message
    names the row and the rule it breaks."""


@dataclass(frozen=True)
class SetAside:
    """A stored row a read left out, and why (its columns as text: they may be anything)."""

    source_ref: str
    event_time: str
    reason: str


def check_time(value: float, what: str) -> float:
    """`value` (seconds since the epoch) as a float, refused unless finite and within 1970..9999."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise InvalidLabelRow(f"{what} {value!r} is not a number of seconds since the epoch")
    if not math.isfinite(value) or not 0 <= value <= LATEST_TIME:
        raise InvalidLabelRow(f"{what} {value!r} is not a time between 1970 and 9999 (seconds since the epoch)")
    return float(value)


def _check_text(value: str, what: str, where: str) -> None:
    if len(value) > MAX_TEXT:
        raise InvalidLabelRow(f"{where}: {what} is {len(value)} characters long, at most {MAX_TEXT}")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise InvalidLabelRow(f"{where}: {what} contains control characters")


def _check_box(box: BoxLabel, n: int, width: int, height: int, classes: int | None, where: str) -> BoxLabel:
    numbers = (box.left, box.top, box.width, box.height)
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers):
        raise InvalidLabelRow(f"{where}: box {n} has a coordinate that is not a finite number {numbers}")
    limit = classes if classes is not None else MAX_CLASS_ID + 1
    if not isinstance(box.class_id, int) or not 0 <= box.class_id < limit:
        known = f"the model's {classes} class(es): 0..{classes - 1}" if classes is not None else f"0..{MAX_CLASS_ID}"
        raise InvalidLabelRow(f"{where}: box {n} has class {box.class_id!r}, not one of {known}")
    if box.width <= 0 or box.height <= 0:
        raise InvalidLabelRow(f"{where}: box {n} is {box.width:g}x{box.height:g}: a box needs a positive size")
    right, bottom = box.left + box.width, box.top + box.height
    t = EDGE_TOLERANCE_PX
    if box.left < -t or box.top < -t or right > width + t or bottom > height + t:
        raise InvalidLabelRow(f"{where}: box {n} ({box.left:g}, {box.top:g}, {box.width:g}x{box.height:g}) "
                              f"is outside the {width}x{height} image")
    left, top = max(box.left, 0.0), max(box.top, 0.0)
    right, bottom = min(right, float(width)), min(bottom, float(height))
    if right <= left or bottom <= top:
        raise InvalidLabelRow(f"{where}: box {n} has nothing left inside the {width}x{height} image")
    if (left, top, right - left, bottom - top) == numbers:
        return box
    return replace(box, left=left, top=top, width=right - left, height=bottom - top)


def check_record(record: LabelRecord, classes: int | None = None) -> LabelRecord:
    """`record` as the store may keep it (boxes a hair over the edge clipped), or InvalidLabelRow.
    `classes`: how many classes the model has, when the writer knows (class ids 0..classes-1)."""
    where = f"label row {record.source_ref[:200]!r}"
    _check_text(record.source_ref, "source_ref", where)
    safe_relative_path(record.source_ref)
    _check_text(record.labeling_job, "labeling_job", where)
    _check_text(record.status, "status", where)
    check_time(record.event_time, f"{where}: event_time")
    for name, side in (("image_width", record.image_width), ("image_height", record.image_height)):
        if not isinstance(side, int) or isinstance(side, bool) or not 1 <= side <= MAX_IMAGE_SIDE:
            raise InvalidLabelRow(f"{where}: {name} {side!r} is not a whole number of pixels in 1..{MAX_IMAGE_SIDE}")
    if len(record.boxes) > MAX_BOXES:
        raise InvalidLabelRow(f"{where}: {len(record.boxes)} boxes, at most {MAX_BOXES} per image")
    boxes = tuple(_check_box(b, n, record.image_width, record.image_height, classes, where)
                  for n, b in enumerate(record.boxes))
    return record if boxes == record.boxes else replace(record, boxes=boxes)


def check_version(version: LabelVersion, classes: int | None = None) -> LabelVersion:
    record = check_record(version.record, classes)
    return version if record is version.record else LabelVersion(record, version.deleted)


def check_new_version(version: LabelVersion, classes: int | None = None, now: float | None = None) -> LabelVersion:
    """`check_version`, and for a row about to be written, not dated in the future: a version from a
    skewed clock would be invisible now, then override every correction made meanwhile."""
    checked = check_version(version, classes)
    latest = (time.time() if now is None else now) + FUTURE_SKEW_S
    if checked.record.event_time > latest:
        raise InvalidLabelRow(f"label row {checked.record.source_ref[:200]!r}: event_time {checked.record.event_time:.0f} "
                              "is in the future (is this host's clock or the labeling tool's wrong?)")
    return checked


def check_versions(versions: Iterable[LabelVersion]) -> list[LabelVersion]:
    """Every version checked before any is written: one bad version refuses the whole append
    (writers that should set one item aside check it themselves first)."""
    return [check_new_version(v) for v in versions]


def versions_from_rows(rows: Iterable[Mapping[str, object]], where: str) -> tuple[list[LabelVersion], list[SetAside]]:
    """Stored rows back as versions; a row that fails (bad numbers, unparseable annotations, a
    rule above) is set aside with its reason and one log line, and the others are read."""
    versions, aside = [], []
    for row in rows:
        try:
            versions.append(check_version(LabelVersion.from_columns(row)))
        except LabelTableError as exc:
            item = SetAside(str(row.get("source_ref"))[:200], str(row.get("event_time")), str(exc))
            log.warning("%s: a stored label row is set aside (%r at event time %s): %s", where, item.source_ref,
                        item.event_time, item.reason)
            aside.append(item)
    return versions, aside
