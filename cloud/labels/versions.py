"""A label row version: what the label store keeps. A record of the label table (cloud/label_table)
as it was at its event time, or the deletion of one; stored as flat columns, the same in every
backend (Feature Store features, Parquet columns)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from cloud.label_table import LabelRecord, LabelTableError, record_from_row

# column -> Feature Store feature type; the order is the Parquet schema's
COLUMNS: dict[str, str] = {
    "source_ref": "String",
    "image_width": "Integral",
    "image_height": "Integral",
    "annotations": "String",  # JSON: [{"class_id", "left", "top", "width", "height"}] in pixels
    "status": "String",
    "event_time": "Fractional",  # seconds since the epoch, UTC
    "labeling_job": "String",
    "deleted": "Integral",  # 1: this version removes the image from every later dataset
}
RECORD_ID, EVENT_TIME = "source_ref", "event_time"


@dataclass(frozen=True)
class LabelVersion:
    record: LabelRecord
    deleted: bool = False

    def columns(self) -> dict[str, object]:
        r = self.record
        boxes = [{"class_id": b.class_id, "left": b.left, "top": b.top, "width": b.width, "height": b.height}
                 for b in r.boxes]
        return {"source_ref": r.source_ref, "image_width": r.image_width, "image_height": r.image_height,
                "annotations": json.dumps(boxes, allow_nan=False), "status": r.status, "event_time": float(r.event_time),
                "labeling_job": r.labeling_job, "deleted": int(self.deleted)}

    @classmethod
    def from_columns(cls, row: Mapping[str, object]) -> LabelVersion:
        """A stored row back; the same validation as any label-table row. Every problem is a
        LabelTableError (readers set such a row aside: cloud.labels.rules.versions_from_rows)."""
        missing = [c for c in COLUMNS if c not in row]
        if missing:
            raise LabelTableError(f"label store row {str(row.get('source_ref', '?'))[:200]!r}: missing column(s) {missing}")
        record = record_from_row(row, f"label store row {str(row['source_ref'])[:200]!r}")
        try:
            deleted = int(float(row["deleted"]))  # type: ignore[arg-type]
        except (TypeError, ValueError, OverflowError):
            deleted = -1
        if deleted not in (0, 1):
            raise LabelTableError(f"label store row {record.source_ref[:200]!r}: deleted is {row['deleted']!r}, expected 0 or 1")
        return cls(record, bool(deleted))


def deletion(source_ref: str, event_time: float, labeling_job: str = "", width: int = 1, height: int = 1) -> LabelVersion:
    """The version that removes `source_ref` from the datasets after `event_time`."""
    return LabelVersion(LabelRecord(source_ref, width, height, (), "DELETED", event_time, labeling_job), deleted=True)
