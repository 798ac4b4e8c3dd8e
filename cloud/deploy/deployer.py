"""The deployer interface: put a shipment on a stage's devices, and take it off again."""

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel, ConfigDict

from .settings import Stage
from .shipping import Shipment


class DeployError(RuntimeError):
    """A deployment could not be made or undone; says which and why."""


class ShipmentRefused(DeployError):
    """The version's own bytes are wrong (a hash that does not match, a card that does not describe
    the model, a model the lines cannot serve): retrying cannot help, the version is marked
    ship-failed. Any other DeployError is an outage (a disk, a lock, a mount): the version stays
    Approved so the rollout can be run again."""


class StageDeployment(BaseModel):
    """One stage of one version on its devices; crosses the Step Functions boundary as JSON."""

    model_config = ConfigDict(extra="forbid")

    version: str
    stage: Stage
    things: list[str]
    sha256: str
    deployed_at: float  # the cloud's clock
    deployment_id: str  # the backend's: a Greengrass deployment id, or a local one
    previous: dict[str, str] = {}  # what rollback restores: per thing (local backups) or per group (component)


class Deployer(Protocol):
    def things(self, stage: Stage) -> list[str]:
        """The devices of a stage."""
        ...

    def deploy(self, shipment: Shipment, stage: Stage) -> StageDeployment: ...

    def rollback(self, deployment: StageDeployment) -> None:
        """Put back on the stage's devices what they ran before `deployment`."""
        ...
