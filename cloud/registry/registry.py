"""The registry's interface and the rules every backend shares (which version is production,
which approval changes are allowed)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict

from cloud.pipeline.card import VersionCard

# the files of a version, by name, in every backend
ONNX, CHECKPOINT, DEVICE_CARD, VERSION_CARD = "model.onnx", "model.pt", "model.card.json", "version.card.json"
FILES = (ONNX, CHECKPOINT, DEVICE_CARD, VERSION_CARD)


class RegistryError(RuntimeError):
    """The registry cannot do what was asked; says which version and why."""


class Approval(str, Enum):
    # SageMaker's ModelApprovalStatus values, used by every backend
    PENDING = "PendingManualApproval"
    APPROVED = "Approved"
    REJECTED = "Rejected"


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

    def versions(self) -> list[ModelVersion]:
        """Every version, oldest first."""
        ...

    def get(self, version: str) -> ModelVersion: ...

    def decide(self, version: str, status: Approval, by: str, reason: str | None) -> ModelVersion: ...

    def download(self, version: str, dest: Path) -> VersionFiles: ...


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
    """The latest approved version: what the lines should run, and what the next model must beat."""
    approved = [v for v in registry.versions() if v.status is Approval.APPROVED]
    return max(approved, key=lambda v: int(v.version)) if approved else None


def by_run(registry: ModelRegistry, run_id: str) -> ModelVersion | None:
    return next((v for v in registry.versions() if v.run_id == run_id), None)
