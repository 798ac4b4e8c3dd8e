"""The labeling loop: pending frames -> batches with pre-labels -> the labeling backend -> answers
-> label versions in the label store. Every step goes through `LabelingState` first, so a restart
at any point resumes without losing or repeating work:

- a batch is created and its frames marked batched in one transaction;
- a batch is submitted with an idempotent call (the backend finds its earlier submission);
- an answer is noted before it is written to the label store and confirmed after; a note left
  unconfirmed by a crash is checked against the store's history at the next start.

It knows no backend: `service` is any `LabelingService`, `labels` any `LabelStore`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from cloud.ingest.batching import due_batches
from cloud.ingest.frames import Offered, offer, read_frame
from cloud.ingest.state import LabelingState, PendingFrame
from cloud.labeling.prelabels import PreLabeler
from cloud.labeling.rows import AnswerRejected, answer_digest, to_version
from cloud.labeling.service import Answer, Batch, LabelingError, LabelingService, Task
from cloud.labels.store import LabelStore, LabelStoreError
from cloud.storage import ObjectStore, StorageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchRules:
    batch_size: int
    max_wait_s: float


@dataclass(frozen=True)
class Collected:
    written: int = 0
    set_aside: int = 0
    finished: bool = False


def batch_id_for(frames: list[PendingFrame], now: float) -> str:
    """Time first (sorts in order of creation), then a digest of the frames: the same frames
    always make the same id, and the id is safe as a job name (Ground Truth's rule)."""
    digest = hashlib.sha256("".join(sorted(f.sha256 for f in frames)).encode()).hexdigest()
    return f"{datetime.fromtimestamp(now, timezone.utc):%Y%m%d-%H%M%S}-{digest[:12]}"


class LabelingLoop:
    def __init__(self, state: LabelingState, store: ObjectStore, prelabeler: PreLabeler,
                 service: LabelingService, labels: LabelStore, rules: BatchRules,
                 clock: Callable[[], float] = time.time) -> None:
        self.state, self.store, self.prelabeler = state, store, prelabeler
        self.service, self.labels, self.rules, self.clock = service, labels, rules, clock

    @property
    def prefix(self) -> str:
        return self.store.settings.prefix

    # --- ingest -------------------------------------------------------------------------------

    def ingest(self, keys: list[str], source: str) -> Offered:
        result = offer(self.state, self.store, keys, self.prefix, source)
        if result.new or result.set_aside:
            log.info("ingest (%s): %d new, %d known, %d set aside", source, result.new, result.known, result.set_aside)
        return result

    def catch_up(self) -> Offered:
        """Everything under the raw prefix that is not known yet: frames uploaded while we were
        down, or whose announcement was lost."""
        keys = [k for k in self.store.list_keys(self.store.settings.raw_prefix) if k.endswith(".jpg")]
        return self.ingest(keys, "listing")

    # --- batches ------------------------------------------------------------------------------

    def _task(self, frame: PendingFrame) -> Task:
        boxes = self.prelabeler.boxes(read_frame(self.store, frame.key))
        return Task(sha256=frame.sha256, bucket=self.store.bucket, key=frame.key, thing=frame.thing,
                    camera=frame.camera, width=frame.width, height=frame.height, prelabels=boxes)

    def cut(self, force: bool = False, limit: int | None = None) -> list[Batch]:
        """Make the batches that are due (all waiting frames when `force`), pre-labelled."""
        now = self.clock()
        size = min(limit or self.rules.batch_size, self.rules.batch_size)
        made = []
        for frames in due_batches(self.state.pending(), now, size, self.rules.max_wait_s, force):
            try:
                tasks = [self._task(f) for f in frames]
            except StorageError as exc:
                log.warning("batch: cannot read a frame now (%s); the frames wait for the next round", exc)
                continue
            batch = Batch(batch_id=batch_id_for(frames, now), line=frames[0].thing, created=now,
                          classes=self.prelabeler.classes, tasks=tasks)
            self.state.create_batch(batch, self.service.name)
            log.info("batch %s: %d frames of %s, %d pre-labels", batch.batch_id, len(tasks), batch.line,
                     sum(len(t.prelabels) for t in tasks))
            made.append(batch)
        return made

    def submit_created(self) -> int:
        submitted = 0
        for stored in self.state.batches("created"):
            try:
                ref = self.service.submit(stored.batch)
            except LabelingError as exc:
                log.warning("batch %s: not submitted (%s); retrying later", stored.batch.batch_id, exc)
                continue
            self.state.mark_submitted(stored.batch.batch_id, ref)
            log.info("batch %s: submitted to %s", stored.batch.batch_id, self.service.name)
            submitted += 1
        return submitted

    # --- answers ------------------------------------------------------------------------------

    def collect_submitted(self) -> list[Collected]:
        results = []
        for stored in self.state.batches("submitted"):
            try:
                progress = self.service.collect(stored.batch, stored.ref)
            except LabelingError as exc:
                log.warning("batch %s: cannot collect answers now (%s)", stored.batch.batch_id, exc)
                continue
            try:
                results.append(self._take(stored.batch, progress.answers, progress.finished, progress.failure))
            except LabelStoreError as exc:
                log.warning("batch %s: the label store is not available (%s); its answers are written at the "
                            "next round", stored.batch.batch_id, exc)
        return results

    def _take(self, batch: Batch, answers: list[Answer], finished: bool, failure: str | None) -> Collected:
        tasks = {t.sha256: t for t in batch.tasks}
        written = aside = 0
        accepted = set()
        for answer in answers:
            task = tasks.get(answer.sha256)
            if task is None:
                log.warning("batch %s: an answer for a frame not in the batch (%s) is ignored",
                            batch.batch_id, answer.sha256[:12])
                continue
            outcome = self._record(batch, task, answer)
            written += outcome == "written"
            aside += outcome == "set_aside"
            if outcome in ("written", "unchanged") and answer.approved:
                accepted.add(answer.sha256)
        done = finished or failure is not None or accepted == set(tasks)
        if done:
            state = "failed" if failure else "done"
            self.state.finish_batch(batch.batch_id, state, failure)
            log.info("batch %s: %s (%d of %d frames approved)%s", batch.batch_id, state, len(accepted), len(tasks),
                     f": {failure}" if failure else "")
        return Collected(written, aside, done)

    def _record(self, batch: Batch, task: Task, answer: Answer) -> str:
        digest = answer_digest(answer)
        before = self.state.answer(batch.batch_id, task.sha256)
        if before is not None and before.digest == digest and before.written:
            return "unchanged"
        try:
            version, problem = to_version(task, answer, batch.classes), None
        except AnswerRejected as exc:
            version, problem = None, str(exc)
            log.warning("batch %s: answer set aside: %s", batch.batch_id, problem)
        self.state.begin_answer(batch.batch_id, task.sha256, digest, answer.model_dump(), problem)
        retry = before is not None and before.digest == digest and not before.written
        if version is not None and not (retry and version in self.labels.history(task.key)):
            self.labels.append([version])  # if this fails, the note stays unconfirmed: see `recover`
        self.state.confirm_answer(batch.batch_id, task.sha256)
        return "set_aside" if problem else "written"

    def recover(self) -> int:
        """Finish the label-store writes a crash cut short: write each one the store lacks."""
        finished = 0
        unconfirmed = self.state.unconfirmed()
        stored = {b.batch.batch_id: b.batch for b in self.state.batches("created", "submitted", "done", "failed")} \
            if unconfirmed else {}
        for batch_id, sha256, answer_json in unconfirmed:
            batch = stored.get(batch_id)
            task = next((t for t in batch.tasks if t.sha256 == sha256), None) if batch else None
            if task is None:
                continue
            answer = Answer.model_validate_json(answer_json)
            try:
                version = to_version(task, answer, batch.classes)
            except AnswerRejected:
                version = None
            if version is not None and version not in self.labels.history(task.key):
                self.labels.append([version])
            self.state.confirm_answer(batch_id, sha256)
            finished += 1
        return finished
