"""One announced or listed key -> a pending frame, after every check a hostile or broken upload
could fail: the key has the raw layout under our prefix, the sidecar beside it validates against
the device's `Sidecar` contract (the schema in device/schemas/sidecar.schema.json is generated
from it), the JPEG is within the size limit, its sha256 is the one in its name, its header
declares a sane size equal to the sidecar's, and it decodes.

A frame that fails is set aside: the reason is logged and remembered, the objects stay where they
are (nothing is deleted), and every other frame goes on.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass

import numpy as np
from pydantic import ValidationError

from cloud.ingest.state import LabelingState, PendingFrame
from cloud.storage import RAW_KEY, ObjectStore, ObjectTooLarge, StorageError
from device.config import format_validation_error
from device.contracts import Sidecar
from device.images import ImageRejected, decode_image

log = logging.getLogger(__name__)


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


def read_sidecar(store: ObjectStore, key: str) -> Sidecar:
    sidecar_key = key[: -len(".jpg")] + ".json"
    try:
        return Sidecar.model_validate_json(store.read(sidecar_key))
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
    """A frame from the bucket as BGR pixels (bounded read, checked decode)."""
    return decode_frame(store.read(key), key)


def check_frame(store: ObjectStore, key: str, prefix: str) -> PendingFrame:
    thing, camera, sha256 = parse_raw_key(key, prefix)
    sidecar = read_sidecar(store, key)
    if (sidecar.thing, sidecar.camera) != (thing, camera):
        raise FrameRejected(f"sidecar of {key} names {sidecar.thing}/{sidecar.camera}, the key {thing}/{camera}")
    data = store.read(key)
    if hashlib.sha256(data).hexdigest() != sha256:
        raise FrameRejected(f"{key}: the JPEG's sha256 is not the one in its name (changed or truncated)")
    image = decode_frame(data, key)
    height, width = image.shape[:2]
    if (width, height) != (sidecar.width, sidecar.height):
        raise FrameRejected(f"{key} is {width}x{height}, its sidecar says {sidecar.width}x{sidecar.height}")
    return PendingFrame(sha256, key, thing, camera, width, height, time.time())


def offer(state: LabelingState, store: ObjectStore, keys: list[str], prefix: str, source: str) -> Offered:
    """Remember the new, valid frames among `keys` as pending; set the bad ones aside."""
    new = known = aside = 0
    for key in keys:
        try:
            thing, camera, sha256 = parse_raw_key(key, prefix)
        except FrameRejected as exc:
            log.warning("ingest (%s): set aside: %s", source, exc)
            aside += 1
            continue
        if state.known(sha256) or state.key_set_aside(key):
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
