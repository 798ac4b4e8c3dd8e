"""On site, end to end, with every peer real: the daemon (a subprocess) samples frames of the
shipped photos to moto's S3 server and announces them on mosquitto; `edge-inspect cloud serve`
(a subprocess) batches them, pre-labels them with the bundled model and creates tasks on a real
Label Studio server; annotations submitted through Label Studio's API, as a labeler would, come
back as label rows; `labels export --as-of` before and after gives the two datasets; kill -9 of
serve before and after the batch was submitted loses and duplicates nothing."""

from __future__ import annotations

import shutil
import sqlite3
import time
from typing import Any

from cloud_helpers import CloudServe, cloud_json
from conftest import METAL_TAGS
from daemon_helpers import DaemonProcess, wait_until
from label_studio_api import LabelStudioPerson
from moto_s3 import MotoS3, set_credentials
from test_cloud_serve import BUCKET, cloud_config, daemon_config, frame_states, scratched_photos

from cloud.label_table import read_label_csv
from cloud.labels.local import LocalLabelStore
from device.bundled import bundled_model_path
from device.detector import Detector
from device.images import read_image
from edge_inspect.loopback import free_port

TOKEN_ENV = "EDGE_INSPECT_LABEL_STUDIO_TOKEN"
LINE = "line-1"  # the daemon's thing name: its Label Studio project is edge-inspect-line-1


def project_tasks(client: LabelStudioPerson) -> list[dict[str, Any]]:
    projects = [p for p in client.projects() if p["title"] == f"edge-inspect-{LINE}"]
    return client.tasks(projects[0]["id"]) if projects else []


def photos_the_model_finds_scratches_on(count: int) -> list:
    detector = Detector(bundled_model_path(), conf=0.25)
    found = [p for p in scratched_photos(40) if detector.detect(read_image(p))]
    assert len(found) >= count
    return found[:count]


def batch_states(state_path) -> dict[str, int]:
    with sqlite3.connect(state_path) as db:
        return dict(db.execute("SELECT state, COUNT(*) FROM batches GROUP BY state").fetchall())


def region(value: dict, label: str, rid: str, width: int, height: int) -> dict[str, Any]:
    return {"id": rid, "type": "rectanglelabels", "from_name": "label", "to_name": "image", "origin": "manual",
            "original_width": width, "original_height": height, "image_rotation": 0,
            "value": {**value, "rotation": 0, "rectanglelabels": [label]}}


def annotate(client: LabelStudioPerson, task: dict, result: list[dict], ground_truth: bool) -> int:
    return client.annotate(task["id"], result, ground_truth=ground_truth, lead_time=3.0)


def test_sampled_frames_become_label_studio_tasks_and_reviewed_annotations_become_rows(tmp_path, broker, label_studio):
    set_credentials()
    s3 = MotoS3(free_port(), tmp_path).start()
    s3.client().create_bucket(Bucket=BUCKET)
    photos = photos_the_model_finds_scratches_on(5) + [METAL_TAGS / "images" / "image-2020-04-22-10-15-03-04-cropped-left-top.jpg"]
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    config = cloud_config(tmp_path, broker.port, s3.port,
                          {"backend": "label_studio", "label_studio": {"url": label_studio.url}}, batch_size=6)
    env = {TOKEN_ENV: label_studio.token}
    client = LabelStudioPerson(label_studio.url, label_studio.token)
    state = tmp_path / "labeling.sqlite"
    serve = CloudServe(config, env=env)
    daemon = DaemonProcess(daemon_config(tmp_path, broker.port, s3.port, incoming))
    try:
        for photo in photos[:2]:
            shutil.copy(photo, incoming / photo.name)
        assert wait_until(lambda: frame_states(state).get("pending", 0) >= 1, 90), serve.log_text()[-3000:]
        serve.kill()  # mid-batch: frames taken in, no batch yet
        for photo in photos[2:]:
            shutil.copy(photo, incoming / photo.name)
        assert wait_until(lambda: sum(k.endswith(".jpg") for k in s3.objects(BUCKET)) == 6, 90), daemon.log_text()[-3000:]
        serve = CloudServe(config, env=env)
        assert wait_until(lambda: len(project_tasks(client)) == 6, 120), serve.log_text()[-3000:]
        serve.kill()  # again: the batch is submitted, no answer yet
        serve = CloudServe(config, env=env)
        assert wait_until(lambda: batch_states(state) == {"submitted": 1}, 60), serve.log_text()[-3000:]
        tasks = {t["data"]["key"]: t for t in project_tasks(client)}
        assert len(tasks) == 6  # the restart found the batch's tasks: none imported twice

        with_boxes = [t for t in tasks.values() if t["predictions"] and t["predictions"][0]["result"]]
        without = [t for t in tasks.values() if not (t["predictions"] and t["predictions"][0]["result"])]
        assert len(with_boxes) >= 4 and without, [len(t["predictions"]) for t in tasks.values()]
        before = time.time()
        time.sleep(0.01)  # `before` is strictly earlier than any annotation's time
        with_boxes.sort(key=lambda t: len(t["predictions"][0]["result"]), reverse=True)
        trimmed, kept, moved, pending = with_boxes[:4]  # trimmed: the one with the most pre-labels
        annotate(client, kept, kept["predictions"][0]["result"], ground_truth=True)
        shifted = [dict(r, value={**r["value"], "x": r["value"]["x"] + 2.0}) for r in moved["predictions"][0]["result"]]
        annotate(client, moved, shifted, ground_truth=True)
        annotate(client, trimmed, trimmed["predictions"][0]["result"][:-1], ground_truth=True)  # one pre-label deleted
        annotate(client, pending, pending["predictions"][0]["result"], ground_truth=False)  # not reviewed yet
        blank = without[0]
        drawn = region({"x": 10, "y": 20, "width": 15, "height": 10}, "scratch", "new1",
                       blank["data"]["width"], blank["data"]["height"])
        annotate(client, blank, [drawn], ground_truth=True)
        for other in with_boxes[4:] + without[1:]:
            annotate(client, other, other["predictions"][0]["result"] if other["predictions"] else [], ground_truth=True)

        store = LocalLabelStore(tmp_path / "labels")
        assert wait_until(lambda: len(store.as_of(time.time())) == 5, 60), serve.log_text()[-3000:]
        assert [v.record.status for v in store.history(pending["data"]["key"])] == ["PENDING"]
        assert cloud_json(config, "labels", "status", env=env)["open_batches"][0]["answers_written"] == 6
        # the reviewer accepts the last one: the batch closes
        (answer,) = client.annotations(pending["id"])
        client.update_annotation(answer["id"], ground_truth=True)
        assert wait_until(lambda: frame_states(state).get("labelled") == 6, 60), serve.log_text()[-3000:]
    finally:
        serve.stop()
        daemon.stop()
        s3.stop()

    rows = {r.source_ref: r for r in store.as_of(time.time())}
    assert len(rows) == 6 and all(r.status == "APPROVED" for r in rows.values())
    assert all(len(store.history(key)) == (2 if key == pending["data"]["key"] else 1) for key in rows)
    width = kept["data"]["width"]
    assert len(rows[trimmed["data"]["key"]].boxes) == len(trimmed["predictions"][0]["result"]) - 1
    assert len(rows[blank["data"]["key"]].boxes) == 1
    assert rows[blank["data"]["key"]].boxes[0].left == round(0.10 * blank["data"]["width"], 2)
    moved_rows = rows[moved["data"]["key"]].boxes
    assert abs(moved_rows[0].left - (moved["predictions"][0]["result"][0]["value"]["x"] + 2.0) / 100 * width) < 0.01
    assert len(rows[kept["data"]["key"]].boxes) == len(kept["predictions"][0]["result"])

    empty = cloud_json(config, "labels", "export", "--as-of", str(before), "--out", str(tmp_path / "before.csv"))
    full = cloud_json(config, "labels", "export", "--as-of", "now", "--out", str(tmp_path / "after.csv"))
    assert (empty["rows"], full["rows"]) == (0, 6)
    assert len(read_label_csv(tmp_path / "after.csv")) == 6 and empty["table_sha256"] != full["table_sha256"]
