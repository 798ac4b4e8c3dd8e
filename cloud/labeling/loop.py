"""The labeling loop: pending frames -> batches with pre-labels -> the labeling backend -> answers
-> label versions in the label store. Every step goes through `LabelingState` first, so a restart
at any point resumes without losing or repeating work:

- a batch is created and its frames marked batched in one transaction;
- a batch is submitted with an idempotent call (the backend finds its earlier submission);
- an answer is noted before it is written to the label store and confirmed after; a note left
  unconfirmed by a crash is checked against the store's history at the next start.

One bad item never stops the others: a frame whose object changed, went missing or grew past the
size limit after ingest is set aside (in the state, with the reason; one log line) and the rest of
its batch goes on; an answer that cannot be a label row is set aside and the rest of the batch is
written; a batch whose backend call fails waits for the next round without holding up the others.
An outage (S3, the label store, the backend) is not the item's fault: the item waits, never set aside.

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
from cloud.ingest.frames import FrameRejected, Offered, RecentlyAbsent, offer, read_frame
from cloud.ingest.state import BatchConflict, LabelingState, PendingFrame, StateError, StateFull
from cloud.labeling.prelabels import PreLabeler
from cloud.labeling.rebuild import Rebuilt, rebuild
from cloud.labeling.rows import answer_digest, to_version
from cloud.labeling.service import Answer, Batch, LabelingError, LabelingService, Task
from cloud.labels.store import LabelStore, LabelStoreError
from cloud.storage import ObjectMissing, ObjectStore, ObjectTooLarge, StorageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchRules:
    batch_size: int
    max_wait_s: float


INGEST_CHUNK = 100  # keys offered between two looks at `stopping` (a listing can hold thousands)


@dataclass(frozen=True)
class Collected:
    written: int = 0
    set_aside: int = 0
    finished: bool = False


class FrameGone(Exception):
    """The frame's object is no longer the one ingested: changed, truncated, deleted or too large."""


def _frame_problem(exc: Exception) -> str | None:
    """Why a frame read failed, if the failure is the frame's own (an outage is not: None)."""
    if isinstance(exc, FrameRejected):
        return str(exc)
    if isinstance(exc, ObjectTooLarge):
        return f"the object grew past the size limit since it was checked: {exc}"
    if isinstance(exc, ObjectMissing):
        return f"the object was deleted from the bucket after it was checked: {exc}"
    return None


class Problems:
    """One log line per item and problem: an item that fails the same way at every round (a batch
    the backend keeps refusing) is logged when its problem changes, not every second."""

    def __init__(self) -> None:
        self._last: dict[str, str] = {}

    def warn(self, item: str, message: str) -> None:
        if self._last.get(item) != message:
            self._last[item] = message
            log.warning("%s", message)

    def clear(self, item: str) -> None:
        self._last.pop(item, None)


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
        self._absent = RecentlyAbsent()  # announced keys not in the bucket: not looked up again at once
        self.service, self.labels, self.rules, self.clock = service, labels, rules, clock
        self.stopping: Callable[[], bool] = lambda: False  # `cloud serve` sets it: long steps end early
        self.problems = Problems()

    @property
    def prefix(self) -> str:
        return self.store.settings.prefix

    # --- ingest -------------------------------------------------------------------------------

    def ingest(self, keys: list[str], source: str) -> Offered:
        result = offer(self.state, self.store, keys, self.prefix, source, self._absent)
        if result.new or result.set_aside:
            log.info("ingest (%s): %d new, %d known, %d set aside", source, result.new, result.known, result.set_aside)
        return result

    def catch_up(self) -> Offered:
        """Everything under the raw prefix that is not known yet: frames uploaded while we were
        down, or whose announcement was lost. Offered in chunks, so a stop is not held up by a
        long listing (what is left is offered at the next listing)."""
        new = known = aside = 0
        chunk: list[str] = []
        keys = (k for k in self.store.list_keys(self.store.settings.raw_prefix) if k.endswith(".jpg"))
        for key in keys:
            chunk.append(key)
            if len(chunk) < INGEST_CHUNK:
                continue
            got = offer(self.state, self.store, chunk, self.prefix, "listing")
            new, known, aside, chunk = new + got.new, known + got.known, aside + got.set_aside, []
            if self.stopping():
                break
        if chunk and not self.stopping():
            got = offer(self.state, self.store, chunk, self.prefix, "listing")
            new, known, aside = new + got.new, known + got.known, aside + got.set_aside
        if new or aside:
            log.info("ingest (listing): %d new, %d known, %d set aside", new, known, aside)
        return Offered(new, known, aside)

    # --- batches ------------------------------------------------------------------------------

    def _task(self, frame: PendingFrame) -> Task:
        try:
            image = read_frame(self.store, frame.key)
        except (FrameRejected, StorageError) as exc:
            problem = _frame_problem(exc)
            if problem is None:
                raise  # an outage: the frame waits
            raise FrameGone(problem) from None
        try:
            boxes = self.prelabeler.boxes(image)
        except Exception as exc:  # pre-labels are an aid: a frame the model fails on goes without them
            self.problems.warn("prelabels", f"batch: frame {frame.sha256[:12]} goes without pre-labels: the model "
                                            f"failed on it ({type(exc).__name__}: {exc})")
            boxes = []
        return Task(sha256=frame.sha256, bucket=self.store.bucket, key=frame.key, thing=frame.thing,
                    camera=frame.camera, width=frame.width, height=frame.height, prelabels=boxes)

    def cut(self, force: bool = False, limit: int | None = None) -> list[Batch]:
        """Make the batches that are due (all waiting frames when `force`), pre-labelled. A frame
        whose object is no longer the one ingested is set aside; the others of its batch go on."""
        now = self.clock()
        size = min(limit or self.rules.batch_size, self.rules.batch_size)
        made = []
        for frames in due_batches(self.state.pending(), now, size, self.rules.max_wait_s, force):
            if self.stopping():
                break
            tasks, kept = [], []
            try:
                for frame in frames:
                    try:
                        tasks.append(self._task(frame))
                        kept.append(frame)
                    except FrameGone as exc:
                        self.state.set_frame_aside(frame.sha256, str(exc))
                        log.warning("batch: frame %s set aside: %s", frame.sha256[:12], exc)
            except StorageError as exc:
                self.problems.warn("cut", f"batch: cannot read a frame now ({exc}); the frames wait for the next round")
                continue
            self.problems.clear("cut")
            if not tasks:
                continue
            batch = Batch(batch_id=batch_id_for(kept, now), line=kept[0].thing, created=now,
                          classes=self.prelabeler.classes, tasks=tasks)
            try:
                self.state.create_batch(batch, self.service.name)
            except BatchConflict as exc:
                log.warning("batch %s not made: %s; its frames are looked at again next round", batch.batch_id, exc)
                continue
            log.info("batch %s: %d frames of %s, %d pre-labels", batch.batch_id, len(tasks), batch.line,
                     sum(len(t.prelabels) for t in tasks))
            made.append(batch)
        return made

    def submit_created(self) -> int:
        submitted = 0
        for stored in self.state.batches("created"):
            if self.stopping():
                break
            batch_id = stored.batch.batch_id
            try:
                ref = self.service.submit(stored.batch)
            except LabelingError as exc:
                self.problems.warn(f"submit {batch_id}", f"batch {batch_id}: not submitted ({exc}); retrying later")
                continue
            except Exception as exc:  # one batch's odd failure must not hold up the others
                self.problems.warn(f"submit {batch_id}", f"batch {batch_id}: not submitted "
                                   f"({type(exc).__name__}: {exc}); retrying later")
                continue
            self.problems.clear(f"submit {batch_id}")
            self.state.mark_submitted(batch_id, ref)
            log.info("batch %s: submitted to %s", batch_id, self.service.name)
            submitted += 1
        return submitted

    # --- answers ------------------------------------------------------------------------------

    def collect_submitted(self) -> list[Collected]:
        results = []
        for stored in self.state.batches("submitted"):
            if self.stopping():
                break
            batch_id = stored.batch.batch_id
            try:
                progress = self.service.collect(stored.batch, stored.ref)
            except LabelingError as exc:
                self.problems.warn(f"collect {batch_id}", f"batch {batch_id}: cannot collect answers now ({exc})")
                continue
            except Exception as exc:  # one batch's odd failure must not hold up the others
                self.problems.warn(f"collect {batch_id}", f"batch {batch_id}: cannot collect answers now "
                                   f"({type(exc).__name__}: {exc}); retrying later")
                continue
            try:
                results.append(self._take(stored.batch, progress.answers, progress.finished, progress.failure))
            except LabelStoreError as exc:
                self.problems.warn(f"collect {batch_id}", f"batch {batch_id}: the label store is not available "
                                   f"({exc}); its answers are written at the next round")
                continue
            except (StateFull, StateError):
                raise  # the state's own trouble is serve's to handle (pause, or stop)
            except Exception as exc:  # one batch's odd answer must not hold up the others' answers
                self.problems.warn(f"collect {batch_id}", f"batch {batch_id}: its answers cannot be taken now "
                                   f"({type(exc).__name__}: {exc}); retrying later")
                continue
            self.problems.clear(f"collect {batch_id}")
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
        """Note the answer, write its label version, confirm. An answer that cannot be a label row
        (rows.to_version's rules, or the label store's: both raise ValueErrors) is set aside with
        its reason, and the same answer reported again is not tried again; a corrected one is.
        A LabelStoreError (the store is down or full) leaves the note unconfirmed: retried."""
        digest = answer_digest(answer)
        before = self.state.answer(batch.batch_id, task.sha256)
        if before is not None and before.digest == digest and before.written:
            return "unchanged"
        where = f"batch {batch.batch_id}: frame {task.sha256[:12]}"
        try:
            version, problem = to_version(task, answer, batch.classes), None
        except ValueError as exc:  # AnswerRejected, the label rules' InvalidLabelRow
            version, problem = None, str(exc)
            log.warning("%s: answer set aside: %s", where, problem)
        self.state.begin_answer(batch.batch_id, task.sha256, digest, answer.model_dump(), problem)
        retry = before is not None and before.digest == digest and not before.written
        if version is not None and not (retry and version in self.labels.history(task.key)):
            try:
                self.labels.append([version])  # if the store is down, the note stays unconfirmed: see `recover`
            except ValueError as exc:  # the store's rules refused the row: nothing was written
                problem = str(exc)
                log.warning("%s: answer set aside: %s", where, problem)
                self.state.begin_answer(batch.batch_id, task.sha256, digest, answer.model_dump(), problem)
        self.state.confirm_answer(batch.batch_id, task.sha256)
        return "set_aside" if problem else "written"

    def recover(self) -> int:
        """Finish the label-store writes a crash cut short: write each one the store lacks. One
        that cannot be a label row is confirmed as set aside (it would fail at every start)."""
        finished = 0
        unconfirmed = self.state.unconfirmed()
        stored = {b.batch.batch_id: b.batch for b in self.state.batches("created", "submitted", "done", "failed")} \
            if unconfirmed else {}
        for batch_id, sha256, answer_json in unconfirmed:
            batch = stored.get(batch_id)
            task = next((t for t in batch.tasks if t.sha256 == sha256), None) if batch else None
            if task is None:
                continue
            try:
                answer = Answer.model_validate_json(answer_json)
                version = to_version(task, answer, batch.classes)
                if version not in self.labels.history(task.key):
                    self.labels.append([version])
            except ValueError as exc:  # a note that is no label row (pydantic's errors are ValueErrors too)
                log.warning("batch %s: frame %s: an unconfirmed answer is set aside: %s", batch_id, sha256[:12], exc)
                self.state.note_answer_problem(batch_id, sha256, str(exc))
            self.state.confirm_answer(batch_id, sha256)
            finished += 1
        return finished

    # --- a state file rebuilt from the label store ----------------------------------------------------

    def rebuild_from_labels(self) -> Rebuilt:
        """Fill the state from the label store (cloud.labeling.rebuild: one query for the whole
        bucket): a state marked `rebuilding` is completed; a sound one is reconciled (frames it
        still had pending or batched that the store holds as approved become labelled)."""
        return rebuild(self.state, self.labels, self.store.settings, self.clock())
