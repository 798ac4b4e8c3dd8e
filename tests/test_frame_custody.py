"""Issue 21, chain of custody for frames: a frame's bytes are checked against the sha256 in its key
whenever they are read (batching and pre-labels through `read_frame`, the dataset copy), its
sidecar's `jpeg_sha256` is compared with the JPEG, a dataset records and rechecks every image's
sha256, and a device upload never overwrites an object. Real peers: moto's S3 server, the shipped
metal-tag photos, the device's own spool and uploader."""

from __future__ import annotations

import hashlib
import json
import logging
import threading

import cv2
import numpy as np
import pytest
from frames import PREFIX, jpeg_of, upload_frame

from cloud.dataset import DatasetSplit, write_yolo_dataset
from cloud.ingest.frames import FrameRejected, offer, read_frame
from cloud.ingest.state import LabelingState
from cloud.label_table import APPROVED, BoxLabel, LabelRecord, read_label_csv
from cloud.pipeline.evaluate import PRODUCTION_TEST, NoSubset, photos_subset
from cloud.pipeline.images import TrainingImages
from cloud.pipeline.split import SplitParams, assign
from cloud.storage import ObjectStore, StorageSettings
from device.config import UploadConfig
from device.spool import Spool
from device.uploader import Uploader, object_keys


@pytest.fixture
def bucket(moto, request):
    name = f"custody-{hashlib.sha256(request.node.name.encode()).hexdigest()[:10]}"
    moto.client().create_bucket(Bucket=name)
    return name


def store_of(moto, bucket) -> ObjectStore:
    return ObjectStore(StorageSettings(bucket=bucket, prefix=PREFIX), moto.client())


def photos(metal_tags, n, start=0):
    return sorted((metal_tags / "images").glob("*.jpg"))[start:start + n]


# -- every read of a frame checks its bytes -------------------------------------------------------

def test_read_frame_refuses_an_object_changed_after_ingest(moto, bucket, metal_tags, tmp_path):
    first, other = photos(metal_tags, 2, 3)
    key = upload_frame(moto.client(), bucket, first)
    store = store_of(moto, bucket)
    state = LabelingState(tmp_path / "state.sqlite")
    assert offer(state, store, [key], PREFIX, "test").new == 1
    assert read_frame(store, key).shape[:2] == cv2.imread(str(first)).shape[:2]
    # the object is replaced after ingest (a compromised device, a careless script): the batch and
    # pre-label read refuse it, with the reason, instead of labelling other pixels under its sha256
    moto.client().put_object(Bucket=bucket, Key=key, Body=jpeg_of(other))
    with pytest.raises(FrameRejected, match="sha256 is not the one in its name"):
        read_frame(store, key)
    # deleted after ingest: refused as this frame's problem (a reason to set it aside), not an outage
    moto.client().delete_object(Bucket=bucket, Key=key)
    with pytest.raises(FrameRejected, match="deleted from the bucket after it was checked"):
        read_frame(store, key)


def test_a_sidecar_written_for_another_jpeg_is_set_aside(moto, bucket, metal_tags, tmp_path, caplog):
    client = moto.client()
    good, wrong_sha, wrong_size = (upload_frame(client, bucket, p) for p in photos(metal_tags, 3, 5))
    for key, change in ((wrong_sha, {"jpeg_sha256": "e" * 64}), (wrong_size, {"jpeg_bytes": 17})):
        meta = json.loads(client.get_object(Bucket=bucket, Key=key[:-4] + ".json")["Body"].read())
        client.put_object(Bucket=bucket, Key=key[:-4] + ".json", Body=json.dumps({**meta, **change}).encode())
    state = LabelingState(tmp_path / "state.sqlite")
    with caplog.at_level(logging.WARNING):
        offered = offer(state, store_of(moto, bucket), [good, wrong_sha, wrong_size], PREFIX, "test")
    assert (offered.new, offered.set_aside) == (1, 2)
    assert "its sidecar was written for another JPEG (jpeg_sha256 eeeeeeeeeeee" in caplog.text
    assert f"{wrong_size} is " in caplog.text and "its sidecar says 17" in caplog.text
    assert [f.key for f in state.pending()] == [good]


def test_keys_outside_the_raw_layout_are_logged_once_over_two_listings(moto, bucket, metal_tags, tmp_path, caplog):
    client = moto.client()
    frame = upload_frame(client, bucket, photos(metal_tags, 1, 8)[0])
    stray = [f"{PREFIX}/raw/../../etc/passwd.jpg", f"{PREFIX}/raw/line-1/notes.jpg", f"other/raw/line-1/c/{'a' * 64}.jpg"]
    for key in stray:
        client.put_object(Bucket=bucket, Key=key, Body=b"x")
    store, state = store_of(moto, bucket), LabelingState(tmp_path / "state.sqlite")

    def listing():
        return [k for k in store.list_keys(f"{PREFIX}/raw/") if k.endswith(".jpg")] + stray[2:]

    with caplog.at_level(logging.WARNING):
        first = offer(state, store, listing(), PREFIX, "listing")
        second = offer(state, store, listing(), PREFIX, "listing")
    assert (first.new, first.set_aside) == (1, 3) and (second.new, second.set_aside, second.known) == (0, 0, 4)
    for key in stray:
        assert caplog.text.count(repr(key)) == 1, f"{key} logged {caplog.text.count(repr(key))} times"
    assert state.status().set_aside_keys == 3  # remembered (and counted in `cloud status`), not forgotten
    assert client.head_object(Bucket=bucket, Key=stray[0]) and frame  # nothing deleted


# -- the dataset: never other pixels under a label ----------------------------------------------

def record(key: str, width: int = 450, height: int = 300) -> LabelRecord:
    return LabelRecord(source_ref=key, image_width=width, image_height=height,
                       boxes=(BoxLabel(class_id=0, left=10, top=10, width=40, height=30),), status=APPROVED,
                       event_time=1795000100.0, labeling_job="test")


def test_a_labelled_frame_overwritten_in_the_bucket_is_set_aside_and_the_rest_is_built(
        moto, bucket, metal_tags, tmp_path, caplog):
    chosen = photos(metal_tags, 5, 12)
    client = moto.client()
    keys = [upload_frame(client, bucket, p) for p in chosen]
    overwritten, deleted = keys[1], keys[3]
    split = DatasetSplit(records={"train": [record(keys[0]), record(overwritten), record(keys[2])],
                                  "val": [record(deleted)], "test": [record(keys[4])]})
    # after approval, other pixels under the frame's name, and a frame deleted
    client.put_object(Bucket=bucket, Key=overwritten, Body=jpeg_of(photos(metal_tags, 1, 40)[0]))
    client.delete_object(Bucket=bucket, Key=deleted)

    out = tmp_path / "dataset"
    with caplog.at_level(logging.WARNING, logger="cloud.dataset"):
        data_yaml = write_yolo_dataset(split, TrainingImages(None, store_of(moto, bucket)), out, ["scratch"])
    assert data_yaml.is_file()
    name = lambda key: key.rsplit("/", 1)[1]  # noqa: E731
    assert sorted(p.name for p in (out / "images" / "train").iterdir()) == sorted([name(keys[0]), name(keys[2])])
    assert not list((out / "images" / "val").iterdir()) and not list((out / "labels" / "val").iterdir())
    assert [p.name for p in (out / "images" / "test").iterdir()] == [name(keys[4])]
    lines = [r.getMessage() for r in caplog.records if "set aside" in r.getMessage()]
    assert len(lines) == 2
    assert any(overwritten in line and "overwritten in the bucket after it was labelled" in line for line in lines)
    assert any(deleted in line and "no such object" in line for line in lines)
    index = json.loads((out / "split.json").read_text())
    assert set(index["set_aside"]) == {overwritten, deleted}
    assert index["images"] == {"train": 2, "val": 0, "test": 1}
    # every image written is recorded by its sha256 (for a device frame: its own name)
    for split_name, files in index["sha256"].items():
        for file, digest in files.items():
            assert hashlib.sha256((out / "images" / split_name / file).read_bytes()).hexdigest() == digest
            assert file == f"{digest}.jpg"


def test_split_json_is_checked_when_read_shape_and_sha256(metal_tags, tmp_path, caplog):
    split = assign(read_label_csv(metal_tags / "labels.csv"), SplitParams())
    data_yaml = write_yolo_dataset(split, metal_tags, tmp_path / "dataset", ["scratch"])
    split_file = tmp_path / "dataset" / "split.json"
    good = json.loads(split_file.read_text())
    two = split.photos("test")[:2]
    chosen = sorted(name for name, photo in good["files"]["test"].items() if photo in two)
    assert set(good["sha256"]["test"]) == set(good["files"]["test"])
    # a test image changed after the dataset was built: left out of the comparison, with a log line
    changed = tmp_path / "dataset" / "images" / "test" / chosen[0]
    changed.write_bytes(jpeg_of(changed, quality=50))
    with caplog.at_level(logging.WARNING, logger="cloud.pipeline.evaluate"):
        photos_subset(data_yaml, two, tmp_path / "known")
    assert sorted(p.name for p in (tmp_path / "known" / "images" / PRODUCTION_TEST).iterdir()) == chosen[1:]
    assert f"set aside {chosen[0]}: its sha256 is not the one the dataset recorded" in caplog.text
    # a list where a mapping belongs (split.json may come from another machine): a clear refusal
    for broken in ([1, 2], {**good, "files": ["a.jpg"]}, {**good, "files": {"test": ["a.jpg"]}},
                   {**good, "sha256": {"test": [chosen[1]]}}):
        split_file.write_text(json.dumps(broken))
        with pytest.raises(NoSubset, match="is not a dataset's split.json .*build the dataset again"):
            photos_subset(data_yaml, two, tmp_path / "broken")


# -- uploads never overwrite -------------------------------------------------------------------

def spooled_frame(tmp_path, seed: int) -> tuple[Spool, bytes, bytes, str]:
    spool = Spool(tmp_path / f"spool-{seed}", max_bytes=10**7)
    pixels = np.random.default_rng(seed).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    meta = {"schema_version": 2, "thing": "line-1", "camera": "cam", "frame_time": "2026-11-22T07:26:34.387Z",
            "frame_time_epoch": 1795000000.0, "width": 80, "height": 60,
            "model": {"name": "m", "version": "1", "sha256": "a" * 64},
            "detections": [], "strategies": ["uncertain"], "tags": []}
    item = spool.put(pixels, meta)
    jpeg, sidecar = spool.read(item)
    return spool, jpeg, sidecar, item.sha256


def run_uploader(moto, bucket, spool, done) -> tuple[Uploader, list]:
    published: list = []
    stop = threading.Event()
    config = UploadConfig(bucket=bucket, prefix=PREFIX, endpoint_url=moto.url, region="us-east-1", retry_min_s=0.05,
                          retry_max_s=0.2)
    uploader = Uploader(spool, config, "line-1", published.append, stop, s3_client=moto.client())
    uploader.start()
    try:
        deadline = threading.Event()
        for _ in range(300):
            if done(uploader):
                break
            deadline.wait(0.1)
    finally:
        stop.set()
        uploader.join(10)
    return uploader, published


def test_an_upload_never_overwrites_other_bytes_and_a_retry_of_the_same_bytes_is_done(moto, bucket, tmp_path):
    client = moto.client()
    # 1. a crash after S3 had both objects, before the spool removed them: the same bytes are there
    spool, jpeg, sidecar, sha = spooled_frame(tmp_path, 1)
    jpeg_key, json_key = object_keys(PREFIX, json.loads(sidecar), sha)
    client.put_object(Bucket=bucket, Key=jpeg_key, Body=jpeg)
    client.put_object(Bucket=bucket, Key=json_key, Body=sidecar)
    uploader, published = run_uploader(moto, bucket, spool, lambda u: u.uploaded == 1)
    assert (uploader.uploaded, uploader.already_present, uploader.conflicts) == (1, 2, 0)
    assert len(spool) == 0 and json.loads(published[0].body)["keys"] == [jpeg_key]

    # 2. other bytes already under the frame's content-addressed name: the conditional write is
    # refused by the server, the object is left as it is, the frame is quarantined and counted
    spool, jpeg, sidecar, sha = spooled_frame(tmp_path, 2)
    jpeg_key, json_key = object_keys(PREFIX, json.loads(sidecar), sha)
    planted = b"\xff\xd8 not the frame"
    client.put_object(Bucket=bucket, Key=jpeg_key, Body=planted)
    uploader, published = run_uploader(moto, bucket, spool, lambda u: u.conflicts == 1)
    assert (uploader.uploaded, uploader.conflicts) == (0, 1) and published == []
    assert client.get_object(Bucket=bucket, Key=jpeg_key)["Body"].read() == planted  # not overwritten
    assert len(spool) == 0 and spool.quarantined == 1

    # 3. a new frame is uploaded once; putting it again with other bytes is refused by moto's server
    spool, jpeg, sidecar, sha = spooled_frame(tmp_path, 3)
    jpeg_key, _ = object_keys(PREFIX, json.loads(sidecar), sha)
    uploader, _ = run_uploader(moto, bucket, spool, lambda u: u.uploaded == 1)
    assert client.get_object(Bucket=bucket, Key=jpeg_key)["Body"].read() == jpeg
    with pytest.raises(client.exceptions.ClientError, match="PreconditionFailed"):
        client.put_object(Bucket=bucket, Key=jpeg_key, Body=b"other", IfNoneMatch="*")


def test_announcements_are_split_at_the_cloud_side_s_cap(moto, bucket, tmp_path):
    from device.contracts import SAMPLES_MAX_KEYS

    published: list = []
    config = UploadConfig(bucket=bucket, prefix=PREFIX, endpoint_url=moto.url, region="us-east-1")
    uploader = Uploader(Spool(tmp_path / "spool", max_bytes=10**6), config, "line-1", published.append,
                        threading.Event(), s3_client=moto.client())
    keys = [f"{PREFIX}/raw/line-1/cam/2026/11/22/{i:064x}.jpg" for i in range(250)]
    uploader._announce(keys)
    sent = [json.loads(m.body)["keys"] for m in published]
    assert [len(k) for k in sent] == [SAMPLES_MAX_KEYS, SAMPLES_MAX_KEYS, 50]
    assert [k for batch in sent for k in batch] == keys


def test_the_dataset_summary_in_the_card_names_the_frames_left_out(moto, bucket, metal_tags, tmp_path):
    # a frame deleted or overwritten since it was labelled is left out: the card must say so, or a
    # dataset that shrinks (expired frames, a tampering device) would go unseen
    from cloud.labels.local import LocalLabelStore
    from cloud.labels.versions import LabelVersion
    from cloud.pipeline.preprocess import preprocess

    client = moto.client()
    keys = [upload_frame(client, bucket, p) for p in photos(metal_tags, 16, 20)]  # enough for train and test
    store = LocalLabelStore(tmp_path / "labels")
    store.append([LabelVersion(record(key)) for key in keys])
    client.put_object(Bucket=bucket, Key=keys[2], Body=jpeg_of(photos(metal_tags, 1, 60)[0]))
    result = preprocess(store, TrainingImages(None, store_of(moto, bucket)), 1795000200.0, SplitParams(),
                        ["scratch"], tmp_path / "dataset")
    assert list(result.dataset.set_aside) == [keys[2]]
    assert "overwritten in the bucket" in result.dataset.set_aside[keys[2]]
    assert sum(result.dataset.images.values()) == len(keys) - 1
