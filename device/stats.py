"""Runtime figures: per-camera rates, per-stage latency percentiles, queue depths, drops, model,
uptime, free disk. Published on `{prefix}/{thing}/stats` and, optionally, served to Prometheus
(the same figures, from prometheus_client's own registry)."""

from __future__ import annotations

import shutil
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from device import messages
from device.contracts import ActiveLearningFigures, CameraFigures, ModelIdentity, Percentiles, SinkFigures
from device.contracts import Stats as StatsMessage
from device.messages import Outbound, utc_iso

STAGES = ("queue", "preprocess", "inference", "postprocess", "total")
WINDOW = 2000  # latency samples kept per stage for the percentiles


class Stats:
    def __init__(self, thing: str, cameras: list[str], disk_path: Path = Path(".")) -> None:
        self.thing, self.disk_path = thing, disk_path
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._latency = {stage: deque(maxlen=WINDOW) for stage in STAGES}
        self.processed = dict.fromkeys(cameras, 0)
        self._last = {"time": self.started, "captured": dict.fromkeys(cameras, 0),
                      "processed": dict.fromkeys(cameras, 0), "dropped": dict.fromkeys(cameras, 0)}
        self.registry = CollectorRegistry()
        self.prom_frames = Counter("edge_inspect_frames_processed", "Frames through the detector",
                                   ["camera"], registry=self.registry)
        self.prom_captured = Gauge("edge_inspect_frames_captured", "Frames read from the camera",
                                   ["camera"], registry=self.registry)
        self.prom_dropped = Gauge("edge_inspect_frames_dropped", "Frames dropped to keep up (live sources)",
                                  ["camera"], registry=self.registry)
        self.prom_queue = Gauge("edge_inspect_queue_depth", "Frames waiting per camera", ["camera"],
                                registry=self.registry)
        self.prom_up = Gauge("edge_inspect_camera_online", "1 when the camera delivers frames", ["camera"],
                             registry=self.registry)
        self.prom_latency = Histogram("edge_inspect_stage_seconds", "Latency per pipeline stage", ["stage"],
                                      buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
                                      registry=self.registry)
        self.prom_events = Counter("edge_inspect_events", "Defect events raised", ["type"], registry=self.registry)
        self.prom_sink_queue = Gauge("edge_inspect_sink_queue_depth", "Messages waiting per sink", ["sink"],
                                     registry=self.registry)
        self.prom_sink = Gauge("edge_inspect_sink_messages", "Per sink: delivered, evicted (events, outbox full), "
                               "dropped (other messages, queue full)", ["sink", "figure"], registry=self.registry)
        self.prom_camera_restarts = Gauge("edge_inspect_camera_restarts", "Camera loops restarted after a failure",
                                          ["camera"], registry=self.registry)
        self.prom_frame_errors = Gauge("edge_inspect_frame_errors", "Frames the detector could not take",
                                       registry=self.registry)
        self.prom_model = Gauge("edge_inspect_model_info", "The model in use (value 1)", ["name", "version", "sha256"],
                                registry=self.registry)
        self.prom_uptime = Gauge("edge_inspect_uptime_seconds", "Seconds since start", registry=self.registry)
        self.prom_disk = Gauge("edge_inspect_free_disk_bytes", "Free bytes on the data disk", registry=self.registry)
        self.prom_drift = Gauge("edge_inspect_drift", "Per camera and feature: distance of the recent frames from the "
                                "model's reference, in reference standard deviations", ["camera", "measure"],
                                registry=self.registry)
        self.prom_drifting = Gauge("edge_inspect_drifting", "1 while the camera's drift alarm is up", ["camera"],
                                   registry=self.registry)
        self.prom_active_learning = Gauge("edge_inspect_active_learning", "Sampler, spool and uploader figures",
                                          ["figure"], registry=self.registry)
        self._model_labels: tuple[str, str, str] | None = None
        self._server = None  # the /metrics HTTP server, when serving
        self._served: tuple[str | None, int | None] = (None, None)

    def serve(self, host: str | None, port: int | None) -> None:
        """Serve /metrics on host:port, or stop serving (port None). A port that cannot be bound
        raises OSError and leaves the old server running: a live change is all or nothing."""
        if (host, port) == self._served:
            return
        server = start_http_server(port, addr=host, registry=self.registry)[0] if port else None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self._server, self._served = server, (host, port)

    def close(self) -> None:
        self.serve(None, None)

    def record_frame(self, camera: str, latency_ms: dict[str, float]) -> None:
        """`latency_ms`: each stage of `StageLatency`, and `total`."""
        with self._lock:
            self.processed[camera] = self.processed.get(camera, 0) + 1
            for stage, value in latency_ms.items():
                self._latency[stage].append(value)
        self.prom_frames.labels(camera).inc()
        for stage, value in latency_ms.items():
            self.prom_latency.labels(stage).observe(value / 1000)

    def set_drift(self, camera: str, drifting: bool, measures: dict[str, float]) -> None:
        self.prom_drifting.labels(camera).set(1 if drifting else 0)
        for name, value in measures.items():
            self.prom_drift.labels(camera, name).set(value)

    def record_event(self, kind: str) -> None:
        self.prom_events.labels(kind).inc()

    def set_model(self, identity: ModelIdentity) -> None:
        labels = (identity.name, identity.version, identity.sha256)
        if labels != self._model_labels:
            if self._model_labels:
                self.prom_model.remove(*self._model_labels)
            self.prom_model.labels(*labels).set(1)
            self._model_labels = labels

    def percentiles(self) -> dict[str, Percentiles]:
        with self._lock:
            samples = {stage: np.array(values) for stage, values in self._latency.items() if values}
        return {
            stage: Percentiles(**{f"p{q}": round(float(np.percentile(v, q)), 3) for q in (50, 95, 99)})
            for stage, v in samples.items()
        }

    def snapshot(self, cameras: dict, model: ModelIdentity, sinks: dict[str, SinkFigures], frame_errors: int = 0,
                 active_learning: ActiveLearningFigures | None = None) -> Outbound:
        """`cameras` maps id -> object with .state, .captured, .restarts, .rejected_files, .queue (FrameQueue)."""
        now = time.monotonic()
        elapsed = max(now - self._last["time"], 1e-6)
        per_camera = {}
        for cam_id, cam in cameras.items():
            captured, processed, dropped = cam.captured, self.processed.get(cam_id, 0), cam.queue.dropped
            per_camera[cam_id] = CameraFigures(
                state=cam.state,
                capture_fps=round((captured - self._last["captured"].get(cam_id, 0)) / elapsed, 2),
                processed_fps=round((processed - self._last["processed"].get(cam_id, 0)) / elapsed, 2),
                skipped_fps=round((dropped - self._last["dropped"].get(cam_id, 0)) / elapsed, 2),
                dropped_frames=dropped,
                queue_depth=len(cam.queue),
                frames_processed=processed,
                restarts=cam.restarts,
                rejected_files=cam.rejected_files,
            )
            self.prom_camera_restarts.labels(cam_id).set(per_camera[cam_id].restarts)
            self._last["captured"][cam_id], self._last["processed"][cam_id] = captured, processed
            self._last["dropped"][cam_id] = dropped
            self.prom_captured.labels(cam_id).set(captured)
            self.prom_dropped.labels(cam_id).set(dropped)
            self.prom_queue.labels(cam_id).set(len(cam.queue))
            self.prom_up.labels(cam_id).set(1 if cam.state == "online" else 0)
        self._last["time"] = now
        for sink, figures in sinks.items():
            self.prom_sink_queue.labels(sink).set(figures.queued)
            for figure in ("delivered", "evicted", "dropped"):
                self.prom_sink.labels(sink, figure).set(getattr(figures, figure))
        self.prom_frame_errors.set(frame_errors)
        free = shutil.disk_usage(self.disk_path).free
        uptime = now - self.started
        self.prom_uptime.set(uptime)
        self.prom_disk.set(free)
        self.set_model(model)
        if active_learning is not None:
            for name, value in active_learning.model_dump().items():
                self.prom_active_learning.labels(name).set(float(value))
        return messages.stats(StatsMessage(
            thing=self.thing, time=utc_iso(time.time()), uptime_s=round(uptime, 1), model=model,
            free_disk_bytes=int(free), cameras=per_camera, latency_ms=self.percentiles(), sinks=sinks,
            frame_errors=frame_errors, active_learning=active_learning,
        ))
