"""The rollout's registry marks on AWS (cloud/deploy/step_functions.py, handlers.py): the state
machine marks a version deployed after the fleet promotes, and ship-failed (and Rejected) when its
shipment or canary deployment fails, through the rollback function (the one Lambda allowed to
update a model package); the definition passes asl-validator. The handlers run on a real MLflow
registry (they only call the ModelRegistry interface; the SageMaker calls are checked under
botocore's Stubber in tests/test_registry_sagemaker.py)."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import REPO
from pipeline_helpers import version_files

from cloud.deploy.deployer import DeployError, ShipmentRefused, StageDeployment
from cloud.deploy.handlers import failure_reason, mark_deployed, mark_ship_failed, rollback
from cloud.deploy.step_functions import (
    CONTENT_ERRORS,
    MARK_DEPLOYED,
    MARK_SHIP_FAILED,
    NOT_SHIPPED,
    DeployMachineSettings,
    deployment_state_machine,
)
from cloud.registry.mlflow_registry import MlflowRegistry
from cloud.registry.registry import Approval, DeploymentStatus, production
from device.detector import ModelError

ASL_VALIDATOR = REPO / ".tools" / "node_modules" / ".bin" / "asl-validator"
MODEL = REPO / "device" / "models" / "metal-tags-yolov8n.onnx"
ARN = "arn:aws:lambda:eu-west-1:123456789012:function:edge-inspect-deploy-"
EVENT = {"version": "0", "id": "5b4c", "detail-type": "SageMaker Model Package State Change", "source": "aws.sagemaker",
         "account": "123456789012", "time": "2026-11-22T12:00:00Z", "region": "eu-west-1", "resources": [],
         "detail": {"ModelPackageGroupName": "metal-tags", "ModelPackageVersion": 2, "ModelApprovalStatus": "Approved"}}


def machine() -> dict:
    return deployment_state_machine(DeployMachineSettings(
        prepare_function=ARN + "prepare", deploy_function=ARN + "deploy", judge_function=ARN + "judge",
        rollback_function=ARN + "rollback"))


def test_the_machine_marks_deployed_after_the_fleet_and_ship_failed_on_a_failed_shipment(tmp_path):
    definition = machine()
    path = tmp_path / "deploy.asl.json"
    path.write_text(json.dumps(definition))
    assert ASL_VALIDATOR.exists(), "run scripts/node-tools.sh"
    done = subprocess.run([str(ASL_VALIDATOR), "--json-path", str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    states = definition["States"]
    promote = next(c for c in states["FleetVerdict"]["Choices"] if c["StringEquals"] == "promote")
    assert promote["Next"] == MARK_DEPLOYED and states[MARK_DEPLOYED]["Next"] == "Deployed"
    assert states[MARK_DEPLOYED]["Parameters"]["Payload"] == {"mark": "deployed", "deployment.$": "$.fleet.result"}
    assert states[MARK_DEPLOYED]["Parameters"]["FunctionName"] == ARN + "rollback"
    for failing in ("Prepare", "DeployCanary"):
        assert states[failing]["Catch"][0]["Next"] == MARK_SHIP_FAILED, failing
    assert states[MARK_SHIP_FAILED]["Next"] == NOT_SHIPPED and states[NOT_SHIPPED]["Type"] == "Fail"
    # a fleet deployment that fails after the canary serves it is not a failed shipment
    assert states["DeployFleet"]["Catch"][0]["Next"] == "UndoCanary"


@pytest.fixture
def registry(tmp_path):
    registry = MlflowRegistry(tmp_path / "registry", "metal-tags")
    for n in (1, 2):
        registry.register(*version_files(tmp_path / f"v{n}", f"run-{n}", MODEL))
        registry.decide(str(n), Approval.APPROVED, "plant", None)
    registry.record_deployment("1", DeploymentStatus.DEPLOYED, "the lines run it")
    return registry


def test_the_fleet_promoted_marks_the_version_deployed_and_production(registry):
    assert production(registry).version == "1"
    deployment = StageDeployment(version="2", stage="fleet", things=["line-2"], sha256="b" * 64, deployed_at=0,
                                 deployment_id="fleet-2")
    assert mark_deployed(deployment, registry)["deployment"] == "deployed"
    assert production(registry).version == "2"


def test_a_failed_shipment_marks_the_version_with_the_lambda_s_error_and_rejects_it(registry):
    failure = {"Error": "DeployError", "Cause": json.dumps({
        "errorMessage": "model.onnx is not a loadable ONNX model: INVALID_PROTOBUF\nmore", "errorType": "ModelError",
        "stackTrace": ["  File ..."]})}
    assert failure_reason(failure) == "ModelError: model.onnx is not a loadable ONNX model: INVALID_PROTOBUF"
    assert failure_reason({"Error": "States.Timeout", "Cause": "timed out"}) == "States.Timeout: timed out"
    marked = mark_ship_failed({**EVENT, "failure": failure}, failure, registry)
    v2 = registry.get("2")
    assert marked["deployment"] == "ship-failed" and v2.status is Approval.REJECTED
    assert v2.reason == "failed to ship: ModelError: model.onnx is not a loadable ONNX model: INVALID_PROTOBUF"
    assert v2.deployment.status is DeploymentStatus.SHIP_FAILED and production(registry).version == "1"


def test_only_content_errors_mark_a_version_ship_failed_and_failures_after_the_swap_undo_without_rejecting(tmp_path):
    definition = machine()
    path = tmp_path / "deploy.asl.json"
    path.write_text(json.dumps(definition))
    done = subprocess.run([str(ASL_VALIDATOR), "--json-path", str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    states = definition["States"]
    for failing in ("Prepare", "DeployCanary"):
        first, rest = states[failing]["Catch"][0], states[failing]["Catch"][1:]
        assert first["ErrorEquals"] == CONTENT_ERRORS and first["Next"] == MARK_SHIP_FAILED, failing
        assert rest[-1]["ErrorEquals"] == ["States.ALL"] and rest[-1]["Next"] == "DeploymentFailed", \
            "a timeout or throttling is not the version's fault"
    assert [ShipmentRefused.__name__, ModelError.__name__] == CONTENT_ERRORS, "the Lambda's errorType"
    for failing, undo in (("DeployFleet", "UndoCanary"), ("JudgeCanary", "UndoCanary"), ("JudgeFleet", "UndoFleet")):
        assert states[failing]["Catch"][0]["Next"] == undo, failing
        payload = states[undo]["Parameters"]["Payload"]
        assert payload["reject"] is False and states[undo]["Next"] == "DeploymentFailed"
    assert states["UndoFleet"]["Parameters"]["Payload"]["deployments.$"] == \
        "States.Array($.canary.result, $.fleet.result)"
    assert states["RollbackCanary"]["Parameters"]["Payload"]["unmeasured.$"] == \
        "$.canary_verdict.result.judgement.unmeasured"


class Recording:
    """What the Greengrass deployer was asked to roll back (its AWS calls: test_deploy_greengrass.py)."""

    def __init__(self, fail: str | None = None) -> None:
        self.rolled_back: list[str] = []
        self.fail = fail

    def rollback(self, deployment: StageDeployment) -> None:
        if deployment.stage == self.fail:
            raise DeployError("Greengrass: ThrottlingException")
        self.rolled_back.append(deployment.stage)


def _deployments() -> list[StageDeployment]:
    return [StageDeployment(version="2", stage=s, things=[f"line-{i}"], sha256="b" * 64, deployed_at=0,
                            deployment_id=f"{s}-2") for i, s in enumerate(("canary", "fleet"), 1)]


def test_an_undo_after_an_outage_keeps_the_version_approved_and_rolls_back_every_stage(registry):
    deployer = Recording(fail="fleet")
    with pytest.raises(DeployError, match=r"rolling back the fleet failed: Greengrass: ThrottlingException"):
        rollback(_deployments(), "States.Timeout: timed out", deployer, registry, reject=False)  # type: ignore[arg-type]
    assert deployer.rolled_back == ["canary"], "the canary is rolled back although the fleet's rollback failed"
    assert registry.get("2").status is Approval.APPROVED
    rollback(_deployments()[:1], "alert rate out of band", Recording(), registry)  # type: ignore[arg-type]
    assert registry.get("2").status is Approval.REJECTED
