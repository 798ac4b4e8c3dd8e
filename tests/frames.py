"""Sampled frames in a bucket exactly as a device uploads them: the spool's JPEG (quality 90) of a
real photo under its content-addressed key, with a sidecar built by the device's own code."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2

from device.contracts import ModelIdentity
from device.messages import sidecar
from device.uploader import object_keys

PREFIX = "edge-inspect"
MODEL = ModelIdentity(name="metal-tags-yolov8n", version="1", sha256="0" * 64)


def jpeg_of(path: Path, quality: int = 90) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.imread(str(path)), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return data.tobytes()


def upload_frame(s3, bucket: str, photo: Path, thing: str = "line-1", camera: str = "cam",
                 frame_time: float = 1795000000.0, meta_override: dict | None = None) -> str:
    """Put one frame and its sidecar; returns the JPEG's key."""
    data = jpeg_of(photo)
    height, width = cv2.imdecode(__import__("numpy").frombuffer(data, "uint8"), cv2.IMREAD_COLOR).shape[:2]
    digest = hashlib.sha256(data).hexdigest()
    meta = sidecar(thing, camera, frame_time, width, height, MODEL, [], ["uncertain"], [])
    meta.update(jpeg_sha256=digest, jpeg_bytes=len(data), **(meta_override or {}))
    jpg_key, json_key = object_keys(PREFIX, meta, digest)
    s3.put_object(Bucket=bucket, Key=jpg_key, Body=data)
    s3.put_object(Bucket=bucket, Key=json_key, Body=json.dumps(meta).encode())
    return jpg_key
