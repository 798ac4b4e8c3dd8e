"""The loop, a turn at a time. The product does the work; this module starts its parts, changes the
line, and waits on what the line and the cloud side report:

    baseline (undrifted line, drift `ok`) -> the lamp changes (the daemon restarts with the drift)
    -> drift raised -> frames sampled, uploaded, batched, pre-labelled, labelled (replay)
    -> `trigger_labels` new labels start a pipeline run (fine-tune from production, gate, register)
    -> approved (`auto_approve`, or by someone running `cloud models approve`)
    -> rolled out to the line (canary judge) -> hot-swapped -> drift cleared? done : next turn
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cloud.deploy.backends import fleet_watcher, onsite_rollout
from cloud.ingest.announcements import SamplesSubscriber
from cloud.labeling.backends import open_labeling_loop
from cloud.labeling.serve import Timers, serve
from cloud.labels.table_io import import_csv
from cloud.pipeline.backends import open_onsite
from cloud.pipeline.onsite import OnSite
from cloud.pipeline.runs import RunRecord
from cloud.pipeline.trigger import RetrainTrigger, new_approved_labels
from cloud.registry.registry import Approval, ModelVersion, production
from cloud.settings import CloudConfig

from .line import LinePhotos
from .plan import CAMERA, THING, Plan
from .report import Step, TurnRecord
from .settings import LoopSettings
from .timeline import Timeline

log = logging.getLogger(__name__)

APPROVER = "edge-inspect loop --auto-approve"
LABELING_SETTLES_S = 90  # a batch closes within max_wait (15 s), the replay answers at once, catch-up is 30 s


class RehearsalError(RuntimeError):
    pass


class TurnEnded(Exception):
    """A turn that ends without a registered run; `outcome` goes in the report."""

    outcome = "ended"


class LineExhausted(TurnEnded):
    """A whole pass of the line brought no new label: every frame it shows is labelled already."""

    outcome = "the line shows nothing new to label"


class RunStopped(TurnEnded):
    """The turn's run stopped with an error (the cloud side's log says which); it stays resumable."""

    outcome = "the run stopped with an error"


class LineDaemon:
    """The line's daemon, a subprocess running `edge-inspect run` as a plant would."""

    def __init__(self, log_file: Path) -> None:
        self.log_file, self.proc = log_file, None

    def start(self, config: Path) -> None:
        self.stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "edge_inspect", "run", "--config", str(config)],
                                     stdout=subprocess.DEVNULL, stderr=self.log_file.open("a"),
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@dataclass
class CloudSide:
    """`cloud serve`'s work (labeling, the retraining trigger, the fleet watcher) in a thread."""

    config: CloudConfig
    site: OnSite
    stop: threading.Event = field(default_factory=threading.Event)
    # the trigger may start a run only while a turn waits for one: labels keep arriving during a
    # rollout and after the last turn, and a run started then would outlive the rehearsal
    armed: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    trigger: RetrainTrigger | None = None

    def start(self, command: str) -> None:
        settings = self.config.pipeline
        assert settings is not None and self.config.labeling is not None and self.config.storage is not None
        loop = open_labeling_loop(self.config)
        subscriber = SamplesSubscriber(self.config.broker, self.config.storage.bucket) if self.config.broker else None
        self.trigger = RetrainTrigger(self.config, command, self.site)
        timers = Timers(catch_up_s=self.config.labeling.catch_up_minutes * 60,
                        poll_s=self.config.labeling.poll_interval_s, retrain_s=settings.check_minutes * 60)
        watcher = fleet_watcher(self.config)

        def work() -> None:
            if watcher is not None:
                watcher.start()
            try:
                serve(loop, subscriber, timers, self.stop, self._check)
            finally:
                if watcher is not None:
                    watcher.stop()

        self.thread = threading.Thread(target=work, name="cloud-serve", daemon=True)
        self.thread.start()

    def _check(self) -> bool:
        if not self.armed.is_set() or not self.trigger.check():
            return False
        self.armed.clear()  # one run per turn
        return True

    def alive(self) -> None:
        if self.thread is not None and not self.thread.is_alive():
            raise RehearsalError("the cloud side stopped (labeling, trigger, fleet watcher): its error is above")

    def close(self) -> None:
        self.armed.clear()
        self.stop.set()
        if self.trigger is not None and self.trigger.running():
            log.warning("stopping the pipeline run in progress; it resumes at the next `cloud serve`")
            self.trigger.stop()
        if self.thread is not None:
            self.thread.join(30)


class Rehearsal:
    def __init__(self, settings: LoopSettings, photos: LinePhotos, plan: Plan, say: Callable[[str], None]) -> None:
        self.settings, self.photos, self.plan, self.say = settings, photos, plan, say
        self.started = time.time()
        self.deadline = time.monotonic() + settings.time_limit_minutes * 60
        self.steps: list[Step] = []
        self.turns: list[TurnRecord] = []
        self.config = plan.cloud()
        self.daemon = LineDaemon(plan.folder / "line" / "daemon.log")
        self.timeline: Timeline | None = None
        self.cloud: CloudSide | None = None

    # --- helpers --------------------------------------------------------------------------------

    def note(self, what: str) -> None:
        self.steps.append(Step(t=time.time(), what=what))
        self.say(f"[{(time.time() - self.started) / 60:5.1f} min] {what}")

    def left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def wait(self, what: str, predicate: Callable[[Timeline], bool], timeout: float | None = None) -> bool:
        assert self.timeline is not None
        ok = self.timeline.wait_for(predicate, min(self.left(), timeout) if timeout else self.left())
        if not ok:
            self.note(f"gave up waiting for {what}")
        return ok

    def _line_alive(self) -> None:
        if not self.daemon.alive():
            raise RehearsalError(f"the line's daemon stopped; its log: {self.daemon.log_file}")

    # --- phases ---------------------------------------------------------------------------------

    def prepare(self) -> OnSite:
        site = open_onsite(self.config)  # an empty registry starts with the bundled model, Approved
        if not site.store.as_of(time.time()):
            imported = import_csv(site.store, self.photos.labels_csv)
            self.note(f"label store: {imported} labelled photos imported (what the production model was made from)")
        current = production(site.registry)
        if current is None:
            raise RehearsalError("the registry has no Approved version to start from")
        self.note(f"production: {current.group} v{current.version} ({current.card.onnx_sha256[:12]})")
        return site

    def baseline(self) -> None:
        self.daemon.start(self.plan.daemon_normal)
        self.note(f"line {THING}: the undrifted line starts ({len(self.photos.shown)} tags in a loop)")
        if not self.wait("the first drift verdict", lambda t: t.drift_state() is not None):
            self._line_alive()
            raise RehearsalError("the line sent no drift verdict")
        state = self.timeline.drift_state()
        self.note(f"drift on the undrifted line: {state} (score {self.timeline.drift[-1].score:.2f})")
        self.timeline.wait_for(lambda t: False, self.settings.baseline_s)  # the baseline's alerts
        if any(p.state != "ok" for p in self.timeline.drift):
            raise RehearsalError("the undrifted line raised a drift alarm: the rehearsal would prove nothing")

    def drift(self) -> None:
        self.note(f"the line changes: {self.settings.drift} (the daemon restarts with cameras[].drift)")
        self.daemon.start(self.plan.daemon_drifted)
        after = time.time()
        if self.wait("the drift alarm", lambda t: any(p.state == "drifting" and p.t > after for p in t.drift)):
            point = next(p for p in self.timeline.drift if p.state == "drifting" and p.t > after)
            self.note(f"drift raised on {CAMERA}: {point.worst} {point.score:.1f} reference deviations away")
        else:
            self._line_alive()
            raise RehearsalError("the drift was never raised")

    def _labels_since(self, since: float) -> int:
        assert self.cloud is not None
        return new_approved_labels(self.cloud.site.store, since, time.time())

    def _finished_run(self, after: float) -> RunRecord | None:
        assert self.cloud is not None
        done = [r for r in self.cloud.site.runs.runs() if r.created >= after and r.state != "running"]
        return done[-1] if done else None

    def _wait_for_run(self, turn: int, after: float, since: float) -> RunRecord | None:
        """Labels arrive, the trigger starts a run, the run finishes; progress on the terminal."""
        shown, changed = -1, time.time()
        # the daemon never sends a frame twice (its near-duplicate memory): once a whole pass of the
        # line has sent nothing and the labeling has had time to answer, no new label will come
        one_pass = len(self.photos.shown) * self.settings.hold_frames / self.settings.fps
        self.cloud.armed.set()
        try:
            while self.left() > 0:
                self._line_alive()
                self.cloud.alive()
                record = self._finished_run(after)
                if record is not None:
                    return record
                if not self.cloud.armed.is_set() and not self.cloud.trigger.running():
                    record = self._finished_run(after)  # it may have finished since the look above
                    if record is not None:
                        return record
                    raise RunStopped("it resumes at the next turn or `cloud serve`")  # started, ended unfinished
                labels = self._labels_since(since)
                now = time.time()
                if self.cloud.trigger.running():
                    changed = now
                elif labels != shown:
                    self.say(f"  turn {turn}: {labels} of {self.settings.trigger_labels} new labels")
                    shown, changed = labels, now
                elif now - (self.timeline.last_sample or after) > one_pass + 30 and now - changed > LABELING_SETTLES_S:
                    raise LineExhausted(f"{labels} new labels after a whole pass of the line, "
                                        f"{self.settings.trigger_labels} needed")
                time.sleep(2)
            return None
        finally:
            self.cloud.armed.clear()  # no run may start outside a turn's wait

    def _approved(self, version: ModelVersion) -> bool:
        registry = self.cloud.site.registry
        if self.settings.auto_approve:
            registry.decide(version.version, Approval.APPROVED, APPROVER, "rehearsal")
            self.note(f"v{version.version} approved ({APPROVER}: the demo only)")
            return True
        self.note(f"v{version.version} waits for approval: edge-inspect cloud --config {self.plan.cloud_config} "
                  f"models approve {version.version} --no-deploy")
        while self.left() > 0:
            status = registry.get(version.version).status
            if status is not Approval.PENDING:
                self.note(f"v{version.version}: {status.value}")
                return status is Approval.APPROVED
            time.sleep(2)
        return False

    def turn(self, number: int) -> TurnRecord:
        started = time.time()
        since = self.cloud.trigger.since()
        self.note(f"turn {number}: sampling the drifted line until {self.settings.trigger_labels} new labels")
        try:
            record = self._wait_for_run(number, started, since)
        except TurnEnded as exc:
            self.note(f"turn {number}: {exc.outcome} ({exc})")
            return TurnRecord(turn=number, started=started, labels=self._labels_since(since), outcome=exc.outcome)
        turn = TurnRecord(turn=number, started=started, labels=self._labels_since(since))
        if record is None:
            turn.outcome = "out of time before a run finished"
            return turn
        turn.run_id, turn.run_state, turn.reason = record.run_id, record.state, record.reason
        self.note(f"turn {number}: {record.run_id} {record.state}" + (f" as v{record.version}" if record.version else "")
                  + (f": {record.reason}" if record.reason else ""))
        if record.state != "registered" or record.version is None:
            turn.outcome = f"run {record.state}"
            return turn
        version = self.cloud.site.registry.get(record.version)
        turn.version = version.version
        if not self._approved(version):
            turn.outcome = "not approved"
            return turn
        with onsite_rollout(self.config, say=lambda line: self.say(f"  {line}")) as rollout:
            result = rollout.run(version.version)
        turn.rollout = result.outcome
        self.note(f"v{version.version} {result.outcome}" + (f": {result.reason}" if result.stage else ""))
        if result.outcome != "deployed":
            turn.outcome = "rolled back"
            return turn
        # the camera's window still holds the drifted line: the first verdict against the new
        # model's reference (sent on a change, or with the stats at the latest) says it all
        new_sha = version.card.onnx_sha256
        if not self.wait("the drift verdict on the new model", lambda t: any(p.sha256 == new_sha for p in t.drift),
                         timeout=60):
            turn.outcome = "no drift verdict from the new model"
            return turn
        last = next(p for p in reversed(self.timeline.drift) if p.sha256 == new_sha)
        turn.drift_after, turn.drift_score_after = last.state, last.score
        turn.outcome = "drift cleared" if last.state == "ok" else "drift persists"
        self.note(f"turn {number}: {turn.outcome} (score {last.score:.2f}, worst {last.worst})")
        return turn

    # --- the whole --------------------------------------------------------------------------------

    def run(self, command: str) -> tuple[ModelVersion, ModelVersion]:
        """Returns (production before, production after)."""
        site = self.prepare()
        before = production(site.registry)
        broker = self.config.broker
        self.timeline = Timeline(broker.port, broker.topic_prefix, THING).start()
        self.cloud = CloudSide(self.config, site)
        self.cloud.start(command)
        try:
            self.baseline()
            self.drift()
            for number in range(1, self.settings.max_turns + 1):
                turn = self.turn(number)
                self.turns.append(turn)
                if turn.outcome in ("drift cleared", LineExhausted.outcome) or self.left() <= 0:
                    break
            else:
                self.note(f"the drift still stands after {self.settings.max_turns} turn(s): the limit")
            after = production(site.registry)
            if after.version != before.version and self.settings.after_s > 0:
                self.note(f"the line runs on with v{after.version} for {self.settings.after_s:.0f} s")
                self.timeline.wait_for(lambda t: False, min(self.settings.after_s, self.left()))
            return before, after
        finally:
            self.daemon.stop()
            self.cloud.close()
            self.timeline.stop()
