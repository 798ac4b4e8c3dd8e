"""A labeler's answer -> a label version: the one place that decides what an answer means,
whatever backend it came from.

- Class names must be the model's: a name it does not know (a typo in a label config, a class
  added by hand) sets the answer aside; guessing would train the model on a wrong class.
- Boxes are clipped to the image: labeling tools let a rectangle hang over the edge, and the part
  outside holds no pixels. A box with nothing left inside the image sets the answer aside, and so
  does one no tool draws: a coordinate that is not a finite number (JSON's 1e306 times the frame's
  width is `inf`, and `inf - inf` is NaN) or an edge more than the image's own size outside it.
- The row is then checked by the label store's own rules (cloud.labels.rules: bounded box count,
  known class, positive size inside the image, sane times), so what the store would refuse sets
  this one answer aside instead of failing the write.
- The row references the frame's content: its `source_ref` is the frame's key, whose name is the
  frame's sha256 (`{prefix}/raw/{thing}/{camera}/{yyyy}/{mm}/{dd}/{sha256}.jpg`); a task whose key
  does not name the answered frame's sha256 is set aside.
- APPROVED only when a reviewer accepted it (or Ground Truth's verification passed); otherwise
  the version is PENDING, which keeps it out of every dataset (cloud.label_table.approved).
- The event time is when the labeler answered, so "the dataset as of T" means what people had
  said by T.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass

from cloud.label_table import APPROVED, BoxLabel, LabelRecord
from cloud.labeling.service import Answer, Batch, Box, Task
from cloud.labels.rules import MAX_BOXES, InvalidLabelRow, check_new_version
from cloud.labels.store import LabelStore
from cloud.labels.versions import LabelVersion
from cloud.storage import RAW_KEY

log = logging.getLogger(__name__)

PENDING = "PENDING"
MIN_SIDE_PX = 1.0  # a box thinner than a pixel after clipping is no box


class AnswerRejected(ValueError):
    """The answer cannot become a label row; the message names the frame and the problem."""


def clip_box(box: Box, width: int, height: int, where: str) -> Box:
    numbers = (box.left, box.top, box.width, box.height)
    if not all(math.isfinite(v) for v in numbers) or not all(math.isfinite(v) for v in
                                                             (box.left + box.width, box.top + box.height)):
        raise AnswerRejected(f"{where}: a {box.class_name!r} box has a coordinate that is not a finite number {numbers}")
    if (box.left < -width or box.top < -height or box.left + box.width > 2 * width
            or box.top + box.height > 2 * height):
        raise AnswerRejected(f"{where}: a {box.class_name!r} box ({box.left:g}, {box.top:g}, {box.width:g}x{box.height:g}) "
                             f"reaches more than the image's size outside the {width}x{height} image: no tool draws that")
    left, top = max(box.left, 0.0), max(box.top, 0.0)
    right, bottom = min(box.left + box.width, float(width)), min(box.top + box.height, float(height))
    if right - left < MIN_SIDE_PX or bottom - top < MIN_SIDE_PX:
        raise AnswerRejected(f"{where}: a {box.class_name!r} box ({box.left:.0f}, {box.top:.0f}, "
                             f"{box.width:.0f}x{box.height:.0f}) lies outside the {width}x{height} image")
    return box.model_copy(update={"left": left, "top": top, "width": right - left, "height": bottom - top})


def _check_frame(task: Task, answer: Answer, where: str) -> None:
    match = RAW_KEY.match(task.key)
    if answer.sha256 != task.sha256 or match is None or match["sha256"] != task.sha256:
        raise AnswerRejected(f"{where}: the task's key {task.key[:200]!r} does not name the answered frame's sha256 "
                             "({prefix}/raw/{thing}/{camera}/{yyyy}/{mm}/{dd}/{sha256}.jpg)")


def to_version(task: Task, answer: Answer, classes: list[str]) -> LabelVersion:
    """The label version an answer means, or AnswerRejected (a ValueError) naming the frame and
    the problem: the caller sets that one answer aside."""
    where = f"frame {task.sha256[:12]} ({answer.job[:100]})"
    _check_frame(task, answer, where)
    if len(answer.boxes) > MAX_BOXES:
        raise AnswerRejected(f"{where}: {len(answer.boxes)} boxes, at most {MAX_BOXES} per image")
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
    try:
        return check_new_version(LabelVersion(record), len(classes))
    except InvalidLabelRow as exc:
        raise AnswerRejected(f"{where}: {exc}") from None


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
