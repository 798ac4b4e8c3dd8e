"""The spool on its own: atomic files, recovery after a crash, quarantine, eviction."""

from __future__ import annotations

import json
import shutil
from collections import namedtuple

import numpy as np
import pytest

from device.messages import validate
from device.spool import Spool, SpoolError


def image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (60, 80, 3), dtype=np.uint8)


def sidecar(t: float = 1_700_000_000.0) -> dict:
    return {"schema_version": 1, "thing": "t", "camera": "c", "frame_time": "2023-11-14T22:13:20.000Z",
            "frame_time_epoch": t, "width": 80, "height": 60, "model": {"name": "m", "version": "1", "sha256": "a" * 64},
            "detections": [], "strategies": ["rnd"], "tags": []}


def test_put_writes_jpeg_and_sidecar_named_by_sha(tmp_path):
    spool = Spool(tmp_path, max_bytes=10**7)
    item = spool.put(image(1), sidecar())
    assert item.jpeg.name == f"{item.sha256}.jpg" and item.sidecar.name == f"{item.sha256}.json"
    meta = json.loads(item.sidecar.read_text())
    validate("sidecar", meta)
    assert spool.put(image(1), sidecar()) is None, "the same frame twice is stored once"
    assert len(spool) == 1 and not list(tmp_path.glob("*.tmp"))


def test_recovery_cleans_half_written_files_and_rebuilds_the_index(tmp_path):
    spool = Spool(tmp_path, max_bytes=10**7)
    kept = [spool.put(image(i), sidecar(1000 + i)) for i in range(3)]
    (tmp_path / ".abc.jpg.123.456.tmp").write_bytes(b"half")  # crash during a write
    orphan = tmp_path / ("f" * 64 + ".jpg")
    orphan.write_bytes(b"jpeg written, sidecar not yet")  # crash between the two renames
    again = Spool(tmp_path, max_bytes=10**7)
    assert {i.sha256 for i in again.oldest(10)} == {i.sha256 for i in kept}
    assert not orphan.exists() and not list(tmp_path.glob("*.tmp"))
    assert [i.created for i in again.oldest(10)] == [1000, 1001, 1002]


def test_corrupt_sidecar_and_truncated_jpeg_are_set_aside(tmp_path, caplog):
    spool = Spool(tmp_path, max_bytes=10**7)
    good, bad_meta, bad_jpeg = (spool.put(image(i), sidecar(1000 + i)) for i in range(3))
    bad_meta.sidecar.write_text("{not json")
    bad_jpeg.jpeg.write_bytes(bad_jpeg.jpeg.read_bytes()[:100])
    spool = Spool(tmp_path, max_bytes=10**7)  # restart: the unreadable sidecar is caught here
    assert (tmp_path / "quarantine" / bad_meta.sidecar.name).exists()
    with pytest.raises(SpoolError, match="damaged"):
        spool.read(next(i for i in spool.oldest(10) if i.sha256 == bad_jpeg.sha256))
    assert (tmp_path / "quarantine" / bad_jpeg.jpeg.name).exists()
    assert spool.read(spool.oldest(10)[0])[0] == good.jpeg.read_bytes()
    assert len(spool) == 1 and spool.quarantined == 2
    assert "setting" in caplog.text and "aside" in caplog.text


def test_byte_quota_evicts_oldest_first_and_counts(tmp_path):
    spool = Spool(tmp_path, max_bytes=10**7)
    size = spool.put(image(0), sidecar(0)).size
    spool = Spool(tmp_path, max_bytes=int(size * 3.5))
    items = [spool.put(image(i), sidecar(100 + i)) for i in range(1, 8)]
    assert len(spool) == 3 and spool.bytes <= spool.max_bytes
    assert {i.sha256 for i in spool.oldest(10)} == {i.sha256 for i in items[-3:]}
    assert spool.evicted == 5


def test_minimum_free_disk_evicts_too(tmp_path, monkeypatch):
    spool = Spool(tmp_path, max_bytes=10**9, min_free_bytes=1000)
    for i in range(4):
        spool.put(image(i), sidecar(i))
    usage = namedtuple("usage", "total used free")
    free = {"bytes": 10**9}

    def disk_usage(path):
        return usage(10**10, 0, free["bytes"] + 0 * len(spool))

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    free["bytes"] = 0  # the disk is full: every old frame goes, and still no room
    with pytest.raises(SpoolError, match="no room"):
        spool.put(image(9), sidecar(9))
    assert len(spool) == 0 and spool.evicted == 4
