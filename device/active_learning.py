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

from device.config import ActiveLearningConfig
from device.events import FrameResult
from device.messages import SCHEMA_VERSION, Outbound, utc_iso
from device.sampler import Sampler
from device.spool import Spool, SpoolError
from device.uploader import Uploader

log = logging.getLogger(__name__)


def sidecar_for(thing: str, result: FrameResult, strategies: tuple[str, ...], tags: tuple[str, ...]) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "thing": thing,
        "camera": result.camera,
        "frame_time": utc_iso(result.frame_time),
        "frame_time_epoch": result.frame_time,
        "width": result.width,
        "height": result.height,
        "model": result.model,
        "detections": [d.to_dict() for d in result.detections],
        "strategies": list(strategies),
        "tags": list(tags),
    }


class ActiveLearning:
    def __init__(self, config: ActiveLearningConfig, thing: str, default_threshold: float,
                 publish: Callable[[Outbound], None], stop: threading.Event, s3_client=None) -> None:
        self.thing, self.stop = thing, stop
        self.sampler = Sampler(config, default_threshold)
        spool_cfg = config.spool
        self.spool = Spool(spool_cfg.path, spool_cfg.max_bytes, spool_cfg.min_free_bytes, spool_cfg.jpeg_quality)
        self._pending: queue.Queue = queue.Queue(maxsize=spool_cfg.queue_size)
        self.dropped = 0
        self.write_errors = 0
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

    def offer(self, image: np.ndarray, result: FrameResult) -> bool:
        decision = self.sampler.decide(result.camera, image, result.detections)
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
                if self.uploader:
                    self.uploader.wake()
            except (SpoolError, OSError) as exc:  # disk full, read-only: count, log, go on
                self.write_errors += 1
                log.error("spool: could not store a sample: %s", exc)
            finally:
                self._pending.task_done()

    def flush(self, timeout: float) -> None:
        """Write what is queued (a sample taken is a sample kept) within `timeout`."""
        done = threading.Event()
        threading.Thread(target=lambda: (self._pending.join(), done.set()), daemon=True).start()
        done.wait(timeout)

    def figures(self) -> dict[str, int | bool]:
        return {
            "spooled": len(self.spool),
            "spool_bytes": self.spool.bytes,
            "written": self.spool.written,
            "evicted": self.spool.evicted,
            "quarantined": self.spool.quarantined,
            "dropped": self.dropped,
            "rate_limited": self.sampler.rate_limited,
            "duplicates_suppressed": self.sampler.suppressed_duplicates,
            "uploaded": self.uploader.uploaded if self.uploader else 0,
            "upload_online": self.uploader.online if self.uploader else False,
        }
