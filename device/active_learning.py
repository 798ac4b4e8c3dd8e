"""Active learning on the device, wired: the sampler decides in the inference stage (cheap),
a writer thread encodes and spools (disk I/O off the inference path), the uploader drains the
spool to S3. Frames waiting to be written sit in a bounded queue; when it is full the frame is
dropped and counted rather than stall inference."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

import numpy as np

from device import messages
from device.config import ActiveLearningConfig
from device.contracts import ActiveLearningFigures, SampleDetection
from device.events import FrameResult
from device.messages import Outbound
from device.sampler import Sampler
from device.spool import Spool, SpoolError, SpoolWriteError
from device.uploader import Uploader

log = logging.getLogger(__name__)


def sidecar_for(thing: str, result: FrameResult, strategies: tuple[str, ...], tags: tuple[str, ...]) -> dict:
    detections = [SampleDetection(class_id=d.class_id, class_name=d.class_name, confidence=round(d.confidence, 5),
                                  box=[round(v, 2) for v in d.box]) for d in result.detections]
    return messages.sidecar(thing, result.camera, result.frame_time, result.width, result.height, result.model,
                            detections, list(strategies), list(tags))


class ActiveLearning:
    def __init__(self, config: ActiveLearningConfig, thing: str, default_threshold: float,
                 publish: Callable[[Outbound], None], stop: threading.Event, s3_client=None) -> None:
        self.thing, self.stop = thing, stop
        self.sampler = Sampler(config, default_threshold)
        spool_cfg = config.spool
        self.spool = Spool(spool_cfg.path, spool_cfg.max_bytes, spool_cfg.min_free_bytes, spool_cfg.jpeg_quality)
        self._pending: queue.Queue = queue.Queue(maxsize=spool_cfg.queue_size)
        self.dropped = 0
        self.write_errors = 0  # samples not stored: no room, or a failed write (spool.write_failures)
        self._failing = False
        self._writer = threading.Thread(target=self._write_loop, name="spool-writer", daemon=True)
        self.uploader = (Uploader(self.spool, config.upload, thing, publish, stop, s3_client)
                         if config.upload.enabled else None)

    def start(self) -> None:
        self._writer.start()
        if self.uploader:
            self.uploader.start()
        log.info("active learning: %d frames in the spool at start", len(self.spool))

    def configure(self, config: ActiveLearningConfig) -> None:
        self.sampler.configure(config)

    def offer(self, image: np.ndarray, result: FrameResult, drifting: bool = False) -> bool:
        decision = self.sampler.decide(result.camera, image, result.detections, drifting)
        if decision is None:
            return False
        try:
            self._pending.put_nowait((image, sidecar_for(self.thing, result, decision.strategies, decision.tags)))
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def _write_loop(self) -> None:
        while True:
            try:
                image, sidecar = self._pending.get(timeout=0.2)
            except queue.Empty:
                if self.stop.is_set():
                    return
                continue
            try:
                self.spool.put(image, sidecar)
                self._failing = False
                if self.uploader:
                    self.uploader.wake()
            except (SpoolError, OSError) as exc:  # disk full, read-only: count, log once per burst, go on
                self.write_errors += 1
                if not self._failing:
                    self._failing = True
                    if not isinstance(exc, SpoolWriteError):  # the spool logs its own write failures
                        log.error("spool: could not store a sample: %s (further failures are counted, "
                                  "not logged, until one is stored)", exc)
            finally:
                self._pending.task_done()

    def flush(self, timeout: float) -> None:
        """Write what is queued (a sample taken is a sample kept) within `timeout`."""
        done = threading.Event()
        threading.Thread(target=lambda: (self._pending.join(), done.set()), daemon=True).start()
        done.wait(timeout)

    def figures(self) -> ActiveLearningFigures:
        return ActiveLearningFigures(
            spooled=len(self.spool),
            spool_bytes=self.spool.bytes,
            written=self.spool.written,
            evicted=self.spool.evicted,
            quarantined=self.spool.quarantined,
            dropped=self.dropped,
            write_failures=self.write_errors,
            rate_limited=self.sampler.rate_limited,
            duplicates_suppressed=self.sampler.suppressed_duplicates,
            uploaded=self.uploader.uploaded if self.uploader else 0,
            upload_online=self.uploader.online if self.uploader else False,
        )
