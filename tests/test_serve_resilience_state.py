"""The labeling state file on the bad days of issue 21 the review found after the first fixes, in
process with real files: a lost file is no first start (the label store is asked, one query); a
`--rebuild-state` on a sound file reconciles it with the store; a file the service cannot open or
write is not called damaged (nothing is set aside); a full disk at start waits; one lock per file
whatever path leads to it; two files kept aside in one second are both kept.
Real peers: moto's S3 server, the on-site label store, SQLite; a tmpfs mount for the full disk."""

from __future__ import annotations

import hashlib
import logging
import shutil
import sqlite3
import subprocess
import threading
import time

import pytest
from daemon_helpers import wait_until
from frames import PREFIX
from test_serve_resilience import Scripted, frame

import cloud.ingest.state as state_module
from cloud.ingest.state import LabelingState, StateDamaged, StateError, StateFull, StateMissing
from cloud.ingest.state_lock import StateInUse, StateLock
from cloud.label_table import APPROVED, LabelRecord
from cloud.labeling.loop import BatchRules, LabelingLoop
from cloud.labeling.prelabels import PreLabeler
from cloud.labeling.rebuild import refuse_lost_state
from cloud.labeling.serve import open_waiting
from cloud.labeling.service import Batch
from cloud.labels.local import LocalLabelStore
from cloud.labels.versions import LabelVersion
from cloud.storage import ObjectStore, StorageSettings

SETTINGS = StorageSettings(bucket="plant-frames", prefix=PREFIX)


def row(key: str, status: str = APPROVED) -> LabelVersion:
    return LabelVersion(LabelRecord(source_ref=key, image_width=640, image_height=480, boxes=(), status=status,
                                    event_time=1795000100.0, labeling_job="job-1"))


class Counted(LocalLabelStore):
    """The on-site store, counting the queries a caller makes."""

    def __init__(self, root) -> None:
        super().__init__(root)
        self.calls: list[str] = []

    def history(self, source_ref):
        self.calls.append("history")
        return super().history(source_ref)

    def known(self, prefix):
        self.calls.append("known")
        return super().known(prefix)


# -- a lost state file -------------------------------------------------------------------------------


def test_a_lost_state_is_refused_when_the_label_store_holds_this_buckets_frames_and_a_first_start_passes(tmp_path):
    labels = Counted(tmp_path / "labels")
    path = tmp_path / "labeling.sqlite"
    refuse_lost_state(path, labels, SETTINGS)  # an empty store: a first start
    labels.append([row("photos/scratch-01.jpg"), row(f"other-plant/raw/line-1/cam/2026/11/17/{'a' * 64}.jpg")])
    refuse_lost_state(path, labels, SETTINGS)  # photos of a label table, another bucket's prefix: still a first start
    labels.append([row(frame(1).key), row(frame(2).key, "PENDING")])
    labels.calls.clear()
    with pytest.raises(StateMissing, match=r"holds label rows for 2 frames.*fix `labeling.state_path`.*--rebuild-state"):
        refuse_lost_state(path, labels, SETTINGS)
    assert labels.calls == ["known"]  # one query for the whole store
    assert not path.exists()


def make_loop(tmp_path, moto, labels, bundled_model) -> LabelingLoop:
    store = ObjectStore(StorageSettings(bucket="frames-state", prefix=PREFIX), moto.client())
    return LabelingLoop(LabelingState(tmp_path / "state.sqlite"), store, PreLabeler(bundled_model), Scripted(), labels,
                        BatchRules(batch_size=4, max_wait_s=0.0))


def test_a_rebuild_on_a_sound_state_marks_labelled_the_frames_the_store_holds_as_approved(
        tmp_path, moto, bundled_model):
    """An older backup restored: frames it still has pending or batched were labelled since."""
    labels = Counted(tmp_path / "labels")
    loop = make_loop(tmp_path, moto, labels, bundled_model)
    frames = [frame(n) for n in range(4)]
    for f in frames:
        loop.state.add_pending(f)
    batch = Batch.model_validate({"batch_id": "b-1", "line": "line-1", "created": 1.0, "classes": ["scratch"],
                                  "tasks": [{"sha256": f.sha256, "bucket": "frames-state", "key": f.key,
                                             "thing": f.thing, "camera": f.camera, "width": 640, "height": 480,
                                             "prelabels": []} for f in frames[:2]]})
    loop.state.create_batch(batch, "scripted")  # frames 0, 1 batched, not submitted yet
    labels.append([row(frames[0].key), row(frames[1].key), row(frames[2].key), row(frames[3].key, "PENDING")])
    labels.calls.clear()

    rebuilt = loop.rebuild_from_labels()
    assert (rebuilt.labelled, rebuilt.set_aside, rebuilt.marked) == (3, 1, 3)
    assert labels.calls == ["known"]  # one query for the whole store, no history per key
    states = {f.sha256: s for f, s in zip(frames, ["labelled", "labelled", "labelled", "pending"], strict=True)}
    with loop.state._lock:
        assert dict(loop.state.db.execute("SELECT sha256, state FROM frames").fetchall()) == states
    assert loop.state.batches("created") == [] and len(loop.state.batches("done")) == 1  # not sent to labelers
    assert [f.sha256 for f in loop.state.pending()] == [frames[3].sha256]


# -- a file the service cannot use is not a damaged file ---------------------------------------------


def test_a_folder_at_the_state_path_is_no_damaged_state_and_is_never_set_aside(tmp_path):
    path = tmp_path / "labeling.sqlite"
    path.mkdir()
    for rebuild in (False, True):
        with pytest.raises(StateError, match="is a folder, not a file: fix `labeling.state_path`") as raised:
            LabelingState(path, rebuild=rebuild)
        assert not isinstance(raised.value, StateDamaged)
    assert path.is_dir() and not [p for p in tmp_path.iterdir() if ".damaged-" in p.name]


@pytest.fixture
def read_only(tmp_path):
    """Makes a file read-only for this process, root included: `chattr +i` where it works
    (root ignores file modes), else mode 0444 (a non-root user)."""
    made = []

    def make(path):
        done = shutil.which("chattr") and subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0
        if done:
            made.append(path)
        else:
            path.chmod(0o444)
            with pytest.raises(PermissionError):  # the fixture's own check: it really is read-only here
                path.open("r+b")
        return path

    yield make
    for path in made:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_a_read_only_state_is_read_by_status_refused_for_a_loop_with_the_access_fix_and_never_set_aside(
        tmp_path, read_only):
    path = tmp_path / "labeling.sqlite"
    state = LabelingState(path)
    state.add_pending(frame(1))
    state.close()
    read_only(path)
    for rebuild in (False, True):
        try:
            state = LabelingState(path, rebuild=rebuild)
        except StateError as exc:  # SQLite may already refuse to open it in WAL mode: not as damaged either
            assert not isinstance(exc, StateDamaged) and "readable and writable" in str(exc)
            continue
        if not rebuild:
            assert state.status().frames["pending"] == 1  # what `labels status` reads
        with pytest.raises(StateError, match="readable and writable by the user") as raised:
            state.probe_write()  # what `cloud serve` and `cloud label` do at start
        assert not isinstance(raised.value, StateDamaged) and "--rebuild-state" not in str(raised.value)
        state.close()
    assert not [p for p in tmp_path.iterdir() if ".damaged-" in p.name]


# -- a full disk at start ------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs mounted at tmp_path/disk (root), filled by `fill`, freed by `free`."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True)
    assert mounted.returncode == 0, f"this test mounts a tmpfs (run as root): {mounted.stderr.decode()}"
    filler = disk / "filler"

    class Disk:
        path = disk

        @staticmethod
        def fill() -> None:
            subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=4k"], capture_output=True)

        @staticmethod
        def free() -> None:
            filler.unlink(missing_ok=True)

    yield Disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


@pytest.mark.parametrize("when", ["no state yet", "a closed state"])
def test_a_full_state_disk_at_start_waits_logged_once_and_starts_when_space_is_freed(when, small_disk, caplog):
    path = small_disk.path / "labeling.sqlite"
    if when == "a closed state":
        LabelingState(path).close()  # no -wal, no -shm: opening needs space
    small_disk.fill()
    with pytest.raises(StateFull):
        LabelingState(path)
    caplog.set_level(logging.INFO)
    stop, opened = threading.Event(), []
    thread = threading.Thread(target=lambda: opened.append(open_waiting(lambda: LabelingState(path), stop)))
    thread.start()
    try:
        assert wait_until(lambda: "serve: cannot start yet" in caplog.text, 10), caplog.text
        assert thread.is_alive()  # waiting, not gone
        small_disk.free()
        thread.join(30)
    finally:
        stop.set()
        thread.join(10)
    assert opened and isinstance(opened[0], LabelingState), caplog.text
    assert opened[0].status().frames["pending"] == 0
    opened[0].close()
    assert caplog.text.count("cannot start yet") == 1 and "serve: resumed" in caplog.text


def test_a_stop_ends_the_wait_for_space_at_once(small_disk):
    small_disk.fill()
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    started = time.monotonic()
    assert open_waiting(lambda: LabelingState(small_disk.path / "labeling.sqlite"), stop) is None
    assert time.monotonic() - started < 3  # not the next try's pause


# -- one lock per file; every damaged file kept -------------------------------------------------------


def test_a_state_reached_through_a_symlink_shares_the_lock(tmp_path):
    real = tmp_path / "b" / "labeling.sqlite"
    real.parent.mkdir()
    LabelingState(real).close()
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "labeling.sqlite").symlink_to(real)  # another path to the same file, in another folder
    first = StateLock(real).acquire()
    try:
        with pytest.raises(StateInUse):
            StateLock(tmp_path / "a" / "labeling.sqlite").acquire()
    finally:
        first.release()


def test_two_damaged_files_kept_aside_in_one_second_are_both_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(state_module.time, "strftime", lambda fmt, t=None: "20261207T120000")  # the same second
    path = tmp_path / "labeling.sqlite"
    contents = []
    for n in range(2):
        contents.append(hashlib.sha256(str(n).encode()).hexdigest().encode())
        path.write_bytes(contents[-1])  # not a database
        LabelingState(path, rebuild=True).close()
    kept = sorted(p for p in tmp_path.iterdir() if ".damaged-" in p.name)
    assert sorted(p.read_bytes() for p in kept) == sorted(contents)


def test_another_database_with_a_frames_table_is_refused_as_no_state_and_left_unwritten(tmp_path):
    path = tmp_path / "labeling.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE frames (x INTEGER)")
    with pytest.raises(StateDamaged, match="holds no labeling tables"):
        LabelingState(path)
    with sqlite3.connect(path) as db:
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["frames"]  # nothing added to it


def test_a_label_store_that_cannot_be_asked_at_start_is_waited_for(tmp_path, caplog):
    """Where no state exists, the start asks the label store (is this a first start?): an outage
    there is waited for like a full disk, not an exit."""
    from cloud.labels.store import LabelStoreError

    down = [LabelStoreError("athena query q-1 FAILED: throttled")] * 2

    def open_loop():
        if down:
            raise down.pop()
        return "opened"

    caplog.set_level(logging.INFO)
    assert open_waiting(open_loop, threading.Event()) == "opened"
    assert caplog.text.count("cannot start yet: athena query q-1 FAILED") == 1 and "serve: resumed" in caplog.text
