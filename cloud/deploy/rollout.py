"""The deployment flow, shared by the on-site command and the AWS state machine's handlers:

    approved version -> shipment -> canary -> judged -> fleet -> judged
                                      | rollback                | rollback (fleet and canary)
                                      v                         v
                        the version marked Rejected in the registry, with the reason

On site it runs in-process (`cloud models approve V`), sleeping between judgements; on AWS each
arrow is a state of cloud/deploy/step_functions.py and the waiting is a Wait state.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from cloud.registry.registry import Approval, ModelRegistry

from .deployer import Deployer, DeployError, StageDeployment
from .fleet_store import FleetReader
from .promotion import Judgement, Verdict, judge
from .settings import DeploySettings, Stage
from .shipping import Shipment, prepare_shipment

log = logging.getLogger(__name__)

DEPLOYER = "edge-inspect deploy"  # who marks a rolled-back version in the registry


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
    watching_since: float = field(default_factory=time.time)  # the fleet store's own history starts here

    def _note(self, version: str, stage: str | None, step: str, detail: str) -> None:
        self.log.add(version, stage, step, detail)
        self.say(f"v{version}{f' {stage}' if stage else ''}: {step}: {detail}")

    def judge(self, deployment: StageDeployment) -> Judgement:
        return judge(self.settings.promotion, self.fleet, deployment.things, deployment.sha256,
                     deployment.deployed_at, self.clock(), check_rate=deployment.stage == "canary")

    def _baseline(self, version: str) -> None:
        """The canary's previous alert rate is measured over one window before the swap: when the
        fleet store has not seen that much yet (a fresh on-site watcher), wait for it first."""
        window = self.settings.promotion.window_minutes * 60
        left = self.watching_since + window - self.clock()
        if left > 0:
            self._note(version, "canary", "baseline", f"measuring the current model's alert rate for {left:.0f} s")
            self.sleep(left)

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

    def roll_back(self, deployments: list[StageDeployment], reason: str) -> None:
        for deployment in reversed(deployments):
            self.deployer.rollback(deployment)
            self._note(deployment.version, deployment.stage, "rolled back", ", ".join(deployment.things) or "-")
        version = deployments[0].version
        self.registry.decide(version, Approval.REJECTED, by=DEPLOYER, reason=f"rolled back: {reason}")
        self._note(version, None, "registry", "marked Rejected")

    def run(self, version: str, shipment: Shipment | None = None) -> RolloutResult:
        approved = self.registry.get(version)
        if approved.status is not Approval.APPROVED:
            raise DeployError(f"version {version} is {approved.status.value}: only an Approved version is deployed")
        if shipment is None:
            self._note(version, None, "prepare", "quantizing under the fidelity gate" if self.settings.quantize
                       else "FP32 (quantization off)")
            shipment = prepare_shipment(self.registry, version, self.settings)
        self._note(version, None, "shipment", f"{shipment.precision.upper()} {shipment.sha256[:12]}: {shipment.reason}")
        done: list[StageDeployment] = []
        for stage in ("canary", "fleet"):
            if stage == "canary":
                self._baseline(version)
            deployment = self.deployer.deploy(shipment, stage)
            done.append(deployment)
            self._note(version, stage, "deployed", f"{', '.join(deployment.things) or 'no device'} "
                                                   f"({deployment.deployment_id})")
            judgement = self._watch(deployment)
            if judgement.verdict is Verdict.ROLLBACK:
                self.roll_back(done, judgement.reason)
                return RolloutResult(version=version, outcome="rolled back", stage=stage, reason=judgement.reason,
                                     shipment=shipment)
        return RolloutResult(version=version, outcome="deployed", stage=None, reason="canary and fleet serve it",
                             shipment=shipment)
