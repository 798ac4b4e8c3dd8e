"""`edge-inspect cloud serve` end to end with the replay labeler: the real daemon samples frames of
the shipped photos to moto's S3 server and announces them on mosquitto; serve batches them,
pre-labels them and writes the replayed labels to the on-site label store; kill -9 mid-batch and a
restart lose and duplicate nothing. (The same with a real Label Studio: test_labeling_e2e.py.)"""

from __future__ import annotations

import shutil
import sqlite3
import time

from cloud_helpers import CloudServe, cloud, cloud_json, write_cloud_config
from conftest import METAL_TAGS
from daemon_helpers import DaemonProcess, wait_until, write_config
from moto_s3 import MotoS3, set_credentials

from cloud.label_table import read_label_csv
from cloud.labels.local import LocalLabelStore
from edge_inspect.loopback import free_port

BUCKET = "plant-frames"
PREFIX = "lines"


def scratched_photos(count: int) -> list:
    """Photos whose reference labels have boxes, so a lost or doubled answer shows."""
    records = [r for r in read_label_csv(METAL_TAGS / "labels.csv") if r.boxes and r.status == "APPROVED"]
    return [METAL_TAGS / r.source_ref for r in sorted(records, key=lambda r: r.source_ref)[:count]]


def daemon_config(tmp_path, broker_port: int, s3_port: int, folder) -> dict:
    return write_config(tmp_path / "config.yaml", broker_port, [{"id": "station", "source": str(folder)}],
                        active_learning={
                            "enabled": True,
                            "strategies": [{"name": "everything", "type": "random", "percent": 100, "tags": []}],
                            "limits": {"per_minute": None, "per_hour": None, "per_day": None},
                            "dedup": {"enabled": False},
                            "spool": {"path": str(tmp_path / "spool"), "max_bytes": 50_000_000, "min_free_bytes": 0},
                            "upload": {"bucket": BUCKET, "prefix": PREFIX, "endpoint_url": f"http://127.0.0.1:{s3_port}",
                                       "region": "us-east-1", "retry_min_s": 0.2, "retry_max_s": 1.0, "batch_size": 2}})


def cloud_config(tmp_path, broker_port: int, s3_port: int, labeling: dict, batch_size: int):
    return write_cloud_config(
        tmp_path / "cloud.yaml",
        storage={"bucket": BUCKET, "prefix": PREFIX, "endpoint_url": f"http://127.0.0.1:{s3_port}", "region": "us-east-1"},
        broker={"host": "127.0.0.1", "port": broker_port, "topic_prefix": "edge-inspect"},
        labeling={"batch_size": batch_size, "max_wait_minutes": 60, "poll_interval_s": 0.5, "catch_up_minutes": 60,
                  "state_path": str(tmp_path / "labeling.sqlite"), **labeling},
        label_store={"backend": "local", "local": {"path": str(tmp_path / "labels")}})


def frame_states(state_path) -> dict[str, int]:
    if not state_path.exists():
        return {}
    with sqlite3.connect(state_path) as db:
        try:
            return dict(db.execute("SELECT state, COUNT(*) FROM frames GROUP BY state").fetchall())
        except sqlite3.OperationalError:
            return {}


def test_serve_labels_every_sampled_frame_once_across_a_kill_9(tmp_path, broker):
    set_credentials()
    s3 = MotoS3(free_port(), tmp_path).start()
    s3.client().create_bucket(Bucket=BUCKET)
    photos = scratched_photos(8)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    config = cloud_config(tmp_path, broker.port, s3.port,
                          {"backend": "replay", "replay": {"table": str(METAL_TAGS / "labels.csv"),
                                                            "images": str(METAL_TAGS)}}, batch_size=8)
    assert cloud(config, "check-config").returncode == 0
    serve = CloudServe(config)
    daemon = DaemonProcess(daemon_config(tmp_path, broker.port, s3.port, incoming))
    state = tmp_path / "labeling.sqlite"
    try:
        before = time.time()
        for photo in photos[:3]:
            shutil.copy(photo, incoming / photo.name)
        # serve has taken some frames in (announced on MQTT), and none is labelled: kill it there
        assert wait_until(lambda: frame_states(state).get("pending", 0) >= 1, 90), serve.log_text()[-3000:]
        serve.kill()
        for photo in photos[3:]:
            shutil.copy(photo, incoming / photo.name)  # uploaded and announced while serve is down
        assert wait_until(lambda: sum(1 for k in s3.objects(BUCKET) if k.endswith(".jpg")) == 8, 90), \
            daemon.log_text()[-3000:]
        serve = CloudServe(config)
        assert wait_until(lambda: frame_states(state).get("labelled", 0) == 8, 120), serve.log_text()[-3000:]
        assert frame_states(state) == {"labelled": 8}
        status = cloud_json(config, "labels", "status")
        assert status["batches"]["done"] == 1 and status["open_batches"] == []
    finally:
        serve.stop()
        daemon.stop()
        s3.stop()
    # every frame once, with the reference photo's boxes
    store = LocalLabelStore(tmp_path / "labels")
    rows = store.as_of(time.time())
    assert len(rows) == 8 and len({r.source_ref for r in rows}) == 8
    assert all(len(store.history(r.source_ref)) == 1 for r in rows)
    reference = sorted(len(r.boxes) for r in read_label_csv(METAL_TAGS / "labels.csv")
                       if METAL_TAGS / r.source_ref in photos)
    assert sorted(len(r.boxes) for r in rows) == reference
    # the datasets before and after, as `train` reads them
    empty = cloud_json(config, "labels", "export", "--as-of", str(before), "--out", str(tmp_path / "before.csv"))
    full = cloud_json(config, "labels", "export", "--as-of", "now", "--out", str(tmp_path / "after.csv"))
    assert (empty["rows"], full["rows"]) == (0, 8)
    assert len(read_label_csv(tmp_path / "after.csv")) == 8
