"""The Label Studio backend against a real Label Studio 1.23 (tests/label_studio_server.py): a batch
goes in with its pre-labels, a labeler answers through the API as the UI would, and `collect`
reads the answers back in pixels. Plus the parts that need no server: settings, conversions.
The server is conftest's session fixture `label_studio`."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import secrets
import socket
import time
import uuid
import xml.etree.ElementTree as ET
from typing import Any

import boto3
import pytest
from botocore.config import Config
from label_studio_api import LabelStudioPerson

from cloud.labeling.label_studio import (
    MAX_URL_EXPIRY_S,
    LabelStudioLabeling,
    LabelStudioSettings,
    LsAnnotation,
    Rectangle,
    chosen_annotation,
    label_config,
    project_title,
    to_box,
)
from cloud.labeling.label_studio_api import LabelStudioApi
from cloud.labeling.service import Batch, Box, LabelingError, Task
from device.redact import redact, remember_secrets
from edge_inspect.loopback import free_port

TOKEN_ENV = "EDGE_INSPECT_TEST_LABEL_STUDIO_TOKEN"
W, H = 640, 480
ODD_CLASS = 'dent & "burr" <x>'  # XML's special characters, in a class name


# -- helpers ----------------------------------------------------------------------------------------


def presigner(settings: LabelStudioSettings):
    """What the labeling loop passes: presigned S3 GET URLs (signed offline; nobody opens them here)."""
    s3 = boto3.client("s3", region_name="eu-west-1", aws_access_key_id="testing", aws_secret_access_key="testing",
                      config=Config(signature_version="s3v4"))  # botocore's default presigns SigV2 in some regions

    def image_url(bucket: str, key: str) -> str:
        return s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                         ExpiresIn=settings.url_expiry_s)

    return image_url


def frame(line: str, name: str, prelabels: list[Box]) -> Task:
    sha = hashlib.sha256(f"{line}/{name}".encode()).hexdigest()
    return Task(sha256=sha, bucket="plant-frames", key=f"edge-inspect/raw/{line}/cam1/2026/11/22/{sha}.jpg",
                thing=line, camera="cam1", width=W, height=H, prelabels=prelabels)


def new_line() -> str:
    return f"line-{uuid.uuid4().hex[:8]}"


def region(x: float, y: float, w: float, h: float, label: str, rid: str) -> dict[str, Any]:
    """A rectangle as Label Studio's UI saves it (percent of the image)."""
    return {"id": rid, "type": "rectanglelabels", "from_name": "label", "to_name": "image", "origin": "manual",
            "original_width": W, "original_height": H, "image_rotation": 0,
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": [label]}}


def same_box(got: Box, want: Box) -> bool:
    return got.class_name == want.class_name and all(
        getattr(got, f) == pytest.approx(getattr(want, f), abs=1e-6) for f in ("left", "top", "width", "height"))


class Labeler:
    """A person at Label Studio, through its API: reads tasks, submits annotations."""

    def __init__(self, client: LabelStudioPerson, user_id: int) -> None:
        self.client, self.user_id = client, user_id

    def tasks(self, project: int) -> dict[str, dict[str, Any]]:
        """The project's tasks (with predictions and annotations) by frame sha256."""
        return {t["data"]["sha256"]: t for t in self.client.tasks(project)}

    def annotate(self, task: dict[str, Any], result: list[dict[str, Any]], *, ground_truth: bool = False,
                 skipped: bool = False) -> int:
        return self.client.annotate(task["id"], result, ground_truth=ground_truth, was_cancelled=skipped,
                                    completed_by=self.user_id, lead_time=4.2)


@pytest.fixture(scope="module")
def admin(label_studio) -> LabelStudioPerson:
    return LabelStudioPerson(label_studio.url, label_studio.token)


@pytest.fixture(scope="module")
def labeler(admin) -> tuple[Labeler, str]:
    email = f"labeler-{uuid.uuid4().hex[:6]}@plant.test"
    user = admin.create_user(email.split("@")[0], email, secrets.token_urlsafe(12))
    return Labeler(admin, user["id"]), email


@pytest.fixture
def settings(label_studio, monkeypatch) -> LabelStudioSettings:
    monkeypatch.setenv(TOKEN_ENV, label_studio.token)
    return LabelStudioSettings(url=label_studio.url, token_env=TOKEN_ENV, timeout_s=30)


# -- against the real server ------------------------------------------------------------------------


def test_a_batch_goes_to_label_studio_and_the_answers_come_back_in_pixels(label_studio, settings, admin, labeler,
                                                                            caplog):
    caplog.set_level(logging.DEBUG)  # every library's records, to show the token is in none of them
    person, email = labeler
    line = new_line()
    kept = [Box(class_name="scratch", left=64, top=48, width=128, height=96, score=0.91),
            Box(class_name="dent", left=320, top=240, width=100, height=50, score=0.42)]
    moved = [Box(class_name="scratch", left=10, top=20, width=30, height=40, score=0.8),
             Box(class_name="dent", left=400, top=300, width=64, height=48, score=0.3)]
    f_kept, f_moved, f_new, f_skip = (frame(line, "kept", kept), frame(line, "moved", moved), frame(line, "new", []),
                                      frame(line, "skip", [Box(class_name="dent", left=1, top=2, width=3, height=4, score=0.5)]))
    batch = Batch(batch_id=f"{line}-1", line=line, created=time.time(), classes=["scratch", "dent"],
                  tasks=[f_kept, f_moved, f_new, f_skip])
    backend = LabelStudioLabeling(settings, image_url=presigner(settings), model_version="metal-tags-yolov8n@abc123")

    ref = backend.submit(batch)
    project = json.loads(ref)["project"]

    # what arrived, as Label Studio shows it
    got = admin.project(project)
    assert got["title"] == f"edge-inspect-{line}"
    assert [e.get("value") for e in ET.fromstring(got["label_config"]).iter("Label")] == ["scratch", "dent"]
    tasks = person.tasks(project)
    assert set(tasks) == {t.sha256 for t in batch.tasks}
    data = tasks[f_kept.sha256]["data"]
    assert data["image"].startswith(f"https://plant-frames.s3.amazonaws.com/{f_kept.key}?")
    assert "X-Amz-Signature=" in data["image"] and f"X-Amz-Expires={MAX_URL_EXPIRY_S}" in data["image"]
    assert {k: data[k] for k in ("sha256", "key", "batch_id", "width", "height")} == {
        "sha256": f_kept.sha256, "key": f_kept.key, "batch_id": batch.batch_id, "width": W, "height": H}
    [prediction] = tasks[f_kept.sha256]["predictions"]
    assert prediction["model_version"] == "metal-tags-yolov8n@abc123"
    assert prediction["score"] == pytest.approx(0.42)  # the least confident box
    first = prediction["result"][0]
    assert first["value"]["rectanglelabels"] == ["scratch"] and first["score"] == pytest.approx(0.91)
    assert (first["original_width"], first["original_height"]) == (W, H)
    assert [first["value"][k] for k in ("x", "y", "width", "height")] == pytest.approx([10, 10, 20, 20])  # percent
    assert tasks[f_new.sha256]["predictions"] == []

    # the labeler: accepts one frame's pre-labels as they are, moves a box and deletes one on another,
    # draws a box on the frame the model saw nothing on, skips the last
    person.annotate(tasks[f_kept.sha256], tasks[f_kept.sha256]["predictions"][0]["result"], ground_truth=True)
    fixed = copy.deepcopy(tasks[f_moved.sha256]["predictions"][0]["result"][:1])  # the dent is deleted
    fixed[0]["value"]["x"] += 5  # 32 px right
    fixed[0]["value"]["y"] += 10  # 48 px down
    person.annotate(tasks[f_moved.sha256], fixed, ground_truth=True)
    drawn = person.annotate(tasks[f_new.sha256], [region(50, 25, 10, 20, "dent", "new1")])  # not starred
    person.annotate(tasks[f_skip.sha256], [], skipped=True)

    progress = backend.collect(batch, ref)
    answers = {a.sha256: a for a in progress.answers}
    assert set(answers) == {f_kept.sha256, f_moved.sha256, f_new.sha256}  # skipped: no answer
    assert all(same_box(g, w) for g, w in zip(answers[f_kept.sha256].boxes, kept, strict=True))
    assert all(b.score is None for b in answers[f_kept.sha256].boxes)
    [one] = answers[f_moved.sha256].boxes
    assert same_box(one, Box(class_name="scratch", left=42, top=68, width=30, height=40))
    [new] = answers[f_new.sha256].boxes
    assert same_box(new, Box(class_name="dent", left=320, top=120, width=64, height=96))
    assert {s: a.approved for s, a in answers.items()} == {f_kept.sha256: True, f_moved.sha256: True, f_new.sha256: False}
    assert {a.labeler for a in answers.values()} == {email}
    assert {a.job for a in answers.values()} == {f"label-studio:{project}"}
    assert all(abs(a.answered_at - time.time()) < 300 for a in answers.values())
    assert not progress.finished and progress.failure is None

    # submitting the same batch again (a crash before the ref was saved) imports nothing
    assert backend.submit(batch) == ref
    assert len(person.tasks(project)) == 4
    assert len(admin.predictions(project)) == 3

    # a reviewer stars the drawn frame; the skipped one gets labelled after all: the batch is finished
    admin.update_annotation(drawn, ground_truth=True)
    skipped_task = person.tasks(project)[f_skip.sha256]
    person.annotate(skipped_task, skipped_task["predictions"][0]["result"], ground_truth=True)
    progress = backend.collect(batch, ref)
    assert len(progress.answers) == 4 and all(a.approved for a in progress.answers)
    assert progress.finished

    assert label_studio.token not in caplog.text
    assert label_studio.token not in repr(backend.settings) + repr(vars(backend))


def test_a_second_batch_of_the_line_shares_its_project_and_can_add_a_class(settings, labeler, admin):
    person, _ = labeler
    line = new_line()
    first = Batch(batch_id=f"{line}-10", line=line, created=time.time(), classes=["scratch"],
                  tasks=[frame(line, "a", [Box(class_name="scratch", left=1, top=1, width=9, height=9, score=0.5)])])
    # `-1` is a prefix of `-10`: the batch filter must be an exact match
    second = Batch(batch_id=f"{line}-1", line=line, created=time.time(), classes=["scratch", ODD_CLASS],
                   tasks=[frame(line, "b", [Box(class_name=ODD_CLASS, left=5, top=5, width=50, height=20, score=0.6)])])
    backend = LabelStudioLabeling(settings, image_url=presigner(settings))

    ref = backend.submit(first)
    project = json.loads(ref)["project"]
    task = person.tasks(project)[first.tasks[0].sha256]
    person.annotate(task, task["predictions"][0]["result"], ground_truth=True)

    assert backend.submit(second) == ref  # same line, same project
    config = admin.project(project)["label_config"]
    assert [e.get("value") for e in ET.fromstring(config).iter("Label")] == ["scratch", ODD_CLASS]
    assert backend.collect(second, ref).answers == []  # the first batch's answer is not the second's
    assert [a.sha256 for a in backend.collect(first, ref).answers] == [first.tasks[0].sha256]
    task = person.tasks(project)[second.tasks[0].sha256]
    person.annotate(task, task["predictions"][0]["result"], ground_truth=True)
    [answer] = backend.collect(second, ref).answers
    assert same_box(answer.boxes[0], Box(class_name=ODD_CLASS, left=5, top=5, width=50, height=20))

    admin.delete_project(project)  # someone deleted the project: the batch can never finish
    assert f"project {project}" in backend.collect(second, ref).failure


def test_a_personal_access_token_works_too(label_studio, admin, monkeypatch):
    """Label Studio 1.23's default kind of token (a JWT refresh token traded for access tokens)."""
    pat = admin.create_personal_access_token()
    monkeypatch.setenv(TOKEN_ENV, pat)
    settings = LabelStudioSettings(url=label_studio.url, token_env=TOKEN_ENV)
    line = new_line()
    batch = Batch(batch_id=f"{line}-1", line=line, created=time.time(), classes=["scratch"], tasks=[frame(line, "a", [])])
    backend = LabelStudioLabeling(settings, image_url=presigner(settings))
    ref = backend.submit(batch)
    assert backend.collect(batch, ref).answers == []


def test_a_refused_token_says_so_without_showing_it(label_studio, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = secrets.token_hex(20)
    monkeypatch.setenv(TOKEN_ENV, wrong)
    settings = LabelStudioSettings(url=label_studio.url, token_env=TOKEN_ENV)
    backend = LabelStudioLabeling(settings, image_url=presigner(settings))
    line = new_line()
    batch = Batch(batch_id=f"{line}-1", line=line, created=0, classes=["scratch"], tasks=[frame(line, "a", [])])
    with pytest.raises(LabelingError) as refused:
        backend.submit(batch)
    message = str(refused.value)
    assert "refused" in message and "401" in message and label_studio.url in message and TOKEN_ENV in message
    with pytest.raises(LabelingError, match="refused"):
        backend.collect(batch, '{"project": 1}')
    for secret in (wrong, label_studio.token):
        assert secret not in message and secret not in caplog.text
    # the hint survives the log redactor whole (it once read `...LEGACY_API_TOKEN=***`), the token stays out
    assert redact(message) == message and "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN to true" in message
    remember_secrets([wrong])
    assert wrong not in redact(f"{message} {wrong}")


def test_an_expired_access_token_is_renewed_from_the_personal_access_token(label_studio, admin):
    """An access token lives 5 minutes: a month-long `cloud serve` renews it, and a server down
    when the client is made is no error until a call is made."""
    pat = admin.create_personal_access_token()
    down = LabelStudioApi(f"http://127.0.0.1:{free_port()}", pat, timeout_s=5)  # no call yet: no error
    down.close()
    api = LabelStudioApi(label_studio.url, pat, timeout_s=30)
    title = f"renew-{uuid.uuid4().hex[:8]}"
    assert api.projects_page(title, 1, 10).items == []
    api.http.headers["Authorization"] = "Bearer expired"  # what the server says of an access token past its time
    assert api.projects_page(title, 1, 10).items == []
    assert api.http.headers["Authorization"] not in ("Bearer expired", f"Bearer {pat}")


def test_a_server_that_is_down_or_hangs_is_a_labeling_error(monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    token = secrets.token_hex(20)
    monkeypatch.setenv(TOKEN_ENV, token)
    line = new_line()
    batch = Batch(batch_id=f"{line}-1", line=line, created=0, classes=["scratch"], tasks=[frame(line, "a", [])])

    down = LabelStudioSettings(url=f"http://127.0.0.1:{free_port()}", token_env=TOKEN_ENV)
    backend = LabelStudioLabeling(down, image_url=presigner(down))
    started = time.monotonic()
    with pytest.raises(LabelingError, match="cannot connect") as failed:
        backend.submit(batch)
    with pytest.raises(LabelingError, match="cannot connect"):
        backend.collect(batch, '{"project": 1}')  # down is not gone: no failure, a retry later
    assert time.monotonic() - started < 10  # no retries with back-off: the loop retries next round
    assert down.base_url in str(failed.value) and "is Label Studio running" in str(failed.value)

    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        hangs = LabelStudioSettings(url=f"http://127.0.0.1:{silent.getsockname()[1]}", token_env=TOKEN_ENV, timeout_s=1)
        with pytest.raises(LabelingError, match="no answer within 1 s") as timed_out:
            LabelStudioLabeling(hangs, image_url=presigner(hangs)).submit(batch)
    for text in (str(failed.value), str(timed_out.value), caplog.text):
        assert token not in text


# -- without a server -------------------------------------------------------------------------------


def test_the_token_comes_from_the_environment_or_a_file_never_the_config(tmp_path, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(LabelingError, match=f"environment variable {TOKEN_ENV} is empty or not set"):
        LabelStudioSettings(url="https://label-studio.plant", token_env=TOKEN_ENV).read_token()
    token_file = tmp_path / "token"
    token_file.write_text("abc123def456\n")
    token = LabelStudioSettings(url="https://label-studio.plant", token_file=token_file).read_token()
    assert token.get_secret_value() == "abc123def456" and "abc123" not in repr(token)
    with pytest.raises(LabelingError, match="cannot read the API token file"):
        LabelStudioSettings(url="https://ls.plant", token_file=tmp_path / "missing").read_token()
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        LabelStudioSettings.model_validate({"url": "https://ls.plant", "token": "abc"})


@pytest.mark.parametrize("bad", [{"url": "ftp://ls.plant"}, {"url": "https://user:pw@ls.plant"},
                                 {"url": "https://ls.plant", "url_expiry_s": MAX_URL_EXPIRY_S + 1},
                                 {"url": "https://ls.plant", "project_prefix": "has space"}])
def test_settings_refuse_what_cannot_work(bad):
    with pytest.raises(ValueError):
        LabelStudioSettings.model_validate(bad)


def test_label_config_escapes_class_names():
    config = label_config(["scratch", ODD_CLASS])
    assert [e.get("value") for e in ET.fromstring(config).iter("Label")] == ["scratch", ODD_CLASS]


def test_a_long_line_name_still_makes_a_valid_unique_title():
    a, b = project_title("edge-inspect", "x" * 64), project_title("edge-inspect", "x" * 63 + "y")
    assert len(a) == len(b) == 50 and a != b
    assert project_title("edge-inspect", "line-1") == "edge-inspect-line-1"


def test_a_rotated_rectangle_becomes_the_upright_box_around_it():
    rect = Rectangle(x=10, y=10, width=10, height=20, rotation=90, rectanglelabels=["dent"])
    box = to_box(rect, 100, 100)  # corners (10,10) (10,20) (-10,20) (-10,10): clockwise about the top-left
    assert [box.left, box.top, box.width, box.height] == pytest.approx([-10, 10, 20, 10])


def test_the_answer_is_the_latest_starred_annotation_else_the_latest():
    def ann(i: int, minute: int, **kw: Any) -> LsAnnotation:
        return LsAnnotation(id=i, updated_at=f"2026-11-22T10:{minute:02d}:00Z", **kw)

    assert chosen_annotation([ann(1, 1), ann(2, 2)]).id == 2
    assert chosen_annotation([ann(1, 1, ground_truth=True), ann(2, 2)]).id == 1
    assert chosen_annotation([ann(1, 1), ann(2, 2, was_cancelled=True)]).id == 1
    assert chosen_annotation([ann(1, 1, was_cancelled=True)]) is None
    assert chosen_annotation([ann(1, 1), ann(2, 2, last_action="accepted")]).approved
