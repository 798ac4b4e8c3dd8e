"""The CloudFormation template of the AWS side (cloud/infra), checked with the real validators:
cfn-lint (the project's dev dependency) and checkov (in its own virtualenv, scripts/iac-tools.sh),
each shown able to fail on a broken template. Least privilege is checked on the template itself:
every IAM statement has a reason, every `*` says why, the devices' role can only put frames under
their own thing's prefix, and the IoT rule writes the items the fleet store reads."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_deploy_greengrass import iot_rule_item

from cloud.infra.parameters import InfraParameters, from_config
from cloud.infra.template import build_template
from cloud.settings import load_cloud_config
from device import messages
from device.contracts import ModelIdentity

REPO = Path(__file__).resolve().parent.parent
CFN_LINT = Path(sys.executable).parent / "cfn-lint"
ASL_VALIDATOR = REPO / ".tools" / "node_modules" / ".bin" / "asl-validator"
ACCOUNT_ARN = "arn:aws:lambda:eu-west-1:123456789012:function:f"

AWS_CONFIG = """
region: eu-west-1
storage: {bucket: plant-edge, prefix: plant-a}
broker: {host: broker.plant, port: 8883, topic_prefix: factory/edge-inspect, tls: {enabled: true}}
label_store:
  backend: feature_store
  feature_store:
    feature_group_name: plant-labels
    role_arn: arn:aws:iam::123456789012:role/fs
    offline_store_s3_uri: s3://plant-edge/plant-a/label-store
    athena_output_s3_uri: s3://plant-edge/plant-a/athena
labeling:
  backend: ground_truth
  state_path: STATE/labeling.sqlite
  ground_truth:
    role_arn: arn:aws:iam::123456789012:role/gt
    workteam_arn: arn:aws:sagemaker:eu-west-1:123456789012:workteam/private-crowd/plant-team
    manifest_s3_uri: s3://plant-edge/plant-a/labeling
    job_name_prefix: plant-a
pipeline:
  state_path: STATE/runs.sqlite
  work_dir: STATE/runs
  registry: {backend: sagemaker, sagemaker: {bucket: plant-edge, prefix: plant-a/models}}
  sagemaker:
    name: plant-a-retraining
    role_arn: arn:aws:iam::123456789012:role/pipeline
    image_uri: 123456789012.dkr.ecr.eu-west-1.amazonaws.com/edge-inspect:1.4.0
    bucket: plant-edge
    prefix: plant-a/pipeline
    config_s3_prefix: s3://plant-edge/plant-a/config/
deploy:
  backend: greengrass
  state_path: STATE/deploy.sqlite
  work_dir: STATE/ship
  quantize: false
  promotion: {poll_seconds: 30}
  greengrass: {bucket: plant-edge, prefix: plant-a/components, canary_thing_group: plant-a-canary,
               fleet_thing_group: plant-a-fleet}
"""


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, Any]:
    """`edge-inspect cloud infra --out DIR` on a configuration that uses every AWS backend."""
    root = tmp_path_factory.mktemp("infra")
    config = root / "cloud.yaml"
    config.write_text(AWS_CONFIG.replace("STATE", str(root)))
    out = root / "out"
    done = subprocess.run([sys.executable, "-m", "edge_inspect", "cloud", "--config", str(config), "infra",
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    template_path = out / "edge-inspect.template.json"
    assert done.stdout.split() == [str(template_path), str(out / "parameters.json"), str(out / "iam-why.json")]
    return {"path": template_path, "template": json.loads(template_path.read_text()),
            "parameters": json.loads((out / "parameters.json").read_text()), "root": root}


def cfn_lint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(CFN_LINT), "--format", "parseable", str(path)], capture_output=True, text=True,
                          timeout=300)


def checkov(path: Path) -> dict[str, Any]:
    binary = subprocess.run(["bash", str(REPO / "scripts" / "iac-tools.sh")], capture_output=True, text=True,
                            check=True, timeout=900).stdout.strip()
    # --skip-download: no call to Prisma Cloud (no network here, and nothing of ours leaves)
    done = subprocess.run([binary, "-f", str(path), "--framework", "cloudformation", "--skip-download",
                           "-o", "json"], capture_output=True, text=True, timeout=300)
    report = json.loads(done.stdout)
    return report[0] if isinstance(report, list) else report


def statements(node: Any) -> list[dict[str, Any]]:
    """Every IAM statement anywhere in the template (policies, key and bucket policies, trust)."""
    found = []
    if isinstance(node, dict):
        if "Effect" in node and ("Action" in node or "NotAction" in node):
            found.append(node)
        for value in node.values():
            found += statements(value)
    elif isinstance(node, list):
        for value in node:
            found += statements(value)
    return found


def strings(node: Any) -> list[str]:
    """The literal text of a policy value, Fn::Sub's template string included."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [s for v in node for s in strings(v)]
    if isinstance(node, dict):
        if "Fn::Sub" in node:
            sub = node["Fn::Sub"]
            return [sub] if isinstance(sub, str) else [sub[0]]
        return []  # Ref / GetAtt: one named resource
    return []


# -- the parameters come from the configuration -----------------------------------------------

def test_parameters_are_filled_from_the_cloud_configuration(written):
    p, params = written["parameters"], written["template"]["Parameters"]
    assert p["BucketName"] == "plant-edge" and p["FramesPrefix"] == "plant-a"
    assert p["TopicPrefix"] == "factory/edge-inspect" and p["FeatureGroup"] == "plant-labels"
    assert p["LabelingPrefix"] == "plant-a/labeling" and p["WorkteamName"] == "plant-team"
    assert p["RegistryPrefix"] == "plant-a/models" and p["ImageTag"] == "1.4.0"
    assert p["CanaryThingGroup"] == "plant-a-canary" and p["ComponentPrefix"] == "plant-a/components"
    assert {k: str(v["Default"]) for k, v in params.items()} == p  # the template's defaults are the same values
    # the deployment machine polls as cloud.yaml says
    machine = json.loads(written["template"]["Resources"]["DeployStateMachine"]["Properties"]["DefinitionString"])
    assert machine["States"]["WaitCanary"]["Seconds"] == 30


def test_a_configuration_spread_over_two_buckets_is_refused(tmp_path):
    config = tmp_path / "cloud.yaml"
    config.write_text(AWS_CONFIG.replace("STATE", str(tmp_path))
                      .replace("{bucket: plant-edge, prefix: plant-a/components", "{bucket: other-bucket, prefix: x"))
    done = subprocess.run([sys.executable, "-m", "edge_inspect", "cloud", "--config", str(config), "infra",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "the template makes one bucket, but the configuration names 2" in done.stderr
    assert "deploy.greengrass.bucket: other-bucket" in done.stderr
    assert not (tmp_path / "out").exists()


def test_an_upper_case_feature_group_is_refused_with_the_reason():
    config = load_cloud_config_text(AWS_CONFIG.replace("feature_group_name: plant-labels",
                                                       "feature_group_name: Plant-Labels"))
    with pytest.raises(ValueError, match="needs a lower-case name"):
        from_config(config)


def load_cloud_config_text(text: str):
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "cloud.yaml"
        path.write_text(text.replace("STATE", folder))
        return load_cloud_config(path)


# -- the real validators --------------------------------------------------------------------

def test_cfn_lint_finds_nothing(written):
    done = cfn_lint(written["path"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == ""


def test_cfn_lint_fails_a_broken_template(written, tmp_path):
    broken = copy.deepcopy(written["template"])
    broken["Resources"]["Bucket"]["Properties"]["VersioningConfiguration"] = {"Status": "Sometimes"}
    broken["Resources"]["PrepareFunction"]["Properties"]["Role"] = {"Fn::GetAtt": ["NoSuchRole", "Arn"]}
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    done = cfn_lint(path)
    assert done.returncode != 0
    assert "Sometimes" in done.stdout and "NoSuchRole" in done.stdout


def test_checkov_passes_with_every_suppression_explained(written):
    report = checkov(written["path"])
    summary = report["summary"]
    assert summary["failed"] == 0, [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert summary["parsing_errors"] == 0 and summary["resource_count"] == len(written["template"]["Resources"])
    assert summary["passed"] > 100  # it did check: IAM, S3, KMS, Lambda, logs, DynamoDB, Step Functions...
    skipped = report["results"]["skipped_checks"]
    for check in skipped:
        comment = check["check_result"].get("suppress_comment") or ""
        assert len(comment) > 40, f"{check['check_id']} on {check['resource']} is suppressed without a reason"
    assert {c["check_id"] for c in skipped} <= {"CKV_AWS_116", "CKV_AWS_117", "CKV_AWS_18"}


def test_checkov_fails_an_unencrypted_public_bucket_and_a_star_policy(written, tmp_path):
    broken = copy.deepcopy(written["template"])
    bucket = broken["Resources"]["Bucket"]["Properties"]
    del bucket["BucketEncryption"], bucket["PublicAccessBlockConfiguration"], bucket["VersioningConfiguration"]
    role = broken["Resources"]["JudgeFunctionRole"]["Properties"]
    role["Policies"][0]["PolicyDocument"]["Statement"].append(
        {"Sid": "Everything", "Effect": "Allow", "Action": "*", "Resource": "*"})
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    failed = {(c["check_id"], c["resource"]) for c in checkov(path)["results"]["failed_checks"]}
    assert ("CKV_AWS_21", "AWS::S3::Bucket.Bucket") in failed  # versioning
    assert ("CKV_AWS_53", "AWS::S3::Bucket.Bucket") in failed  # public ACLs not blocked
    assert any(check in {"CKV_AWS_109", "CKV_AWS_110", "CKV_AWS_111", "CKV_AWS_63"} and res.endswith("JudgeFunctionRole")
               for check, res in failed), failed


def test_the_embedded_state_machines_pass_asl_validator(written, tmp_path):
    for name in ("DeployStateMachine", "LabelingStateMachine"):
        props = written["template"]["Resources"][name]["Properties"]
        definition = props["DefinitionString"]
        for placeholder in props["DefinitionSubstitutions"]:
            assert "${" + placeholder + "}" in definition
            definition = definition.replace("${" + placeholder + "}", ACCOUNT_ARN)
        assert "${" not in definition
        path = tmp_path / f"{name}.json"
        path.write_text(definition)
        done = subprocess.run([str(ASL_VALIDATOR), "--json-path", str(path)], capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr


# -- least privilege --------------------------------------------------------------------------

def test_every_statement_has_a_reason_and_every_star_says_why(written):
    why = written["template"]["Metadata"]["edge-inspect"]["iam_why"]
    why_file = json.loads((written["path"].parent / "iam-why.json").read_text())
    assert why_file == why
    found = statements(written["template"]["Resources"])
    assert len(found) > 60
    for s in found:
        sid = s.get("Sid")
        assert sid and len(why.get(sid, "")) > 20, f"statement {sid or s} has no reason"
        actions = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
        resources = strings(s.get("Resource", []))
        star = any("*" in a for a in actions) or "*" in resources
        if star and s["Effect"] == "Allow":
            assert "*" in why[sid], f"{sid}: a * without saying why: {why[sid]}"
        assert "*" not in actions, f"{sid}: Action *"


def test_devices_can_only_put_frames_under_their_own_thing(written):
    resources = written["template"]["Resources"]
    device_role = [s for s in statements(resources["TokenExchangePolicy"])]
    by_sid = {s["Sid"]: s for s in device_role}
    upload = by_sid["DeviceUploadOwnFrames"]
    assert upload["Action"] == ["s3:PutObject"]
    assert strings(upload["Resource"]) == ["${Bucket.Arn}/${FramesPrefix}/raw/${!credentials-iot:ThingName}/*"]
    s3_actions = {a for s in device_role for a in s["Action"] if a.startswith("s3:")}
    assert s3_actions == {"s3:PutObject", "s3:GetObject", "s3:GetBucketLocation"}
    assert by_sid["DeviceArtifactBucketLocation"]["Resource"] == {"Fn::GetAtt": ["Bucket", "Arn"]}
    assert strings(by_sid["DeviceFetchModelArtifacts"]["Resource"]) == ["${Bucket.Arn}/${ComponentPrefix}/*"]
    iot = {s["Sid"]: s for s in statements(resources["IotPolicy"])}
    assert not {a for s in iot.values() for a in s["Action"] if "Shadow" in a}, "shadows over MQTT topics only"
    assert strings(iot["DevicePublishOwnTopics"]["Resource"]) == [
        "arn:${AWS::Partition}:iot:${AWS::Region}:${AWS::AccountId}:topic/${TopicPrefix}/"
        "${!iot:Connection.Thing.ThingName}/*"]
    # the bucket: encrypted with the product's key, versioned, raw frames expire, nothing public
    bucket = resources["Bucket"]["Properties"]
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "aws:kms", "KMSMasterKeyID": {"Fn::GetAtt": ["Key", "Arn"]}}
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    raw = [r for r in bucket["LifecycleConfiguration"]["Rules"] if r["Id"] == "RawFramesExpire"][0]
    assert strings(raw["Prefix"]) == ["${FramesPrefix}/raw/"]
    deny = {s["Sid"]: s for s in statements(resources["BucketPolicy"])}
    assert deny["BucketDenyPlainHttp"]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_the_pipeline_and_labeling_roles_are_the_repo_policy_files(written):
    """The template grants what the policy files (and their own tests) say, no more."""
    resources = written["template"]["Resources"]
    pipeline_file = json.loads((REPO / "cloud" / "pipeline" / "pipeline_policy.json").read_text())
    in_template = statements(resources["PipelineRolePolicy"])
    assert [s["Sid"] for s in in_template] == ["Pipeline" + s["Sid"] for s in pipeline_file["PipelineRolePolicy"]["Statement"]]
    for ours, theirs in zip(in_template, pipeline_file["PipelineRolePolicy"]["Statement"], strict=True):
        assert ours["Action"] == theirs["Action"]
    # the registry role may only create versions pending approval
    create = next(s for s in in_template if s["Sid"] == "PipelineRoleRegistryVersions")
    assert create["Condition"] == {"StringEquals": {"sagemaker:ModelApprovalStatus": "PendingManualApproval"}}
    gt = json.loads((REPO / "cloud" / "labeling" / "ground_truth_policy.json").read_text())
    labeling = statements(resources["LabelingJobRolePolicy"])
    assert [s["Action"] for s in labeling] == [s["Action"] for s in gt["ExecutionRolePolicy"]["Statement"]]


def test_the_deploy_handlers_cannot_approve_or_reach_other_groups(written):
    resources = written["template"]["Resources"]
    rollback = {a for s in statements(resources["RollbackFunctionRole"]) for a in s["Action"]}
    assert "sagemaker:UpdateModelPackage" in rollback
    for fn in ("PrepareFunction", "DeployFunction", "JudgeFunction"):
        actions = {a for s in statements(resources[f"{fn}Role"]) for a in s["Action"]}
        assert "sagemaker:UpdateModelPackage" not in actions, fn  # only a rollback changes a version's state
    judge = {a for s in statements(resources["JudgeFunctionRole"]) for a in s["Action"]}
    assert not {a for a in judge if a.startswith(("greengrass:", "s3:", "iot:"))}, "the judge only reads messages"
    prepare = {s["Sid"]: s for s in statements(resources["PrepareFunctionRole"])}
    assert prepare["PrepareArtifacts"]["Action"] == ["s3:PutObject"]
    assert strings(prepare["PrepareComponent"]["Resource"]) == [
        "arn:${AWS::Partition}:greengrass:${AWS::Region}:${AWS::AccountId}:components:${ComponentName}",
        "arn:${AWS::Partition}:greengrass:${AWS::Region}:${AWS::AccountId}:components:${ComponentName}:versions:*"]
    assert resources["PrepareFunction"]["Properties"]["EphemeralStorage"] == {"Size": 10240}
    reads = {a for s in statements(resources["RollbackFunctionRole"]) if s["Sid"] == "RollbackRegistryCards"
             for a in s["Action"]}
    assert reads == {"s3:GetObject"}, "the registry reads the card before it marks a version"
    groups = next(s for s in statements(resources["DeployFunctionRole"]) if s["Sid"] == "DeployThingGroups")
    assert [strings(r)[0].rsplit("/", 1)[1] for r in groups["Resource"]] == ["${CanaryThingGroup}", "${FleetThingGroup}"]
    rule = resources["ApprovedModelRule"]["Properties"]
    assert rule["EventPattern"]["detail"] == {"ModelPackageGroupName": [{"Ref": "ModelGroup"}],
                                              "ModelApprovalStatus": ["Approved"],
                                              "ModelPackageStatus": ["Completed"]}
    assert rule["Targets"][0]["Arn"] == {"Ref": "DeployStateMachine"}


def test_the_iot_rule_writes_the_items_the_fleet_store_reads(written):
    """The rule's SQL (with the configured two-level prefix) makes the fields of the item the fleet
    store's tests feed DynamoFleetStore (tests/test_deploy_greengrass.py's iot_rule_item)."""
    resources = written["template"]["Resources"]
    sql = strings(resources["FleetRule"]["Properties"]["TopicRulePayload"]["Sql"])[0]
    assert "FROM '${TopicPrefix}/+/+'" in sql and "topic(3) AS thing_from_topic" in sql and "topic(4) AS kind" in sql
    added = set(re.findall(r" AS (\w+)", sql.replace("AS String", "")))
    outbound = messages.notice("line-1", "model_swapped", "swapped", ModelIdentity(name="m", version="2", sha256="a" * 64))
    item = iot_rule_item("line-1", outbound, 1_700_000_000_000)
    body = json.loads(outbound.body)
    assert added == set(item) - set(body)
    table = resources["FleetMessages"]["Properties"]
    assert [k["AttributeName"] for k in table["KeySchema"]] == ["thing_from_topic", "sk"]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    # a message that carries a field the rule adds is not stored: a device cannot pick its partition
    assert all(f"isUndefined({field})" in sql for field in added)
    for schema in (REPO / "device" / "schemas").glob("*.schema.json"):
        assert not added & property_names(json.loads(schema.read_text())), f"{schema.name} uses a name the rule adds"
    rule = resources["FleetRule"]["Properties"]["TopicRulePayload"]
    assert rule["ErrorAction"]["CloudwatchLogs"]["LogGroupName"] == {"Ref": "FleetRuleErrors"}
    kms = next(s for s in statements(resources["FleetRuleRole"]) if s["Sid"] == "RuleFleetTableKms")
    assert strings(kms["Condition"]["StringEquals"]["kms:ViaService"]) == ["dynamodb.${AWS::Region}.amazonaws.com"]
    assert written["template"]["Parameters"]["TopicPrefix"]["AllowedValues"] == ["factory/edge-inspect"]


def property_names(schema) -> set[str]:
    """Every property name a JSON Schema declares, at any depth."""
    if isinstance(schema, list):
        return set().union(*(property_names(v) for v in schema)) if schema else set()
    if not isinstance(schema, dict):
        return set()
    names = set(schema.get("properties", {})) if isinstance(schema.get("properties"), dict) else set()
    return names.union(*(property_names(v) for v in schema.values()))


def test_the_default_template_builds_without_a_configuration():
    template = build_template(InfraParameters(bucket_name="plant-frames"))
    assert template["Parameters"]["BucketName"]["Default"] == "plant-frames"
    sql = strings(template["Resources"]["FleetRule"]["Properties"]["TopicRulePayload"]["Sql"])[0]
    assert "topic(2) AS thing_from_topic" in sql and "topic(3) AS kind" in sql


def test_frames_cannot_be_overwritten_and_object_lock_is_an_option(written):
    """Issue 21: a device's credentials must not replace a frame already uploaded (labelled frames
    would train on other pixels). The bucket policy refuses a frame put without If-None-Match, the
    bucket is versioned, and S3 Object Lock is a parameter (off by default)."""
    resources = written["template"]["Resources"]
    deny = {s["Sid"]: s for s in statements(resources["BucketPolicy"])}["BucketFramesWriteOnce"]
    assert deny["Effect"] == "Deny" and deny["Principal"] == "*" and deny["Action"] == "s3:PutObject"
    assert strings(deny["Resource"]) == ["${Bucket.Arn}/${FramesPrefix}/raw/*"]
    assert deny["Condition"] == {"Null": {"s3:if-none-match": "true"}, "Bool": {"s3:ObjectCreationOperation": "true"}}
    bucket = resources["Bucket"]["Properties"]
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    lock = bucket["ObjectLockConfiguration"]["Fn::If"]
    assert lock[0] == "ObjectLockOn" and lock[1]["Rule"]["DefaultRetention"] == {
        "Mode": "GOVERNANCE", "Days": {"Ref": "ObjectLockDays"}}
    assert written["parameters"]["ObjectLockDays"] == "0"  # off unless the plant chooses it at the first deploy
    assert written["template"]["Conditions"]["ObjectLockOn"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "ObjectLockDays"}, "0"]}]}


@pytest.mark.parametrize("prefix", ["../x", "edge-inspect/../other", "./x", "a/.hidden"])
def test_a_prefix_that_could_climb_out_of_its_folder_is_refused(prefix):
    with pytest.raises(ValueError, match="component_prefix"):
        InfraParameters(bucket_name="plant-frames", component_prefix=prefix)
    InfraParameters(bucket_name="plant-frames", component_prefix="edge-inspect/components.v2")  # dots inside are fine
