"""The deployment flow, shared by the on-site command and the AWS state machine's handlers:

    approved version -> shipment -> canary -> judged -> fleet -> judged -> marked deployed (production)
                  | fails           | rollback                | rollback (fleet and canary)
                  v                 v                         v
     marked ship-failed      the version marked Rejected in the registry, with the reason
     and Rejected

Only what is the version's own fault rejects it: bytes that fail their hash or custody, a model
the lines cannot serve (ShipmentRefused, ModelError), a refusal on a line, a rate out of band. An
outage (a disk, a lock, a mount, the registry), a rate that could not be measured, or an operator's
rejection meanwhile rolls back what went out and leaves the registry as it was: the version stays
Approved and `cloud deploy run V` tries again. One rollout at a time per site (`rollout_lock`).

On site it runs in-process (`cloud models approve V`), sleeping between judgements; on AWS each
arrow is a state of cloud/deploy/step_functions.py and the waiting is a Wait state.

The canary is judged on the rollout's own measurements: before the swap it makes sure the fleet
store heard the canary lines for a whole window (its own watcher listens from the start; when no
one listened long enough, it measures the current model for one window first), whatever else
runs. Only a version whose rollout finished becomes production (cloud/registry/registry.py).
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from cloud.registry.registry import Approval, DeploymentStatus, ModelRegistry, first_line
from device.detector import ModelError

from .deployer import Deployer, DeployError, ShipmentRefused, StageDeployment
from .fleet_store import FleetReader
from .promotion import Judgement, Verdict, judge
from .settings import DeploySettings, Stage
from .shipping import Shipment, prepare_shipment

log = logging.getLogger(__name__)

DEPLOYER = "edge-inspect deploy"  # who marks a rolled-back version in the registry
BASELINE_SLACK_S = 60  # beyond a window of measuring: reconnects; past it the baseline is given up


class RolloutResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str
    outcome: str  # deployed | rolled back
    stage: Stage | None  # the stage rolled back, if any
    reason: str
    shipment: Shipment


class RolloutLog:
    """Every step of every rollout (SQLite, beside the fleet's messages): `cloud fleet` and an
    engineer reading the file see what happened and why."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS rollout_steps (id INTEGER PRIMARY KEY, time REAL NOT NULL, "
                         "version TEXT NOT NULL, stage TEXT, step TEXT NOT NULL, detail TEXT NOT NULL)")
        self._lock = threading.Lock()

    def add(self, version: str, stage: str | None, step: str, detail: str) -> None:
        with self._lock:
            self._db.execute("INSERT INTO rollout_steps (time, version, stage, step, detail) VALUES (?,?,?,?,?)",
                             (time.time(), version, stage, step, detail))

    def steps(self, version: str | None = None) -> list[tuple[float, str, str | None, str, str]]:
        sql, args = "SELECT time, version, stage, step, detail FROM rollout_steps", ()
        if version is not None:
            sql, args = sql + " WHERE version = ?", (version,)
        with self._lock:
            return list(self._db.execute(sql + " ORDER BY id", args))


@dataclass
class Rollout:
    registry: ModelRegistry
    deployer: Deployer
    fleet: FleetReader
    settings: DeploySettings
    log: RolloutLog
    say: Callable[[str], None] = print
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep

    def _note(self, version: str, stage: str | None, step: str, detail: str) -> None:
        try:
            self.log.add(version, stage, step, detail)
        except Exception as exc:  # a locked or full state file: the rollout goes on, its lines still say it
            log.warning("rollout: cannot write step %r of v%s to the rollout log: %s", step, version, first_line(exc))
        self.say(f"v{version}{f' {stage}' if stage else ''}: {step}: {detail}")

    def judge(self, deployment: StageDeployment) -> Judgement:
        return judge(self.settings.promotion, self.fleet, deployment.things, deployment.sha256,
                     deployment.deployed_at, self.clock(), check_rate=deployment.stage == "canary")

    def _baseline(self, version: str, things: list[str]) -> None:
        """The judged lines' alerts over the window before the swap must be a measurement: the
        store must have listened through it (whoever listened: `cloud serve`, an earlier rollout, this
        one). When it did not, the current model is measured for one window first; this rollout's
        own watcher listens throughout, so that needs no other process."""
        if not things:
            return
        window = self.settings.promotion.window_minutes * 60
        start = self.clock()
        waited = False
        while not self.fleet.covered(self.clock() - window, self.clock()):
            if not waited:
                self._note(version, "canary", "baseline",
                           f"nobody listened to {', '.join(things)} through the last {window:.0f} s: measuring the "
                           f"current model's alert rate for one window ({window:.0f} s) first")
                waited = True
            if self.clock() - start > window + BASELINE_SLACK_S:
                raise DeployError(f"cannot measure the current model's alert rate on {', '.join(things)}: the lines' "
                                  f"messages were not heard for {window:.0f} s without a break (is the broker up?)")
            self.sleep(min(self.settings.promotion.poll_seconds, window))
        now = self.clock()
        counts = ", ".join(f"{t} {self.fleet.alerts(t, now - window, now)}" for t in things)
        self._note(version, "canary", "baseline", f"{'measured' if waited else 'heard'}: alerts in the last "
                                                  f"{window:.0f} s on the current model: {counts}")

    def _watch(self, deployment: StageDeployment) -> Judgement:
        last = ""
        while True:
            judgement = self.judge(deployment)
            if judgement.reason != last:
                self._note(deployment.version, deployment.stage, judgement.verdict.value, judgement.reason)
                last = judgement.reason
            if judgement.verdict is not Verdict.WAIT:
                return judgement
            self.sleep(self.settings.promotion.poll_seconds)

    def _undo(self, deployments: list[StageDeployment]) -> list[str]:
        """Every stage back, the latest first; one that cannot be rolled back does not stop the
        others. Returns what could not be undone."""
        failures = []
        for deployment in reversed(deployments):
            things = ", ".join(deployment.things) or "-"
            try:
                self.deployer.rollback(deployment)
            except Exception as exc:
                failures.append(f"rolling back the {deployment.stage} ({things}) failed: {first_line(exc)}")
                self._note(deployment.version, deployment.stage, "rollback failed", first_line(exc))
                continue
            self._note(deployment.version, deployment.stage, "rolled back", things)
        return failures

    def roll_back(self, deployments: list[StageDeployment], reason: str, reject: bool = True) -> None:
        """`reject`: the version is to blame (a refusal, a rate out of band); without it (a rate
        that could not be measured, a version withdrawn meanwhile) it stays as it is."""
        failures = self._undo(deployments)
        version = deployments[0].version
        if reject:
            try:
                self.registry.decide(version, Approval.REJECTED, by=DEPLOYER, reason=f"rolled back: {reason}")
            except Exception as exc:
                failures.append(f"marking it Rejected failed: {first_line(exc)}")
            else:
                self._note(version, None, "registry", "marked Rejected")
        if failures:
            raise DeployError(f"version {version} was rolled back ({reason}), but {'; '.join(failures)}")

    def _ship_failed(self, version: str, reason: str) -> DeployError:
        """A version whose own bytes are wrong is marked so, and Rejected: it can never be
        production. Returns the one-line error the caller raises."""
        try:
            self.registry.record_deployment(version, DeploymentStatus.SHIP_FAILED, reason)
            self.registry.decide(version, Approval.REJECTED, by=DEPLOYER, reason=f"failed to ship: {reason}")
        except Exception as exc:  # the registry itself: say so, the failure to ship is what the caller hears
            self._note(version, None, "registry", f"cannot mark the version ship-failed: {first_line(exc)}")
            return DeployError(f"version {version} failed to ship (and could not be marked so: {first_line(exc)}): "
                               f"{reason}")
        self._note(version, None, "registry", "marked ship-failed and Rejected")
        return DeployError(f"version {version} failed to ship and is marked Rejected: {reason}")

    def _not_now(self, version: str, reason: str) -> DeployError:
        """An outage (a disk, a lock, a mount, the registry): nothing about the version is known to
        be wrong, so it stays Approved for the next try."""
        self._note(version, None, "registry", "left Approved: the failure was not the version's")
        return DeployError(f"version {version} was not deployed and stays Approved: {reason}; fix that and run "
                           f"`cloud deploy run {version}` again")

    def _withdrawn(self, version: str) -> str | None:
        """Why the version may no longer go on (an operator rejected it meanwhile), or None."""
        try:
            current = self.registry.get(version)
        except Exception as exc:  # unknown is not Approved: nothing more goes out on it
            return f"cannot re-read it from the registry ({first_line(exc)})"
        if current.status is Approval.APPROVED:
            return None
        return f"withdrawn by {current.decided_by or 'someone'}" + (f" ({current.reason})" if current.reason else "")

    def run(self, version: str, shipment: Shipment | None = None) -> RolloutResult:
        approved = self.registry.get(version)
        if approved.status is not Approval.APPROVED:
            raise DeployError(f"version {version} is {approved.status.value}: only an Approved version is deployed")
        if shipment is None:
            self._note(version, None, "prepare", "quantizing under the fidelity gate" if self.settings.quantize
                       else "FP32 (quantization off)")
            try:
                shipment = prepare_shipment(self.registry, version, self.settings)
            except Exception as exc:  # corrupt, not a detector, files missing, a hash that does not match
                reason = first_line(exc)
                self._note(version, None, "ship failed" if is_content_error(exc) else "not shipped", reason)
                if is_content_error(exc):
                    raise self._ship_failed(version, reason) from None
                raise self._not_now(version, f"cannot prepare the shipment: {reason}") from None
        self._note(version, None, "shipment", f"{shipment.precision.upper()} {shipment.sha256[:12]}: {shipment.reason}")
        done: list[StageDeployment] = []
        for stage in ("canary", "fleet"):
            if stage == "canary":
                self._baseline(version, self.deployer.things(stage))
            withdrawn = self._withdrawn(version)  # an operator may have rejected it while the canary ran
            if withdrawn is not None:
                return self._stop(version, stage, done, withdrawn, shipment)
            try:
                deployment = self.deployer.deploy(shipment, stage)
            except Exception as exc:
                reason = f"the {stage} deployment failed: {first_line(exc)}"
                content = is_content_error(exc)
                self._note(version, stage, "ship failed" if content else "not deployed", reason)
                # marked first: a failing rollback must not skip it
                error = self._ship_failed(version, reason) if content else self._not_now(version, reason)
                failures = self._undo(done)
                if failures:
                    raise DeployError(f"{error}; and {'; '.join(failures)}") from None
                raise error from None
            done.append(deployment)
            self._note(version, stage, "deployed", f"{', '.join(deployment.things) or 'no device'} "
                                                   f"({deployment.deployment_id})")
            judgement = self._watch(deployment)
            if judgement.verdict is Verdict.ROLLBACK:
                reason = judgement.reason
                if judgement.unmeasured:
                    reason += f"; v{version} stays Approved: run `cloud deploy run {version}` again"
                self.roll_back(done, reason, reject=not judgement.unmeasured)
                return RolloutResult(version=version, outcome="rolled back", stage=stage, reason=reason,
                                     shipment=shipment)
        withdrawn = self._withdrawn(version)
        if withdrawn is not None:
            return self._stop(version, "fleet", done, withdrawn, shipment)
        try:
            self.registry.record_deployment(version, DeploymentStatus.DEPLOYED, f"canary and fleet serve "
                                                                                f"{shipment.sha256[:12]}")
        except Exception as exc:  # the fleet runs it: say how to record that, roll nothing back
            raise DeployError(f"version {version}: canary and fleet serve it, but it could not be marked deployed "
                              f"({first_line(exc)}): run `cloud models mark-deployed {version}` so it becomes "
                              "production") from None
        self._note(version, None, "registry", "marked deployed: the fleet runs it, it is production")
        return RolloutResult(version=version, outcome="deployed", stage=None, reason="canary and fleet serve it",
                             shipment=shipment)

    def _stop(self, version: str, stage: Stage, done: list[StageDeployment], why: str,
              shipment: Shipment) -> RolloutResult:
        """The version was withdrawn meanwhile: what went out comes back; the registry already says why."""
        self._note(version, stage, "withdrawn", why)
        if done:
            self.roll_back(done, why, reject=False)
        return RolloutResult(version=version, outcome="rolled back", stage=done[-1].stage if done else stage,
                             reason=why, shipment=shipment)


def is_content_error(exc: BaseException) -> bool:
    """The version's own bytes are wrong (retrying cannot help), as opposed to an outage."""
    return isinstance(exc, (ShipmentRefused, ModelError))


@contextmanager
def rollout_lock(state_path: Path) -> Iterator[None]:
    """One rollout at a time on a site: an exclusive flock beside the deploy state, held for the
    rollout's life (the kernel releases it however the process ends, so it never goes stale)."""
    path = Path(state_path).resolve()
    path = path.with_name(path.name + ".rollout.lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise DeployError(f"cannot open the rollout lock {path} ({exc.strerror or exc}): is deploy.state_path "
                          "in a folder this user can write?") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            raise DeployError(f"another rollout is running on this site ({f'pid {holder}' if holder else 'pid unknown'}"
                              f"; lock {path}): wait for it to finish (`cloud deploy log`), then run this one "
                              "again") from None
        try:  # the pid only names the holder in a refusal: a full disk must not stop the rollout
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)
