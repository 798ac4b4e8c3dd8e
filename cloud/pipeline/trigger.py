"""When `cloud serve` starts a pipeline run: after `trigger_new_labels` new APPROVED labels since the
newer of (the production model's dataset, the last run's dataset), so a run the gate refused is not
repeated on the same labels; and at once when a run was interrupted (it resumes). One at a time
(RunStore.exclusive, across processes too).

The run goes in a child process of its own, so labeling carries on and the parent can stop at any
moment: in a thread, training's native threads were still running when the interpreter exited,
and the process ended by SIGABRT. The child is stopped with its parent (terminated when the
parent stops; on Linux also when the parent is killed outright, by PR_SET_PDEATHSIG) and its run
resumes from the last whole epoch at the next start."""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time

from cloud.labels.store import LabelStore
from cloud.pipeline.backends import open_onsite
from cloud.pipeline.onsite import OnSite, start_or_resume
from cloud.pipeline.runs import RunBusy
from cloud.registry.registry import production
from cloud.settings import CloudConfig
from device.logs import setup_plain_logging
from device.redact import remember_secrets, secrets_in

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def new_approved_labels(store: LabelStore, since: float, now: float) -> int:
    return sum(1 for record in store.as_of(now) if record.event_time > since)


def _die_with_parent(parent: int) -> None:
    """A parent killed outright (SIGKILL, the OOM killer) runs no exit handler: without this the
    child would train on, holding the run lock, while a restarted parent waits for it."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


def run_pipeline(config: CloudConfig, command: str, log_level: int, parent: int) -> None:
    """The child: its own site (registry, label store, run store) from the same configuration."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    _die_with_parent(parent)
    setup_plain_logging(log_level)  # masked like the parent's: a traceback may quote a URL or token
    remember_secrets(secrets_in(config.model_dump()))
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
        # check() runs on the serving thread, running() and stop() on the caller's
        self._lock = threading.Lock()
        self._stopped = False

    def since(self) -> float:
        current = production(self.site.registry)
        marks = [current.card.dataset.as_of] if current else [0.0]
        marks += [r.params.as_of for r in self.site.runs.runs() if r.params.as_of is not None]
        return max(marks)

    def running(self) -> bool:
        process = self.process
        return process is not None and process.is_alive()

    def wait(self, timeout: float | None = None) -> int | None:
        """The child's exit code once it ended (0: the run finished, whatever its outcome)."""
        process = self.process
        if process is None:
            return None
        process.join(timeout)
        return process.exitcode

    def check(self) -> bool:
        """Start a run if one is due; True when one was started (or resumed)."""
        with self._lock:
            if self._stopped or self.running():
                return False
            if self.process is not None:
                self.process.join()  # reap it
                if self.process.exitcode != 0:
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
            level = logging.getLogger().getEffectiveLevel()
            self.process = context.Process(target=run_pipeline, name="pipeline-run", daemon=True,
                                           args=(self.config, self.command, level, os.getpid()))
            self.process.start()
            return True

    def stop(self) -> None:
        """Terminate a run in progress (it resumes at the next start); no run starts after this."""
        with self._lock:
            self._stopped = True
            process = self.process
        if process is not None and process.is_alive():
            process.terminate()
            process.join(30)
            if process.is_alive():  # training stuck in native code: do not hang the parent's exit
                process.kill()
                process.join(10)
