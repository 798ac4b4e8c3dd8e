"""`edge-inspect cloud serve`: announcements and listings in, batches out, answers collected, in
one loop on one thread (the MQTT client's thread only fills a queue). Timers, not sleeps: the loop
blocks on the announcement queue until the next timer is due."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from cloud.ingest.announcements import SamplesSubscriber
from cloud.labeling.loop import LabelingLoop
from cloud.labels.store import LabelStoreError
from cloud.storage import StorageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timers:
    catch_up_s: float  # list the raw prefix this often
    poll_s: float  # ask the backend for answers this often
    tick_s: float = 1.0  # check whether a batch is due this often
    retrain_s: float = 600.0  # count new labels for a retraining run this often


class Due:
    def __init__(self, every_s: float) -> None:
        self.every_s, self.next = every_s, 0.0  # due at once

    def __call__(self, now: float) -> bool:
        if now < self.next:
            return False
        self.next = now + self.every_s
        return True


def serve(loop: LabelingLoop, subscriber: SamplesSubscriber | None, timers: Timers, stop: threading.Event,
          retrain: Callable[[], object] | None = None) -> None:
    """`retrain`, when given, is called every `timers.retrain_s` (cloud.pipeline.trigger)."""
    recovered = loop.recover()
    if recovered:
        log.info("serve: finished %d label-store writes a previous run left unconfirmed", recovered)
    if subscriber is not None:
        subscriber.start()
    catch_up, poll, retrain_due = Due(timers.catch_up_s), Due(timers.poll_s), Due(timers.retrain_s)
    try:
        while not stop.is_set():
            now = time.monotonic()
            try:
                if catch_up(now):
                    loop.catch_up()
                loop.cut()
                loop.submit_created()
                if poll(now):
                    loop.collect_submitted()
                if retrain is not None and retrain_due(now):
                    retrain()
            except (StorageError, LabelStoreError) as exc:
                log.warning("serve: %s; trying again in %.0f s", exc, timers.tick_s)
            if subscriber is not None:
                _drain(loop, subscriber, timers.tick_s, stop)
            else:
                stop.wait(timers.tick_s)
    finally:
        if subscriber is not None:
            subscriber.stop()
        log.info("serve: stopped")


def _drain(loop: LabelingLoop, subscriber: SamplesSubscriber, wait_s: float, stop: threading.Event) -> None:
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
            loop.ingest(announced.keys, f"samples from {announced.thing}")
        except StorageError as exc:
            log.warning("serve: %s (the next listing finds these frames)", exc)
