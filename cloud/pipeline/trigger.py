"""When `cloud serve` starts a pipeline run: after `trigger_new_labels` new APPROVED labels since the
newer of (the production model's dataset, the last run's dataset), so a run the gate refused is not
repeated on the same labels; and at once when a run was interrupted (it resumes). One at a time
(RunStore.exclusive, across processes too).

The run goes in a child process of its own, so labeling carries on and the parent can stop at any
moment: in a thread, training's native threads were still running when the interpreter exited,
and the process ended by SIGABRT. A child is terminated with its parent (it is a daemon process)
and its run resumes from the last whole epoch at the next start."""

from __future__ import annotations

import logging
import multiprocessing
import signal
import time

from cloud.labels.store import LabelStore
from cloud.pipeline.backends import open_onsite
from cloud.pipeline.onsite import OnSite, start_or_resume
from cloud.pipeline.runs import RunBusy
from cloud.registry.registry import production
from cloud.settings import CloudConfig

log = logging.getLogger(__name__)


def new_approved_labels(store: LabelStore, since: float, now: float) -> int:
    return sum(1 for record in store.as_of(now) if record.event_time > since)


def run_pipeline(config: CloudConfig, command: str, log_level: int) -> None:
    """The child: its own site (registry, label store, run store) from the same configuration."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        record = start_or_resume(open_onsite(config), config.pipeline.params, command)
        log.info("retrain: %s", record.line())
    except RunBusy as exc:
        log.info("retrain: %s", exc)
    except Exception:  # logged here, where the traceback is; the run stays resumable
        log.exception("retrain: the pipeline run stopped with an error")
        raise SystemExit(1) from None


class RetrainTrigger:
    def __init__(self, config: CloudConfig, command: str, site: OnSite | None = None) -> None:
        """`site`: the caller's own, opened from `config` (else the trigger opens one)."""
        if config.pipeline is None:
            raise ValueError("the retraining trigger needs a `pipeline` section")
        self.config, self.command = config, command
        self.site = site or open_onsite(config)
        self.threshold = config.pipeline.trigger_new_labels
        self.process: multiprocessing.process.BaseProcess | None = None

    def since(self) -> float:
        current = production(self.site.registry)
        marks = [current.card.dataset.as_of] if current else [0.0]
        marks += [r.params.as_of for r in self.site.runs.runs() if r.params.as_of is not None]
        return max(marks)

    def running(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def wait(self, timeout: float | None = None) -> int | None:
        """The child's exit code once it ended (0: the run finished, whatever its outcome)."""
        if self.process is None:
            return None
        self.process.join(timeout)
        return self.process.exitcode

    def check(self) -> bool:
        """Start a run if one is due; True when one was started (or resumed)."""
        if self.running():
            return False
        if self.process is not None and self.process.exitcode not in (0, None):
            log.warning("retrain: the last run's process ended with exit code %s", self.process.exitcode)
        self.process = None
        if self.site.runs.unfinished() is None:
            count = new_approved_labels(self.site.store, self.since(), time.time())
            if count < self.threshold:
                log.debug("retrain: %d new approved labels, %d needed", count, self.threshold)
                return False
            log.info("retrain: %d new approved labels (>= %d): starting a pipeline run", count, self.threshold)
        # spawn, not fork: the parent has threads (labeling, MQTT) whose locks a fork would copy
        context = multiprocessing.get_context("spawn")
        self.process = context.Process(target=run_pipeline, name="pipeline-run", daemon=True,
                                       args=(self.config, self.command, logging.getLogger().getEffectiveLevel()))
        self.process.start()
        return True

    def stop(self) -> None:
        """Terminate a run in progress (it resumes at the next start)."""
        if self.running():
            self.process.terminate()
            self.process.join(30)
