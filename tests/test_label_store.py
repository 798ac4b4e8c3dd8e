"""The on-site label store: append-only Parquet queried by DuckDB, the dataset as of any time,
and the label table in and out (the shipped model's training table rebuilt to its fingerprint)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO

from cloud.label_table import BoxLabel, LabelRecord, approved, read_label_csv, table_fingerprint
from cloud.labels.local import LocalLabelStore
from cloud.labels.table_io import export_as_of, import_csv, parse_time
from cloud.labels.versions import LabelVersion, deletion
from device.model_card import ModelCard

LABELS = REPO / "data" / "metal-tags" / "labels.csv"


def record(ref: str, t: float, status: str = "APPROVED", boxes: int = 1, job: str = "job") -> LabelRecord:
    return LabelRecord(ref, 450, 300, tuple(BoxLabel(0, 10.0 * i, 20.0, 30.0, 40.0) for i in range(boxes)), status, t,
                       job)


def test_the_store_rebuilds_the_table_the_shipped_model_was_trained_on(tmp_path):
    store = LocalLabelStore(tmp_path / "labels")
    assert import_csv(store, LABELS) == 175
    result = export_as_of(store, parse_time("now"), tmp_path / "labels.csv")
    card = ModelCard.read(REPO / "device" / "models" / "metal-tags-yolov8n.card.json")
    assert result.rows == 175 and result.fingerprint == card.data["table_sha256"]
    assert table_fingerprint(approved(read_label_csv(tmp_path / "labels.csv"))) == card.data["table_sha256"]


def test_as_of_takes_the_latest_approved_version_and_honours_deletions(tmp_path):
    store = LocalLabelStore(tmp_path)
    store.append([LabelVersion(record("a.jpg", 100, boxes=1)), LabelVersion(record("b.jpg", 100))])
    store.append([LabelVersion(record("a.jpg", 200, status="PENDING", boxes=3))])  # sent back for review
    store.append([deletion("b.jpg", 300), LabelVersion(record("a.jpg", 400, boxes=2))])
    store.append([LabelVersion(record("b.jpg", 500)), deletion("a.jpg", 500)])  # a tie: the deletion wins

    def dataset(t: float) -> dict[str, int]:
        return {r.source_ref: len(r.boxes) for r in store.as_of(t)}

    assert dataset(99) == {}
    assert dataset(100) == {"a.jpg": 1, "b.jpg": 1}
    assert dataset(250) == {"a.jpg": 1, "b.jpg": 1}, "a pending review keeps the approved labels"
    assert dataset(300) == {"a.jpg": 1}
    assert dataset(450) == {"a.jpg": 2}
    assert dataset(500) == {"b.jpg": 1}
    history = store.history("a.jpg")
    assert [(v.record.event_time, v.record.status, v.deleted) for v in history] == [
        (100, "APPROVED", False), (200, "PENDING", False), (400, "APPROVED", False), (500, "DELETED", True)]


def test_appending_never_touches_what_is_there_and_a_crash_leaves_nothing_half_read(tmp_path):
    store = LocalLabelStore(tmp_path)
    store.append([LabelVersion(record("a.jpg", 100))])
    (first,) = list(tmp_path.rglob("*.parquet"))
    before = first.read_bytes()
    store.append([LabelVersion(record("a.jpg", 200, boxes=2))])
    assert first.read_bytes() == before and len(list(tmp_path.rglob("*.parquet"))) == 2
    # a writer killed mid-file leaves its temporary name behind: never read
    (first.parent / ".deadbeef.parquet.tmp").write_bytes(b"PAR1 half a file")
    assert [len(r.boxes) for r in store.as_of(300)] == [2]
    assert first.parent.name.startswith("hour=") and first.parent.parent.parent.parent.name.startswith("year=")


def test_a_damaged_row_is_set_aside_with_its_reason_and_the_others_read(tmp_path):
    import duckdb

    store = LocalLabelStore(tmp_path)
    store.append([LabelVersion(record("a.jpg", 100))])
    (first,) = list(tmp_path.rglob("*.parquet"))
    bad = first.with_name("bad.parquet")
    with duckdb.connect() as db:  # a file from elsewhere whose row has a negative width
        db.execute("COPY (SELECT 'b.jpg' AS source_ref, -5::BIGINT AS image_width, image_height, annotations, status, event_time, "
                   f"labeling_job, deleted FROM read_parquet('{first}')) TO '{bad}' (FORMAT parquet)")
    assert [r.source_ref for r in store.as_of(200)] == ["a.jpg"]
    (aside,) = store.set_aside
    assert aside.source_ref == "b.jpg" and "image size must be positive" in aside.reason


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_inspect", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


def test_the_cli_imports_exports_as_of_and_shows_history(tmp_path):
    config = tmp_path / "cloud.yaml"
    config.write_text(f"label_store:\n  backend: local\n  local: {{path: {tmp_path / 'store'}}}\n")
    assert run("cloud", "--config", config, "check-config", cwd=tmp_path).returncode == 0
    imported = run("cloud", "--config", config, "labels", "import", LABELS, cwd=tmp_path)
    assert imported.returncode == 0 and "imported 175 label versions" in imported.stdout, imported.stderr[-2000:]
    before = run("cloud", "--config", config, "labels", "export", "--as-of", "2022-07-01T00:00:00Z", "--out",
                 tmp_path / "before.csv", cwd=tmp_path)
    after = run("cloud", "--config", config, "labels", "export", "--out", tmp_path / "after.csv", cwd=tmp_path)
    assert before.returncode == 0 and after.returncode == 0, before.stderr + after.stderr
    assert json.loads(before.stdout)["rows"] == 0 and json.loads(after.stdout)["rows"] == 175
    assert len(read_label_csv(tmp_path / "after.csv")) == 175 and read_label_csv(tmp_path / "before.csv") == []
    ref = read_label_csv(LABELS)[0].source_ref
    history = run("cloud", "--config", config, "labels", "history", ref, cwd=tmp_path)
    assert [json.loads(line)["source_ref"] for line in history.stdout.splitlines()] == [ref]


def test_bad_configuration_and_bad_times_are_one_clear_line(tmp_path):
    config = tmp_path / "cloud.yaml"
    config.write_text("label_store:\n  backend: local\n")
    result = run("cloud", "--config", config, "check-config", cwd=tmp_path)
    assert result.returncode == 2 and "label_store: Value error, backend is local but the `local` section is missing" \
        in result.stderr, result.stderr
    config.write_text(f"label_store:\n  backend: local\n  local: {{path: {tmp_path}}}\n  colour: blue\n")
    result = run("cloud", "--config", config, "check-config", cwd=tmp_path)
    assert result.returncode == 2 and "label_store.colour: Extra inputs are not permitted" in result.stderr
    config.write_text(f"label_store:\n  backend: local\n  local: {{path: {tmp_path}}}\n")
    result = run("cloud", "--config", config, "labels", "export", "--as-of", "last tuesday", "--out", tmp_path / "x.csv",
                 cwd=tmp_path)
    assert result.returncode == 2 and "'last tuesday' is not a time" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x.csv").exists()
