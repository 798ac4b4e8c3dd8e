"""Where training images come from: label rows name them by `source_ref`, which is either a path
relative to a folder of photos (the shipped metal-tags photos, a plant's own archive) or the S3 key
of a frame a device sampled (`<prefix>/raw/...`, see cloud/storage.RAW_KEY).

A frame's key names the sha256 of its bytes, and the label was made on those bytes: a frame whose
object no longer holds them (overwritten in the bucket after it was labelled) or that is gone is
set aside (`ImageSetAside`), never copied into a dataset as other pixels under the same label."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cloud.dataset import ImageSetAside, LocalImages
from cloud.label_table import LabelTableError
from cloud.storage import RAW_KEY, ObjectMissing, ObjectStore, ObjectTooLarge, StorageError


@dataclass(frozen=True)
class BucketImages:
    store: ObjectStore

    def copy(self, source_ref: str, dest: Path) -> None:
        match = RAW_KEY.match(source_ref)
        if not match:
            raise LabelTableError(f"{source_ref!r} is not a device frame's key ({{prefix}}/raw/.../{{sha256}}.jpg)")
        try:
            data = self.store.read(source_ref)
        except (ObjectMissing, ObjectTooLarge) as exc:  # too large: not the frame ingest checked (it was within the limit)
            raise ImageSetAside(str(exc)) from None
        except StorageError as exc:  # an outage: the whole build waits for the bucket, nothing is left out
            raise LabelTableError(f"image for {source_ref!r}: {exc}") from None
        if hashlib.sha256(data).hexdigest() != match["sha256"]:
            raise ImageSetAside(f"s3://{self.store.bucket}/{source_ref} no longer holds the bytes its name (and its "
                                "label) was made for: overwritten in the bucket after it was labelled")
        tmp = dest.with_name(dest.name + ".part")
        tmp.write_bytes(data)
        os.replace(tmp, dest)


@dataclass(frozen=True)
class TrainingImages:
    """Frames from the bucket, every other `source_ref` from the photo folder."""

    folder: Path | None
    bucket: ObjectStore | None

    def copy(self, source_ref: str, dest: Path) -> None:
        if RAW_KEY.match(source_ref):
            if self.bucket is None:
                raise LabelTableError(f"{source_ref!r} is a device frame but no `storage` bucket is configured")
            BucketImages(self.bucket).copy(source_ref, dest)
            return
        if self.folder is None:
            raise LabelTableError(f"{source_ref!r} is a photo path but no photo folder is configured")
        LocalImages(self.folder).copy(source_ref, dest)
