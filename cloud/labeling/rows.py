"""A labeler's answer -> a label version: the one place that decides what an answer means,
whatever backend it came from.

- Class names must be the model's: a name it does not know (a typo in a label config, a class
  added by hand) sets the answer aside; guessing would train the model on a wrong class.
- Boxes are clipped to the image: labeling tools let a rectangle hang over the edge, and the part
  outside holds no pixels. A box with nothing left inside the image sets the answer aside.
- APPROVED only when a reviewer accepted it (or Ground Truth's verification passed); otherwise
  the version is PENDING, which keeps it out of every dataset (cloud.label_table.approved).
- The event time is when the labeler answered, so "the dataset as of T" means what people had
  said by T.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from cloud.label_table import APPROVED, BoxLabel, LabelRecord
from cloud.labeling.service import Answer, Batch, Box, Task
from cloud.labels.store import LabelStore
from cloud.labels.versions import LabelVersion

log = logging.getLogger(__name__)

PENDING = "PENDING"
MIN_SIDE_PX = 1.0  # a box thinner than a pixel after clipping is no box


class AnswerRejected(ValueError):
    """The answer cannot become a label row; the message names the frame and the problem."""


def clip_box(box: Box, width: int, height: int, where: str) -> Box:
    left, top = max(box.left, 0.0), max(box.top, 0.0)
    right, bottom = min(box.left + box.width, float(width)), min(box.top + box.height, float(height))
    if right - left < MIN_SIDE_PX or bottom - top < MIN_SIDE_PX:
        raise AnswerRejected(f"{where}: a {box.class_name!r} box ({box.left:.0f}, {box.top:.0f}, "
                             f"{box.width:.0f}x{box.height:.0f}) lies outside the {width}x{height} image")
    return box.model_copy(update={"left": left, "top": top, "width": right - left, "height": bottom - top})


def to_version(task: Task, answer: Answer, classes: list[str]) -> LabelVersion:
    where = f"frame {task.sha256[:12]} ({answer.job})"
    boxes = []
    for box in answer.boxes:
        if box.class_name not in classes:
            raise AnswerRejected(f"{where}: class {box.class_name!r} is not one of the model's classes {classes}")
        clipped = clip_box(box, task.width, task.height, where)
        boxes.append(BoxLabel(classes.index(box.class_name), round(clipped.left, 2), round(clipped.top, 2),
                              round(clipped.width, 2), round(clipped.height, 2)))
    record = LabelRecord(source_ref=task.key, image_width=task.width, image_height=task.height,
                         boxes=tuple(boxes), status=APPROVED if answer.approved else PENDING,
                         event_time=answer.answered_at, labeling_job=answer.job)
    return LabelVersion(record)


def answer_digest(answer: Answer) -> str:
    """What identifies an answer's content: the same answer reported again writes nothing."""
    return hashlib.sha256(answer.model_dump_json().encode()).hexdigest()


@dataclass(frozen=True)
class Written:
    versions: int
    set_aside: list[str]  # why each answer left out was left out


def write_answers(store: LabelStore, batch: Batch, answers: list[Answer]) -> Written:
    """Every answer of a batch as a label version in one append; the ones that cannot be rows are
    logged and left out. For drivers that see a batch's answers once, at its end (the Ground
    Truth state machine); `cloud serve` notes each answer as it goes (cloud.labeling.loop)."""
    tasks = {t.sha256: t for t in batch.tasks}
    versions, problems = [], []
    for answer in answers:
        task = tasks.get(answer.sha256)
        try:
            if task is None:
                raise AnswerRejected(f"frame {answer.sha256[:12]} is not in batch {batch.batch_id}")
            versions.append(to_version(task, answer, batch.classes))
        except AnswerRejected as exc:
            log.warning("batch %s: answer set aside: %s", batch.batch_id, exc)
            problems.append(str(exc))
    store.append(versions)
    return Written(len(versions), problems)
