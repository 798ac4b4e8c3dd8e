"""`edge-inspect run`: the wiring and the lifecycle of the daemon. Each job has its own module:

    camera threads (sources) --FrameQueue--> inference stage (inference) --outboxes--> sink threads
                                                ^ model swaps at frame boundaries (model_manager)
    live control (control): configuration layers, SIGHUP and Greengrass updates
    start-up checks (preflight); stats and Prometheus (stats); durable state under `state_dir`

SIGTERM/SIGINT: stop the sources, end open defects, flush the sinks, publish `offline`, exit 0.
The daemon exits 0 only when stopped, or when every source was a file read to its end; a camera
loop that died for good makes it exit 1, so a supervisor restarts it.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from device import messages
from device.active_learning import ActiveLearning
from device.bundled import bundled_model_path
from device.config import ID_PATTERN, ConfigError, DaemonConfig, load_config_file
from device.contracts import DefectEvent, ModelIdentity, SinkFigures
from device.control import Applied, LiveControl
from device.drift import DriftMonitor, Verdict
from device.events import DefectTracker, ended_after_restart
from device.greengrass import (
    GreengrassConfigSource,
    GreengrassSink,
    connect_ipc,
    running_under_greengrass,
    thing_name_from_environment,
)
from device.inference import InferenceStage, prepare_for
from device.messages import Outbound
from device.model_manager import MODEL_SNAPSHOTS, ModelManager
from device.mqtt import MqttSink, topic_root
from device.open_defects import OpenDefects
from device.preflight import PreflightError, lock_state_dir, model_runtime, preflight
from device.sinks import Dispatcher, FileSink, Sink
from device.sources import Camera
from device.stats import Stats

log = logging.getLogger(__name__)

STOP_BUDGET_S = 4.0  # SIGTERM to exit, inside Greengrass' and systemd's usual 5 s grace
PERIODIC_SLICE_S = 0.5  # how soon a periodic task notices a new interval
RESTART_REASON = "daemon restarted: the defect was open when it stopped without ending it"


class Daemon:
    def __init__(self, file_config: dict[str, Any], origin: str = "config", config_file: Path | None = None,
                 ipc_client: Any = None, component_config: dict[str, Any] | None = None) -> None:
        self.control = LiveControl(file_config, component_config or {}, origin, config_file, self._apply_live,
                                   self._config_refused, self._config_applied)
        config = self.config
        self.thing = thing_name_from_environment() or config.thing_name
        if not re.fullmatch(ID_PATTERN, self.thing):  # it names topics, files and S3 keys
            raise ConfigError(f"thing name {self.thing!r} (from AWS_IOT_THING_NAME) must match {ID_PATTERN}")
        self.root = topic_root(config.mqtt.topic_prefix, self.thing)
        self.ipc = ipc_client
        model_path = config.model.path or bundled_model_path()
        choice = preflight(config, model_path)  # nothing is started before every check passed
        self._state_lock = lock_state_dir(config.state_dir)
        self.stop = threading.Event()
        self.failed: str | None = None  # why the daemon must exit non-zero
        self.dispatcher = Dispatcher(self._build_sinks())
        self.open_defects = OpenDefects(config.state_dir / "open-defects.sqlite")
        model_cfg = config.model
        self.models = ModelManager(model_path, lambda path: model_runtime(model_cfg, path), self._model_message,
                                   loaded=choice.detector, trusted=model_cfg.trusted_keys(),
                                   snapshots=config.state_dir / MODEL_SNAPSHOTS)
        self._refused_at_start = choice.refused
        prepare = prepare_for(self.models)
        self.cameras = {c.id: Camera(c, self._on_status, self.stop, prepare, state_dir=config.state_dir)
                        for c in config.cameras}
        trackers = {c.id: DefectTracker(self.thing, c.id, config.events) for c in config.cameras}
        self.stats = Stats(self.thing, list(self.cameras), config.state_dir)
        al = config.active_learning
        self.active_learning = (ActiveLearning(al, self.thing, config.events.default.min_confidence,
                                               self.dispatcher.publish, self.stop) if al.enabled else None)
        self.drift = DriftMonitor(config.drift)
        self.inference = InferenceStage(self.models, self.cameras, trackers, self.stats, self.publish,
                                        lambda: self.config.events, self.active_learning, self.drift,
                                        self._on_drift)

    @property
    def config(self) -> DaemonConfig:
        return self.control.config

    @property
    def frames_processed(self) -> int:
        return self.inference.frames_processed

    # --- wiring ---------------------------------------------------------------------------------

    def _transport(self) -> str:
        if self.config.transport != "auto":
            return self.config.transport
        if self.ipc is not None or running_under_greengrass():
            return "greengrass"
        return "mqtt" if self.config.mqtt.enabled else "none"

    def _build_sinks(self) -> list[Sink]:
        """The transport's sink first: an event the file sink shows is already in its outbox."""
        config, sinks = self.config, []
        transport = self._transport()
        outbox = config.state_dir / f"outbox-{transport}.sqlite"
        if transport == "mqtt":
            sinks.append(MqttSink(config.mqtt, self.thing, outbox_path=outbox))
        elif transport == "greengrass":
            self.ipc = self.ipc or connect_ipc()
            sinks.append(GreengrassSink(self.ipc, self.root, config.mqtt.max_queued_events, outbox_path=outbox))
        if config.file_sink.path:
            sinks.append(FileSink(config.file_sink.path, self.root))
        log.info("sinks: %s", ", ".join(s.name for s in sinks) or "none")
        return sinks

    def publish(self, message: Outbound) -> None:
        """Every message leaves through here; defect events are also recorded as open or ended,
        so a crash cannot leave a subscriber waiting forever for an `end`. The order matters: a
        `new` is recorded open before it is sent, an `end` forgotten only once it is in the
        outbox, so a kill between the two steps repeats an `end` rather than loses one."""
        if message.kind != "event":
            self.dispatcher.publish(message)
            return
        payload = message.payload
        if payload["type"] == "end":
            self.dispatcher.publish(message)
            self.open_defects.record(payload)
        else:
            self.open_defects.record(payload)
            self.dispatcher.publish(message)

    def _publish_serving(self, previous: ModelIdentity | None) -> None:
        self.publish(messages.model_serving(self.thing, self.identity(), time.time(), previous))

    def _on_status(self, camera: str, state: str, reason: str) -> None:
        self.publish(messages.camera_status(self.thing, camera, state, time.time(), reason))

    def identity(self) -> ModelIdentity:
        return self.models.identity

    def _on_drift(self, verdict: Verdict) -> None:
        level = logging.WARNING if verdict.state == "drifting" else logging.INFO
        log.log(level, "camera %s drift %s: %s is %.1f reference deviations away (raise at %.1f, clear below %.1f)",
                verdict.camera, verdict.state, verdict.worst, verdict.score, self.config.drift.raise_at,
                self.config.drift.clear_below)
        self._publish_drift(verdict)

    def _publish_drift(self, verdict: Verdict) -> None:
        identity = self.identity()
        if verdict.reference != identity.sha256:
            return  # judged against the model swapped out a moment ago: the next frame judges it anew
        self.stats.set_drift(verdict.camera, verdict.state == "drifting", verdict.measures)
        self.publish(messages.drift(self.thing, verdict, self.config.drift, identity))

    def _model_message(self, kind: str, message: str, candidate: str | None = None) -> None:
        if kind == "model_swapped":
            self.publish(messages.notice(self.thing, kind, message, self.identity(), candidate))
            self._publish_serving(self.models.previous)
        else:
            self.publish(messages.error(self.thing, kind, message, self.identity(), candidate))

    # --- live configuration ---------------------------------------------------------------------

    def _apply_live(self, old: DaemonConfig, new: DaemonConfig, live: list[str]) -> None:
        """Put the live keys of an accepted update into effect; raises (and nothing changes) when
        one cannot be, such as a Prometheus port already taken."""
        if any(key.startswith("stats.prometheus") for key in live):
            self.stats.serve(new.stats.prometheus_host, new.stats.prometheus_port)
        for tracker in self.inference.trackers.values():
            tracker.config = new.events
        if self.active_learning:
            self.active_learning.configure(new.active_learning)
        self.drift.configure(new.drift)
        logging.getLogger().setLevel(new.log_level)

    def _config_refused(self, reason: str) -> None:
        self.publish(messages.error(self.thing, "config_rejected", reason, self.identity()))

    def _config_applied(self, applied: Applied) -> None:
        text = (f"in effect: {', '.join(applied.live) or 'nothing'}; "
                f"at the next restart: {', '.join(applied.pending_restart) or 'nothing'}")
        self.publish(messages.notice(self.thing, "config_applied", text, self.identity(),
                                     applied=applied.live, pending_restart=applied.pending_restart))

    def apply_update(self, component_config: dict[str, Any], origin: str) -> bool:
        return self.control.apply_update(component_config, origin)

    def reload_file(self) -> bool:
        return self.control.reload_file()

    # --- periodic work --------------------------------------------------------------------------

    def _every(self, interval_of: Callable[[], float], action: Callable[[], None]) -> threading.Thread:
        """Run `action` every `interval_of()` seconds. The interval is read again every half
        second, so a live change to it takes effect at once, not after the old interval."""
        def loop() -> None:
            last = time.monotonic()
            while not self.stop.wait(max(0.0, min(PERIODIC_SLICE_S, last + interval_of() - time.monotonic()))):
                if time.monotonic() < last + interval_of():
                    continue
                last = time.monotonic()
                try:
                    action()
                except Exception:  # a periodic task must never die silently: log, go on
                    log.exception("periodic task %s failed", getattr(action, "__name__", "?"))

        thread = threading.Thread(target=loop, daemon=True, name=getattr(action, "__name__", "periodic"))
        thread.start()
        return thread

    def sink_figures(self) -> dict[str, SinkFigures]:
        return {sink.name: SinkFigures(**sink.figures()) for sink in self.dispatcher.sinks}

    def _publish_stats(self) -> None:
        self.publish(self.stats.snapshot(
            self.cameras, self.identity(), self.sink_figures(), self.inference.frame_errors,
            self.active_learning.figures() if self.active_learning else None))
        for verdict in self.drift.verdicts():  # the retained verdicts, with fresh measures
            self._publish_drift(verdict)

    def _watch_cameras(self) -> None:
        """A camera thread restarts its own loop after a failure; one that is gone anyway (not
        stopped, not at the end of its file) means this process cannot inspect: exit non-zero."""
        for cam_id, camera in self.cameras.items():
            if not camera.is_alive() and not camera.finished.is_set() and not self.stop.is_set():
                self.failed = f"camera {cam_id} thread ended unexpectedly"
                log.error("%s; stopping so that a supervisor restarts the daemon", self.failed)
                self.publish(messages.error(self.thing, "camera_failed", self.failed, self.identity()))
                self.stop.set()

    # --- lifecycle ------------------------------------------------------------------------------

    def _close_left_open(self) -> None:
        """Defects that were open when the daemon last stopped without ending them get their `end`."""
        left = self.open_defects.left_open()
        for payload in left:
            try:
                last = DefectEvent.model_validate(payload)
            except ValueError as exc:  # a damaged row, or one from an older contract: never block a start
                log.error("an open defect recorded by the last run is unreadable and was dropped: %s", exc)
                self.open_defects.record({**payload, "type": "end"})
                continue
            self.publish(ended_after_restart(last, RESTART_REASON))
        if left:
            log.warning("%d defect(s) left open by the last run ended (%s)", len(left), RESTART_REASON)
            self.publish(messages.notice(self.thing, "defects_closed", f"{len(left)} defect(s) left open by the "
                                         "last run were ended", self.identity()))

    def start(self) -> None:
        identity = self.identity()
        log.info("edge-inspect starting: thing %s, model %s (%s) on %s, %d camera(s)", self.thing, identity.name,
                 identity.sha256[:12], self.models.detector.info.runtime, len(self.cameras))
        self.stats.set_model(identity)
        try:
            self.stats.serve(self.config.stats.prometheus_host, self.config.stats.prometheus_port)
        except OSError as exc:  # taken since the start-up checks: still one line and exit 2
            raise PreflightError(f"stats.prometheus_port: cannot listen on {self.config.stats.prometheus_host}:"
                                 f"{self.config.stats.prometheus_port} ({exc.strerror or exc})") from None
        self.dispatcher.start()
        self.publish(messages.available(True))  # Greengrass and file sinks; MQTT says it itself
        self._publish_serving(None)
        if self._refused_at_start:
            log.error("model refused at start, serving model.fallback_path instead: %s", self._refused_at_start)
            self.publish(messages.error(self.thing, "model_rejected", self._refused_at_start, self.identity(),
                                        str(self.config.model.path or bundled_model_path())))
        self._close_left_open()
        if self.config.drift.enabled and self.models.drift_reference is None:
            log.warning("model %s has no drift reference in its card: drift is not watched until a model with one "
                        "is served", identity.name)
        if self.active_learning:
            self.active_learning.start()
        for camera in self.cameras.values():
            self._on_status(camera.config.id, "starting", "daemon starting")
            camera.start()
        self._every(lambda: self.config.stats.interval_s, self._publish_stats)
        self._every(lambda: 1.0, self._watch_cameras)
        if self.config.model.watch:
            self._every(lambda: self.config.model.watch_interval_s, self.models.poll)

    def run(self) -> int:
        try:
            self.start()
            self.inference.run(self.stop)
        finally:
            self.shutdown()
        return 1 if self.failed else 0

    def shutdown(self) -> None:
        started = time.monotonic()
        self.stop.set()
        self.inference.end_all("daemon stopping")
        deadline = time.monotonic() + 0.3  # one wait for all cameras: eight stuck streams cost 0.3 s, not 2.4
        for camera in self.cameras.values():
            camera.finished.wait(max(0.0, deadline - time.monotonic()))
            if camera.state not in ("finished", "stopped"):
                self._on_status(camera.config.id, "stopped", "daemon stopping")
        if self.active_learning:
            self.active_learning.flush(1.0)
        self._publish_stats()
        self.publish(messages.available(False))
        self.dispatcher.close(max(0.5, STOP_BUDGET_S - (time.monotonic() - started)))
        self.open_defects.close()
        self.stats.close()
        log.info("edge-inspect stopped after %d frames", self.frames_processed)


def install_signal_handlers(daemon: Daemon) -> None:
    def stop(signum, _frame) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        daemon.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=daemon.reload_file, daemon=True).start())


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
