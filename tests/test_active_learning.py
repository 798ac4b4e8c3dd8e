"""Active learning end to end: the daemon samples frames, spools them durably, uploads them to a
real S3 endpoint (moto's server) and announces them over a real mosquitto; outages, kill -9 and a
full disk lose nothing and duplicate nothing."""

from __future__ import annotations

import json
import shutil
import signal

from conftest import METAL_TAGS
from daemon_helpers import DaemonProcess, wait_until, write_config
from mosquitto import Subscriber
from moto_s3 import MotoS3, set_credentials, sha

from device.messages import validate
from device.spool import Spool
from edge_inspect.loopback import free_port

BUCKET = "edge-inspect-frames"


def al_config(tmp_path, s3_port: int, **spool) -> dict:
    return {
        "enabled": True,
        "strategies": [{"name": "everything", "type": "random", "percent": 100, "tags": ["test"]}],
        "limits": {"per_minute": None, "per_hour": None, "per_day": None},
        "dedup": {"enabled": False},
        "spool": {"path": str(tmp_path / "spool"), "max_bytes": 50_000_000, "min_free_bytes": 0, **spool},
        "upload": {"bucket": BUCKET, "prefix": "lines", "endpoint_url": f"http://127.0.0.1:{s3_port}",
                   "region": "us-east-1", "retry_min_s": 0.2, "retry_max_s": 1.0, "batch_size": 5},
    }


def drop_images(folder, count: int) -> None:
    folder.mkdir(exist_ok=True)
    for path in sorted((METAL_TAGS / "images").glob("*.jpg"))[:count]:
        shutil.copy(path, folder / path.name)


def spooled(tmp_path) -> set[str]:
    return {p.stem for p in (tmp_path / "spool").glob("*.json")}


def check_bucket(s3: MotoS3, expected: set[str]) -> None:
    """Exactly the expected frames: a JPEG and a sidecar each, whole, under content-addressed keys."""
    objects = s3.objects(BUCKET)
    jpegs = {k: v for k, v in objects.items() if k.endswith(".jpg")}
    sidecars = {k: v for k, v in objects.items() if k.endswith(".json")}
    assert len(jpegs) == len(sidecars) == len(objects) // 2
    assert {k.rsplit("/", 1)[1][:-4] for k in jpegs} == expected
    for key, body in jpegs.items():
        assert sha(body) == key.rsplit("/", 1)[1][:-4], f"{key} is partial or altered"
        meta = json.loads(sidecars[key[:-4] + ".json"])
        validate("sidecar", meta)
        assert key.startswith(f"lines/raw/line-1/{meta['camera']}/") and meta["jpeg_sha256"] == sha(body)


def test_s3_outage_then_every_spooled_frame_arrives(tmp_path, broker):
    set_credentials()
    s3_port = free_port()
    drop_images(tmp_path / "incoming", 12)
    sub = Subscriber(broker.port, "edge-inspect/#")
    daemon = DaemonProcess(write_config(tmp_path / "config.yaml", broker.port,
                                        [{"id": "station", "source": str(tmp_path / "incoming")}],
                                        active_learning=al_config(tmp_path, s3_port)))
    s3 = MotoS3(s3_port, tmp_path)
    try:
        assert wait_until(lambda: len(spooled(tmp_path)) == 12, 60), daemon.log_text()[-2000:]
        expected = spooled(tmp_path)
        # the uploader is failing against the dead endpoint meanwhile, and keeps every frame
        assert wait_until(lambda: "S3 unreachable" in daemon.log_text(), 30), daemon.log_text()[-2000:]
        assert spooled(tmp_path) == expected
        s3.start()
        s3.client().create_bucket(Bucket=BUCKET)
        assert wait_until(lambda: not spooled(tmp_path), 60), daemon.log_text()[-2000:]
        check_bucket(s3, expected)
        assert sub.wait_for(lambda s: sum(p["count"] for p in s.payloads("/samples")) == 12, 20)
        announced = {k for p in sub.payloads("/samples") for k in p["keys"]}
        for payload in sub.payloads("/samples"):
            validate("samples", payload)
        assert {k.rsplit("/", 1)[1][:-4] for k in announced} == expected
        assert "S3 unreachable" in daemon.log_text() and "reachable again" in daemon.log_text()
    finally:
        daemon.stop()
        sub.close()
        s3.stop()


def test_kill_9_during_uploads_20_times_loses_and_duplicates_nothing(tmp_path, broker):
    set_credentials()
    s3_port = free_port()
    s3 = MotoS3(s3_port, tmp_path).start()
    s3.client().create_bucket(Bucket=BUCKET)
    # the frames to deliver, spooled beforehand exactly as the daemon spools them
    spool = Spool(tmp_path / "spool", max_bytes=10**9)
    import cv2

    for i, path in enumerate(sorted((METAL_TAGS / "images").glob("*.jpg"))[:40]):
        image = cv2.imread(str(path))
        spool.put(image, {"schema_version": 2, "thing": "line-1", "camera": "cam", "frame_time": "2026-11-21T06:00:00.000Z",
                          "frame_time_epoch": 1795240800.0 + i, "width": 450, "height": 300,
                          "model": {"name": "m", "version": "1", "sha256": "a" * 64}, "detections": [],
                          "strategies": ["everything"], "tags": []})
    expected = spooled(tmp_path)
    assert len(expected) == 40
    (tmp_path / "empty").mkdir()
    config = write_config(tmp_path / "config.yaml", broker.port, [{"id": "cam", "source": str(tmp_path / "empty")}],
                          active_learning={**al_config(tmp_path, s3_port), "upload": {
                              **al_config(tmp_path, s3_port)["upload"], "max_bytes_per_s": 25_000, "batch_size": 3}})
    kills = 0
    try:
        while kills < 20:
            # kill as soon as this run has moved the upload on (a new object in the bucket): the
            # kill lands mid-batch, between one confirmed PUT and the next
            before = len(s3.objects(BUCKET))
            daemon = DaemonProcess(config)
            assert wait_until(lambda before=before: len(s3.objects(BUCKET)) > before, 60), daemon.log_text()[-2000:]
            daemon.signal(signal.SIGKILL)
            daemon.wait(10)
            kills += 1
        in_bucket = {k.rsplit("/", 1)[1][:-4] for k in s3.objects(BUCKET) if k.endswith(".jpg")}
        assert 0 < len(in_bucket) < 40, "the kills landed while uploads were under way"
        daemon = DaemonProcess(config)
        assert wait_until(lambda: not spooled(tmp_path), 120), daemon.log_text()[-2000:]
        daemon.stop()
        check_bucket(s3, expected)
        assert not list((tmp_path / "spool").glob("*.jpg")) and not list((tmp_path / "spool").glob("*.tmp"))
    finally:
        s3.stop()


def test_small_disk_quota_evicts_oldest_counts_and_keeps_running(tmp_path, broker):
    set_credentials()
    drop_images(tmp_path / "incoming", 15)
    config = write_config(tmp_path / "config.yaml", broker.port,
                          [{"id": "station", "source": str(tmp_path / "incoming")}],
                          active_learning=al_config(tmp_path, free_port(), max_bytes=200_000))
    daemon = DaemonProcess(config)
    stats = lambda: [json.loads(line)["payload"] for line in (tmp_path / "messages.jsonl").read_text().splitlines()  # noqa: E731
                     if line and json.loads(line)["topic"].endswith("/stats")] if (tmp_path / "messages.jsonl").exists() else []
    try:
        assert wait_until(lambda: any(s["active_learning"]["written"] == 15 for s in stats()), 60), daemon.log_text()[-2000:]
        assert wait_until(lambda: stats()[-1]["active_learning"]["written"] == 15, 10)
        figures = stats()[-1]["active_learning"]
        assert figures["evicted"] > 0 and figures["evicted"] + figures["spooled"] == 15
        assert figures["spool_bytes"] <= 200_000
        validate("stats", stats()[-1])
        assert daemon.proc.poll() is None
        assert "evicted" in daemon.log_text()
    finally:
        daemon.stop()


def test_corrupt_items_in_the_spool_are_set_aside_and_the_rest_goes_on(tmp_path, broker):
    set_credentials()
    s3_port = free_port()
    drop_images(tmp_path / "incoming", 3)
    config = write_config(tmp_path / "config.yaml", broker.port,
                          [{"id": "station", "source": str(tmp_path / "incoming")}],
                          active_learning=al_config(tmp_path, s3_port))
    daemon = DaemonProcess(config)
    assert wait_until(lambda: len(spooled(tmp_path)) == 3, 60), daemon.log_text()[-2000:]
    daemon.signal(signal.SIGKILL)
    daemon.wait(10)
    first, second, third = sorted(spooled(tmp_path))
    (tmp_path / "spool" / f"{first}.json").write_text("{ this is not json")
    jpeg = tmp_path / "spool" / f"{second}.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[:500])
    s3 = MotoS3(s3_port, tmp_path).start()
    s3.client().create_bucket(Bucket=BUCKET)
    shutil.rmtree(tmp_path / "incoming")
    (tmp_path / "incoming").mkdir()
    daemon = DaemonProcess(config)
    try:
        assert wait_until(lambda: not spooled(tmp_path), 60), daemon.log_text()[-2000:]
        check_bucket(s3, {third})
        quarantined = {p.name for p in (tmp_path / "spool" / "quarantine").iterdir()}
        assert {f"{first}.json", f"{second}.jpg", f"{second}.json"} <= quarantined
        log = daemon.log_text()
        assert "unreadable sidecar" in log and "does not match its sha256" in log
    finally:
        daemon.stop()
        s3.stop()
