"""Where training images come from: label rows name them by `source_ref`, which is either a path
relative to a folder of photos (the shipped metal-tags photos, a plant's own archive) or the S3 key
of a frame a device sampled (`<prefix>/raw/...`, see cloud/storage.RAW_KEY)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cloud.dataset import LocalImages
from cloud.label_table import LabelTableError
from cloud.storage import RAW_KEY, ObjectStore, StorageError


@dataclass(frozen=True)
class BucketImages:
    store: ObjectStore

    def copy(self, source_ref: str, dest: Path) -> None:
        try:
            data = self.store.read(source_ref)
        except StorageError as exc:
            raise LabelTableError(f"image for {source_ref!r}: {exc}") from None
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
