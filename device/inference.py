"""The inference stage: frames from the cameras' queues -> detector -> defect events -> sinks.

One thread (the daemon's main thread) owns this stage, the detector and the defect trackers, so
none of them needs a lock. Cameras are served round robin, one frame each per turn. The model
swaps only here, between two frames (`ModelManager.take_pending`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from device.active_learning import ActiveLearning
from device.config import EventsConfig
from device.contracts import StageLatency
from device.detector import Detector, FrameError, Letterbox, PreparedInput
from device.drift import DriftMonitor, Verdict
from device.events import DefectTracker, FrameResult
from device.messages import Outbound
from device.model_manager import ModelManager
from device.sources import Camera, Frame
from device.stats import Stats

log = logging.getLogger(__name__)

IDLE_WAIT_S = 0.002  # how long the stage sleeps when no camera has a frame


def prepare_for(models: ModelManager) -> Callable[[np.ndarray], PreparedInput | None]:
    """The `prepare` callable the cameras run in their own threads, so preprocessing overlaps
    inference on the previous frame instead of adding to it."""

    def prepare(image: np.ndarray) -> PreparedInput | None:
        detector = models.detector
        try:
            blob, fit = detector.preprocess(image)
        except FrameError:  # a frame the detector cannot take: the inference stage reports it
            return None
        return PreparedInput(detector.info.sha256, blob, fit)

    return prepare


class InferenceStage:
    def __init__(self, models: ModelManager, cameras: dict[str, Camera], trackers: dict[str, DefectTracker],
                 stats: Stats, publish: Callable[[Outbound], None], events_config: Callable[[], EventsConfig],
                 active_learning: ActiveLearning | None = None, drift: DriftMonitor | None = None,
                 on_drift: Callable[[Verdict], None] | None = None) -> None:
        self.models, self.cameras, self.trackers = models, cameras, trackers
        self.stats, self.publish, self.events_config = stats, publish, events_config
        self.active_learning = active_learning
        self.drift, self.on_drift = drift, on_drift
        self._finished_flushed: set[str] = set()
        self.frames_processed = 0
        self.frame_errors = 0

    def _detector_conf(self) -> float:
        """The detector keeps everything any class rule could want; the trackers filter."""
        events = self.events_config()
        return min(rule.min_confidence for rule in [events.default, *events.classes.values()])

    def _model_input(self, detector: Detector, frame: Frame) -> tuple[np.ndarray, Letterbox, float]:
        prepared = frame.prepared
        if prepared is not None and prepared.model_sha256 == detector.info.sha256:
            return prepared.blob, prepared.fit, frame.prepare_ms
        started = time.monotonic()  # made for a model swapped out since, or not made
        blob, fit = detector.preprocess(frame.image)
        return blob, fit, (time.monotonic() - started) * 1000

    def process(self, frame: Frame) -> None:
        self.models.take_pending()  # the one place a model swaps: between two frames
        detector = self.models.detector
        t0 = time.monotonic()
        blob, fit, preprocess_ms = self._model_input(detector, frame)
        t1 = time.monotonic()
        output = detector.infer(blob)
        t2 = time.monotonic()
        found = detector.postprocess(output, fit, frame.image.shape, self._detector_conf(), detector.iou)
        t3 = time.monotonic()
        queue_ms = max(0.0, (t0 - frame.captured_mono) * 1000 - frame.prepare_ms)
        latency = StageLatency(queue=round(queue_ms, 3), preprocess=round(preprocess_ms, 3),
                               inference=round((t2 - t1) * 1000, 3), postprocess=round((t3 - t2) * 1000, 3))
        height, width = frame.image.shape[:2]
        result = FrameResult(frame.camera, frame.seq, frame.frame_time, frame.stream_time, width, height,
                             tuple(found), latency, self.models.identity)
        for event in self.trackers[frame.camera].update(result):
            self.stats.record_event(event.payload["type"])
            self.publish(event)
        drifting = self._watch_drift(frame, found)
        if self.active_learning:
            self.active_learning.offer(frame.image, result, drifting)
        self.stats.record_frame(frame.camera, {**latency.model_dump(),
                                               "total": round((t3 - frame.captured_mono) * 1000, 3)})
        self.models.reference_frame = frame.image
        self.frames_processed += 1

    def _watch_drift(self, frame: Frame, found: list) -> bool:
        """Compare the frame with the serving model's reference; report a changed verdict.
        True while the frame's camera drifts (the `drift` sampling strategy's cue)."""
        if self.drift is None:
            return False
        changed = self.drift.use(self.models.drift_reference, self.models.identity.sha256)  # a swap: judged again
        verdict = self.drift.observe(frame.camera, frame.image, [d.confidence for d in found])
        if verdict is not None and verdict.changed:
            changed.append(verdict)
        if self.on_drift:
            for each in changed:
                self.on_drift(each)
        return self.drift.drifting(frame.camera)

    def _take(self, camera: Camera) -> bool:
        """Process one frame of `camera` if it has one; a bad frame is skipped, never the stream."""
        frame = camera.queue.get_nowait()
        if frame is None:
            return False
        try:
            self.process(frame)
        except FrameError as exc:
            self.frame_errors += 1
            log.error("camera %s frame %d skipped: %s", frame.camera, frame.seq, exc)
        except Exception:  # a bug met by one frame must not end inspection: counted, logged, skipped
            self.frame_errors += 1
            log.exception("camera %s frame %d failed in the inference stage; skipped", frame.camera, frame.seq)
        finally:
            # a folder source remembers the file once it was inspected (or failed): an image that
            # breaks inference must not be inspected again at every restart
            camera.frame_done(frame)
        return True

    def end_finished_cameras(self) -> bool:
        """End the open defects of cameras whose file is done; True when every camera has
        genuinely finished (a file read to its end). A live camera never finishes by itself."""
        all_done = True
        for cam_id, camera in self.cameras.items():
            if camera.finished.is_set() and camera.state == "finished" and not len(camera.queue):
                if cam_id not in self._finished_flushed:
                    self._finished_flushed.add(cam_id)
                    for event in self.trackers[cam_id].finish():
                        self.publish(event)
            else:
                all_done = False
        return all_done

    def run(self, stop: threading.Event) -> None:
        """Until stopped, or until every source has finished."""
        cameras = list(self.cameras.values())
        while not stop.is_set():
            busy = False
            for camera in cameras:  # round robin: one frame per camera per turn
                busy = self._take(camera) or busy
            if not busy:
                if self.end_finished_cameras():
                    log.info("every source has finished")
                    return
                stop.wait(IDLE_WAIT_S)

    def end_all(self, reason: str) -> None:
        """The daemon is stopping: every open defect ends now."""
        for tracker in self.trackers.values():
            for event in tracker.finish(reason):
                self.publish(event)
