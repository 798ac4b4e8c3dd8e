"""The label table CSV in and out of the label store: import an existing table (every row a
version, at its own event time), export the dataset as of a time in the shape `edge-inspect
train` reads (`cloud.label_table.read_label_csv`)."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cloud.label_table import LabelRecord, read_label_csv, table_fingerprint
from cloud.labels.store import LabelStore
from cloud.labels.versions import LabelVersion

EXPORT_COLUMNS = ("source_ref", "image_width", "image_height", "annotations", "event_time", "labeling_job", "status")


def versions_from_csv(path: Path) -> list[LabelVersion]:
    return [LabelVersion(record) for record in read_label_csv(path)]


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


def import_csv(store: LabelStore, path: Path) -> int:
    """Every row of a label table becomes a version at its own event time."""
    return store.append(versions_from_csv(path))


def export_as_of(store: LabelStore, as_of: float, out: Path) -> Export:
    records = store.as_of(as_of)
    return Export(write_label_csv(records, out), table_fingerprint(records), as_of)


def parse_time(text: str) -> float:
    """`now`, seconds since the epoch, or an ISO 8601 time (UTC when it names no zone)."""
    if text == "now":
        return datetime.now(timezone.utc).timestamp()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a time: use now, seconds since the epoch, or ISO 8601 "
                         "(2026-11-22T10:00:00Z)") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()
