"""Deployment on AWS (cloud/deploy/greengrass.py, handlers.py, step_functions.py): Greengrass v2
and IoT under botocore's Stubber (every request is checked against the service model; the
expected requests are written out here), the artifacts in moto's S3 server, the recipe against
the Greengrass recipe schema, the state machine through asl-validator, and the judge on DynamoDB
items as the IoT rule writes them."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import uuid

import boto3
import pytest
import yaml
from botocore.stub import ANY, Stubber
from conftest import REPO
from moto_s3 import CREDENTIALS
from pipeline_helpers import version_files

from cloud.deploy.deployer import DeployError, StageDeployment
from cloud.deploy.fleet_store import DynamoFleetStore
from cloud.deploy.greengrass import GreengrassDeployer, make_recipe, shipment_artifacts
from cloud.deploy.handlers import LAMBDA_WORK_DIR, approved_version, judge_stage, lambda_settings, prepare, rollback
from cloud.deploy.settings import DeploySettings, GreengrassDeploySettings
from cloud.deploy.shipping import Shipment
from cloud.deploy.step_functions import DeployMachineSettings, deployment_state_machine
from cloud.registry.mlflow_registry import MlflowRegistry
from cloud.registry.registry import Approval
from device import messages
from device.contracts import ModelIdentity
from device.detector import file_sha256
from device.model_card import card_path_for

REGION, ACCOUNT = "eu-west-1", "123456789012"
MODEL = REPO / "device" / "models" / "metal-tags-yolov8n.onnx"
ASL_VALIDATOR = REPO / ".tools" / "node_modules" / ".bin" / "asl-validator"
CANARY_ARN = f"arn:aws:iot:{REGION}:{ACCOUNT}:thinggroup/edge-inspect-canary"
FLEET_ARN = f"arn:aws:iot:{REGION}:{ACCOUNT}:thinggroup/edge-inspect-fleet"
INFERENCE = {"com.edgeinspect.Inference": {"componentVersion": "1.4.0"}}
KEYS = {k.lower(): v for k, v in CREDENTIALS.items() if k != "AWS_DEFAULT_REGION"}


@pytest.fixture
def aws(moto):
    bucket = f"components-{uuid.uuid4().hex[:12]}"
    s3 = moto.client()
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    greengrass = boto3.client("greengrassv2", region_name=REGION, **KEYS)
    iot = boto3.client("iot", region_name=REGION, **KEYS)
    sts = boto3.client("sts", region_name=REGION, **KEYS)
    stubs = Stubber(greengrass), Stubber(iot), Stubber(sts)
    for stub in stubs:
        stub.activate()
    settings = GreengrassDeploySettings(bucket=bucket, canary_thing_group="edge-inspect-canary",
                                        fleet_thing_group="edge-inspect-fleet")
    yield GreengrassDeployer(settings, greengrass, iot, s3, sts), stubs[0], stubs[1], s3, stubs[2]
    for stub in stubs:
        stub.assert_no_pending_responses()


def shipment(tmp_path, version="7") -> Shipment:
    folder = tmp_path / "ship"
    folder.mkdir(exist_ok=True)
    shutil.copyfile(MODEL, folder / "model.onnx")
    shutil.copyfile(card_path_for(MODEL), folder / "model.card.json")
    return Shipment(version=version, precision="fp32", model_file=folder / "model.onnx",
                    sha256=file_sha256(folder / "model.onnx"), reason="test")


def b64sha(path) -> str:
    return base64.b64encode(hashlib.sha256(path.read_bytes()).digest()).decode()


def test_the_recipe_names_each_artifact_by_content_with_its_digest_and_passes_the_schema(tmp_path, aws):
    deployer = aws[0]
    ship = shipment(tmp_path)
    recipe = make_recipe(deployer.settings, "7", shipment_artifacts(ship))
    assert recipe["ComponentVersion"] == "1.0.7"
    [card, model] = recipe["Manifests"][0]["Artifacts"]
    assert model["URI"] == (f"s3://{deployer.settings.bucket}/edge-inspect/components/com.edgeinspect.Model/"
                            f"{ship.sha256}/model.onnx")
    assert model["Digest"] == b64sha(ship.model_file) and model["Algorithm"] == "SHA-256"
    assert card["Digest"] == b64sha(ship.card_file)
    # the install script is the shipped recipe's: card first, then the model, each by rename
    assert "mv -f" in recipe["Manifests"][0]["Lifecycle"]["Install"]["Script"]


def test_a_recipe_that_breaks_the_schema_is_refused_before_any_call(tmp_path, aws, monkeypatch):
    import cloud.deploy.greengrass as gg

    broken = tmp_path / "recipe.yaml"
    broken.write_text(gg.BASE_RECIPE.read_text().replace("os: linux", "os: [linux]"))
    monkeypatch.setattr(gg, "BASE_RECIPE", broken)
    ship = shipment(tmp_path)
    with pytest.raises(DeployError, match="fails the Greengrass recipe schema"):
        aws[0].create_component(ship)


def test_the_component_version_is_created_inline_after_its_artifacts_are_uploaded_once(tmp_path, aws):
    """Made once; an approval delivered again finds the version made with the same artifacts
    (Greengrass answers ConflictException) and carries on with it, uploading nothing twice."""
    deployer, greengrass, _, s3, sts = aws
    ship = shipment(tmp_path)
    arn = f"arn:aws:greengrass:{REGION}:{ACCOUNT}:components:com.edgeinspect.Model:versions:1.0.7"
    created: dict = {}

    def keep(recipe) -> bool:
        created["recipe"] = recipe
        return True

    greengrass.add_response("create_component_version",
                            {"arn": arn, "componentName": "com.edgeinspect.Model", "componentVersion": "1.0.7",
                             "creationTimestamp": "2026-11-22T12:00:00Z",
                             "status": {"componentState": "REQUESTED", "message": "requested", "errors": {}}},
                            {"inlineRecipe": Keep(keep), "tags": {"edge-inspect:model-sha256": ship.sha256,
                                                                  "edge-inspect:precision": "fp32"}})
    assert deployer.create_component(ship) == arn
    expect_existing(greengrass, sts, arn, created["recipe"])
    assert deployer.create_component(ship) == arn, "the same version again is the same component"
    key = f"edge-inspect/components/com.edgeinspect.Model/{ship.sha256}/model.onnx"
    assert s3.get_object(Bucket=deployer.settings.bucket, Key=key)["Body"].read() == ship.model_file.read_bytes()
    versions = s3.list_object_versions(Bucket=deployer.settings.bucket).get("Versions", [])
    assert len(versions) == 2, "each artifact is uploaded once"


def test_a_component_version_made_with_another_model_is_refused(tmp_path, aws):
    deployer, greengrass, _, _, sts = aws
    ship = shipment(tmp_path)
    arn = f"arn:aws:greengrass:{REGION}:{ACCOUNT}:components:com.edgeinspect.Model:versions:1.0.7"
    other = make_recipe(deployer.settings, "7", shipment_artifacts(ship))
    assert other["Manifests"][0]["Artifacts"][1]["URI"].endswith("/model.onnx")
    other["Manifests"][0]["Artifacts"][1]["Digest"] = "b3RoZXIgYnl0ZXM="
    expect_existing(greengrass, sts, arn, json.dumps(other).encode())
    with pytest.raises(DeployError, match="already exists with another model"):
        deployer.create_component(ship)


class Keep:
    """A Stubber parameter matcher that hands the value to a function (True: it matches)."""

    def __init__(self, fn) -> None:
        self.fn = fn

    def __eq__(self, other) -> bool:
        return self.fn(other)


def expect_existing(greengrass, sts, arn: str, recipe: bytes) -> None:
    greengrass.add_client_error("create_component_version", service_error_code="ConflictException",
                                service_message="The component version already exists", http_status_code=409,
                                expected_params={"inlineRecipe": ANY, "tags": ANY})
    sts.add_response("get_caller_identity", {"Account": ACCOUNT, "Arn": f"arn:aws:iam::{ACCOUNT}:role/x",
                                             "UserId": "AROAEXAMPLE"}, {})
    greengrass.add_response("get_component", {"recipeOutputFormat": "JSON",
                                              "recipe": recipe}, {"arn": arn, "recipeOutputFormat": "JSON"})


def expect_things(iot, group: str, things: list[str]) -> None:
    iot.add_response("list_things_in_thing_group", {"things": things}, {"thingGroupName": group})


def expect_deployment(greengrass, iot, group_arn: str, group: str, current: dict, new: dict, deployment_id: str):
    iot.add_response("describe_thing_group", {"thingGroupName": group, "thingGroupArn": group_arn},
                     {"thingGroupName": group})
    greengrass.add_response("list_deployments", {"deployments": [{"deploymentId": "old-1", "targetArn": group_arn}]},
                            {"targetArn": group_arn, "historyFilter": "LATEST_ONLY"})
    greengrass.add_response("get_deployment", {"deploymentId": "old-1", "components": current},
                            {"deploymentId": "old-1"})
    greengrass.add_response("create_deployment", {"deploymentId": deployment_id}, {
        "targetArn": group_arn, "deploymentName": ANY, "components": new,
        "iotJobConfiguration": {"jobExecutionsRolloutConfig": {"maximumPerMinute": 50},
                                "abortConfig": {"criteriaList": [{"failureType": "FAILED", "action": "CANCEL",
                                                                  "thresholdPercentage": 10.0,
                                                                  "minNumberOfExecutedThings": 1}]},
                                "timeoutConfig": {"inProgressTimeoutInMinutes": 60}},
        "deploymentPolicies": {"failureHandlingPolicy": "ROLLBACK",
                               "componentUpdatePolicy": {"timeoutInSeconds": 60, "action": "NOTIFY_COMPONENTS"},
                               "configurationValidationPolicy": {"timeoutInSeconds": 60}}})


def test_canary_then_fleet_keep_the_groups_other_components_and_rollback_restores_them(tmp_path, aws):
    deployer, greengrass, iot, _, _ = aws
    ship = shipment(tmp_path)
    current = {**INFERENCE, "com.edgeinspect.Model": {"componentVersion": "1.0.6"}}
    new = {**INFERENCE, "com.edgeinspect.Model": {"componentVersion": "1.0.7"}}
    expect_deployment(greengrass, iot, CANARY_ARN, "edge-inspect-canary", current, new, "canary-7")
    expect_things(iot, "edge-inspect-canary", ["line-1"])
    canary = deployer.deploy(ship, "canary")
    assert (canary.things, canary.deployment_id, canary.sha256) == (["line-1"], "canary-7", ship.sha256)

    expect_deployment(greengrass, iot, FLEET_ARN, "edge-inspect-fleet", current, new, "fleet-7")
    expect_things(iot, "edge-inspect-fleet", ["line-1", "line-2", "line-3"])
    expect_things(iot, "edge-inspect-canary", ["line-1"])
    fleet = deployer.deploy(ship, "fleet")
    assert fleet.things == ["line-2", "line-3"], "a canary thing in the fleet group is judged with the canary"

    for arn in (FLEET_ARN, CANARY_ARN):  # newest first
        greengrass.add_response("create_deployment", {"deploymentId": f"rollback-{arn[-6:]}"},
                                {"targetArn": arn, "deploymentName": ANY, "components": current,
                                 "iotJobConfiguration": ANY, "deploymentPolicies": ANY})
    registry = MlflowRegistry(tmp_path / "registry", "metal-tags")
    for n in range(1, 8):
        registry.register(*version_files(tmp_path / f"v{n}", f"run-{n}", MODEL))
    registry.decide("7", Approval.APPROVED, "plant", None)
    done = rollback([canary, fleet], "line-2 refused the model", deployer, registry)
    assert done["rolled_back"] == ["canary", "fleet"]
    assert registry.get("7").status is Approval.REJECTED and "line-2 refused" in registry.get("7").reason


def test_rollback_refuses_when_there_was_no_model_before(aws):
    deployment = StageDeployment(version="1", stage="canary", things=["line-1"], sha256="a" * 64, deployed_at=0,
                                 deployment_id="d", previous={CANARY_ARN: json.dumps(INFERENCE)})
    with pytest.raises(DeployError, match="nothing to roll back to"):
        aws[0].rollback(deployment)


def test_an_aws_error_names_the_call_and_code_and_nothing_else(tmp_path, aws):
    deployer, _, iot, _, _ = aws
    iot.add_client_error("describe_thing_group", "ResourceNotFoundException", "group edge-inspect-canary not found")
    with pytest.raises(DeployError, match=r"iot.describe_thing_group failed: ResourceNotFoundException"):
        deployer.deploy(shipment(tmp_path), "canary")


EVENT = {  # an EventBridge "SageMaker Model Package State Change" event, as the rule passes it
    "version": "0", "id": "5b4c", "detail-type": "SageMaker Model Package State Change", "source": "aws.sagemaker",
    "account": ACCOUNT, "time": "2026-11-22T12:00:00Z", "region": REGION,
    "resources": [f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:model-package/metal-tags/2"],
    "detail": {"ModelPackageGroupName": "metal-tags", "ModelPackageVersion": 2, "ModelApprovalStatus": "Approved",
               "ModelPackageArn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:model-package/metal-tags/2"}}


def test_only_an_approval_of_our_group_starts_a_deployment():
    assert approved_version(EVENT, "metal-tags") == "2"
    with pytest.raises(DeployError, match="not ours"):
        approved_version(EVENT, "other-group")
    rejected = {**EVENT, "detail": {**EVENT["detail"], "ModelApprovalStatus": "Rejected"}}
    with pytest.raises(DeployError, match="not an approval event"):
        approved_version(rejected, "metal-tags")


def test_prepare_ships_the_approved_version_as_a_component(tmp_path, aws):
    deployer, greengrass, _, _, _ = aws
    registry = MlflowRegistry(tmp_path / "registry", "metal-tags")
    for n in (1, 2):
        registry.register(*version_files(tmp_path / f"v{n}", f"run-{n}", MODEL))
    registry.decide("2", Approval.APPROVED, "plant", None)
    settings = DeploySettings(backend="greengrass", state_path=tmp_path / "d.sqlite", work_dir=tmp_path / "work",
                              quantize=False, greengrass=deployer.settings)
    greengrass.add_response("create_component_version", {
        "arn": "arn:aws:greengrass:eu-west-1:123456789012:components:com.edgeinspect.Model:versions:1.0.2",
        "componentName": "com.edgeinspect.Model", "componentVersion": "1.0.2", "creationTimestamp": "2026-11-22T12:00:00Z",
        "status": {"componentState": "REQUESTED", "message": "requested", "errors": {}}}, {"inlineRecipe": ANY, "tags": ANY})
    prepared = prepare(EVENT, registry, deployer, settings)
    assert lambda_settings(settings).work_dir == LAMBDA_WORK_DIR and settings.work_dir == tmp_path / "work"
    assert prepared.shipment.version == "2" and prepared.shipment.precision == "fp32"
    card = json.loads(prepared.shipment.card_file.read_text())
    assert card["version"] == "2" and card["shipping"]["reason"] == "quantization is off (deploy.quantize: false)"
    assert card["model_sha256"] == prepared.shipment.sha256


def iot_rule_item(thing: str, outbound, received_ms: int) -> dict:
    """A DynamoDB item as the IoT rule writes it: the message's fields, plus kind, sk, received_ms."""
    from boto3.dynamodb.types import TypeSerializer

    body = json.loads(outbound.body, parse_float=lambda s: __import__("decimal").Decimal(s))
    item = {**body, "kind": outbound.subtopic, "sk": f"{received_ms:013d}-{uuid.uuid4()}", "received_ms": received_ms,
            "thing_from_topic": thing, "expires_at": received_ms // 1000 + 2592000}
    return {k: TypeSerializer().serialize(v) for k, v in item.items()}


def test_the_judge_reads_the_iot_rules_items_and_rolls_back_a_refusal(tmp_path):
    dynamodb = boto3.client("dynamodb", region_name=REGION, **KEYS)
    stub = Stubber(dynamodb)
    stub.activate()
    old = ModelIdentity(name="metal-tags", version="1", sha256="a" * 64)
    t0 = 1_800_000_000
    items = [iot_rule_item("line-1", messages.model_serving("line-1", old, t0 - 600, None), (t0 - 600) * 1000),
             iot_rule_item("line-1", messages.error("line-1", "model_rejected", "refused: truncated", old, "/m.onnx"),
                           (t0 + 5) * 1000)]
    stub.add_response("query", {"Items": items[1:]}, {"TableName": "edge-inspect-fleet",
                                                     "KeyConditionExpression": "thing_from_topic = :t AND sk >= :after",
                                                     "ExpressionAttributeValues": ANY})
    store = DynamoFleetStore("edge-inspect-fleet", dynamodb, "edge-inspect")
    settings = DeploySettings(backend="greengrass", state_path=tmp_path / "d.sqlite", work_dir=tmp_path, quantize=False,
                              greengrass=GreengrassDeploySettings(bucket="b-bucket", canary_thing_group="c",
                                                                  fleet_thing_group="f"))
    deployment = StageDeployment(version="2", stage="canary", things=["line-1"], sha256="b" * 64, deployed_at=t0,
                                 deployment_id="d")
    judged = judge_stage(deployment, store, settings, now=t0 + 10)
    assert judged.verdict == "rollback" and "refused: truncated" in judged.reason
    stub.add_response("query", {"Items": items}, {"TableName": "edge-inspect-fleet",
                                                 "KeyConditionExpression": "thing_from_topic = :t",
                                                 "ExpressionAttributeValues": ANY})
    assert store.serving("line-1").sha256 == "a" * 64
    stub.assert_no_pending_responses()


def test_the_deployment_state_machine_is_valid_amazon_states_language(tmp_path):
    arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:edge-inspect-deploy-"
    definition = deployment_state_machine(DeployMachineSettings(
        prepare_function=arn + "prepare", deploy_function=arn + "deploy", judge_function=arn + "judge",
        rollback_function=arn + "rollback"))
    path = tmp_path / "deploy.asl.json"
    path.write_text(json.dumps(definition))
    assert ASL_VALIDATOR.exists(), "run scripts/node-tools.sh"
    done = subprocess.run([str(ASL_VALIDATOR), "--json-path", str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    states = definition["States"]
    assert states["CanaryVerdict"]["Choices"][1]["Next"] == "DeployFleet", "the fleet only after the canary promotes"
    assert states["RollbackFleet"]["Parameters"]["Payload"]["deployments.$"] == \
        "States.Array($.canary.result, $.fleet.result)", "a fleet rollback undoes the canary too"
    broken = {**definition, "States": {**states, "CanaryVerdict": {**states["CanaryVerdict"], "Default": "Nowhere"}}}
    path.write_text(json.dumps(broken))
    done = subprocess.run([str(ASL_VALIDATOR), "--json-path", str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0, "asl-validator must refuse a transition to a missing state"


# --- custody of the component's artifacts ----------------------------------------------------


@pytest.mark.parametrize("prefix", ["../x", "edge-inspect/../../other", "./components", "a/.hidden", "a//b", "/abs"])
def test_an_artifact_prefix_that_could_leave_its_folder_is_refused(prefix):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="prefix"):
        GreengrassDeploySettings(bucket="plant-components", prefix=prefix, canary_thing_group="c", fleet_thing_group="f")
    assert GreengrassDeploySettings(bucket="plant-components", prefix="plant.1/edge-inspect_components",
                                    canary_thing_group="c", fleet_thing_group="f").prefix


def test_every_manifest_of_an_edited_base_recipe_gets_only_the_shipped_artifacts(tmp_path, aws, monkeypatch):
    import cloud.deploy.greengrass as gg

    base = yaml.safe_load(gg.BASE_RECIPE.read_text())
    second = {**base["Manifests"][0], "Platform": {"os": "linux", "architecture": "aarch64"},
              "Artifacts": [{"URI": "s3://someone-elses-bucket/model.onnx", "Permission": {"Read": "OWNER"}}]}
    base["Manifests"].append(second)
    edited = tmp_path / "recipe.yaml"
    edited.write_text(yaml.safe_dump(base))
    monkeypatch.setattr(gg, "BASE_RECIPE", edited)
    deployer = aws[0]
    ship = shipment(tmp_path)
    recipe = make_recipe(deployer.settings, "7", shipment_artifacts(ship))
    assert len(recipe["Manifests"]) == 2
    root = f"s3://{deployer.settings.bucket}/edge-inspect/components/com.edgeinspect.Model/"
    for manifest in recipe["Manifests"]:
        assert [a["URI"].removeprefix(root) for a in manifest["Artifacts"]] == [
            f"{file_sha256(ship.card_file)}/model.card.json", f"{ship.sha256}/model.onnx"]
        assert [a["Digest"] for a in manifest["Artifacts"]] == [b64sha(ship.card_file), b64sha(ship.model_file)]
    assert "someone-elses-bucket" not in json.dumps(recipe)


def test_an_object_already_at_an_artifacts_key_with_other_bytes_is_refused(tmp_path, aws):
    """A key is not trusted by its name: other bytes at the model's content address stop the
    shipment before any component is made (no Greengrass call is expected: the Stubber would fail)."""
    deployer, _, _, s3, _ = aws
    ship = shipment(tmp_path)
    key = f"edge-inspect/components/com.edgeinspect.Model/{ship.sha256}/model.onnx"
    s3.put_object(Bucket=deployer.settings.bucket, Key=key, Body=b"not the model", ChecksumAlgorithm="SHA256")
    with pytest.raises(DeployError, match=rf"s3://{deployer.settings.bucket}/{key} already holds other bytes \(sha256 "
                                          rf"{hashlib.sha256(b'not the model').hexdigest()[:12]}\) than its content "
                                          rf"address names \({ship.sha256[:12]}\): refused"):
        deployer.create_component(ship)
    # stored without a checksum: the bytes are read back and hashed
    s3.put_object(Bucket=deployer.settings.bucket, Key=key, Body=b"not the model either")
    with pytest.raises(DeployError, match="already holds other bytes"):
        deployer.create_component(ship)
    assert s3.get_object(Bucket=deployer.settings.bucket, Key=key)["Body"].read() == b"not the model either", \
        "nothing is overwritten: the object is left for someone to look at"


def test_an_object_already_at_its_key_with_the_same_bytes_is_reused(tmp_path, aws):
    deployer, greengrass, _, s3, _ = aws
    ship = shipment(tmp_path)
    key = f"edge-inspect/components/com.edgeinspect.Model/{ship.sha256}/model.onnx"
    s3.put_object(Bucket=deployer.settings.bucket, Key=key, Body=ship.model_file.read_bytes())  # no stored checksum
    arn = f"arn:aws:greengrass:{REGION}:{ACCOUNT}:components:com.edgeinspect.Model:versions:1.0.7"
    greengrass.add_response("create_component_version",
                            {"arn": arn, "componentName": "com.edgeinspect.Model", "componentVersion": "1.0.7",
                             "creationTimestamp": "2026-11-22T12:00:00Z",
                             "status": {"componentState": "REQUESTED", "message": "requested", "errors": {}}},
                            {"inlineRecipe": ANY, "tags": ANY})
    assert deployer.create_component(ship) == arn
    versions = [v["Key"] for v in s3.list_object_versions(Bucket=deployer.settings.bucket).get("Versions", [])]
    assert versions.count(key) == 1, "the model was not uploaded again"


def test_a_model_changed_after_its_shipment_was_prepared_is_refused_before_any_upload(tmp_path, aws):
    """shipment.sha256 is compared with the bytes about to be uploaded, and so is the card's
    model_sha256; nothing reaches S3 (no Greengrass call is expected: the Stubber would fail)."""
    deployer, _, _, s3, _ = aws
    ship = shipment(tmp_path)
    ship.model_file.write_bytes(ship.model_file.read_bytes() + b"\0")  # after prepare_shipment stamped the sha256
    with pytest.raises(DeployError, match=rf"model.onnx has sha256 {file_sha256(ship.model_file)[:12]}, but v7 shipped "
                                          rf"{ship.sha256[:12]}: the file changed after it was prepared"):
        deployer.create_component(ship)
    (tmp_path / "other").mkdir()
    other = shipment(tmp_path / "other")
    card = json.loads(other.card_file.read_text())
    card["model_sha256"] = "0" * 64
    other.card_file.write_text(json.dumps(card))
    with pytest.raises(DeployError, match="names model sha256 000000000000, not .* the card and the model are not "
                                          "from one shipment"):
        deployer.create_component(other)
    assert not s3.list_objects_v2(Bucket=deployer.settings.bucket).get("Contents"), "nothing was uploaded"


def test_each_artifact_is_read_once_and_the_bytes_checked_are_the_bytes_uploaded(tmp_path, aws, monkeypatch):
    """A file read again for its key, its digest and its upload could be other bytes each time."""
    from pathlib import Path

    deployer, greengrass, _, s3, _ = aws
    ship = shipment(tmp_path)
    reads: list[str] = []
    read_bytes = Path.read_bytes

    def counting(self):
        reads.append(self.name)
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", counting)
    arn = f"arn:aws:greengrass:{REGION}:{ACCOUNT}:components:com.edgeinspect.Model:versions:1.0.7"
    greengrass.add_response("create_component_version",
                            {"arn": arn, "componentName": "com.edgeinspect.Model", "componentVersion": "1.0.7",
                             "creationTimestamp": "2026-11-22T12:00:00Z",
                             "status": {"componentState": "REQUESTED", "message": "requested", "errors": {}}},
                            {"inlineRecipe": ANY, "tags": ANY})
    assert deployer.create_component(ship) == arn
    monkeypatch.undo()
    assert reads.count("model.onnx") == 1 and reads.count("model.card.json") == 1, reads
    key = f"edge-inspect/components/com.edgeinspect.Model/{ship.sha256}/model.onnx"
    assert s3.get_object(Bucket=deployer.settings.bucket, Key=key)["Body"].read() == ship.model_file.read_bytes()
