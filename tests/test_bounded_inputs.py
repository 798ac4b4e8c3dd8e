"""Issue 21, bounded inputs: what a hostile or broken device sends is capped before it costs the
one serve loop time or memory. A samples message is cut to SAMPLES_MAX_KEYS keys (over a real
mosquitto), a sidecar over SIDECAR_MAX_BYTES is refused before it is parsed, a sidecar's
detections are capped by the contract, and a JPEG header that declares more pixels than its bytes
can hold is refused before anything is decoded. Real peers: mosquitto, moto's S3 server, real
JPEGs of the shipped metal-tag photos."""

from __future__ import annotations

import hashlib
import json
import logging
import time

import cv2
import numpy as np
import paho.mqtt.client as paho
import paho.mqtt.publish as publish
import pytest
from daemon_helpers import wait_until
from frames import MODEL, PREFIX, upload_frame

from cloud.ingest.announcements import INBOX_LIMIT, BrokerSettings, SamplesSubscriber
from cloud.ingest.frames import SIDECAR_MAX_BYTES, RecentlyAbsent, offer
from cloud.ingest.state import LabelingState
from cloud.storage import ObjectStore, StorageSettings
from device import messages
from device.contracts import SAMPLES_MAX_KEYS, SIDECAR_MAX_DETECTIONS
from device.images import ImageRejected, decode_image, jpeg_min_bytes
from device.uploader import object_keys


@pytest.fixture
def bucket(moto, request):
    name = f"bounded-{hashlib.sha256(request.node.name.encode()).hexdigest()[:10]}"
    moto.client().create_bucket(Bucket=name)
    return name


def store_of(moto, bucket) -> ObjectStore:
    return ObjectStore(StorageSettings(bucket=bucket, prefix=PREFIX), moto.client())


def photo(metal_tags, i: int):
    return sorted((metal_tags / "images").glob("*.jpg"))[i]


def test_a_samples_message_naming_10000_absent_keys_is_capped_and_quick(broker, moto, bucket, tmp_path, caplog):
    subscriber = SamplesSubscriber(BrokerSettings(host="127.0.0.1", port=broker.port, client_id="bounded"), bucket)
    subscriber.start()
    try:
        assert subscriber.subscribed.wait(20)
        keys = [f"{PREFIX}/raw/line-1/cam/2026/11/22/{i:064x}.jpg" for i in range(10_000)]
        with caplog.at_level(logging.WARNING):
            publish.single("edge-inspect/line-1/samples", messages.samples("line-1", bucket, keys).body, qos=1,
                           hostname="127.0.0.1", port=broker.port)
            announced = subscriber.inbox.get(timeout=20)
    finally:
        subscriber.stop()
    assert announced.keys == keys[:SAMPLES_MAX_KEYS] and announced.dropped_keys == 10_000 - SAMPLES_MAX_KEYS
    assert subscriber.dropped_keys == 10_000 - SAMPLES_MAX_KEYS
    assert caplog.text.count("names 10000 keys") == 1  # one warning for the message, not one per key
    # what reaches the serve loop costs it one bucket read per key kept: seconds, not 82 s
    started = time.monotonic()
    offered = offer(LabelingState(tmp_path / "state.sqlite"), store_of(moto, bucket), announced.keys, PREFIX,
                    "samples from line-1")
    assert time.monotonic() - started < 10 and offered.new == 0


def test_absent_keys_announced_again_are_not_looked_up_again_but_a_listing_still_finds_them(moto, bucket,
                                                                                           metal_tags, tmp_path):
    # 100 messages naming the same 100 absent keys once cost 100 x 100 bucket reads
    absent_keys = [f"{PREFIX}/raw/line-1/cam/2026/11/22/{i:064x}.jpg" for i in range(SAMPLES_MAX_KEYS)]
    state, store, absent = LabelingState(tmp_path / "state.sqlite"), store_of(moto, bucket), RecentlyAbsent()
    reads = []
    original = store.read
    store.read = lambda key, *a, **k: reads.append(key) or original(key, *a, **k)
    for _ in range(5):
        offer(state, store, absent_keys, PREFIX, "samples from line-1", absent)
    assert len(reads) == SAMPLES_MAX_KEYS, "each absent key looked up once"
    # a frame uploaded after its key was announced is found by the listing, which passes no memory
    key = upload_frame(moto.client(), bucket, photo(metal_tags, 6))
    absent.add(key)
    assert offer(state, store, [key], PREFIX, "samples from line-1", absent).new == 0
    assert offer(state, store, [key], PREFIX, "listing").new == 1
    # the memory is bounded and forgets
    small = RecentlyAbsent(ttl_s=0.0, limit=3)
    for k in absent_keys[:5]:
        small.add(k)
    assert absent_keys[0] not in small and len(small._seen) == 3
    assert absent_keys[4] not in small  # ttl 0: expired at once


def test_a_flood_of_announcements_is_bounded_and_counted(broker, bucket):
    subscriber = SamplesSubscriber(BrokerSettings(host="127.0.0.1", port=broker.port, client_id="flood"), bucket)
    subscriber.start()
    try:
        assert subscriber.subscribed.wait(20)
        body = messages.samples("line-1", bucket, [f"{PREFIX}/raw/line-1/cam/2026/11/22/{1:064x}.jpg"]).body
        total = INBOX_LIMIT + 50
        sender = paho.Client(callback_api_version=paho.CallbackAPIVersion.VERSION2, client_id="flooder")
        sender.connect("127.0.0.1", broker.port)
        sender.loop_start()
        try:
            for _ in range(total):
                sender.publish("edge-inspect/line-1/samples", body, qos=1)
            assert wait_until(lambda: subscriber.inbox.qsize() + subscriber.dropped_messages == total, 60)
        finally:
            sender.disconnect()
            sender.loop_stop()
    finally:
        subscriber.stop()
    assert subscriber.inbox.qsize() == INBOX_LIMIT and subscriber.dropped_messages == 50


def test_a_sidecar_over_the_limit_is_refused_before_it_is_parsed(moto, bucket, metal_tags, tmp_path, caplog):
    client = moto.client()
    key = upload_frame(client, bucket, photo(metal_tags, 2))
    meta = json.loads(client.get_object(Bucket=bucket, Key=key[:-4] + ".json")["Body"].read())
    # schema-valid (tags are free text), 4 MB: parsed whole, it would cost tens of MB of Python objects
    huge = json.dumps({**meta, "tags": ["x" * 1000] * 4000}).encode()
    assert len(huge) > 4_000_000
    client.put_object(Bucket=bucket, Key=key[:-4] + ".json", Body=huge)
    state = LabelingState(tmp_path / "state.sqlite")
    with caplog.at_level(logging.WARNING):
        offered = offer(state, store_of(moto, bucket), [key], PREFIX, "listing")
    assert offered.set_aside == 1 and state.pending() == []
    # the refusal comes from the object's size, before a byte of it is read or parsed
    assert f"is {len(huge)} bytes; the limit (SIDECAR_MAX_BYTES) is {SIDECAR_MAX_BYTES}" in caplog.text


def test_a_sidecar_with_too_many_detections_is_refused(moto, bucket, metal_tags, tmp_path, caplog):
    client = moto.client()
    key = upload_frame(client, bucket, photo(metal_tags, 4))
    meta = json.loads(client.get_object(Bucket=bucket, Key=key[:-4] + ".json")["Body"].read())
    detection = {"class_id": 0, "class": "scratch", "confidence": 0.5, "box": [1, 2, 3, 4]}
    crowded = json.dumps({**meta, "detections": [detection] * (SIDECAR_MAX_DETECTIONS + 1)}).encode()
    assert len(crowded) < SIDECAR_MAX_BYTES  # within the byte limit: the contract's count refuses it
    client.put_object(Bucket=bucket, Key=key[:-4] + ".json", Body=crowded)
    with caplog.at_level(logging.WARNING):
        offered = offer(LabelingState(tmp_path / "state.sqlite"), store_of(moto, bucket), [key], PREFIX, "listing")
    assert offered.set_aside == 1
    assert "does not match the device's schema" in caplog.text and "detections" in caplog.text


def lying_jpeg(width: int, height: int) -> bytes:
    """A real 16x16 JPEG whose header (SOF0) declares width x height."""
    ok, buffer = cv2.imencode(".jpg", np.full((16, 16, 3), 128, np.uint8))
    assert ok
    data = bytearray(buffer.tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 7] = height.to_bytes(2, "big")
    data[sof + 7:sof + 9] = width.to_bytes(2, "big")
    return bytes(data)


def test_a_jpeg_header_declaring_more_pixels_than_its_bytes_hold_is_refused(moto, bucket, tmp_path, caplog):
    data = lying_jpeg(6000, 6000)
    with pytest.raises(ImageRejected, match="declares 6000x6000, more than .* bytes of coded image data can hold"):
        decode_image(data, "lie.jpg")
    # uploaded under its true sha256 with a sidecar that agrees with the header: never reaches labelers
    digest = hashlib.sha256(data).hexdigest()
    meta = messages.sidecar("line-1", "cam", 1795000000.0, 6000, 6000, MODEL, [], ["uncertain"], [])
    meta.update(jpeg_sha256=digest, jpeg_bytes=len(data))
    jpeg_key, json_key = object_keys(PREFIX, meta, digest)
    client = moto.client()
    client.put_object(Bucket=bucket, Key=jpeg_key, Body=data)
    client.put_object(Bucket=bucket, Key=json_key, Body=json.dumps(meta).encode())
    state = LabelingState(tmp_path / "state.sqlite")
    with caplog.at_level(logging.WARNING):
        offered = offer(state, store_of(moto, bucket), [jpeg_key], PREFIX, "listing")
    assert offered.set_aside == 1 and state.pending() == []
    assert "a lying or truncated header" in caplog.text


def test_comment_segments_padded_on_do_not_make_room_for_a_lying_header():
    data = lying_jpeg(6000, 6000)
    comment = b"\xff\xfe" + (65533 + 2).to_bytes(2, "big") + b"x" * 65533  # COM segments: 70 KB of padding
    padded = data[:2] + comment + comment + data[2:]
    assert len(padded) > jpeg_min_bytes(6000, 6000)  # counted whole, the file would have passed
    with pytest.raises(ImageRejected, match="bytes of coded image data can hold"):
        decode_image(padded, "padded.jpg")


def test_real_frames_of_every_kind_pass_the_header_check(metal_tags):
    """The bound is a floor no real JPEG goes under: the photos, a black 4K frame, progressive and
    optimised encodings of it."""
    for path in sorted((metal_tags / "images").glob("*.jpg"))[:10]:
        decode_image(path.read_bytes(), path)
    black = np.zeros((2160, 3840, 3), np.uint8)
    for params in ([], [cv2.IMWRITE_JPEG_OPTIMIZE, 1], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1, cv2.IMWRITE_JPEG_OPTIMIZE, 1]):
        for image in (black, black[:, :, 0]):
            ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 10, *params])
            assert ok and decode_image(buffer.tobytes(), "black.jpg").shape[:2] == (2160, 3840)
