"""The deployment state machine's Lambda handlers (cloud/deploy/step_functions.py). Each is a
pure function of its payload and its clients, wrapped by a `lambda_*` entry point that builds the
clients from the configuration (`EDGE_INSPECT_CLOUD_CONFIG`: the cloud.yaml baked into the
function's image). They call the same shipping, promotion and rollback code as the on-site flow.
The rollback function also marks a version deployed (the fleet runs it: production) or
ship-failed (with the failure's reason; and Rejected), the registry writes of the on-site rollout.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from cloud.registry.registry import Approval, DeploymentStatus, ModelRegistry, first_line

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
             registry: ModelRegistry, reject: bool = True) -> dict[str, Any]:
    """Every stage back (one that fails does not stop the others); `reject`: the version is to
    blame (a refusal, a rate out of band), not an outage or an unmeasured rate."""
    failures = []
    for deployment in reversed(deployments):
        try:
            deployer.rollback(deployment)
        except Exception as exc:
            failures.append(f"rolling back the {deployment.stage} failed: {first_line(exc)}")
    version = deployments[0].version
    if reject:
        registry.decide(version, Approval.REJECTED, by=DEPLOYER, reason=f"rolled back: {reason}")
    if failures:
        raise DeployError(f"version {version} was rolled back ({reason}), but {'; '.join(failures)}")
    return {"version": version, "rolled_back": [d.stage for d in deployments], "reason": reason, "rejected": reject}


def mark_deployed(deployment: StageDeployment, registry: ModelRegistry) -> dict[str, Any]:
    """The fleet stage promoted: the version is what the fleet runs."""
    registry.record_deployment(deployment.version, DeploymentStatus.DEPLOYED,
                               f"canary and fleet serve {deployment.sha256[:12]}")
    return {"version": deployment.version, "deployment": DeploymentStatus.DEPLOYED.value}


def failure_reason(failure: dict[str, Any]) -> str:
    """One line from a Step Functions Catch result ({"Error", "Cause"}; a Lambda's Cause is its
    error as JSON)."""
    cause = str(failure.get("Cause") or "")
    try:
        body = json.loads(cause)
        text = f"{body.get('errorType') or failure.get('Error') or 'error'}: {body.get('errorMessage') or ''}"
    except (json.JSONDecodeError, AttributeError):
        text = f"{failure.get('Error') or 'error'}: {cause}"
    lines = text.strip().splitlines()
    return (lines[0] if lines else "unknown failure")[:500]


def mark_ship_failed(event: dict[str, Any], failure: dict[str, Any], registry: ModelRegistry) -> dict[str, Any]:
    """The shipment or the canary deployment failed: marked so with the reason, and Rejected, so the
    version can never be production."""
    version = approved_version(event, registry.group)
    reason = failure_reason(failure)
    registry.record_deployment(version, DeploymentStatus.SHIP_FAILED, reason)
    if registry.get(version).status is Approval.APPROVED:
        registry.decide(version, Approval.REJECTED, by=DEPLOYER, reason=f"failed to ship: {reason}")
    return {"version": version, "deployment": DeploymentStatus.SHIP_FAILED.value, "reason": reason}


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
    """Rolls back (`deployments`, `reason`), or marks the version (`mark`: deployed | ship-failed)."""
    _, registry, deployer, _ = _from_environment()
    if event.get("mark") == "deployed":
        return mark_deployed(StageDeployment.model_validate(event["deployment"]), registry)
    if event.get("mark") == "ship-failed":
        return mark_ship_failed(event["event"], event.get("failure") or {}, registry)
    deployments = [StageDeployment.model_validate(d) for d in event["deployments"]]
    reason = failure_reason(event["failure"]) if event.get("failure") else event["reason"]
    reject = bool(event.get("reject", True)) and not event.get("unmeasured", False)
    return rollback(deployments, reason, deployer, registry, reject=reject)
