"""The labeling loop against real parts: moto's S3 server holds frames uploaded as a device does,
the bundled model pre-labels them through the device's detector, the replay labeler answers from
the shipped label table, and the on-site label store (DuckDB over Parquet) keeps the rows."""

from __future__ import annotations

import hashlib
import json
import logging

import pytest
from frames import PREFIX, jpeg_of, upload_frame
from moto_s3 import MotoS3, set_credentials

from cloud.ingest.frames import read_frame
from cloud.ingest.state import LabelingState
from cloud.label_table import APPROVED, read_label_csv
from cloud.labeling.loop import BatchRules, LabelingLoop
from cloud.labeling.prelabels import PreLabeler
from cloud.labeling.replay import ReplayLabeling, ReplaySettings
from cloud.labeling.service import Answer, Box, LabelingError, Progress
from cloud.labels.local import LocalLabelStore
from cloud.storage import ObjectStore, StorageSettings
from edge_inspect.loopback import free_port

BUCKET = "plant-frames"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    set_credentials()
    server = MotoS3(free_port(), tmp_path_factory.mktemp("moto")).start()
    yield server
    server.stop()


@pytest.fixture
def bucket(s3, request):
    name = f"frames-{hashlib.sha256(request.node.name.encode()).hexdigest()[:10]}"
    s3.client().create_bucket(Bucket=name)
    return name


def make_loop(tmp_path, s3, bucket, metal_tags, bundled_model, *, service=None, batch_size=50, clock=None):
    store = ObjectStore(StorageSettings(bucket=bucket, prefix=PREFIX), s3.client())
    replay = ReplayLabeling(ReplaySettings(table=metal_tags / "labels.csv", images=metal_tags),
                            read_frame=lambda bucket, key: read_frame(store, key))
    kwargs = {"clock": clock} if clock else {}
    return LabelingLoop(LabelingState(tmp_path / "state.sqlite"), store, PreLabeler(bundled_model),
                        service or replay, LocalLabelStore(tmp_path / "labels"),
                        BatchRules(batch_size=batch_size, max_wait_s=600), **kwargs)


def photos(metal_tags, n, start=0):
    return sorted((metal_tags / "images").glob("*.jpg"))[start:start + n]


def test_frames_become_approved_rows_from_the_reference_table(tmp_path, s3, bucket, metal_tags, bundled_model):
    chosen = photos(metal_tags, 6, 7)  # photos with scratches the model finds
    keys = [upload_frame(s3.client(), bucket, p) for p in chosen]
    loop = make_loop(tmp_path, s3, bucket, metal_tags, bundled_model)
    assert loop.catch_up().new == 6
    assert loop.cut() == []  # 6 < batch_size and nothing has waited max_wait yet
    (batch,) = loop.cut(force=True)
    assert sorted(t.key for t in batch.tasks) == sorted(keys) and batch.classes == ["scratch"]
    assert any(t.prelabels for t in batch.tasks) and all(b.score for t in batch.tasks for b in t.prelabels)
    assert loop.submit_created() == 1
    (collected,) = loop.collect_submitted()
    assert collected.finished and collected.written == 6
    reference = {r.source_ref: r for r in read_label_csv(metal_tags / "labels.csv")}
    rows = {r.source_ref: r for r in loop.labels.as_of(2e9)}
    assert set(rows) == set(keys)
    for key, photo in zip(keys, chosen, strict=True):
        expected = reference[f"images/{photo.name}"]
        assert rows[key].status == APPROVED and rows[key].labeling_job.startswith("replay:")
        assert [(b.left, b.top, b.width, b.height) for b in rows[key].boxes] == \
            [(b.left, b.top, b.width, b.height) for b in expected.boxes]
    assert loop.state.status().frames == {"pending": 0, "batched": 0, "labelled": 6, "set_aside": 0}


def test_bad_uploads_are_set_aside_with_a_log_line_and_the_rest_goes_on(tmp_path, s3, bucket, metal_tags,
                                                                       bundled_model, caplog):
    client = s3.client()
    good = [upload_frame(client, bucket, p) for p in photos(metal_tags, 3)]
    bad_sidecar = upload_frame(client, bucket, photos(metal_tags, 1, 10)[0])
    client.put_object(Bucket=bucket, Key=bad_sidecar[:-4] + ".json", Body=b'{"schema_version": 2, "thing": "x"}')
    # an image that will not decode, under its true sha256 with a valid sidecar
    garbage = b"\xff\xd8\xff\xe0 not really a jpeg"
    digest = hashlib.sha256(garbage).hexdigest()
    donor = upload_frame(client, bucket, photos(metal_tags, 1, 11)[0])
    meta = json.loads(client.get_object(Bucket=bucket, Key=donor[:-4] + ".json")["Body"].read())
    undecodable = donor.rsplit("/", 1)[0] + f"/{digest}.jpg"
    client.put_object(Bucket=bucket, Key=undecodable, Body=garbage)
    client.put_object(Bucket=bucket, Key=undecodable[:-4] + ".json", Body=json.dumps(meta).encode())
    # bytes that are not the ones its name promises
    renamed = donor.rsplit("/", 1)[0] + "/" + "a" * 64 + ".jpg"
    client.put_object(Bucket=bucket, Key=renamed, Body=jpeg_of(photos(metal_tags, 1, 12)[0]))
    client.put_object(Bucket=bucket, Key=renamed[:-4] + ".json", Body=json.dumps(meta).encode())
    client.put_object(Bucket=bucket, Key=f"{PREFIX}/raw/../../etc/passwd.jpg", Body=b"x")

    loop = make_loop(tmp_path, s3, bucket, metal_tags, bundled_model)
    with caplog.at_level(logging.WARNING):
        offered = loop.catch_up()
    assert (offered.new, offered.set_aside) == (4, 4)  # 3 good + the donor; 4 bad
    log = caplog.text
    assert "does not match the device's schema" in log and "not a readable JPEG" in log
    assert "sha256 is not the one in its name" in log and "not a frame key" in log
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert loop.catch_up().set_aside == 0  # every key set aside is remembered, the malformed one too
    assert "not a frame key" not in caplog.text  # logged once, not again at every listing (issue 21)
    assert client.head_object(Bucket=bucket, Key=bad_sidecar)  # nothing deleted
    assert {f.key for f in loop.state.pending()} == set(good) | {donor}


class Scripted:
    """A labeling backend whose answers the test writes: for cases no real labeler produces on demand."""

    name = "scripted"

    def __init__(self) -> None:
        self.answers: dict[str, Answer] = {}
        self.submitted = 0

    def submit(self, batch) -> str:
        self.submitted += 1
        return "scripted"

    def collect(self, batch, ref) -> Progress:
        return Progress(answers=list(self.answers.values()))


def answer(task, boxes, approved=True, at=1795000100.0):
    return Answer(sha256=task.sha256, boxes=boxes, approved=approved, labeler="tester", answered_at=at, job="job-1")


def test_answers_with_unknown_classes_or_boxes_outside_are_set_aside_and_others_written(
        tmp_path, s3, bucket, metal_tags, bundled_model, caplog):
    for p in photos(metal_tags, 4):
        upload_frame(s3.client(), bucket, p)
    service = Scripted()
    loop = make_loop(tmp_path, s3, bucket, metal_tags, bundled_model, service=service)
    loop.catch_up()
    (batch,) = loop.cut(force=True)
    loop.submit_created()
    t = batch.tasks
    service.answers = {
        t[0].sha256: answer(t[0], [Box(class_name="dent", left=1, top=1, width=5, height=5)]),
        t[1].sha256: answer(t[1], [Box(class_name="scratch", left=500, top=10, width=20, height=20)]),
        t[2].sha256: answer(t[2], [Box(class_name="scratch", left=-10, top=-10, width=30, height=30)]),
        t[3].sha256: answer(t[3], [], approved=False),
    }
    with caplog.at_level(logging.WARNING):
        (first,) = loop.collect_submitted()
    assert "class 'dent' is not one of the model's classes" in caplog.text
    assert "lies outside the 450x300 image" in caplog.text
    assert (first.written, first.set_aside, first.finished) == (2, 2, False)
    clipped = loop.labels.history(t[2].key)[-1].record
    assert (clipped.boxes[0].left, clipped.boxes[0].width) == (0.0, 20.0)
    assert loop.labels.history(t[3].key)[-1].record.status == "PENDING"
    assert loop.labels.as_of(2e9) == [clipped]  # PENDING rows are in no dataset
    # the same answers again: nothing new is written
    (again,) = loop.collect_submitted()
    assert (again.written, again.set_aside) == (0, 0)
    # the labeler fixes the class and the reviewer approves the last one: the batch closes
    service.answers[t[0].sha256] = answer(t[0], [Box(class_name="scratch", left=1, top=1, width=5, height=5)])
    service.answers[t[1].sha256] = answer(t[1], [Box(class_name="scratch", left=400, top=10, width=20, height=20)])
    service.answers[t[3].sha256] = answer(t[3], [], approved=True, at=1795000200.0)
    (last,) = loop.collect_submitted()
    assert last.finished and last.written == 3
    assert loop.state.status().frames["labelled"] == 4
    assert [v.record.status for v in loop.labels.history(t[3].key)] == ["PENDING", "APPROVED"]


def test_restart_at_any_step_loses_and_duplicates_nothing(tmp_path, s3, bucket, metal_tags, bundled_model):
    keys = [upload_frame(s3.client(), bucket, p) for p in photos(metal_tags, 5, 20)]
    service = Scripted()
    loop = make_loop(tmp_path, s3, bucket, metal_tags, bundled_model, service=service)
    loop.catch_up()
    (batch,) = loop.cut(force=True)
    # restart before submitting: the batch is submitted once, its frames are not batched again
    loop = make_loop(tmp_path, s3, bucket, metal_tags, bundled_model, service=service)
    assert loop.catch_up().new == 0 and loop.cut(force=True) == []
    assert loop.submit_created() == 1 and loop.submit_created() == 0
    # a crash between noting an answer and confirming it: recover writes it once
    task = batch.tasks[0]
    done = answer(task, [Box(class_name="scratch", left=1, top=1, width=9, height=9)])
    service.answers = {task.sha256: done}
    original_confirm = loop.state.confirm_answer
    loop.state.confirm_answer = lambda *a: (_ for _ in ()).throw(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        loop.collect_submitted()
    loop.state.confirm_answer = original_confirm
    loop = make_loop(tmp_path, s3, bucket, metal_tags, bundled_model, service=service)
    assert loop.recover() == 1
    assert len(loop.labels.history(task.key)) == 1
    (collected,) = loop.collect_submitted()
    assert collected.written == 0 and len(loop.labels.history(task.key)) == 1
    # a crash before the label store had it: recover writes it
    second = batch.tasks[1]
    loop.state.begin_answer(batch.batch_id, second.sha256, "d", answer(second, []).model_dump(), None)
    loop = make_loop(tmp_path, s3, bucket, metal_tags, bundled_model, service=service)
    assert loop.recover() == 1 and len(loop.labels.history(second.key)) == 1
    assert len(keys) == 5


def test_batches_are_cut_by_size_per_line_and_by_wait(tmp_path, s3, bucket, metal_tags, bundled_model):
    now = [1795000000.0]
    for p in photos(metal_tags, 5, 30):
        upload_frame(s3.client(), bucket, p, thing="line-a")
    for p in photos(metal_tags, 2, 40):
        upload_frame(s3.client(), bucket, p, thing="line-b")
    loop = make_loop(tmp_path, s3, bucket, metal_tags, bundled_model, service=Scripted(), batch_size=2,
                     clock=lambda: now[0])
    loop.catch_up()
    first = loop.cut()
    assert sorted((b.line, len(b.tasks)) for b in first) == [("line-a", 2), ("line-a", 2), ("line-b", 2)]
    assert loop.cut() == []  # one line-a frame waits for company or for max_wait
    now[0] = 4e9
    (last,) = loop.cut()
    assert (last.line, len(last.tasks)) == ("line-a", 1)


class Down(Scripted):
    """A backend that is down (or refuses the token) until `up` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.up = False

    def submit(self, batch) -> str:
        if not self.up:
            raise LabelingError("label_studio: cannot reach http://127.0.0.1:9 (connection refused)")
        return super().submit(batch)

    def collect(self, batch, ref) -> Progress:
        if not self.up:
            raise LabelingError("label_studio: http://127.0.0.1:9 refused the API token (401)")
        return super().collect(batch, ref)


def test_a_backend_that_is_down_keeps_the_batch_until_it_is_back(tmp_path, s3, bucket, metal_tags, bundled_model,
                                                                 caplog):
    for p in photos(metal_tags, 2, 50):
        upload_frame(s3.client(), bucket, p)
    service = Down()
    loop = make_loop(tmp_path, s3, bucket, metal_tags, bundled_model, service=service)
    loop.catch_up()
    (batch,) = loop.cut(force=True)
    with caplog.at_level(logging.WARNING):
        assert loop.submit_created() == 0
    assert "not submitted (label_studio: cannot reach" in caplog.text
    assert [b.state for b in loop.state.batches("created")] == ["created"]
    service.up = True
    assert loop.submit_created() == 1
    service.up = False
    with caplog.at_level(logging.WARNING):
        assert loop.collect_submitted() == []
    assert "refused the API token" in caplog.text
    service.up = True
    service.answers = {t.sha256: answer(t, []) for t in batch.tasks}
    (done,) = loop.collect_submitted()
    assert done.finished and loop.state.status().frames["labelled"] == 2
