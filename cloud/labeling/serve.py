"""`edge-inspect cloud serve`: announcements and listings in, batches out, answers collected, in
one loop on one thread (the MQTT client's thread only fills a queue). Timers, not sleeps: the loop
blocks on the announcement queue until the next timer is due.

It runs for months, so nothing an item or a peer does stops it:
- a bad frame, answer or batch is set aside or retried by the loop (cloud.labeling.loop);
- an outage (S3, the label store, the backend) is logged and the round is tried again;
- a full disk under the state file pauses the loop (one log line), which resumes by itself once a
  write works again; at start too (`open_waiting`: the state cannot even be opened or made), as
  does a label store that cannot be asked whether this is a first start;
- anything else unexpected in a round is logged (one line per distinct problem) and the next
  round goes on. Only a state file that cannot be used (`StateError`) stops it: carrying on
  without its memory would send labelled frames to labelers again.

A stop (SIGTERM, SIGINT) ends the loop within seconds whatever a peer does: the loop looks at the
stop between items, and a round still blocked `grace_s` after the stop (an S3 endpoint that
accepts connections and never answers) is cut short by `StopNow`, which the state survives like
a crash (every step is safe to repeat: see cloud.labeling.loop).
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from cloud.ingest.announcements import SamplesSubscriber
from cloud.ingest.state import StateError, StateFull
from cloud.labeling.loop import LabelingLoop, Problems
from cloud.labels.store import LabelStoreError
from cloud.storage import StorageError

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_BACKOFF_S = 60.0  # the longest pause between two tries while the disk is full or a round keeps failing


@dataclass(frozen=True)
class Timers:
    catch_up_s: float  # list the raw prefix this often
    poll_s: float  # ask the backend for answers this often
    tick_s: float = 1.0  # check whether a batch is due this often
    retrain_s: float = 600.0  # count new labels for a retraining run this often


class Due:
    """A timer the loop looks at, never sleeps on: true at once, then once every `every_s`. Setting
    `next` to 0 makes it due at the next look (after a pause, every write is tried again)."""

    def __init__(self, every_s: float) -> None:
        self.every_s, self.next = every_s, 0.0  # due at once

    def __call__(self, now: float) -> bool:
        if now < self.next:
            return False
        self.next = now + self.every_s
        return True


class StopNow(BaseException):
    """A stop was asked and a round was still blocked after the grace period. A BaseException, so
    that no `except Exception` on the way (botocore, httpx) takes it for a failed call to retry."""


class Stopper:
    """SIGTERM and SIGINT set `event`. A round still running `grace_s` later gets the signal again
    on the main thread (`pthread_kill`: a signal sent to the process may land on another thread,
    which would leave the main thread's blocked read alone); the handler then raises `StopNow`
    there. A second SIGTERM from the operator does the same at once."""

    def __init__(self, grace_s: float = 3.0) -> None:
        self.event = threading.Event()
        self.grace_s = grace_s
        self.asked_at: float | None = None  # time.monotonic() of the first stop
        self._in_round = False
        self._main = threading.main_thread().ident

    def install(self) -> Stopper:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: object) -> None:
        if not self.event.is_set():
            self.asked_at = time.monotonic()
            self.event.set()
            timer = threading.Timer(self.grace_s, self._nudge)
            timer.daemon = True
            timer.start()
            return
        if self._in_round:
            raise StopNow()

    def _nudge(self) -> None:
        if self._in_round and self._main is not None:
            signal.pthread_kill(self._main, signal.SIGTERM)

    @contextmanager
    def round(self) -> Iterator[None]:
        self._in_round = True
        try:
            yield
        finally:
            self._in_round = False


class Backoff:
    """The wait before the next round: `tick_s` while rounds work, doubling up to MAX_BACKOFF_S
    while they keep failing."""

    def __init__(self, tick_s: float) -> None:
        self.tick_s = self.wait_s = tick_s
        self.failing = False

    def failed(self) -> None:
        self.wait_s = min(self.wait_s * 2, MAX_BACKOFF_S) if self.failing else max(self.tick_s, 1.0)
        self.failing = True

    def worked(self) -> None:
        self.wait_s, self.failing = self.tick_s, False


def open_waiting(open_loop: Callable[[], T], stop: threading.Event) -> T | None:
    """`open_loop()`, tried again while the state's disk is full (StateFull) or the label store
    cannot be asked (LabelStoreError): logged once, retried with a growing pause (at most
    MAX_BACKOFF_S), until it works; None when a stop comes first (at once: the pause is a wait on
    `stop`). Any other error (a damaged or locked state) is raised: waiting would not mend it."""
    backoff, waiting = Backoff(1.0), None
    while not stop.is_set():
        try:
            opened = open_loop()
        except (StateFull, LabelStoreError) as exc:
            if waiting is None:
                log.error("serve: cannot start yet: %s; trying again every %.0f s at most", exc, MAX_BACKOFF_S)
            waiting = exc
            backoff.failed()
            stop.wait(backoff.wait_s)
            continue
        if waiting is not None:
            log.warning("serve: resumed: the start works now (%s is over)", type(waiting).__name__)
        return opened
    return None


def serve(loop: LabelingLoop, subscriber: SamplesSubscriber | None, timers: Timers, stop: threading.Event,
          retrain: Callable[[], object] | None = None, stopper: Stopper | None = None) -> None:
    """Until `stop` is set. `retrain`, when given, is called every `timers.retrain_s`
    (cloud.pipeline.trigger); its failures are logged, never raised. `stopper` (the CLI's)
    cuts short a round that is still blocked after a stop."""
    Serving(loop, subscriber, timers, stop, retrain, stopper).run()


class Serving:
    """One `serve` run: rounds (recover once, list, cut, submit, collect, retrain check) with a
    wait between them that takes announcements; `_guarded` keeps any round's failure but an
    unusable state file from ending it, and turns a full state disk into a pause (`paused`)
    that the next round that works ends."""

    def __init__(self, loop: LabelingLoop, subscriber: SamplesSubscriber | None, timers: Timers,
                 stop: threading.Event, retrain: Callable[[], object] | None, stopper: Stopper | None) -> None:
        self.loop, self.subscriber, self.stop, self.retrain, self.stopper = loop, subscriber, stop, retrain, stopper
        self.in_round = stopper.round if stopper is not None else _no_guard
        self.catch_up, self.poll, self.retrain_due = Due(timers.catch_up_s), Due(timers.poll_s), Due(timers.retrain_s)
        self.backoff, self.problems = Backoff(timers.tick_s), Problems()
        self.recovered = self.paused = False
        loop.stopping = stop.is_set

    def run(self) -> None:
        if self.subscriber is not None:
            self.subscriber.start()
        try:
            while not self.stop.is_set():
                try:
                    self._guarded(self._round)
                    self._guarded(self._wait)
                except StopNow:
                    asked = self.stopper.asked_at if self.stopper is not None else None
                    log.warning("serve: a round was still blocked %.1f s after the stop; it was cut short (the "
                                "next start takes it up again)", time.monotonic() - asked if asked is not None else 0)
                    break
        finally:
            if self.subscriber is not None:
                self.subscriber.stop()
            log.info("serve: stopped")

    def _round(self) -> None:
        now = time.monotonic()
        with self.in_round():
            if not self.recovered:
                finished = self.loop.recover()
                self.recovered = True
                if finished:
                    log.info("serve: finished %d label-store writes a previous run left unconfirmed", finished)
            if self.catch_up(now):
                self.loop.catch_up()
            self.loop.cut()
            self.loop.submit_created()
            if self.poll(now):
                self.loop.collect_submitted()
            if self.retrain is not None and self.retrain_due(now):
                _retrain(self.retrain, self.problems)
        if self.paused:
            log.warning("serve: resumed: the labeling state can be written again")
            self.paused = False
            self.catch_up.next = 0.0  # announcements were dropped while paused: the listing finds their frames
        self.backoff.worked()
        self.problems.clear("round")

    def _wait(self) -> None:
        if self.subscriber is None:
            self.stop.wait(self.backoff.wait_s)
        elif self.paused:
            _discard(self.subscriber, self.backoff.wait_s, self.stop)
        else:
            _drain(self.loop, self.subscriber, self.backoff.wait_s, self.stop, self.in_round)

    def _guarded(self, step: Callable[[], None]) -> None:
        """`step()`; a problem is logged (once while it lasts) and the loop goes on, but for a state
        file that cannot be used (StateError) and a stop (StopNow)."""
        try:
            step()
        except StateFull as exc:
            if not self.paused:
                log.error("serve: paused: %s; retrying every %.0f s at most, until space is freed", exc, MAX_BACKOFF_S)
            self.paused = True
            self.catch_up.next = self.poll.next = 0.0  # while paused every round tries every write again
            self.backoff.failed()
        except StateError:
            raise  # the state file cannot be used: carrying on would relabel frames
        except (StorageError, LabelStoreError) as exc:
            self.problems.warn("round", f"serve: {exc}; trying again")
            self.backoff.failed()
        except Exception as exc:
            # a bug or a peer's reply nobody foresaw: one line, the traceback at debug level, next round
            self.problems.warn("round", f"serve: a round failed ({type(exc).__name__}: {exc}); trying again")
            log.debug("serve: the round's traceback", exc_info=True)
            self.backoff.failed()


@contextmanager
def _no_guard() -> Iterator[None]:
    yield


def _retrain(retrain: Callable[[], object], problems: Problems) -> None:
    """The retraining trigger is another capability's: whatever it raises, labeling goes on."""
    try:
        retrain()
    except Exception as exc:
        problems.warn("retrain", f"serve: the retraining check failed ({type(exc).__name__}: {exc}); "
                                 "labeling goes on, the check runs again at its next time")
        log.debug("serve: the retraining check's traceback", exc_info=True)
    else:
        problems.clear("retrain")


def _drain(loop: LabelingLoop, subscriber: SamplesSubscriber, wait_s: float, stop: threading.Event,
           in_round: Callable[[], object]) -> None:
    """Take announcements until `wait_s` has passed (a batch may be due) or stop is asked."""
    deadline = time.monotonic() + wait_s
    while not stop.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        try:
            announced = subscriber.inbox.get(timeout=min(remaining, 0.5))
        except queue.Empty:
            continue
        try:
            with in_round():  # type: ignore[attr-defined]
                loop.ingest(announced.keys, f"samples from {announced.thing}")
        except StorageError as exc:
            log.warning("serve: %s (the next listing finds these frames)", exc)


def _discard(subscriber: SamplesSubscriber, wait_s: float, stop: threading.Event) -> None:
    """While paused: announcements are dropped (the listing after the pause finds their frames),
    so that the queue does not grow for as long as the disk stays full."""
    deadline = time.monotonic() + wait_s
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            subscriber.inbox.get(timeout=min(max(deadline - time.monotonic(), 0.01), 0.5))
        except queue.Empty:
            continue
