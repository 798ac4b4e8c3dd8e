"""`edge-inspect run`: cameras -> detector -> defect events -> sinks, until stopped.

Threads, and the bounded queues between them (data flows one way):

    camera threads --FrameQueue--> inference (this thread: detect, debounce) --outboxes--> sink threads
                                        ^ model swaps at frame boundaries (watcher thread)
    stats thread: a snapshot every stats.interval_s, to the sinks and to Prometheus

SIGTERM/SIGINT: stop the sources, end open defects, flush the sinks, publish `offline`, exit 0.
SIGHUP: reload the config file (standalone); under Greengrass, configuration updates arrive by IPC.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

from device import messages
from device.active_learning import ActiveLearning
from device.config import ID_PATTERN, LIVE_KEYS, ConfigError, DaemonConfig, load_config_file, merge_config, parse_config
from device.detector import FrameError, session_options
from device.events import DefectTracker, FrameResult
from device.greengrass import (
    GreengrassConfigSource,
    GreengrassSink,
    connect_ipc,
    running_under_greengrass,
    thing_name_from_environment,
)
from device.model_manager import ModelManager
from device.mqtt import MqttSink, topic_root
from device.sinks import Dispatcher, FileSink, Sink
from device.sources import Camera, Frame
from device.stats import Stats

log = logging.getLogger(__name__)

STOP_BUDGET_S = 4.0  # SIGTERM to exit, inside Greengrass' and systemd's usual 5 s grace
GREENGRASS_ONLY_KEYS = ("accessControl",)  # merged into component configuration by the nucleus


def default_model_path() -> Path:
    from edge_inspect.paths import bundled_model_path  # the repo layout, not a cloud import

    return bundled_model_path()


class Daemon:
    def __init__(self, file_config: dict[str, Any], origin: str = "config", config_file: Path | None = None,
                 ipc_client: Any = None, component_config: dict[str, Any] | None = None) -> None:
        # two layers: the config file, and the Greengrass component configuration over it
        self.file_config, self.component_config = file_config, strip_greengrass_keys(component_config or {})
        self.origin, self.config_file, self.ipc = origin, config_file, ipc_client
        self.config: DaemonConfig = parse_config(merge_config(self.file_config, self.component_config), origin)
        self.thing = thing_name_from_environment() or self.config.thing_name
        if not re.fullmatch(ID_PATTERN, self.thing):  # it names topics, files and S3 keys
            raise ConfigError(f"thing name {self.thing!r} (from AWS_IOT_THING_NAME) must match {ID_PATTERN}")
        self.root = topic_root(self.config.mqtt.topic_prefix, self.thing)
        self.stop = threading.Event()
        self.dispatcher = Dispatcher(self._build_sinks())
        model_cfg = self.config.model
        self.models = ModelManager(model_cfg.path or default_model_path(), model_cfg.providers, self._operational,
                                   lambda: session_options(model_cfg.threads, model_cfg.graph_optimization,
                                                           model_cfg.execution_mode, model_cfg.spinning))
        self.cameras = {c.id: Camera(c, self._on_status, self.stop, self._prepare) for c in self.config.cameras}
        self.trackers = {c.id: DefectTracker(self.thing, c.id, self.config.events) for c in self.config.cameras}
        self.stats = Stats(self.thing, list(self.cameras))
        al = self.config.active_learning
        self.active_learning = (ActiveLearning(al, self.thing, self.config.events.default.min_confidence,
                                               self.dispatcher.publish, self.stop) if al.enabled else None)
        self._finished_flushed: set[str] = set()
        self.frames_processed = 0
        self.frame_errors = 0

    # --- wiring ---------------------------------------------------------------------------------

    def _transport(self) -> str:
        if self.config.transport != "auto":
            return self.config.transport
        if self.ipc is not None or running_under_greengrass():
            return "greengrass"
        return "mqtt" if self.config.mqtt.enabled else "none"

    def _build_sinks(self) -> list[Sink]:
        sinks: list[Sink] = []
        transport = self._transport()
        if transport == "mqtt":
            sinks.append(MqttSink(self.config.mqtt, self.thing))
        elif transport == "greengrass":
            self.ipc = self.ipc or connect_ipc()
            sinks.append(GreengrassSink(self.ipc, self.root, self.config.mqtt.max_queued_events))
        if self.config.file_sink.path:
            sinks.append(FileSink(self.config.file_sink.path, self.root))
        log.info("sinks: %s", ", ".join(s.name for s in sinks) or "none")
        return sinks

    def _on_status(self, camera: str, state: str, reason: str) -> None:
        self.dispatcher.publish(messages.camera_status(self.thing, camera, state, time.time(), reason))

    def _operational(self, kind: str, message: str, candidate: str | None = None) -> None:
        self.dispatcher.publish(messages.operational(self.thing, kind, message, self.models_identity(), time.time(),
                                                     candidate))

    def models_identity(self) -> dict[str, str]:
        models = getattr(self, "models", None)
        return models.identity if models else {"name": "", "version": "", "sha256": "0" * 64}

    # --- configuration updates ------------------------------------------------------------------

    def apply_update(self, component_config: dict[str, Any], origin: str) -> bool:
        """A new component configuration (Greengrass): applied over the config file."""
        return self._apply(self.file_config, strip_greengrass_keys(component_config), origin)

    def reload_file(self) -> bool:
        """SIGHUP: read the config file again."""
        if self.config_file is None:
            return False
        try:
            raw = load_config_file(self.config_file)
        except ConfigError as exc:
            return self._refuse(exc)
        return self._apply(raw, self.component_config, str(self.config_file))

    def _refuse(self, exc: ConfigError) -> bool:
        log.error("configuration update refused, keeping the last good one: %s", exc)
        self._operational("config_rejected", str(exc))
        return False

    def _apply(self, file_config: dict[str, Any], component_config: dict[str, Any], origin: str) -> bool:
        """Validate the merged configuration; apply its live keys, or refuse it whole."""
        try:
            new = parse_config(merge_config(file_config, component_config), origin)
        except ConfigError as exc:
            return self._refuse(exc)
        old = self.config
        self.config, self.file_config, self.component_config = new, file_config, component_config
        for tracker in self.trackers.values():
            tracker.config = new.events
        if self.active_learning:
            self.active_learning.configure(new.active_learning)
        logging.getLogger().setLevel(new.log_level)
        changed = changed_keys(old, new)
        later = [k for k in changed if k not in LIVE_KEYS]
        if later:
            log.warning("configuration keys %s change at the next restart", ", ".join(later))
        log.info("configuration applied from %s (changed: %s)", origin, ", ".join(changed) or "nothing")
        self._operational("config_applied", f"changed: {', '.join(changed) or 'nothing'}")
        return True

    # --- the stages -----------------------------------------------------------------------------

    def _detector_conf(self) -> float:
        rules = [self.config.events.default, *self.config.events.classes.values()]
        return min(rule.min_confidence for rule in rules)

    def _prepare(self, image):
        """Called in camera threads: the model input for the model serving now."""
        detector = self.models.detector
        try:
            return detector.info.sha256, *detector.preprocess(image)
        except Exception:  # a frame the detector cannot take: the inference stage reports it
            return None

    def process(self, frame: Frame) -> None:
        self.models.take_pending()  # the one place a model swaps: between two frames
        detector = self.models.detector
        t0 = time.monotonic()
        if frame.prepared and frame.prepared[0] == detector.info.sha256:
            _, blob, fit = frame.prepared
            preprocess_ms = frame.prepare_ms
        else:  # made for the model that was swapped out, or not made
            blob, fit = detector.preprocess(frame.image)
            preprocess_ms = (time.monotonic() - t0) * 1000
        t1 = time.monotonic()
        output = detector.infer(blob)
        t2 = time.monotonic()
        found = detector.postprocess(output, fit, frame.image.shape, self._detector_conf(), detector.iou)
        t3 = time.monotonic()
        queue_ms = max(0.0, (t0 - frame.captured_mono) * 1000 - frame.prepare_ms)
        latency = {"queue": round(queue_ms, 3), "preprocess": round(preprocess_ms, 3),
                   "inference": round((t2 - t1) * 1000, 3), "postprocess": round((t3 - t2) * 1000, 3)}
        height, width = frame.image.shape[:2]
        result = FrameResult(frame.camera, frame.seq, frame.frame_time, frame.stream_time, width, height,
                             tuple(found), latency, self.models.identity)
        for event in self.trackers[frame.camera].update(result):
            self.stats.record_event(event.payload["type"])
            self.dispatcher.publish(event)
        if self.active_learning:
            self.active_learning.offer(frame.image, result)
        self.stats.record_frame(frame.camera, {**latency, "total": round((t3 - frame.captured_mono) * 1000, 3)})
        self.models.reference_frame = frame.image
        self.frames_processed += 1

    def _flush_finished(self) -> bool:
        """End the open defects of cameras whose file is done; True when every camera is done."""
        all_done = True
        for cam_id, camera in self.cameras.items():
            if camera.finished.is_set() and not len(camera.queue):
                if cam_id not in self._finished_flushed:
                    self._finished_flushed.add(cam_id)
                    for event in self.trackers[cam_id].finish():
                        self.dispatcher.publish(event)
            else:
                all_done = False
        return all_done

    def _inference_loop(self) -> None:
        cameras = list(self.cameras.values())
        while not self.stop.is_set():
            busy = False
            for camera in cameras:  # round robin: one frame per camera per turn
                frame = camera.queue.get_nowait()
                if frame is not None:
                    busy = True
                    try:
                        self.process(frame)
                    except FrameError as exc:  # one bad frame is skipped, never the stream
                        self.frame_errors += 1
                        log.error("camera %s frame %d skipped: %s", frame.camera, frame.seq, exc)
            if not busy:
                if self._flush_finished():
                    log.info("every source has finished")
                    return
                self.stop.wait(0.002)

    def _every(self, interval_of, action) -> threading.Thread:
        def loop() -> None:
            while not self.stop.wait(interval_of()):
                try:
                    action()
                except Exception:
                    log.exception("periodic task failed")

        thread = threading.Thread(target=loop, daemon=True, name=getattr(action, "__name__", "periodic"))
        thread.start()
        return thread

    def _publish_stats(self) -> None:
        extra = {"active_learning": self.active_learning.figures()} if self.active_learning else {}
        self.dispatcher.publish(self.stats.snapshot(self.cameras, self.models.identity, self.dispatcher.depths(),
                                                    **extra))

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        log.info("edge-inspect starting: thing %s, model %s (%s), %d camera(s)", self.thing,
                 self.models.identity["name"], self.models.identity["sha256"][:12], len(self.cameras))
        self.stats.set_model(self.models.identity)
        if self.config.stats.prometheus_port:
            self.stats.serve(self.config.stats.prometheus_host, self.config.stats.prometheus_port)
        self.dispatcher.start()
        self.dispatcher.publish(messages.available(True))  # Greengrass and file sinks; MQTT says it itself
        if self.active_learning:
            self.active_learning.start()
        for camera in self.cameras.values():
            self._on_status(camera.config.id, "starting", "daemon starting")
            camera.start()
        self._every(lambda: self.config.stats.interval_s, self._publish_stats)
        if self.config.model.watch:
            self._every(lambda: self.config.model.watch_interval_s, self.models.poll)

    def run(self) -> int:
        self.start()
        try:
            self._inference_loop()
        finally:
            self.shutdown()
        return 0

    def shutdown(self) -> None:
        started = time.monotonic()
        self.stop.set()
        for cam_id, tracker in self.trackers.items():
            for event in tracker.finish():
                self.dispatcher.publish(event)
        for camera in self.cameras.values():
            camera.finished.wait(0.3)
            if camera.state not in ("finished", "stopped"):
                self._on_status(camera.config.id, "stopped", "daemon stopping")
        if self.active_learning:
            self.active_learning.flush(1.0)
        self._publish_stats()
        self.dispatcher.publish(messages.available(False))
        self.dispatcher.close(max(0.5, STOP_BUDGET_S - (time.monotonic() - started)))
        log.info("edge-inspect stopped after %d frames", self.frames_processed)


def install_signal_handlers(daemon: Daemon) -> None:
    def stop(signum, _frame) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        daemon.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=daemon.reload_file, daemon=True).start())


def changed_keys(old: DaemonConfig, new: DaemonConfig) -> list[str]:
    """Top-level keys that differ, and for active_learning its sub-keys (some are live, some not)."""
    changed = []
    for key in DaemonConfig.model_fields:
        before, after = getattr(old, key), getattr(new, key)
        if before == after:
            continue
        if key == "active_learning":
            changed += [f"{key}.{sub}" for sub in type(before).model_fields if getattr(before, sub) != getattr(after, sub)]
        else:
            changed.append(key)
    return changed


def strip_greengrass_keys(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in GREENGRASS_ONLY_KEYS}


def build_daemon(config_file: Path | None) -> Daemon:
    """The file's configuration, with the Greengrass component configuration over it when
    running as a component; later Greengrass updates arrive through `apply_update`."""
    file_config = load_config_file(config_file) if config_file else {}
    origin = str(config_file) if config_file else "component configuration"
    ipc, component_config = None, {}
    if running_under_greengrass():
        ipc = connect_ipc()
        component_config = GreengrassConfigSource(ipc).read()
    daemon = Daemon(file_config, origin, config_file, ipc_client=ipc, component_config=component_config)
    if ipc is not None:
        GreengrassConfigSource(ipc).subscribe(lambda cfg: daemon.apply_update(cfg, "greengrass configuration update"))
    return daemon
