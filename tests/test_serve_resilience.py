"""One bad item never stops `cloud serve`, and its state file is guarded (issue 21), in process:
the serve loop runs on a thread against moto's S3 server, the bundled model pre-labels, the
on-site label store keeps the rows, the state is the real SQLite file. The labeling backend is
scripted (answers the test writes), as nothing else answers on demand with a hostile answer.
The same as an operator runs it (subprocesses, Label Studio): test_serve_resilience_cli.py."""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading

import pytest
from daemon_helpers import wait_until
from frames import PREFIX, jpeg_of, upload_frame

from cloud.ingest.state import LabelingState, PendingFrame, StateError, StateFull
from cloud.ingest.state_lock import StateInUse, StateLock
from cloud.label_table import APPROVED, LabelRecord
from cloud.labeling.loop import BatchRules, LabelingLoop
from cloud.labeling.prelabels import PreLabeler
from cloud.labeling.serve import Timers, serve
from cloud.labeling.service import Answer, Box, Progress
from cloud.labels.local import LocalLabelStore
from cloud.labels.versions import LabelVersion
from cloud.storage import ObjectStore, StorageSettings


class Scripted:
    """A labeling backend whose answers the test writes."""

    name = "scripted"

    def __init__(self) -> None:
        self.answers: dict[str, Answer] = {}
        self.batches: list = []

    def submit(self, batch) -> str:
        if batch.batch_id not in [b.batch_id for b in self.batches]:
            self.batches.append(batch)
        return "scripted"

    def collect(self, batch, ref) -> Progress:
        return Progress(answers=[a for a in self.answers.values() if a.sha256 in {t.sha256 for t in batch.tasks}])


def answer(task, boxes, at=1795000100.0) -> Answer:
    return Answer(sha256=task.sha256, boxes=boxes, approved=True, labeler="tester", answered_at=at, job="job-1")


@pytest.fixture
def bucket(moto, request):
    name = f"frames-{hashlib.sha256(request.node.name.encode()).hexdigest()[:10]}"
    moto.client().create_bucket(Bucket=name)
    return name


def make_loop(tmp_path, moto, bucket, bundled_model, service, batch_size=4) -> LabelingLoop:
    store = ObjectStore(StorageSettings(bucket=bucket, prefix=PREFIX), moto.client())
    return LabelingLoop(LabelingState(tmp_path / "state.sqlite"), store, PreLabeler(bundled_model), service,
                        LocalLabelStore(tmp_path / "labels"), BatchRules(batch_size=batch_size, max_wait_s=0.0))


def photos(metal_tags, n, start=0):
    return sorted((metal_tags / "images").glob("*.jpg"))[start:start + n]


class Serving:
    """serve() on a thread, as `cloud serve` runs it (fast timers); `error` holds what ended it."""

    def __init__(self, loop: LabelingLoop, retrain=None) -> None:
        self.stop = threading.Event()
        self.error: BaseException | None = None
        timers = Timers(catch_up_s=3600, poll_s=0.2, tick_s=0.2, retrain_s=0.2)
        self.thread = threading.Thread(target=self._run, args=(loop, timers, retrain), daemon=True)
        self.thread.start()

    def _run(self, loop, timers, retrain) -> None:
        try:
            serve(loop, None, timers, self.stop, retrain)
        except BaseException as exc:  # the test asserts there was none
            self.error = exc

    def running(self) -> bool:
        return self.thread.is_alive() and self.error is None

    def close(self) -> None:
        self.stop.set()
        self.thread.join(20)
        assert not self.thread.is_alive()


def frames_by_state(loop: LabelingLoop) -> dict[str, str]:
    with sqlite3.connect(loop.state.path) as db:
        return dict(db.execute("SELECT sha256, state FROM frames").fetchall())


def reasons(loop: LabelingLoop) -> dict[str, str]:
    with sqlite3.connect(loop.state.path) as db:
        return dict(db.execute("SELECT sha256, reason FROM frames WHERE state = 'set_aside'").fetchall())


# -- one bad item ------------------------------------------------------------------------------------


@pytest.mark.parametrize("harm", ["changed", "deleted"])
def test_a_pending_frame_changed_or_deleted_in_the_bucket_is_set_aside_and_its_line_goes_on(
        harm, tmp_path, moto, bucket, metal_tags, bundled_model, caplog):
    client = moto.client()
    keys = [upload_frame(client, bucket, p) for p in photos(metal_tags, 4, 7)]
    service = Scripted()
    loop = make_loop(tmp_path, moto, bucket, bundled_model, service)
    assert loop.catch_up().new == 4  # checked and pending; then the object is harmed before batching
    bad = keys[1]
    if harm == "changed":
        client.put_object(Bucket=bucket, Key=bad, Body=jpeg_of(photos(metal_tags, 1, 30)[0]))
    else:
        client.delete_object(Bucket=bucket, Key=bad)
    bad_sha = bad.rsplit("/", 1)[1][:-4]
    caplog.set_level(logging.INFO)
    serving = Serving(loop)
    try:
        assert wait_until(lambda: len(service.batches) == 1, 60), caplog.text[-3000:]
        (batch,) = service.batches
        assert sorted(t.key for t in batch.tasks) == sorted(k for k in keys if k != bad)  # the others batched
        service.answers = {t.sha256: answer(t, []) for t in batch.tasks}
        assert wait_until(lambda: list(frames_by_state(loop).values()).count("labelled") == 3, 30), caplog.text[-3000:]
        assert serving.running(), serving.error
    finally:
        serving.close()
    assert serving.error is None
    assert frames_by_state(loop)[bad_sha] == "set_aside"
    expected = "sha256 is not the one in its name" if harm == "changed" else "deleted from the bucket"
    assert expected in reasons(loop)[bad_sha]
    assert sum(f"frame {bad_sha[:12]} set aside" in r.getMessage() for r in caplog.records) == 1  # one line


def test_an_answer_the_label_rules_refuse_is_set_aside_and_the_rest_of_the_batch_is_written(
        tmp_path, moto, bucket, metal_tags, bundled_model, caplog):
    for p in photos(metal_tags, 3, 12):
        upload_frame(moto.client(), bucket, p)
    service = Scripted()
    loop = make_loop(tmp_path, moto, bucket, bundled_model, service, batch_size=3)
    loop.catch_up()
    (batch,) = loop.cut()
    t = batch.tasks
    # numbers a JSON reply can hold that are no box: NaN passes the clipping, the label rules refuse it
    service.answers = {t[0].sha256: answer(t[0], [Box(class_name="scratch", left=float("nan"), top=1, width=5,
                                                      height=5)]),
                       t[1].sha256: answer(t[1], [Box(class_name="scratch", left=1, top=1, width=5, height=5)]),
                       t[2].sha256: answer(t[2], [])}
    caplog.set_level(logging.WARNING)
    serving = Serving(loop)
    try:
        assert wait_until(lambda: loop.state.status().batches["done"] == 1, 60), caplog.text[-3000:]
        assert serving.running()
    finally:
        serving.close()
    assert loop.labels.history(t[0].key) == []
    assert [len(loop.labels.history(x.key)) for x in t[1:]] == [1, 1]
    assert frames_by_state(loop) == {t[0].sha256: "set_aside", t[1].sha256: "labelled", t[2].sha256: "labelled"}
    assert "answer set aside" in caplog.text


def test_an_unconfirmed_answer_that_is_no_label_row_is_set_aside_at_start_not_at_every_start(
        tmp_path, moto, bucket, metal_tags, bundled_model):
    upload_frame(moto.client(), bucket, photos(metal_tags, 1, 15)[0])
    loop = make_loop(tmp_path, moto, bucket, bundled_model, Scripted(), batch_size=1)
    loop.catch_up()
    (batch,) = loop.cut()
    task = batch.tasks[0]
    poisoned = answer(task, [Box(class_name="scratch", left=float("inf"), top=1, width=5, height=5)])
    loop.state.begin_answer(batch.batch_id, task.sha256, "d", poisoned.model_dump(), None)  # a crash came next
    assert loop.recover() == 1  # set aside, confirmed: not raised
    assert loop.state.unconfirmed() == [] and loop.labels.history(task.key) == []


def test_a_retraining_check_that_fails_never_stops_serve(tmp_path, moto, bucket, metal_tags, bundled_model, caplog):
    upload_frame(moto.client(), bucket, photos(metal_tags, 1, 16)[0])
    service = Scripted()
    loop = make_loop(tmp_path, moto, bucket, bundled_model, service, batch_size=1)
    calls = []

    def retrain():
        calls.append(1)
        raise RuntimeError("registry: version 3 has no card")

    caplog.set_level(logging.WARNING)
    serving = Serving(loop, retrain)
    try:
        assert wait_until(lambda: len(calls) >= 3 and len(service.batches) == 1, 30), caplog.text[-3000:]
        assert serving.running()
    finally:
        serving.close()
    assert caplog.text.count("the retraining check failed (RuntimeError: registry: version 3 has no card)") == 1


# -- a full disk under the state ---------------------------------------------------------------------


def test_a_full_state_disk_pauses_serve_and_it_resumes_when_space_is_freed(
        tmp_path, moto, bucket, metal_tags, bundled_model, caplog):
    for p in photos(metal_tags, 3, 20):
        upload_frame(moto.client(), bucket, p)
    service = Scripted()
    loop = make_loop(tmp_path, moto, bucket, bundled_model, service, batch_size=3)
    db = loop.state.db
    # SQLite's own ceiling on the file's size, at its size now: every write that needs a new page
    # fails with SQLITE_FULL ("database or disk is full"), exactly as on a full disk. Frames of an
    # earlier day fill the pages there are, so that the next frame needs a new one.
    db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
    with pytest.raises(StateFull):
        for n in range(1000):
            loop.state.add_known([(frame(n), "labelled", None)])
    tries = []  # every write of a new frame the loop tries while paused
    add_pending = loop.state.add_pending
    loop.state.add_pending = lambda f: (tries.append(f.sha256), add_pending(f))[1]
    caplog.set_level(logging.INFO)
    serving = Serving(loop)
    try:
        assert wait_until(lambda: "serve: paused: cannot write the labeling state" in caplog.text, 30), caplog.text[-3000:]
        assert wait_until(lambda: len(tries) >= 2, 10), tries  # the paused loop tries the write again
        assert serving.running() and loop.state.status().frames["pending"] == 0
        with loop.state._lock:  # space is freed
            db.execute("PRAGMA max_page_count = 1073741823")
        assert wait_until(lambda: len(service.batches) == 1, 90), caplog.text[-3000:]
        assert wait_until(lambda: "serve: resumed" in caplog.text, 10) and serving.running()
    finally:
        serving.close()
    assert caplog.text.count("serve: paused") == 1  # logged once, however many tries


# -- the state file ----------------------------------------------------------------------------------


def frame(n: int) -> PendingFrame:
    sha = hashlib.sha256(str(n).encode()).hexdigest()
    return PendingFrame(sha, f"{PREFIX}/raw/line-1/cam/2026/11/17/{sha}.jpg", "line-1", "cam", 640, 480, 1.0 + n)


def test_an_empty_truncated_or_emptied_state_file_is_refused_not_taken_as_new(tmp_path):
    path = tmp_path / "labeling.sqlite"
    state = LabelingState(path)  # no file: a new state
    for n in range(300):
        state.add_pending(frame(n))
    state.close()
    healthy = path.read_bytes()

    path.write_bytes(b"")
    with pytest.raises(StateError, match=r"is empty \(0 bytes\).*--rebuild-state"):
        LabelingState(path)
    assert path.read_bytes() == b""  # refused, not written over

    path.write_bytes(healthy[: len(healthy) // 2])
    with pytest.raises(StateError, match="--rebuild-state"):
        LabelingState(path).status()

    path.unlink()
    sqlite3.connect(path).execute("PRAGMA user_version = 1").connection.close()  # a database, but not ours
    with pytest.raises(StateError, match="holds no labeling tables"):
        LabelingState(path)

    path.write_bytes(healthy)
    assert LabelingState(path).status().frames["pending"] == 300


def test_a_rebuild_keeps_the_bad_file_aside_and_an_unfinished_rebuild_is_refused(tmp_path):
    path = tmp_path / "labeling.sqlite"
    path.write_bytes(b"")
    state = LabelingState(path, rebuild=True)
    assert state.rebuilding
    kept = [p for p in tmp_path.iterdir() if ".damaged-" in p.name]
    assert len(kept) == 1 and kept[0].read_bytes() == b""  # nothing deleted
    state.close()
    with pytest.raises(StateError, match="rebuild from the label store did not finish"):
        LabelingState(path)
    state = LabelingState(path, rebuild=True)
    state.rebuild_done()
    state.close()
    assert not LabelingState(path).rebuilding


def test_a_state_written_before_the_marker_row_opens_as_it_was(tmp_path):
    path = tmp_path / "labeling.sqlite"
    state = LabelingState(path)
    state.add_pending(frame(1))
    state.db.execute("DROP TABLE meta")  # the layout of the files written before this change
    state.close()
    assert LabelingState(path).status().frames["pending"] == 1


def test_one_loop_per_state_file(tmp_path):
    path = tmp_path / "labeling.sqlite"
    first = StateLock(path).acquire()
    with pytest.raises(StateInUse, match=rf"in use by another labeling loop \(pid {__import__('os').getpid()}"):
        StateLock(path).acquire()
    first.release()
    StateLock(path).acquire().release()



def test_a_rebuild_marks_what_the_label_store_holds_and_leaves_the_rest_to_the_listing(
        tmp_path, moto, bucket, metal_tags, bundled_model):
    keys = [upload_frame(moto.client(), bucket, p) for p in photos(metal_tags, 3, 50)]
    labels = LocalLabelStore(tmp_path / "labels")
    for key, status in ((keys[0], APPROVED), (keys[1], "PENDING")):
        labels.append([LabelVersion(LabelRecord(source_ref=key, image_width=450, image_height=300, boxes=(),
                                                status=status, event_time=1795000100.0, labeling_job="job-1"))])
    (tmp_path / "state.sqlite").write_bytes(b"")
    store = ObjectStore(StorageSettings(bucket=bucket, prefix=PREFIX), moto.client())
    loop = LabelingLoop(LabelingState(tmp_path / "state.sqlite", rebuild=True), store, PreLabeler(bundled_model),
                        Scripted(), labels, BatchRules(batch_size=4, max_wait_s=0.0))
    assert loop.state.rebuilding
    rebuilt = loop.rebuild_from_labels()
    assert (rebuilt.labelled, rebuilt.set_aside) == (1, 1) and not loop.state.rebuilding
    assert loop.catch_up().new == 1  # the frame no row names is taken in again
    sha = [k.rsplit("/", 1)[1][:-4] for k in keys]
    assert frames_by_state(loop) == {sha[0]: "labelled", sha[1]: "set_aside", sha[2]: "pending"}
    assert "none APPROVED" in reasons(loop)[sha[1]]
    loop.state.close()
    assert LabelingState(tmp_path / "state.sqlite").status().frames["labelled"] == 1  # opens without --rebuild-state


SECOND_SIGTERM = """
import logging, os, signal, sys, threading, time
from cloud.labeling.serve import Stopper, Timers, serve
logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(message)s")
listing = threading.Event()

class Blocked:  # a loop whose listing never returns (S3 that accepts a connection and never answers)
    stopping = None
    def recover(self):
        return 0
    def catch_up(self):
        listing.set()
        threading.Event().wait()  # a lock wait: a signal's handler interrupts it

stopper = Stopper(grace_s=30).install()

def operator():
    listing.wait(10)
    os.kill(os.getpid(), signal.SIGTERM)
    stopper.event.wait(10)
    time.sleep(0.5)  # the operator's second SIGTERM, half a second on
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=operator, daemon=True).start()
serve(Blocked(), None, Timers(catch_up_s=3600, poll_s=3600), stopper.event, None, stopper)
print("serve returned")
"""


def test_a_second_sigterm_cuts_a_blocked_round_short_and_the_log_says_after_how_long():
    """The operator's second SIGTERM, long before the grace period: the log gives the real time. In
    a child process: signals sent to the test runner itself would reach whatever else it loaded."""
    import re
    import subprocess
    import sys

    from conftest import REPO

    done = subprocess.run([sys.executable, "-c", SECOND_SIGTERM], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "serve returned" in done.stdout, done.stdout + done.stderr
    (took,) = re.findall(r"still blocked ([0-9.]+) s after the stop", done.stdout)
    assert 0.4 <= float(took) < 5, done.stdout  # not the 30 s grace period
