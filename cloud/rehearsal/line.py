"""The rehearsal's line: a video of the production model's training photos, one tag after
another, and the held-out photos the loop never shows (the report scores the models on them).

The line shows only photos the production model trained on, so that every photo the report
scores on, drifted or not, is one no model in the loop has learned from: not the production
model, and not the candidates (which learn from the line's frames).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import cv2

from cloud.dataset import image_inside
from cloud.heldout import split_by_training
from cloud.label_table import LabelRecord
from device.images import read_image
from device.model_card import ModelCard, card_path_for

VIDEO_QUALITY = 95  # MJPEG: close to the photos, so the replay labeler still recognises each frame


class LineError(RuntimeError):
    pass


@dataclass(frozen=True)
class LinePhotos:
    labels_csv: Path
    images_root: Path
    shown: list[LabelRecord]  # on the line
    heldout: list[LabelRecord]  # never on the line: the report's photos

    def path(self, record: LabelRecord) -> Path:
        return image_inside(self.images_root, record.source_ref)


def line_photos(production_model: Path, labels_csv: Path, images_root: Path | None = None) -> LinePhotos:
    split = split_by_training(ModelCard.read(card_path_for(production_model)), labels_csv)
    if not split.trained or not split.heldout:
        raise LineError(f"{labels_csv} needs photos the production model trained on (for the line) and photos it "
                        "did not (for the report)")
    return LinePhotos(labels_csv, images_root or labels_csv.parent, split.trained, split.heldout)


def line_video(out: Path, photos: LinePhotos, fps: float, hold_frames: int, seed: int) -> Path:
    """MJPEG in AVI: every shown photo once, in a shuffled order, each held `hold_frames` frames."""
    order = list(photos.shown)
    random.Random(seed).shuffle(order)
    first = read_image(photos.path(order[0]))
    size = (first.shape[1], first.shape[0])
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    if not writer.isOpened():
        raise LineError(f"cannot write the line video {out}")
    writer.set(cv2.VIDEOWRITER_PROP_QUALITY, VIDEO_QUALITY)
    try:
        for record in order:
            image = read_image(photos.path(record))
            if (image.shape[1], image.shape[0]) != size:
                image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            for _ in range(hold_frames):
                writer.write(image)
    finally:
        writer.release()
    return out
