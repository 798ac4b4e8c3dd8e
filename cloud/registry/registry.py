"""The registry's interface and the rules every backend shares (which version is production,
which approval changes are allowed, what a version's deployment status says).

Production is the version the fleet actually runs: the newest Approved version whose rollout
finished (deployment status `deployed`: canary and fleet both serve it), never merely the newest
Approved one. A version that failed to ship is marked `ship-failed` with the reason (and Rejected),
so it can never become production; a rolled-back one is Rejected and leaves the previous deployed
version as production. The bundled model counts as deployed: the daemons ship with it."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict

from cloud.pipeline.card import VersionCard

# the files of a version, by name, in every backend
ONNX, CHECKPOINT, DEVICE_CARD, VERSION_CARD = "model.onnx", "model.pt", "model.card.json", "version.card.json"
FILES = (ONNX, CHECKPOINT, DEVICE_CARD, VERSION_CARD)
BUNDLED_BY = "edge-inspect (bundled model)"  # who approves the bundled model (cloud/registry/bundled.py)

log = logging.getLogger(__name__)


class RegistryError(RuntimeError):
    """The registry cannot do what was asked; says which version and why."""


class RegistryUnavailable(RegistryError):
    """The registry could not be read (a locked database, a server down): nothing is known about
    the version, so nothing about it is decided; try again."""


class Approval(str, Enum):
    # SageMaker's ModelApprovalStatus values, used by every backend
    PENDING = "PendingManualApproval"
    APPROVED = "Approved"
    REJECTED = "Rejected"


class DeploymentStatus(str, Enum):
    DEPLOYED = "deployed"  # canary and fleet both serve it
    SHIP_FAILED = "ship-failed"  # its shipment or deployment failed; the reason says why


class Deployment(BaseModel):
    """What the deployer recorded on a version: a model-version tag set on site, customer
    metadata on AWS."""

    model_config = ConfigDict(extra="forbid")

    status: DeploymentStatus
    at: str  # ISO 8601, the cloud's clock
    reason: str = ""


class ModelVersion(BaseModel):
    model_config = ConfigDict(extra="forbid")

    group: str
    version: str
    status: Approval
    created: str
    run_id: str
    card: VersionCard
    decided_by: str | None = None
    decided_at: str | None = None
    reason: str | None = None
    location: str  # where the files are (an MLflow artifact URI, an S3 prefix)
    deployment: Deployment | None = None  # None: never deployed by edge-inspect (nor failed to ship)

    @property
    def deployed(self) -> bool:
        """The fleet ran it: its rollout finished, or it is the bundled model the daemons ship with."""
        return (self.deployment is not None and self.deployment.status is DeploymentStatus.DEPLOYED) or \
            self.decided_by == BUNDLED_BY


class UnreadableVersion(BaseModel):
    """A version the registry lists but whose card (or metadata) cannot be read: shown with the
    reason, never allowed to break the listing of the others."""

    model_config = ConfigDict(extra="forbid")

    group: str
    version: str
    reason: str


class VersionFiles(BaseModel):
    model_config = ConfigDict(extra="forbid")

    folder: Path  # holds the FILES

    def path(self, name: str) -> Path:
        return self.folder / name

    @property
    def onnx(self) -> Path:
        return self.folder / ONNX

    @property
    def checkpoint(self) -> Path:
        return self.folder / CHECKPOINT

    def missing(self) -> list[str]:
        return [name for name in FILES if not (self.folder / name).is_file()]


class ModelRegistry(Protocol):
    group: str

    def register(self, files: VersionFiles, card: VersionCard, status: Approval = Approval.PENDING,
                 decided_by: str | None = None) -> ModelVersion:
        """A new version (or the one already registered for `card.run_id`: registering is idempotent)."""
        ...

    def entries(self) -> list[ModelVersion | UnreadableVersion]:
        """Every version, oldest first; one whose card cannot be read is listed as unreadable."""
        ...

    def versions(self) -> list[ModelVersion]:
        """Every readable version, oldest first (an unreadable one is logged and left out)."""
        ...

    def get(self, version: str) -> ModelVersion: ...

    def decide(self, version: str, status: Approval, by: str, reason: str | None) -> ModelVersion: ...

    def download(self, version: str, dest: Path) -> VersionFiles:
        """The version's FILES into `dest`; a RegistryError names any file the registry lacks."""
        ...

    def record_deployment(self, version: str, status: DeploymentStatus, reason: str = "") -> ModelVersion:
        """Mark what the deployer did with the version (deployed, or failed to ship and why)."""
        ...


ALLOWED = {  # from -> to: a pending version is decided once; an approved one can still be withdrawn
    Approval.PENDING: {Approval.APPROVED, Approval.REJECTED},
    Approval.APPROVED: {Approval.REJECTED},
    Approval.REJECTED: set(),
}


def check_decision(current: ModelVersion, status: Approval, by: str, reason: str | None) -> None:
    if status not in ALLOWED[current.status]:
        raise RegistryError(f"version {current.version} is {current.status.value}; it cannot become {status.value}")
    if not by.strip():
        raise RegistryError("say who decides (--by)")
    if status is Approval.REJECTED and not (reason or "").strip():
        raise RegistryError(f"rejecting version {current.version} needs a reason")


def production(registry: ModelRegistry) -> ModelVersion | None:
    """The version the fleet runs: of the Approved versions whose rollout finished (or the bundled
    model), the one deployed last. What pre-labels, fine-tuning and the gate start from; never a version that is merely
    approved, failed to ship, or was rolled back. A plant that ships models by other means (or
    upgrades from before deployments were recorded) says which version its lines run with
    `cloud models mark-deployed`."""
    deployed = [v for v in registry.versions() if v.status is Approval.APPROVED and v.deployed]
    # the last one deployed, not the highest number: rolling back to v3 after v5 makes v3 production
    # again (the bundled model counts from its seeding); the number breaks a tie within a second
    return max(deployed, key=lambda v: (_deployed_at(v), int(v.version))) if deployed else None


def _deployed_at(v: ModelVersion) -> float:
    """When the fleet started running it: its deployment, or (the bundled model) its seeding."""
    text = v.deployment.at if v.deployment is not None and v.deployment.status is DeploymentStatus.DEPLOYED \
        else v.decided_at
    try:
        at = datetime.fromisoformat((text or "").replace("Z", "+00:00"))
    except ValueError:
        return float("-inf")  # unreadable: older than any readable one
    return (at if at.tzinfo else at.replace(tzinfo=timezone.utc)).timestamp()


_reported: set[tuple[str, str, str]] = set()  # unreadable versions already logged by this process


def readable(entries: list[ModelVersion | UnreadableVersion]) -> list[ModelVersion]:
    """The readable versions of a listing; each unreadable one is logged once, with its reason."""
    for e in entries:
        if isinstance(e, UnreadableVersion) and (e.group, e.version, e.reason) not in _reported:
            _reported.add((e.group, e.version, e.reason))
            log.warning("registry: %s version %s is unreadable, left out: %s", e.group, e.version, e.reason)
    return [e for e in entries if isinstance(e, ModelVersion)]


def require_files(files: VersionFiles, version: str) -> VersionFiles:
    missing = files.missing()
    if missing:
        raise RegistryError(f"version {version}'s files in the registry lack {', '.join(missing)}: it cannot be "
                            "shipped or trained from; reject it and register the run again")
    return files


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:500]


def by_run(registry: ModelRegistry, run_id: str) -> ModelVersion | None:
    return next((v for v in registry.versions() if v.run_id == run_id), None)
