"""The deployment state machine's Lambda handlers (cloud/deploy/step_functions.py). Each is a
pure function of its payload and its clients, wrapped by a `lambda_*` entry point that builds the
clients from the configuration (`EDGE_INSPECT_CLOUD_CONFIG`: the cloud.yaml baked into the
function's image). They call the same shipping, promotion and rollback code as the on-site flow.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from cloud.registry.registry import Approval, ModelRegistry

from .deployer import DeployError, StageDeployment
from .fleet_store import FleetReader
from .greengrass import GreengrassDeployer
from .promotion import Judgement, judge
from .rollout import DEPLOYER
from .settings import DeploySettings, Stage
from .shipping import Shipment, prepare_shipment

APPROVED_EVENT = "SageMaker Model Package State Change"
LAMBDA_WORK_DIR = Path("/tmp/edge-inspect/shipments")  # Lambda's own scratch space, one process


class Prepared(BaseModel):
    model_config = ConfigDict(extra="forbid")

    shipment: Shipment
    component_arn: str


class Judged(BaseModel):
    model_config = ConfigDict(extra="forbid")

    verdict: str
    reason: str
    judgement: Judgement


def approved_version(event: dict[str, Any], group: str) -> str:
    """The registry version an EventBridge model-package event approves; refuses any other event."""
    detail = event.get("detail") or {}
    if event.get("detail-type") != APPROVED_EVENT or detail.get("ModelApprovalStatus") != Approval.APPROVED.value:
        raise DeployError(f"not an approval event: {event.get('detail-type')!r} {detail.get('ModelApprovalStatus')!r}")
    if detail.get("ModelPackageGroupName") != group:
        raise DeployError(f"model package group {detail.get('ModelPackageGroupName')!r} is not ours ({group!r})")
    return str(detail["ModelPackageVersion"])


def prepare(event: dict[str, Any], registry: ModelRegistry, deployer: GreengrassDeployer,
            settings: DeploySettings) -> Prepared:
    version = approved_version(event, registry.group)
    shipment = prepare_shipment(registry, version, settings)
    return Prepared(shipment=shipment, component_arn=deployer.create_component(shipment))


def deploy(prepared: Prepared, stage: Stage, deployer: GreengrassDeployer) -> StageDeployment:
    return deployer.deploy(prepared.shipment, stage)


def judge_stage(deployment: StageDeployment, fleet: FleetReader, settings: DeploySettings,
                now: float | None = None) -> Judged:
    j = judge(settings.promotion, fleet, deployment.things, deployment.sha256, deployment.deployed_at,
              now if now is not None else time.time(), check_rate=deployment.stage == "canary")
    return Judged(verdict=j.verdict.value, reason=j.reason, judgement=j)


def rollback(deployments: list[StageDeployment], reason: str, deployer: GreengrassDeployer,
             registry: ModelRegistry) -> dict[str, Any]:
    for deployment in reversed(deployments):
        deployer.rollback(deployment)
    version = deployments[0].version
    registry.decide(version, Approval.REJECTED, by=DEPLOYER, reason=f"rolled back: {reason}")
    return {"version": version, "rolled_back": [d.stage for d in deployments], "reason": reason}


def _from_environment():
    from cloud.deploy.greengrass import open_greengrass
    from cloud.pipeline.backends import pipeline_settings
    from cloud.registry.backends import open_registry
    from cloud.settings import load_cloud_config

    config = load_cloud_config(os.environ.get("EDGE_INSPECT_CLOUD_CONFIG", "/var/task/cloud.yaml"))
    if config.deploy is None:
        raise DeployError("the cloud configuration has no `deploy` section")
    pipeline = pipeline_settings(config)
    registry = open_registry(pipeline.registry, pipeline.params.model_group, config.region)
    deployer, fleet = open_greengrass(config)
    return lambda_settings(config.deploy), registry, deployer, fleet


def lambda_settings(settings: DeploySettings) -> DeploySettings:
    """In Lambda only /tmp is writable (the template gives it 10 GiB for prepare): shipments are
    made there, whatever work_dir the plant's cloud.yaml names for its own hosts."""
    return settings.model_copy(update={"work_dir": LAMBDA_WORK_DIR})


def lambda_prepare(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    settings, registry, deployer, _ = _from_environment()
    return prepare(event["event"], registry, deployer, settings).model_dump(mode="json")


def lambda_deploy(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    _, _, deployer, _ = _from_environment()
    return deploy(Prepared.model_validate(event["prepared"]), event["stage"], deployer).model_dump(mode="json")


def lambda_judge(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    settings, _, _, fleet = _from_environment()
    return judge_stage(StageDeployment.model_validate(event["deployment"]), fleet, settings).model_dump(mode="json")


def lambda_rollback(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    _, registry, deployer, _ = _from_environment()
    deployments = [StageDeployment.model_validate(d) for d in event["deployments"]]
    return rollback(deployments, event["reason"], deployer, registry)
