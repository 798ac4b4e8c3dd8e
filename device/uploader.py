"""Spool -> S3, in the background. Keys are content-addressed
(`{prefix}/raw/{thing}/{camera}/{yyyy}/{mm}/{dd}/{sha256}.jpg` and `.json` beside it), so a retry
after a crash rewrites the same object and never makes a second one. Local files are deleted only
after S3 has confirmed both objects. Outages are retried with capped exponential backoff and full
jitter; an optional bandwidth cap paces the bytes sent. After each batch, the keys uploaded are
announced on `{prefix}/{thing}/samples`: the cloud side's trigger.

Credentials come from boto3's default chain: under Greengrass, TokenExchangeService provides them
through AWS_CONTAINER_CREDENTIALS_FULL_URI. The role needs `s3:PutObject` on the prefix only.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone

from device import messages
from device.config import UploadConfig
from device.messages import Outbound
from device.spool import Spool, SpoolError, SpoolItem

log = logging.getLogger(__name__)

SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def object_keys(prefix: str, meta: dict, sha256: str) -> tuple[str, str]:
    """The two keys of one frame. Thing and camera come from the sidecar; they are checked again
    here because a sidecar on disk is not to be trusted to build a key."""
    thing, camera = str(meta.get("thing", "")), str(meta.get("camera", ""))
    if not SAFE_SEGMENT.match(thing) or not SAFE_SEGMENT.match(camera) or not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise SpoolError(f"{sha256[:12]}: sidecar names an unsafe thing/camera ({thing!r}, {camera!r})")
    day = datetime.fromtimestamp(float(meta["frame_time_epoch"]), tz=timezone.utc)
    base = f"{prefix}/raw/{thing}/{camera}/{day:%Y/%m/%d}/{sha256}"
    return f"{base}.jpg", f"{base}.json"


class Throttle:
    """Token bucket over bytes per second (None: no cap)."""

    def __init__(self, bytes_per_s: int | None) -> None:
        self.rate = bytes_per_s
        self._allowance = 0.0  # no burst at start: a restart loop must not exceed the cap either
        self._last = time.monotonic()

    def spend(self, n: int, stop: threading.Event) -> None:
        if not self.rate:
            return
        now = time.monotonic()
        self._allowance = min(self.rate, self._allowance + (now - self._last) * self.rate)
        self._last = now
        self._allowance -= n
        if self._allowance < 0:
            stop.wait(-self._allowance / self.rate)


def make_s3_client(config: UploadConfig):
    import boto3
    from botocore.config import Config

    # botocore's own retries are off: this loop retries, forever, with its own backoff
    return boto3.client("s3", region_name=config.region, endpoint_url=config.endpoint_url,
                        config=Config(retries={"max_attempts": 1}, connect_timeout=config.timeout_s,
                                      read_timeout=config.timeout_s))


class Uploader(threading.Thread):
    def __init__(self, spool: Spool, config: UploadConfig, thing: str, publish: Callable[[Outbound], None],
                 stop: threading.Event, s3_client=None) -> None:
        super().__init__(name="uploader", daemon=True)
        self.spool, self.config, self.thing, self.publish, self.stop = spool, config, thing, publish, stop
        self.s3 = s3_client or make_s3_client(config)
        self.throttle = Throttle(config.max_bytes_per_s)
        self.uploaded = 0
        self.failures = 0
        self.online = True
        self._wake = threading.Event()

    def wake(self) -> None:
        self._wake.set()

    def run(self) -> None:
        delay = self.config.retry_min_s
        while not self.stop.is_set():
            batch = self.spool.oldest(self.config.batch_size)
            if not batch:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            keys, error = self._upload_batch(batch)
            if keys:
                self._announce(keys)
            if error is None:
                delay = self.config.retry_min_s
                if not self.online:
                    log.info("uploader: S3 reachable again; %d frames wait", len(self.spool))
                self.online = True
                continue
            self.failures += 1
            if self.online:
                log.warning("uploader: S3 unreachable (%s); retrying with backoff", error)
            self.online = False
            self.stop.wait(random.uniform(0, delay))  # full jitter: a fleet does not retry in step
            delay = min(delay * 2, self.config.retry_max_s)

    def _upload_batch(self, batch: list[SpoolItem]) -> tuple[list[str], Exception | None]:
        keys: list[str] = []
        for item in batch:
            if self.stop.is_set():
                break
            try:
                jpeg, sidecar = self.spool.read(item)
                jpeg_key, json_key = object_keys(self.config.prefix, json.loads(sidecar), item.sha256)
            except SpoolError as exc:
                if item.sidecar.exists():
                    self.spool.discard(item, str(exc))
                continue
            try:
                self._put(jpeg_key, jpeg, "image/jpeg")
                self._put(json_key, sidecar, "application/json")
            except Exception as exc:  # network, credentials, throttling: the frame stays spooled
                return keys, exc
            self.spool.remove(item)
            self.uploaded += 1
            keys.append(jpeg_key)
        return keys, None

    def _put(self, key: str, body: bytes, content_type: str) -> None:
        self.throttle.spend(len(body), self.stop)
        self.s3.put_object(Bucket=self.config.bucket, Key=key, Body=body, ContentType=content_type)

    def _announce(self, keys: list[str]) -> None:
        self.publish(messages.samples(self.thing, self.config.bucket, keys))
