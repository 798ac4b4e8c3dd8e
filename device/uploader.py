"""Spool -> S3, in the background. Keys are content-addressed
(`{prefix}/raw/{thing}/{camera}/{yyyy}/{mm}/{dd}/{sha256}.jpg` and `.json` beside it), so a retry
after a crash names the same object and never makes a second one. Local files are deleted only
after S3 has confirmed both objects. Outages are retried with capped exponential backoff and full
jitter; an optional bandwidth cap paces the bytes sent. After each batch, the keys uploaded are
announced on `{prefix}/{thing}/samples` (at most SAMPLES_MAX_KEYS per message): the cloud side's
trigger.

Writes never overwrite: every put is conditional (`If-None-Match: *`, honoured by S3, MinIO and
moto; the AWS template's bucket policy refuses a frame put without it) and carries the body's
sha256 (`x-amz-checksum-sha256`: S3 refuses bytes damaged on the way). When the key exists (412),
the object is compared with ours where the credentials allow a HEAD: the same bytes (a retry after
a crash) count as uploaded; other bytes are logged and counted (`conflicts`) and the frame is
quarantined, never written over. Where HEAD is refused (the device role on AWS may only put), the
name is content-addressed and the cloud checks every frame's sha256 against it, so the frame
counts as uploaded.

Credentials come from boto3's default chain: under Greengrass, TokenExchangeService provides them
through AWS_CONTAINER_CREDENTIALS_FULL_URI. The role needs `s3:PutObject` on the prefix only.
"""

from __future__ import annotations

import base64
import hashlib
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
from device.contracts import SAMPLES_MAX_KEYS
from device.messages import Outbound
from device.spool import Spool, SpoolError, SpoolItem

log = logging.getLogger(__name__)

SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
KEY_EXISTS = frozenset({"PreconditionFailed", "412"})  # If-None-Match: * found an object at the key


class KeyTaken(Exception):
    """The bucket already holds other bytes under this key; nothing was written."""


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
        self.already_present = 0  # objects the bucket held already with our bytes (a retry after a crash)
        self.conflicts = 0  # keys holding other bytes: never overwritten
        self._create_only = _knows_if_none_match(self.s3)
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
                try:
                    self._put(json_key, sidecar, "application/json")
                except KeyTaken as exc:
                    # the same pixels sampled again the same day (another frame time): the bucket
                    # keeps the first frame's sidecar, which describes these very bytes
                    log.info("uploader: %s; the image is there with the sidecar of its first upload", exc)
            except KeyTaken as exc:
                self.conflicts += 1
                log.warning("uploader: %s; the frame is quarantined, not uploaded", exc)
                self.spool.discard(item, str(exc))
                continue
            except Exception as exc:  # network, credentials, throttling: the frame stays spooled
                return keys, exc
            self.spool.remove(item)
            self.uploaded += 1
            keys.append(jpeg_key)
        return keys, None

    def _put(self, key: str, body: bytes, content_type: str) -> None:
        """Create the object, never replace it: KeyTaken when the key holds other bytes."""
        self.throttle.spend(len(body), self.stop)
        digest = hashlib.sha256(body).digest()
        create_only = {"IfNoneMatch": "*"} if self._create_only else {}
        try:
            self.s3.put_object(Bucket=self.config.bucket, Key=key, Body=body, ContentType=content_type,
                               ChecksumSHA256=base64.b64encode(digest).decode(), **create_only)
        except Exception as exc:
            if _error_code(exc) not in KEY_EXISTS:
                raise
            theirs = self._sha256_of(key, len(body))
            if theirs is not None and theirs != digest.hex():
                raise KeyTaken(f"s3://{self.config.bucket}/{key} already holds other bytes (sha256 {theirs[:12]}, "
                               f"ours {digest.hex()[:12]})") from None
            self.already_present += 1  # ours, from before a crash (or not comparable here: see the docstring)

    def _sha256_of(self, key: str, size: int) -> str | None:
        """The sha256 of the object at `key`: its stored checksum, else its bytes read back (a
        frame is small); None where the credentials allow neither (the device role on AWS)."""
        bucket = self.config.bucket
        try:
            head = self.s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
            if head.get("ChecksumSHA256"):
                return base64.b64decode(head["ChecksumSHA256"]).hex()
            if head.get("ContentLength", size) != size:
                return "size-" + str(head["ContentLength"])  # other bytes, whatever they are
            return hashlib.sha256(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read(size + 1)).hexdigest()
        except Exception as exc:
            log.debug("uploader: %s exists and cannot be compared here (%s)", key, exc)
            return None

    def _announce(self, keys: list[str]) -> None:
        for start in range(0, len(keys), SAMPLES_MAX_KEYS):  # the cloud side takes that many per message
            self.publish(messages.samples(self.thing, self.config.bucket, keys[start:start + SAMPLES_MAX_KEYS]))


def _knows_if_none_match(s3) -> bool:
    """Whether this botocore can send `If-None-Match` on PutObject (botocore 1.35, August 2024)."""
    try:
        known = "IfNoneMatch" in s3.meta.service_model.operation_model("PutObject").input_shape.members
    except AttributeError:  # not a botocore client: assume it can
        return True
    if not known:
        log.warning("uploader: this boto3 cannot make conditional writes (upgrade boto3 to 1.35 or later): an "
                    "upload may overwrite an object of the same name")
    return known


def _error_code(exc: Exception) -> str:
    """botocore's ClientError code, without importing botocore here (boto3 loads lazily)."""
    response = getattr(exc, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""

