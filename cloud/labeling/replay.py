"""The replay labeler: answers from a reference label table instead of people, after a delay.
For the demo, the closed-loop rehearsal and the tests; it is not a labeling tool and says so in
every row it produces (`labeling_job` = `replay:...`, labeler `replay`).

A sampled frame is a re-encoded JPEG, so it is matched to its reference photo by how it looks,
not by bytes: both are shrunk to 150x100 in grey (luma), normalised (mean 0, deviation 1), and
the nearest reference by mean absolute difference wins if it is near enough. The shared photos
are many shots of the same tags, nearly alike except for the scratches, so the threshold is
measured, not guessed: a photo re-encoded as the spool does (JPEG quality 90) is within 0.0050 of
itself, and the nearest *other* photo is 0.0104 away (under `warm-light`: 0.0055 and 0.0102;
`rotate90`: 0.0048 and 0.0094); MAX_DISTANCE sits between. Boxes are
scaled from the reference photo's size to the frame's. A frame with no reference photo close
enough gets no answer; when the delay has passed, the batch finishes and that frame is set aside.

In a drift rehearsal (`drift`, the line's `cameras[].drift`) the reference photos are drifted the
same way before they are compared, and their boxes follow a rotation.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cloud.label_table import approved, read_label_csv, safe_relative_path
from cloud.labeling.service import Answer, Batch, Box, LabelingError, Progress
from device.images import read_image
from device.rehearsal import DriftName, apply_drift

THUMB = (150, 100)
MAX_DISTANCE = 0.0075  # see the module's docstring for the measurement


class ReplaySettings(BaseModel):
    """`labeling.replay` in cloud.yaml."""

    model_config = ConfigDict(extra="forbid")

    table: Path = Field(description="the reference label table (CSV, the shape `train` reads)")
    images: Path = Field(description="the folder its source_ref paths are relative to")
    delay_s: float = Field(0.0, ge=0, le=7 * 24 * 3600, description="how long a 'labeler' takes per batch")
    drift: DriftName | None = Field(None, description="the rehearsal drift the line applies (cameras[].drift): "
                                                      "reference photos are matched and their boxes placed as the "
                                                      "drifted line shows them")


def thumbnail(image_bgr: np.ndarray) -> np.ndarray:
    # luma, not the colour channels: JPEG keeps luma at full resolution but halves chroma, and a
    # tinted frame (a warm lamp) carries chroma the grey reference photos do not
    grey = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY) if image_bgr.ndim == 3 else image_bgr
    small = cv2.resize(grey, THUMB, interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    return (small - small.mean()) / (small.std() + 1e-6)


@dataclass(frozen=True)
class Reference:
    source_ref: str
    width: int
    height: int
    aspect: float
    thumb: np.ndarray
    boxes: tuple[Box, ...]


def rotated_clockwise(box: Box, height: int) -> Box:
    """A box of a `height`-tall image, in the image turned a quarter clockwise."""
    return box.model_copy(update={"left": height - (box.top + box.height), "top": box.left,
                                  "width": box.height, "height": box.width})


def load_references(settings: ReplaySettings, classes: list[str]) -> list[Reference]:
    refs = []
    for record in approved(read_label_csv(settings.table)):
        path = settings.images / safe_relative_path(record.source_ref)
        image = apply_drift(settings.drift, read_image(path))  # the photo as the drifted line shows it
        width, height = record.image_width, record.image_height
        boxes = tuple(Box(class_name=classes[b.class_id], left=b.left, top=b.top, width=b.width, height=b.height)
                      for b in record.boxes if b.class_id < len(classes))
        if settings.drift == "rotate90":
            boxes = tuple(rotated_clockwise(b, height) for b in boxes)
            width, height = height, width
        refs.append(Reference(record.source_ref, width, height, width / height, thumbnail(image), boxes))
    if not refs:
        raise LabelingError(f"replay: {settings.table} has no APPROVED rows to answer from")
    return refs


def best_match(refs: list[Reference], image_bgr: np.ndarray) -> Reference | None:
    height, width = image_bgr.shape[:2]
    thumb = thumbnail(image_bgr)
    candidates = [r for r in refs if abs(r.aspect - width / height) < 0.02]
    if not candidates:
        return None
    distances = [float(np.abs(r.thumb - thumb).mean()) for r in candidates]
    best = int(np.argmin(distances))
    return candidates[best] if distances[best] <= MAX_DISTANCE else None


def scaled(box: Box, sx: float, sy: float) -> Box:
    return box.model_copy(update={"left": box.left * sx, "top": box.top * sy,
                                  "width": box.width * sx, "height": box.height * sy})


class ReplayLabeling:
    name = "replay"

    def __init__(self, settings: ReplaySettings, read_frame: Callable[[str, str], np.ndarray],
                 clock: Callable[[], float] = time.time) -> None:
        self.settings, self.read_frame, self.clock = settings, read_frame, clock
        self._refs: list[Reference] | None = None

    def references(self, classes: list[str]) -> list[Reference]:
        if self._refs is None:
            self._refs = load_references(self.settings, classes)
        return self._refs

    def submit(self, batch: Batch) -> str:
        return json.dumps({"submitted": self.clock()})  # nothing to create: idempotent by nature

    def collect(self, batch: Batch, ref: str) -> Progress:
        submitted = float(json.loads(ref)["submitted"])
        if self.clock() - submitted < self.settings.delay_s:
            return Progress()
        refs = self.references(batch.classes)
        answers = []
        for task in batch.tasks:
            match = best_match(refs, self.read_frame(task.bucket, task.key))
            if match is None:
                continue
            sx, sy = task.width / match.width, task.height / match.height
            answers.append(Answer(sha256=task.sha256, boxes=[scaled(b, sx, sy) for b in match.boxes], approved=True,
                                  labeler="replay", answered_at=submitted + self.settings.delay_s,
                                  job=f"replay:{batch.batch_id}:{match.source_ref}"))
        return Progress(answers=answers, finished=True)
