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

# Lossless (FFV1), so each frame is its photo and the replay labeler recognises it: OpenCV's MJPEG
# writer ignores its quality setting, and its frames were 0.010-0.013 from their own photos after
# the drift and the spool's JPEG (the labeler's limit is 0.0075); FFV1's are 0.004-0.005.
VIDEO_CODECS = ("FFV1", "png ")  # png: where FFmpeg lacks FFV1


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
    """Lossless AVI: every shown photo once, in a shuffled order, each held `hold_frames` frames."""
    order = list(photos.shown)
    random.Random(seed).shuffle(order)
    first = read_image(photos.path(order[0]))
    size = (first.shape[1], first.shape[0])
    writer = _lossless_writer(out, fps, size)
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


def _lossless_writer(out: Path, fps: float, size: tuple[int, int]) -> cv2.VideoWriter:
    for codec in VIDEO_CODECS:
        writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*codec), fps, size)
        if writer.isOpened():
            return writer
        writer.release()
    raise LineError(f"cannot write the line video {out}: this OpenCV has none of {', '.join(VIDEO_CODECS)}")
