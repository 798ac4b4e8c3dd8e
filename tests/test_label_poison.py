"""The label store cannot be poisoned (issue 21): every row is checked before it is written, by
every writer (Label Studio and Ground Truth answers through cloud.labeling.rows, `cloud labels
import`, the stores' own `append`), and a bad row already in the store (written before the check)
is set aside with its reason by every reader (export, history, the pipeline's label read) while
every other row is read. Real DuckDB over Parquet (the on-site store); the real CLI as a
subprocess; the Feature Store path under botocore's Stubber like tests/test_label_feature_store.py."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO
from pydantic import ValidationError
from test_label_feature_store import DESCRIBE, QUOTED_TABLE, athena_row, aws, described, queue_query  # noqa: F401 (aws: the fixture)

from cloud.label_table import BoxLabel, LabelRecord, read_label_csv
from cloud.labeling.label_studio import IMAGE, LABEL, LsAnnotation, boxes_of
from cloud.labeling.rows import AnswerRejected, to_version, write_answers
from cloud.labeling.service import Answer, Batch, Box, Task
from cloud.labels.as_of import as_of_sql
from cloud.labels.local import DUCKDB_TYPES, LocalLabelStore
from cloud.labels.rules import MAX_BOXES, InvalidLabelRow
from cloud.labels.table_io import export_as_of, import_csv
from cloud.labels.versions import COLUMNS, LabelVersion

LABELS = REPO / "data" / "metal-tags" / "labels.csv"
EDGE_INSPECT = Path(sys.executable).parent / "edge-inspect"
SHA = "5" * 64
KEY = f"edge-inspect/raw/tags/cam1/2026/11/22/{SHA}.jpg"
NOW = 1795000000.0  # 2026-11-18: every event time below is before it


def task(**changes) -> Task:
    return Task(**{"sha256": SHA, "bucket": "plant-frames", "key": KEY, "thing": "tags", "camera": "cam1",
                   "width": 450, "height": 300, **changes})


def answer(boxes: list[Box], **changes) -> Answer:
    return Answer(**{"sha256": SHA, "boxes": boxes, "approved": True, "labeler": "tester", "answered_at": NOW,
                     "job": "project-1", **changes})


def scratch(left=10.0, top=20.0, width=30.0, height=40.0) -> Box:
    return Box(class_name="scratch", left=left, top=top, width=width, height=height)


def label_studio_annotation(x: str, width: str) -> LsAnnotation:
    """An accepted annotation as Label Studio's API sends it: JSON text, numbers as written."""
    region = (f'{{"type": "rectanglelabels", "from_name": "{LABEL}", "to_name": "{IMAGE}", "original_width": 450, '
              f'"original_height": 300, "value": {{"x": {x}, "y": 10, "width": {width}, "height": 20, '
              f'"rotation": 0, "rectanglelabels": ["scratch"]}}}}')
    return LsAnnotation.model_validate_json(
        f'{{"id": 7, "result": [{region}], "last_action": "accepted", "updated_at": "2026-11-18T10:00:00Z"}}')


def parquet_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.parquet"))


# -- writing: every writer refuses what the store must not keep -------------------------------------


def test_the_hostile_label_studio_rectangle_is_set_aside_with_its_reason_and_the_good_answer_written(tmp_path):
    # x=-1e306, width=1e306 are valid JSON; times 450 px they overflow to -inf and inf, whose sum is NaN:
    # this answer used to become an APPROVED row with NaN coordinates
    hostile = boxes_of(label_studio_annotation("-1e306", "1e306"), task(), "test")
    assert math.isinf(hostile[0].left)
    with pytest.raises(AnswerRejected, match="not a finite number"):
        to_version(task(), answer(hostile), ["scratch"])
    # finite but absurd: clipping would have made it a box over the whole image
    absurd = boxes_of(label_studio_annotation("-1e300", "2e300"), task(), "test")
    with pytest.raises(AnswerRejected, match="more than the image's size outside"):
        to_version(task(), answer(absurd), ["scratch"])
    # through the shared writer: the hostile answer set aside, the good one written
    good_sha = "6" * 64
    good = task(sha256=good_sha, key=f"edge-inspect/raw/tags/cam1/2026/11/22/{good_sha}.jpg")
    batch = Batch(batch_id="tags-1", line="tags", created=NOW, classes=["scratch"], tasks=[task(), good])
    store = LocalLabelStore(tmp_path)
    written = write_answers(store, batch, [answer(hostile), answer([scratch()], sha256=good_sha)])
    assert written.versions == 1 and len(written.set_aside) == 1 and "not a finite number" in written.set_aside[0]
    (row,) = store.as_of(NOW)
    assert row.source_ref == good.key and row.boxes == (BoxLabel(0, 10.0, 20.0, 30.0, 40.0),)
    assert store.set_aside == []


def test_a_label_studio_rectangle_with_an_infinite_rotation_is_an_odd_annotation_not_a_crash():
    # JSON's 1e400 parses as infinity; `inf % 360` is NaN and math.cos(NaN-degrees) raised a bare
    # ValueError that the batch's guard (ValidationError only) let through at every poll
    text = label_studio_annotation("10", "20").model_dump_json().replace('"rotation":0', '"rotation":1e400')
    assert '"rotation":1e400' in text
    with pytest.raises(ValidationError, match="finite"):
        boxes_of(LsAnnotation.model_validate_json(text), task(), "test")


@pytest.mark.parametrize("change,reason", [
    ({"boxes": [scratch()] * (MAX_BOXES + 1)}, f"at most {MAX_BOXES} per image"),
    ({"answered_at": float("nan")}, "event_time nan is not a time"),
    ({"answered_at": 1e300}, "is not a time between 1970 and 9999"),
    ({"boxes": [scratch(width=0)]}, "lies outside the 450x300 image"),
    ({"sha256": "7" * 64}, "does not name the answered frame's sha256"),
])
def test_an_answer_the_store_would_refuse_is_refused_with_its_reason(change, reason):
    with pytest.raises(AnswerRejected, match=reason):
        to_version(task(), answer(**{"boxes": [scratch()], **change}), ["scratch"])


def test_a_task_whose_key_does_not_name_its_frame_is_refused():
    with pytest.raises(AnswerRejected, match="does not name the answered frame's sha256"):
        to_version(task(key="edge-inspect/raw/tags/cam1/a.jpg"), answer([scratch()]), ["scratch"])


BOX = BoxLabel(0, 10.0, 20.0, 30.0, 40.0)


def record(ref="images/a.jpg", boxes=(BOX,), width=450, height=300, t=100.0) -> LabelRecord:
    return LabelRecord(ref, width, height, tuple(boxes), "APPROVED", t, "job")


@pytest.mark.parametrize("bad,reason", [
    (record(boxes=[BoxLabel(0, float("nan"), 20.0, 30.0, 40.0)]), "not a finite number"),
    (record(boxes=[BoxLabel(0, 10.0, 20.0, float("inf"), 40.0)]), "not a finite number"),
    (record(boxes=[BoxLabel(0, 440.0, 20.0, 30.0, 40.0)]), "is outside the 450x300 image"),
    (record(boxes=[BoxLabel(1000, 10.0, 20.0, 30.0, 40.0)]), "class 1000, not one of 0..999"),
    (record(boxes=[BoxLabel(0, 10.0, 20.0, 30.0, 40.0)] * (MAX_BOXES + 1)), f"at most {MAX_BOXES}"),
    (record(width=70000), "image_width 70000 is not a whole number of pixels"),
    (record(t=float("inf")), "event_time inf is not a time"),
    (record(ref="images/a\nb.jpg"), "control characters"),
])
def test_the_store_refuses_a_bad_version_and_writes_nothing_of_that_append(tmp_path, bad, reason):
    store = LocalLabelStore(tmp_path)
    with pytest.raises(InvalidLabelRow, match=reason):
        store.append([LabelVersion(record("images/good.jpg")), LabelVersion(bad)])
    assert parquet_files(tmp_path) == []


def test_a_box_a_hair_over_the_edge_is_clipped_not_refused(tmp_path):
    store = LocalLabelStore(tmp_path)
    store.append([LabelVersion(record(boxes=[BoxLabel(0, -0.4, 280.0, 450.6, 20.5)]))])
    (row,) = store.as_of(200)
    assert row.boxes == (BoxLabel(0, 0.0, 280.0, 450.0, 20.0),)


def test_the_feature_store_refuses_a_bad_version_before_any_call(aws):  # noqa: F811 (the fixture)
    nan = LabelVersion(record(boxes=[BoxLabel(0, float("nan"), 20.0, 30.0, 40.0)]))
    with pytest.raises(InvalidLabelRow, match="not a finite number"):
        aws.store().append([LabelVersion(record("images/good.jpg")), nan])  # nothing queued: a put_record fails the stub


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["source_ref", "image_width", "image_height", "annotations",
                                                    "event_time", "labeling_job", "status"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def csv_row(ref: str, left="10", width="30", class_id="0") -> dict:
    return {"source_ref": ref, "image_width": 450, "image_height": 300, "event_time": "100.0", "labeling_job": "job",
            "status": "APPROVED",
            "annotations": f"[{{'class_id': {class_id}, 'left': {left}, 'top': 20, 'width': {width}, 'height': 40}}]"}


def test_an_import_with_a_bad_row_is_refused_listing_every_bad_line_and_writes_nothing(tmp_path):
    table = write_csv(tmp_path / "labels.csv", [csv_row("images/a.jpg"), csv_row("images/b.jpg", width="1e999"),
                                                csv_row("images/c.jpg"), csv_row("images/d.jpg", left="nan"),
                                                csv_row("images/e.jpg", class_id="3")])
    store = LocalLabelStore(tmp_path / "store")
    with pytest.raises(InvalidLabelRow) as error:
        import_csv(store, table, classes=1)
    message = str(error.value)
    assert "3 bad row(s), nothing imported" in message
    assert "line 3 (images/b.jpg): annotation 0 has a coordinate that is not a finite number" in message
    assert "line 5 (images/d.jpg)" in message and "line 6 (images/e.jpg)" in message and "class 3" in message
    assert "images/a.jpg" not in message and parquet_files(tmp_path) == []


def test_a_table_saved_with_a_byte_order_mark_imports(tmp_path):
    # spreadsheet programs save "CSV UTF-8" with a BOM, which glued itself to the first column's name
    table = write_csv(tmp_path / "labels.csv", [csv_row("images/a.jpg")])
    table.write_bytes(b"\xef\xbb\xbf" + table.read_bytes())
    store = LocalLabelStore(tmp_path / "store")
    import_csv(store, table, classes=1)
    assert [r.source_ref for r in read_label_csv(table)] == ["images/a.jpg"]
    assert [r.source_ref for r in store.as_of(200.0)] == ["images/a.jpg"]


def cli(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(EDGE_INSPECT), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin"})


def local_config(tmp_path: Path) -> Path:
    config = tmp_path / "cloud.yaml"
    config.write_text(f"label_store:\n  backend: local\n  local: {{path: {tmp_path / 'store'}}}\n")
    return config


def test_the_cli_refuses_an_import_with_a_1e999_box_naming_the_line(tmp_path):
    table = write_csv(tmp_path / "labels.csv", [csv_row("images/a.jpg"), csv_row("images/b.jpg", width="1e999")])
    result = cli("cloud", "--config", local_config(tmp_path), "labels", "import", table, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "1 bad row(s), nothing imported" in result.stderr and "line 3 (images/b.jpg)" in result.stderr
    assert parquet_files(tmp_path) == []


# -- reading: a bad row already in the store is set aside, every other row read ----------------------


def plant(store_root: Path, rows: list[dict]) -> None:
    """Rows written straight into the store's Parquet, as an older version (without the checks) did:
    json.dumps wrote NaN into the annotations, which no reader can parse."""
    import duckdb

    folder = store_root / "edge-inspect-labels" / "data" / "year=2025" / "month=01" / "day=01" / "hour=00"
    folder.mkdir(parents=True, exist_ok=True)
    with duckdb.connect() as db:
        db.execute(f"CREATE TABLE old ({', '.join(f'{c} {DUCKDB_TYPES[t]}' for c, t in COLUMNS.items())})")
        db.executemany(f"INSERT INTO old VALUES ({', '.join('?' for _ in COLUMNS)})", [[r[c] for c in COLUMNS] for r in rows])
        db.execute("COPY old TO ? (FORMAT parquet)", [str(folder / "old.parquet")])


def poisoned(ref: str, t: float = 1700000000.0) -> dict:
    annotations = json.dumps([{"class_id": 0, "left": float("nan"), "top": 20.0, "width": float("nan"), "height": 40.0}])
    return {"source_ref": ref, "image_width": 450, "image_height": 300, "annotations": annotations, "status": "APPROVED",
            "event_time": t, "labeling_job": "old", "deleted": 0}


@pytest.fixture
def poisoned_store(tmp_path) -> tuple[LocalLabelStore, str, str]:
    """The shipped table imported, then two poisoned rows: a new image, and a later version of an imported one."""
    store = LocalLabelStore(tmp_path / "store")
    assert import_csv(store, LABELS) == 175
    replaced = read_label_csv(LABELS)[0].source_ref
    plant(tmp_path / "store", [poisoned(KEY), poisoned(replaced)])
    return store, KEY, replaced


def test_export_sets_the_poisoned_rows_aside_with_their_reason_and_exports_the_rest(tmp_path, poisoned_store, caplog):
    store, new, replaced = poisoned_store
    result = export_as_of(store, NOW, tmp_path / "labels.csv")
    assert result.rows == 174 and len(read_label_csv(tmp_path / "labels.csv")) == 174
    assert sorted(a.source_ref for a in result.set_aside) == sorted([new, replaced])
    assert all("annotations are not a list literal" in a.reason for a in result.set_aside)
    assert sum("a stored label row is set aside" in r.getMessage() for r in caplog.records) == 2
    # history too: the imported version, and the bad one set aside with its reason
    assert [v.record.labeling_job for v in store.history(replaced)] == [read_label_csv(LABELS)[0].labeling_job]
    assert [a.source_ref for a in store.set_aside] == [replaced]


def test_the_cli_exports_and_shows_history_around_a_poisoned_row(tmp_path, poisoned_store):
    _, new, replaced = poisoned_store
    config = local_config(tmp_path)
    export = cli("cloud", "--config", config, "labels", "export", "--out", tmp_path / "out.csv", cwd=tmp_path)
    assert export.returncode == 0, export.stderr
    summary = json.loads(export.stdout)
    assert summary["rows"] == 174 and summary["set_aside"] == 2
    assert "a stored label row is set aside" in export.stderr and "annotations are not a list literal" in export.stderr
    history = cli("cloud", "--config", config, "labels", "history", replaced, cwd=tmp_path)
    assert history.returncode == 0, history.stderr
    lines = [json.loads(line) for line in history.stdout.splitlines()]
    assert lines[0]["status"] == "APPROVED" and lines[0]["deleted"] is False
    assert "annotations are not a list literal" in lines[-1]["set_aside"]


def test_the_pipeline_label_reads_go_on_around_a_poisoned_row(tmp_path, poisoned_store, metal_tags):
    from cloud.pipeline.images import TrainingImages
    from cloud.pipeline.preprocess import preprocess
    from cloud.pipeline.split import SplitParams
    from cloud.pipeline.trigger import new_approved_labels

    store, _, _ = poisoned_store
    assert new_approved_labels(store, since=0.0, now=NOW) == 174  # the retrain check
    out = preprocess(store, TrainingImages(metal_tags, None), NOW, SplitParams(), ["scratch"], tmp_path / "dataset")
    assert sum(out.dataset.images.values()) == 174


def test_the_feature_store_sets_a_poisoned_row_aside_and_reads_the_rest(aws):  # noqa: F811 (the fixture)
    good = LabelVersion(record("images/good.jpg"))
    bad = {**poisoned("images/bad.jpg"), "event_time": "1.7E9"}
    rows = [[str(v) for v in good.columns().values()], [str(bad[c]) for c in COLUMNS],
            ["images/nulls.jpg", "450", "300", "[]", "APPROVED", "NaN", "job", None],
            [None, "450", "300", "[]", "APPROVED", "1.0E9", "job", "0"]]
    aws.sagemaker.add_response("describe_feature_group", described(), DESCRIBE)
    queue_query(aws, as_of_sql(QUOTED_TABLE, NOW), states=("SUCCEEDED",))
    aws.athena.add_response("get_query_results", {"ResultSet": {"Rows": [athena_row(COLUMNS)] + [athena_row(r) for r in rows]}},
                            {"QueryExecutionId": "q-1", "MaxResults": 1000})
    store = aws.store()
    assert store.as_of(NOW) == [good.record]
    reasons = {a.source_ref: a.reason for a in store.set_aside}
    assert "annotations are not a list literal" in reasons["images/bad.jpg"]
    assert "event_time nan is not a finite number" in reasons["images/nulls.jpg"]
    assert "missing column(s) source_ref" in reasons["None"]


def test_a_label_row_dated_in_the_future_is_refused_on_write(tmp_path):
    # a version from a skewed clock would be invisible now, then override every correction made meanwhile
    future = time.time() + 365 * 86400
    with pytest.raises(AnswerRejected, match="in the future"):
        to_version(task(), answer([scratch()], answered_at=future), ["scratch"])
    store = LocalLabelStore(tmp_path)
    version = to_version(task(), answer([scratch()]), ["scratch"])
    dated_ahead = LabelVersion(dataclasses.replace(version.record, event_time=future))
    with pytest.raises(InvalidLabelRow, match="in the future"):
        store.append([dated_ahead])
    assert parquet_files(tmp_path) == []
