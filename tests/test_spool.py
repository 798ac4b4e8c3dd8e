"""The spool on its own: atomic files, recovery after a crash, quarantine, eviction."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
from collections import namedtuple

import numpy as np
import pytest

from device.contracts import SCHEMA_VERSION
from device.messages import validate
from device.spool import Spool, SpoolError, SpoolWriteError


def image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (60, 80, 3), dtype=np.uint8)


def sidecar(t: float = 1_700_000_000.0) -> dict:
    return {"schema_version": SCHEMA_VERSION, "thing": "t", "camera": "c", "frame_time": "2023-11-14T22:13:20.000Z",
            "frame_time_epoch": t, "width": 80, "height": 60,
            "model": {"name": "m", "version": "1", "sha256": "a" * 64},
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


# --- a real full disk -------------------------------------------------------------------------------
#
# The spool's own free-space check (`min_free_bytes`, here 0) counts bytes, the filesystem allocates
# whole blocks, and another process may fill the disk between the check and the write: either way
# a write can still fail with ENOSPC. These tests mount a small real filesystem (tmpfs, or a
# loop-mounted ext4 image where tmpfs cannot be mounted), fill it, and check that a failed write
# leaves only whole frames behind and is counted.


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@pytest.fixture
def small_disk(tmp_path):
    """A real, tiny filesystem mounted at tmp_path/mnt; unmounted afterwards, pass or fail."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    tried = []
    mounted = _run("mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(mnt))
    image_file = None
    if mounted.returncode != 0:
        tried.append(f"tmpfs: {mounted.stderr.strip() or mounted.returncode}")
        image_file = tmp_path / "disk.img"
        steps = [("truncate", "-s", "1M", str(image_file)),
                 ("mkfs.ext4", "-q", "-F", "-m", "0", "-N", "1024", str(image_file)),  # inodes: not the limit
                 ("mount", "-o", "loop", str(image_file), str(mnt))]
        for step in steps:
            try:
                mounted = _run(*step)
            except FileNotFoundError as exc:
                mounted = subprocess.CompletedProcess(step, 127, "", str(exc))
            if mounted.returncode != 0:
                tried.append(f"{' '.join(step[:1])}: {mounted.stderr.strip() or mounted.returncode}")
                break
    if mounted.returncode != 0:
        # Not silent: `-ra` lists this reason in the summary. Mounting needs root (CAP_SYS_ADMIN).
        pytest.skip("no small real filesystem can be mounted here, so no real full disk: " + "; ".join(tried))
    try:
        yield mnt
    finally:
        if _run("umount", str(mnt)).returncode != 0:
            _run("umount", "-l", str(mnt))
        if image_file is not None:
            image_file.unlink(missing_ok=True)


def free_bytes(path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(disk, leave: int):
    """Another writer takes all the free space but `leave` bytes (a real file on the same disk)."""
    filler = disk / f"filler-{len(list(disk.glob('filler-*')))}"
    with open(filler, "wb") as handle:
        try:
            handle.write(b"\0" * max(free_bytes(disk) - leave, 0))
            handle.flush()
            os.fsync(handle.fileno())
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def assert_only_whole_frames(spool: Spool) -> None:
    names = [p.name for p in spool.root.iterdir() if p.is_file()]
    assert not [n for n in names if n.endswith(".tmp")], names
    jpegs = {n[:-4] for n in names if n.endswith(".jpg")}
    sidecars = {n[:-5] for n in names if n.endswith(".json")}
    assert jpegs == sidecars == {i.sha256 for i in spool.oldest(10**6)}, "each .jpg has its .json, all indexed"
    assert set(names) == {f"{s}{x}" for s in jpegs for x in (".jpg", ".json")}


def big_image(seed: int) -> np.ndarray:  # noise: a JPEG of a few blocks
    return np.random.default_rng(seed).integers(0, 255, (90, 120, 3), dtype=np.uint8)


def test_a_disk_filling_up_mid_write_leaves_only_whole_frames(small_disk, monkeypatch, caplog):
    """The disk fills (another writer) after the spool's free-space check: the JPEG's temporary
    file fails on its first block, fails half-written, or the JPEG lands and its sidecar fails."""
    import device.spool as spool_module

    caplog.set_level(logging.INFO, logger="device.spool")
    spool = Spool(small_disk / "spool", max_bytes=10**9, min_free_bytes=0)
    kept = [spool.put(big_image(i), sidecar(1000 + i)) for i in range(2)]
    block = os.statvfs(small_disk).f_frsize
    real_write, writes, plan = spool_module.write_atomically, [], {}

    def write_atomically(path, data):
        if path.suffix == ".jpg" and "leave" in plan:  # the other writer takes whatever was freed
            plan.setdefault("fillers", []).append(fill(small_disk, plan["leave"]))
        try:
            real_write(path, data)
        except OSError as exc:
            writes.append((path.suffix, exc.errno))
            raise
        writes.append((path.suffix, "ok"))

    monkeypatch.setattr(spool_module, "write_atomically", write_atomically)
    cases = {  # bytes left free when the spool starts writing -> the write that hits ENOSPC
        "jpeg, first block": (0, [(".jpg", errno.ENOSPC)]),
        "jpeg, half written": (2 * block, [(".jpg", errno.ENOSPC)]),
        "sidecar, after the JPEG's rename": (None, [(".jpg", "ok"), (".json", errno.ENOSPC)]),
    }
    for n, (case, (leave, expected)) in enumerate(cases.items()):
        frame = big_image(100 + n)
        if leave is None:  # exactly the JPEG's blocks: it is written and renamed, the sidecar has none
            leave = -(-len(spool.encode(frame)) // block) * block
        writes.clear()
        plan["leave"] = leave
        had = len(spool)
        with pytest.raises(SpoolWriteError) as raised:
            spool.put(frame, sidecar(2000 + n))
        assert isinstance(raised.value.__cause__, OSError) and raised.value.__cause__.errno == errno.ENOSPC, case
        # with frames to spare, ENOSPC evicts the oldest and tries once more (it fails again here:
        # the other writer took the room); with none, there is nothing to try
        assert writes == (expected * 2 if had else expected), case
        assert len(spool) == max(0, had - 1) and spool.evicted == len(kept) - len(spool), case
        assert_only_whole_frames(spool)
        assert {i.sha256 for i in spool.oldest(10)} <= {i.sha256 for i in kept}, case
        plan.pop("leave")
        for filler in plan.pop("fillers"):  # the other writer goes away before the next case
            filler.unlink()
    assert spool.write_failures == 3 and spool.written == 2 and spool.evicted == 2
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(failures) == 1 and "could not write" in failures[0].getMessage(), "one log line per burst"

    stored = spool.put(big_image(200), sidecar(3000))  # room again: the burst ends, and says so
    assert stored is not None and spool.written == 3
    assert "writing again after 3 failed write(s)" in caplog.text
    assert_only_whole_frames(spool)
    again = Spool(small_disk / "spool", max_bytes=10**9, min_free_bytes=0)  # a restart finds the same
    assert {i.sha256 for i in again.oldest(10)} == {i.sha256 for i in spool.oldest(10)} and again.quarantined == 0


def test_filling_the_disk_to_the_brim_leaves_only_whole_frames(small_disk, caplog):
    """No other writer: frames go in until the disk is full. The spool's check counts bytes, the
    filesystem whole blocks, so some writes hit ENOSPC for real; each leaves nothing behind, and
    the spool evicts its oldest frame and tries again, so new frames keep coming in."""
    caplog.set_level(logging.INFO, logger="device.spool")
    spool = Spool(small_disk / "spool", max_bytes=10**9, min_free_bytes=0)
    raised = 0
    for i in range(300):
        frame = np.random.default_rng(i).integers(0, 255, (40 + i * 37 % 120, 120, 3), dtype=np.uint8)  # sizes vary
        try:
            spool.put(frame, sidecar(i))
        except SpoolWriteError as exc:  # full even after evicting one: counted, nothing left behind
            assert exc.__cause__.errno == errno.ENOSPC
            raised += 1
        except SpoolError as exc:  # refused before writing (no room even when empty): not a write
            assert "no room" in str(exc)
        assert_only_whole_frames(spool)
        if caplog.text.count("the disk is full") >= 3:
            break
    assert caplog.text.count("the disk is full") >= 3, "the disk never refused a write: the test did not fill it"
    assert spool.write_failures == raised and spool.evicted >= 3 and len(spool) >= 1
    assert spool.written > spool.evicted, "new frames kept coming in"
    again = Spool(small_disk / "spool", max_bytes=10**9, min_free_bytes=0)  # a restart finds the same
    assert {i.sha256 for i in again.oldest(100)} == {i.sha256 for i in spool.oldest(100)} and again.quarantined == 0


def test_the_file_sink_waits_out_a_full_disk(small_disk, caplog):
    """The file sink's disk fills: messages wait in memory (nothing dropped, one log line), and
    are all written once there is room again; a half-written line is ended so readers skip it."""
    import json

    from daemon_helpers import wait_until

    from device.messages import Outbound
    from device.sinks import FileSink

    caplog.set_level(logging.INFO, logger="device.sinks")
    sink = FileSink(small_disk / "messages.jsonl", "edge-inspect/line-1")
    sink.start()
    filler = fill(small_disk, 0)
    try:
        for n in range(50):
            sink.submit(Outbound("stats", "stats", json.dumps({"n": n, "pad": "x" * 200}).encode()))
        assert wait_until(lambda: "cannot write to" in caplog.text, 10)
        assert sink.figures()["queued"] > 0 and sink.figures()["dropped"] == 0
        filler.unlink()
        assert wait_until(lambda: sink.figures()["queued"] == 0, 10), sink.figures()
    finally:
        sink.close(2)
    written = [json.loads(line)["payload"]["n"] for line in (small_disk / "messages.jsonl").read_text().splitlines()
               if line.startswith("{") and line.endswith("}")]
    assert sorted(set(written)) == list(range(50)) and written == sorted(written)
    assert len([r for r in caplog.records if "cannot write to" in r.getMessage()]) == 1, "one line per burst"
    assert "writing to" in caplog.text and sink.figures()["dropped"] == 0
