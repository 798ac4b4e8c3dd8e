"""The label table CSV in and out of the label store: import an existing table (every row a
version, at its own event time, every row checked by the store's rules first), export the dataset
as of a time in the shape `edge-inspect train` reads (`cloud.label_table.read_label_csv`), and
the times an operator gives (`--as-of`), parsed and bounded before any query."""

from __future__ import annotations

import csv
import logging
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from cloud.label_table import LabelRecord, LabelTableError, record_from_row, table_fingerprint
from cloud.labels.rules import LATEST_TIME, InvalidLabelRow, SetAside, check_record
from cloud.labels.store import LabelStore
from cloud.labels.versions import LabelVersion

log = logging.getLogger(__name__)

EXPORT_COLUMNS = ("source_ref", "image_width", "image_height", "annotations", "event_time", "labeling_job", "status")
LISTED_BAD_LINES = 50  # an import refused for more bad lines names these and counts the rest
TIME_FORMS = "use now, seconds since the epoch, or ISO 8601 (2026-11-22T10:00:00Z)"


def versions_from_csv(path: Path, classes: int | None = None) -> list[LabelVersion]:
    """Every row of the table as a version, each checked by the store's rules (cloud.labels.rules;
    `classes`: the model's class count, when known). An explicit import is all or nothing: any bad
    row refuses the file, naming every bad line (up to LISTED_BAD_LINES) with its reason."""
    if not path.is_file():
        raise LabelTableError(f"label table {path} does not exist")
    versions, bad = [], []
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            for row in reader:
                where = f"line {reader.line_num} ({str(row.get('source_ref', '?'))[:200]})"
                try:
                    versions.append(LabelVersion(check_record(record_from_row(row, where), classes)))
                except LabelTableError as exc:  # InvalidLabelRow included
                    bad.append(str(exc) if str(exc).startswith("line ") else f"{where}: {exc}")
    except (csv.Error, UnicodeDecodeError) as exc:
        raise LabelTableError(f"label table {path}: not a readable CSV ({exc}); nothing imported") from None
    if bad:
        listed = "\n  ".join(bad[:LISTED_BAD_LINES])
        more = f"\n  ... and {len(bad) - LISTED_BAD_LINES} more" if len(bad) > LISTED_BAD_LINES else ""
        raise InvalidLabelRow(f"label table {path}: {len(bad)} bad row(s), nothing imported; fix them and import "
                              f"again:\n  {listed}{more}")
    return versions


def write_label_csv(records: Iterable[LabelRecord], out: Path) -> int:
    """Write the records as a label table (atomically: a reader never sees half a file)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    count = 0
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=EXPORT_COLUMNS)
        writer.writeheader()
        for record in records:
            columns = LabelVersion(record).columns()
            writer.writerow({c: columns[c] for c in EXPORT_COLUMNS})
            count += 1
    os.replace(tmp, out)
    return count


@dataclass(frozen=True)
class Export:
    rows: int
    fingerprint: str  # of the as-of dataset: what the training side records (cloud.label_table)
    as_of: float
    set_aside: list[SetAside] = field(default_factory=list)  # stored rows left out, each with its reason


def import_csv(store: LabelStore, path: Path, classes: int | None = None) -> int:
    """Every row of a label table becomes a version at its own event time; one bad row refuses
    the file and writes nothing (`versions_from_csv`)."""
    return store.append(versions_from_csv(path, classes))


def export_as_of(store: LabelStore, as_of: float, out: Path) -> Export:
    """The dataset as of `as_of` written to `out`; rows the store set aside (each logged with its
    reason by the store) are counted in the result, and every other row is written."""
    records = store.as_of(as_of)
    aside = list(getattr(store, "set_aside", []))  # a store outside this package may not keep them
    if aside:
        log.warning("export as of %s: %d stored row(s) set aside (see above), %d exported", as_of, len(aside), len(records))
    return Export(write_label_csv(records, out), table_fingerprint(records), as_of, aside)


def parse_time(text: str, now: float | None = None) -> float:
    """An operator's time: `now`, seconds since the epoch, or an ISO 8601 time (UTC when it names
    no zone). Refused (ValueError, naming the fix) unless it is finite, not before 1970 and not
    after `now`: a dataset as of a time to come would change as labels arrive, so it could not be
    rebuilt to its fingerprint."""
    current = time.time() if now is None else now
    text = text.strip()
    if text == "now":
        return current
    try:
        value = float(text)  # takes nan, inf and 1e400 (inf): refused below
    except ValueError:
        value = None
    if value is None:
        try:
            moment = datetime.fromisoformat(text)
            value = (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()
        except (ValueError, OverflowError):
            raise ValueError(f"{text[:100]!r} is not a time: {TIME_FORMS}") from None
    if not math.isfinite(value):
        raise ValueError(f"{text[:100]!r} is not a time: {TIME_FORMS}")
    if value < 0:
        raise ValueError(f"{text[:100]!r} is before 1970: {TIME_FORMS}")
    if value > current:
        when = datetime.fromtimestamp(value, timezone.utc).isoformat(timespec="seconds") if value <= LATEST_TIME else "after year 9999"
        raise ValueError(f"{text[:100]!r} ({when}) is in the future: a dataset as of a time to come would change as "
                         "labels arrive; use now or an earlier time")
    return value
