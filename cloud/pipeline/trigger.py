"""When `cloud serve` starts a pipeline run: after `threshold` new APPROVED labels since the newer of
(the production model's dataset, the last run's dataset), so a run the gate refused is not repeated
on the same labels; and at once when a run was interrupted (it resumes). The run goes on a thread
of its own so labeling carries on; one at a time (RunStore.exclusive, across processes too)."""

from __future__ import annotations

import logging
import threading
import time

from cloud.labels.store import LabelStore
from cloud.pipeline.onsite import OnSite, start_or_resume
from cloud.pipeline.params import PipelineParams
from cloud.pipeline.runs import RunBusy
from cloud.registry.registry import production

log = logging.getLogger(__name__)


def new_approved_labels(store: LabelStore, since: float, now: float) -> int:
    return sum(1 for record in store.as_of(now) if record.event_time > since)


class RetrainTrigger:
    def __init__(self, site: OnSite, params: PipelineParams, threshold: int, command: str) -> None:
        self.site, self.params, self.threshold, self.command = site, params, threshold, command
        self.thread: threading.Thread | None = None

    def since(self) -> float:
        current = production(self.site.registry)
        marks = [current.card.dataset.as_of] if current else [0.0]
        marks += [r.params.as_of for r in self.site.runs.runs() if r.params.as_of is not None]
        return max(marks)

    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def check(self) -> bool:
        """Start a run if one is due; True when one was started (or resumed)."""
        if self.running():
            return False
        if self.site.runs.unfinished() is None:
            count = new_approved_labels(self.site.store, self.since(), time.time())
            if count < self.threshold:
                log.debug("retrain: %d new approved labels, %d needed", count, self.threshold)
                return False
            log.info("retrain: %d new approved labels (>= %d): starting a pipeline run", count, self.threshold)
        self.thread = threading.Thread(target=self._run, name="pipeline-run", daemon=True)
        self.thread.start()
        return True

    def _run(self) -> None:
        try:
            record = start_or_resume(self.site, self.params, self.command)
            log.info("retrain: %s", record.line())
        except RunBusy as exc:
            log.info("retrain: %s", exc)
        except Exception:  # the labeling loop must outlive a failed run; the run stays resumable
            log.exception("retrain: the pipeline run stopped with an error")
