"""The active-learning spool's disk fills up under the real daemon (`python -m edge_inspect run`, a
subprocess): the spool is a small real filesystem (tmpfs, mounted for the test), the byte quota is
larger than the disk and no free space is reserved, so only the disk itself says "full". Every
frame of a folder camera is sampled and nothing is uploaded, so the disk fills many times over.

`tests/test_spool.py` fills a small disk under the `Spool` class alone; this is the same under
the whole daemon: the spool evicts its oldest frames and keeps going, only whole frames are ever
left on the disk, nothing is logged as a crash, and the daemon still stops cleanly."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess

import pytest
from conftest import METAL_TAGS
from daemon_helpers import DaemonProcess, wait_until, write_config

from device.messages import validate

DISK_SIZE = 1024 * 1024  # about 45 spooled frames of a metal-tag photo (a 20 KB JPEG and its sidecar)
PHOTOS = sorted((METAL_TAGS / "images").glob("*.jpg"))


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@pytest.fixture
def small_spool_disk(tmp_path):
    """A real tmpfs of DISK_SIZE bytes mounted at tmp_path/spool (as in test_spool's `small_disk`);
    unmounted afterwards, pass or fail. Mounting needs root (CAP_SYS_ADMIN): skipped, with the
    reason, where it cannot be done."""
    mnt = tmp_path / "spool"
    mnt.mkdir()
    mounted = _run("mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE},mode=0700", "tmpfs", str(mnt))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here, so no real full disk: {mounted.stderr.strip()}")
    try:
        yield mnt
    finally:
        if _run("umount", str(mnt)).returncode != 0:
            _run("umount", "-l", str(mnt))


def stats(tmp_path) -> list[dict]:
    path = tmp_path / "messages.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    messages = [json.loads(line) for line in lines if line.endswith("}")]  # a line being written is skipped
    return [m["payload"] for m in messages if m["topic"].endswith("/stats")]


def assert_only_whole_frames(spool) -> None:
    """Each frame is a `<sha256>.jpg` whose bytes hash to its name and a `<sha256>.json` sidecar
    that parses and names the same hash; no temporary file, no half of a frame, nothing else but
    an empty quarantine/ folder."""
    everything = sorted(p.relative_to(spool).as_posix() for p in spool.rglob("*"))
    assert not [p for p in everything if p.endswith(".tmp")], everything
    files = [p for p in spool.iterdir() if p.is_file()]
    jpegs = {p.stem for p in files if p.suffix == ".jpg"}
    sidecars = {p.stem for p in files if p.suffix == ".json"}
    assert jpegs == sidecars, f"JPEGs without sidecar: {jpegs - sidecars}; sidecars without JPEG: {sidecars - jpegs}"
    assert len(files) == 2 * len(jpegs), f"other files: {[p.name for p in files if p.suffix not in ('.jpg', '.json')]}"
    assert [p.name for p in spool.iterdir() if not p.is_file()] == ["quarantine"]
    assert not list((spool / "quarantine").iterdir()), "nothing was damaged, nothing set aside"
    for sha in jpegs:
        assert hashlib.sha256((spool / f"{sha}.jpg").read_bytes()).hexdigest() == sha, f"{sha}.jpg is partial"
        meta = json.loads((spool / f"{sha}.json").read_text())
        validate("sidecar", meta)
        assert meta["jpeg_sha256"] == sha


def test_a_full_spool_disk_evicts_keeps_only_whole_frames_and_the_daemon_runs_on(tmp_path, small_spool_disk):
    """175 photos, each sampled, into a 1 MiB disk: the daemon processes them all, the spool evicts
    (`active_learning.evicted` > 0) rather than stop, the disk holds only whole frames, the log has
    no traceback, and SIGTERM still exits 0."""
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    for photo in PHOTOS:
        shutil.copy(photo, incoming / photo.name)
    assert len(PHOTOS) == 175
    spool = small_spool_disk
    config = write_config(
        tmp_path / "config.yaml", 1, [{"id": "station", "source": str(incoming)}],
        transport="none",  # the file sink (tmp_path/messages.jsonl, not on the small disk) is the only sink
        active_learning={
            "enabled": True,
            "strategies": [{"name": "all", "type": "random", "percent": 100}],
            "limits": {"per_minute": 100000, "per_hour": 100000, "per_day": 100000},
            "dedup": {"enabled": False},
            "spool": {"path": str(spool), "max_bytes": 4 * DISK_SIZE, "min_free_bytes": 0},
            "upload": {"enabled": False},
        })
    daemon = DaemonProcess(config)

    def settled() -> bool:
        """Every photo inspected, and every sample the inference stage took handled by the spool
        writer (stored, failed or dropped): nothing is being written now."""
        if daemon.proc.poll() is not None or not stats(tmp_path):
            return daemon.proc.poll() is not None
        last = stats(tmp_path)[-1]
        al = last["active_learning"]
        return (last["cameras"]["station"]["frames_processed"] == len(PHOTOS)
                and al["written"] + al["write_failures"] + al["dropped"] == len(PHOTOS))

    try:
        assert wait_until(settled, 240), daemon.log_text()[-3000:]
        assert daemon.proc.poll() is None, f"the daemon died: {daemon.log_text()[-3000:]}"
        last = stats(tmp_path)[-1]
        validate("stats", last)
        al = last["active_learning"]
        assert al["evicted"] > 0, f"the disk never filled: {al}"
        assert al["written"] > al["evicted"], f"new frames kept coming in: {al}"
        assert al["spooled"] == al["written"] - al["evicted"], al
        assert al["quarantined"] == 0, al

        assert_only_whole_frames(spool)
        assert len(list(spool.glob("*.jpg"))) == al["spooled"], "the folder is what the spool's index says"
        log = daemon.log_text()
        assert "Traceback" not in log and '"exception"' not in log, log[-3000:]
        assert "spool: evicted" in log

        daemon.signal(signal.SIGTERM)
        assert daemon.wait(10) == 0, daemon.log_text()[-3000:]
        assert_only_whole_frames(spool)
        assert "Traceback" not in daemon.log_text()
    finally:
        daemon.stop()
