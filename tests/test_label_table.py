"""Label table to dataset: parsing, filtering, photo-grouped deterministic splits, YOLO files."""

from __future__ import annotations

import pytest
import yaml

from cloud.dataset import SplitFractions, split_by_photo, write_yolo_dataset, yolo_label_lines
from cloud.label_table import LabelTableError, read_label_csv, records_from_rows, table_fingerprint


def row(ref="images/a-cropped-left-top.jpg", annotations="[]", status="APPROVED", **extra):
    return {"source_ref": ref, "image_width": 450, "image_height": 300, "image_depth": 3,
            "annotations": annotations, "event_time": "1.0", "labeling_job": "job", "status": status, **extra}


def test_reads_the_shared_table(metal_tags):
    records = read_label_csv(metal_tags / "labels.csv")
    assert len(records) == 175
    assert sum(1 for r in records if not r.boxes) == 5  # background images are kept
    assert records[0].photo_id == "image-2020-04-22-11-07-29-26"
    assert records[0].boxes[0].left == 81 and records[0].boxes[0].height == 97


def test_only_approved_rows_are_used():
    records = records_from_rows([
        row("images/p1-cropped-left-top.jpg"), row("images/p2-cropped-left-top.jpg", status="REJECTED"),
        row("images/p3-cropped-left-top.jpg", status="pending"), row("images/p4-cropped-left-top.jpg"),
        row("images/p5-cropped-left-top.jpg"),
    ])
    split = split_by_photo(records, seed=1, fractions=SplitFractions(0.34, 0.33, 0.33))
    used = {r.source_ref for recs in split.records.values() for r in recs}
    assert used == {"images/p1-cropped-left-top.jpg", "images/p4-cropped-left-top.jpg", "images/p5-cropped-left-top.jpg"}


@pytest.mark.parametrize("ref", ["/etc/passwd", "../outside.jpg", "images/../../x.jpg", ""])
def test_paths_that_leave_the_folder_are_refused(ref):
    with pytest.raises(LabelTableError, match="relative path"):
        records_from_rows([row(ref)])


@pytest.mark.parametrize("annotations,message", [
    ("[{'class_id': 0, 'top': 1}", "not a list literal"),
    ("{'class_id': 0}", "must be a list"),
    ("[{'class_id': 0, 'top': 1, 'left': 2, 'height': 3}]", "annotation 0 is malformed"),
    ("[{'class_id': 0, 'top': 1, 'left': 2, 'height': 0, 'width': 4}]", "non-positive"),
])
def test_malformed_annotations_name_the_row(annotations, message):
    with pytest.raises(LabelTableError, match=rf"row 0 \(images/a-cropped-left-top.jpg\).*{message}"):
        records_from_rows([row(annotations=annotations)])


def test_missing_column_is_named():
    bad = row()
    del bad["status"]
    with pytest.raises(LabelTableError, match="missing column.*status"):
        records_from_rows([bad])


def test_split_is_by_photo_deterministic_and_complete(metal_tags):
    records = read_label_csv(metal_tags / "labels.csv")
    a, b = split_by_photo(records, seed=7), split_by_photo(list(reversed(records)), seed=7)
    assert a.split_sha256 == b.split_sha256 and a.table_sha256 == b.table_sha256
    assert split_by_photo(records, seed=8).split_sha256 != a.split_sha256
    photos = [set(a.photos(name)) for name in ("train", "val", "test")]
    assert not (photos[0] & photos[1]) and not (photos[0] & photos[2]) and not (photos[1] & photos[2])
    assert sum(len(v) for v in a.records.values()) == 175
    assert 0.1 < len(a.records["test"]) / 175 < 0.25


def test_fingerprint_changes_with_any_label(metal_tags):
    records = read_label_csv(metal_tags / "labels.csv")
    changed = records_from_rows([row("images/x-cropped-left-top.jpg")]) + records[1:]
    assert table_fingerprint(records) != table_fingerprint(changed)
    assert table_fingerprint(records) == table_fingerprint(list(reversed(records)))


def test_yolo_lines_are_normalised_and_clipped():
    (record,) = records_from_rows([row(annotations=(
        "[{'class_id': 0, 'top': 30, 'left': 45, 'height': 60, 'width': 90},"
        " {'class_id': 0, 'top': 280, 'left': 400, 'height': 100, 'width': 100},"
        " {'class_id': 0, 'top': 500, 'left': 10, 'height': 10, 'width': 10}]"))])
    lines = yolo_label_lines(record)
    assert lines[0] == "0 0.200000 0.200000 0.200000 0.200000"
    assert lines[1] == "0 0.944444 0.966667 0.111111 0.066667"  # clipped to 450x300
    assert len(lines) == 2  # the box wholly below the image is dropped


def test_writes_an_ultralytics_dataset(metal_tags, tmp_path):
    split = split_by_photo(read_label_csv(metal_tags / "labels.csv"), seed=0)
    data_yaml = write_yolo_dataset(split, metal_tags, tmp_path / "ds", ["scratch"])
    spec = yaml.safe_load(data_yaml.read_text())
    assert spec["names"] == {0: "scratch"}
    for name, records in split.records.items():
        images = sorted(p.name for p in (tmp_path / "ds" / "images" / name).iterdir())
        labels = sorted(p.stem for p in (tmp_path / "ds" / "labels" / name).iterdir())
        assert len(images) == len(records) and [i.rsplit(".", 1)[0] for i in images] == labels
    background = [r for r in split.records["train"] if not r.boxes]
    for r in background:
        assert (tmp_path / "ds" / "labels" / "train" / (r.source_ref.split("/")[-1][:-4] + ".txt")).read_text() == ""


def test_missing_image_is_named(tmp_path):
    records = records_from_rows([row(f"images/p{i}-cropped-left-top.jpg") for i in range(5)])
    split = split_by_photo(records, seed=0, fractions=SplitFractions(0.6, 0.2, 0.2))
    with pytest.raises(LabelTableError, match="image for 'images/p.-cropped-left-top.jpg' not found"):
        write_yolo_dataset(split, tmp_path, tmp_path / "ds", ["scratch"])
