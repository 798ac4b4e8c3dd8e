"""One announced or listed key -> a pending frame, after every check a hostile or broken upload
could fail: the key has the raw layout under our prefix, the sidecar beside it is within
SIDECAR_MAX_BYTES and validates against the device's `Sidecar` contract (the schema in
device/schemas/sidecar.schema.json is generated from it), the JPEG is within the size limit, its
sha256 is the one in its name and the one its sidecar records, its header declares a sane size
(device.images: pixel cap, and enough bytes for that size) equal to the sidecar's, and it decodes.

A frame that fails is set aside: the reason is logged and remembered, the objects stay where they
are (nothing is deleted), and every other frame goes on. A key outside the raw layout is
remembered too, so that it is logged once, not again at every listing.

The key's sha256 is checked again whenever a frame's bytes are read later (`read_frame`: batches,
pre-labels, the replay labeler): an object overwritten after ingest raises FrameRejected.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from pydantic import ValidationError

from cloud.ingest.state import LabelingState, PendingFrame
from cloud.storage import RAW_KEY, ObjectMissing, ObjectStore, ObjectTooLarge, StorageError
from device.config import format_validation_error
from device.contracts import Sidecar
from device.images import ImageRejected, decode_image

log = logging.getLogger(__name__)

# A device's sidecar is a few KB (300 detections at most is ~40 KB): anything larger is refused
# before a byte of it is parsed (a schema-valid 50 MB sidecar would otherwise cost ~0.5 GB).
SIDECAR_MAX_BYTES = 256 * 1024


class FrameRejected(ValueError):
    """This key cannot become a frame to label; the message says why."""


@dataclass(frozen=True)
class Offered:
    new: int = 0
    known: int = 0
    set_aside: int = 0


def parse_raw_key(key: str, prefix: str) -> tuple[str, str, str]:
    """(thing, camera, sha256) of a frame key under `{prefix}/raw/`."""
    match = RAW_KEY.match(key)
    if not match or match["prefix"] != prefix:
        raise FrameRejected(f"{key!r} is not a frame key under {prefix}/raw/ "
                            "({prefix}/raw/{thing}/{camera}/{yyyy}/{mm}/{dd}/{sha256}.jpg)")
    return match["thing"], match["camera"], match["sha256"]


def frame_sha256(key: str) -> str:
    """The sha256 a frame key promises its bytes have (its file name)."""
    match = RAW_KEY.match(key)
    if not match:
        raise FrameRejected(f"{key!r} is not a content-addressed frame key ({{prefix}}/raw/.../{{sha256}}.jpg)")
    return match["sha256"]


def check_bytes(data: bytes, key: str) -> None:
    """FrameRejected unless `data` are the bytes the key's name promises."""
    if hashlib.sha256(data).hexdigest() != frame_sha256(key):
        raise FrameRejected(f"{key}: the JPEG's sha256 is not the one in its name (changed or truncated)")


def read_sidecar(store: ObjectStore, key: str) -> Sidecar:
    sidecar_key = key[: -len(".jpg")] + ".json"
    try:
        return Sidecar.model_validate_json(store.read(sidecar_key, SIDECAR_MAX_BYTES, "SIDECAR_MAX_BYTES"))
    except ValidationError as exc:
        raise FrameRejected(f"sidecar {sidecar_key} does not match the device's schema: "
                            f"{format_validation_error(exc)}") from None


def decode_frame(data: bytes, key: str) -> np.ndarray:
    """The JPEG as BGR pixels, by the device's own rule (device.images: the header's pixel count
    checked before decoding), JPEG only: the spool writes nothing else."""
    try:
        return decode_image(data, key, formats=("JPEG",))
    except ImageRejected as exc:
        raise FrameRejected(f"{key} is not a readable JPEG within the limits: {exc.reason}") from None


def read_frame(store: ObjectStore, key: str) -> np.ndarray:
    """A frame from the bucket as BGR pixels (bounded read, sha256 of the bytes checked against
    the key's name, checked decode): FrameRejected when the object is no longer the frame that
    was ingested (changed, or deleted: S3 reads are strongly consistent, a missing object does not
    come back), StorageError when it cannot be read now (an outage: try again later)."""
    try:
        data = store.read(key)
    except ObjectMissing as exc:
        raise FrameRejected(f"{key}: deleted from the bucket after it was checked ({exc})") from None
    except ObjectTooLarge as exc:
        raise FrameRejected(f"{key}: {exc}") from None
    check_bytes(data, key)
    return decode_frame(data, key)


def check_frame(store: ObjectStore, key: str, prefix: str) -> PendingFrame:
    thing, camera, sha256 = parse_raw_key(key, prefix)
    sidecar = read_sidecar(store, key)
    if (sidecar.thing, sidecar.camera) != (thing, camera):
        raise FrameRejected(f"sidecar of {key} names {sidecar.thing}/{sidecar.camera}, the key {thing}/{camera}")
    data = store.read(key)
    check_bytes(data, key)
    image = decode_frame(data, key)
    height, width = image.shape[:2]
    if (width, height) != (sidecar.width, sidecar.height):
        raise FrameRejected(f"{key} is {width}x{height}, its sidecar says {sidecar.width}x{sidecar.height}")
    # the sidecar names the JPEG it was written for (device.spool adds both): a sidecar paired with
    # other bytes describes another frame. Older sidecars without them are checked by size above.
    if sidecar.jpeg_sha256 is not None and sidecar.jpeg_sha256 != sha256:
        raise FrameRejected(f"{key}: its sidecar was written for another JPEG (jpeg_sha256 {sidecar.jpeg_sha256[:12]}...)")
    if sidecar.jpeg_bytes is not None and sidecar.jpeg_bytes != len(data):
        raise FrameRejected(f"{key} is {len(data)} bytes, its sidecar says {sidecar.jpeg_bytes}")
    return PendingFrame(sha256, key, thing, camera, width, height, time.time())


class RecentlyAbsent:
    """Announced keys whose objects were not in the bucket, remembered for `ttl_s` (at most `limit`
    of them, oldest forgotten first): announcing the same absent keys again and again costs one
    look each, not one per announcement. Listings do not use it: they name what is there."""

    def __init__(self, ttl_s: float = 300.0, limit: int = 10_000) -> None:
        self.ttl_s, self.limit = ttl_s, limit
        self._seen: OrderedDict[str, float] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        when = self._seen.get(key)
        if when is None:
            return False
        if time.monotonic() - when > self.ttl_s:
            del self._seen[key]
            return False
        return True

    def add(self, key: str) -> None:
        self._seen[key] = time.monotonic()
        self._seen.move_to_end(key)
        while len(self._seen) > self.limit:
            self._seen.popitem(last=False)


def offer(state: LabelingState, store: ObjectStore, keys: list[str], prefix: str, source: str,
          absent: RecentlyAbsent | None = None) -> Offered:
    """Remember the new, valid frames among `keys` as pending; set the bad ones aside (each is
    logged once: a key set aside is remembered, and the next listing passes it over). `absent`:
    announced keys found missing lately, passed over until they expire from it."""
    new = known = aside = 0
    for key in keys:
        if state.key_set_aside(key) or (absent is not None and key in absent):
            known += 1
            continue
        try:
            thing, camera, sha256 = parse_raw_key(key, prefix)
        except FrameRejected as exc:
            log.warning("ingest (%s): set aside: %s", source, exc)
            state.set_key_aside(key, str(exc))
            aside += 1
            continue
        if state.known(sha256):
            known += 1
            continue
        try:
            frame = check_frame(store, key, prefix)
        except ObjectTooLarge as exc:
            log.warning("ingest (%s): set aside %s: %s", source, key, exc)
            state.set_key_aside(key, str(exc))
            aside += 1
            continue
        except StorageError as exc:
            # an outage, or a sidecar not uploaded yet (a listing can see the JPEG first): not
            # the frame's fault, so it is tried again at the next announcement or listing
            log.info("ingest (%s): not yet: %s", source, exc)
            if absent is not None and isinstance(exc, ObjectMissing):
                absent.add(key)
            continue
        except FrameRejected as exc:
            log.warning("ingest (%s): set aside %s: %s", source, key, exc)
            state.set_key_aside(key, str(exc))
            aside += 1
            continue
        if state.add_pending(frame):
            new += 1
        else:
            known += 1
    return Offered(new, known, aside)
