"""The SageMaker Pipeline (cloud/pipeline/sagemaker_pipeline.py), built offline with the real SDK v3
under moto's in-process AWS mock; every AWS call the SDK makes while building is recorded. The
definition is checked step by step; every parameter is changed once and found in the definition;
the jobs' arguments, with the defaults put in, give back the very same `PipelineParams`."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys

import boto3
import botocore.client
import moto
import pytest
from botocore.stub import Stubber
from cloud_helpers import write_cloud_config
from conftest import REPO

from cloud.pipeline.jobs import params_from
from cloud.pipeline.params import PipelineParams
from cloud.pipeline.sagemaker_pipeline import (
    PipelineBusy,
    SageMakerPipelineSettings,
    build_pipeline,
    execution_parameters,
    parameter_specs,
    start_execution,
)

REGION = "eu-west-1"
SETTINGS = SageMakerPipelineSettings(
    role_arn="arn:aws:iam::123456789012:role/edge-inspect-pipeline",
    image_uri="123456789012.dkr.ecr.eu-west-1.amazonaws.com/edge-inspect:1.2.0",
    bucket="plant-ml", config_s3_prefix="s3://plant-ml/config/", photos_s3_uri="s3://plant-ml/photos/",
    training_instance_type="ml.c5.2xlarge", processing_instance_type="ml.m5.large", kms_key_id="alias/edge-inspect")


@pytest.fixture
def aws_calls(monkeypatch):
    """moto's mock for every client the SDK makes, and a record of the calls."""
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(key, value)
    calls: list[str] = []
    original = botocore.client.BaseClient._make_api_call

    def record(self, operation, params):
        calls.append(f"{self.meta.service_model.service_name}:{operation}")
        return original(self, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", record)
    with moto.mock_aws():
        yield calls


def definition(params: PipelineParams | None = None, settings: SageMakerPipelineSettings = SETTINGS) -> dict:
    return json.loads(build_pipeline(settings, params or PipelineParams(), REGION).definition())


def steps_by_name(d: dict) -> dict[str, dict]:
    out = {}
    for step in d["Steps"]:
        out[step["Name"]] = step
        for branch in ("IfSteps", "ElseSteps"):
            for inner in step.get("Arguments", {}).get(branch, []):
                out[inner["Name"]] = inner
    return out


def substitute(value, defaults: dict):
    """Evaluate the definition's parameter references with the given values (Get, Std:Join)."""
    if isinstance(value, dict) and "Get" in value and value["Get"].startswith("Parameters."):
        return str(defaults[value["Get"].removeprefix("Parameters.")])
    if isinstance(value, dict) and "Std:Join" in value:
        join = value["Std:Join"]
        return join["On"].join(substitute(v, defaults) for v in join["Values"])
    return value


def test_the_steps_their_order_and_the_condition(aws_calls):
    d = definition()
    steps = steps_by_name(d)
    assert [s["Name"] for s in d["Steps"]] == ["Preprocess", "Train", "Evaluate", "Gate"]
    assert {n: s["Type"] for n, s in steps.items()} == {
        "Preprocess": "Processing", "Train": "Training", "Evaluate": "Processing", "Gate": "Condition",
        "Register": "Processing", "Refused": "Fail"}
    entry = {n: steps[n]["Arguments"]["AppSpecification"]["ContainerEntrypoint"] for n in ("Preprocess", "Evaluate", "Register")}
    assert entry == {n: ["python", "-m", "cloud.pipeline.jobs", n.lower()] for n in entry}

    train = steps["Train"]["Arguments"]
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in train["InputDataConfig"]}
    assert channels == {name: {"Get": f"Steps.Preprocess.ProcessingOutputConfig.Outputs['{name}'].S3Output.S3Uri"}
                        for name in ("dataset", "production")}
    assert train["CheckpointConfig"]["LocalPath"] == "/opt/ml/checkpoints"
    assert train["ResourceConfig"]["InstanceType"] == {"Get": "Parameters.TrainingInstanceType"}

    evaluate = steps["Evaluate"]
    inputs = {i["InputName"]: i["S3Input"]["S3Uri"] for i in evaluate["Arguments"]["ProcessingInputs"]}
    assert inputs["model"] == {"Get": "Steps.Train.ModelArtifacts.S3ModelArtifacts"}
    assert evaluate["PropertyFiles"] == [{"PropertyFileName": "Evaluation", "OutputName": "evaluation",
                                          "FilePath": "evaluation.json"}]

    gate = steps["Gate"]["Arguments"]
    assert gate["Conditions"] == [{"Type": "Equals", "RightValue": True, "LeftValue": {"Std:JsonGet": {
        "PropertyFile": {"Get": "Steps.Evaluate.PropertyFiles.Evaluation"}, "Path": "gate.passed"}}}]
    assert [s["Name"] for s in gate["IfSteps"]] == ["Register"] and [s["Name"] for s in gate["ElseSteps"]] == ["Refused"]
    register_inputs = {i["InputName"]: i["S3Input"]["S3Uri"] for i in steps["Register"]["Arguments"]["ProcessingInputs"]}
    assert register_inputs["candidate"] == {"Get": "Steps.Evaluate.ProcessingOutputConfig.Outputs['candidate'].S3Output.S3Uri"}
    assert "gate.summary" in json.dumps(steps["Refused"]["Arguments"]["ErrorMessage"])
    # built offline: no IAM, no uploads (the code is in the image), no network beyond the mock
    assert not [c for c in aws_calls if c.startswith(("iam:", "sts:")) or c == "s3:PutObject"], aws_calls


def test_every_parameter_is_declared_and_reaches_every_job(aws_calls):
    d = definition()
    declared = {p["Name"]: p for p in d["Parameters"]}
    specs = parameter_specs(PipelineParams())
    assert set(declared) == {s.name for s in specs} | {"TrainingInstanceType", "ProcessingInstanceType"}
    steps = steps_by_name(d)
    for job in ("Preprocess", "Evaluate"):
        text = json.dumps(steps[job]["Arguments"]["AppSpecification"]["ContainerArguments"])
        assert all(f'"Parameters.{s.name}"' in text for s in specs), job
    hyper = json.dumps(steps["Train"]["Arguments"]["HyperParameters"])
    assert all(f'"Parameters.{s.name}"' in hyper for s in specs)


@pytest.mark.parametrize("path,value", [
    ("model_group", "brass-tags"), ("class_names", ["scratch", "dent"]), ("as_of", 1.7e9), ("production_version", "7"),
    ("split.val_fraction", 0.2), ("split.test_fraction", 0.1), ("split.salt", "plant-2"), ("split.use_base", False),
    ("train.model_yaml", "yolov8s.yaml"), ("train.epochs", 77), ("train.imgsz", 640), ("train.batch", 8),
    ("train.seed", 3), ("train.workers", 4), ("train.select", "last"), ("train.train_on_val", True),
    ("train.from_scratch", True), ("train.hyperparameters", {"lr0": 0.002}), ("gate.floor_map50", 0.9),
    ("gate.floor_map50_95", 0.6), ("gate.floor_recall_at_alert", 0.7), ("gate.tolerance", 0.005),
    ("gate.alert_conf", 0.4), ("gate.forgetting_tolerance", 0.05), ("train.fine_tune.optimizer", "SGD"),
    ("train.fine_tune.lr0", 0.0003), ("train.fine_tune.warmup_epochs", 1.0),
])
def test_changing_any_parameter_changes_the_definition_and_the_jobs_read_it_back(aws_calls, path, value):
    data = PipelineParams().model_dump(mode="json")
    node = data
    *parents, leaf = path.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value
    params = PipelineParams.model_validate(data)
    d = definition(params)
    defaults = {p["Name"]: p["DefaultValue"] for p in d["Parameters"]}
    spec = next(s for s in parameter_specs(params) if s.path == path)
    assert defaults[spec.name] != {s.name: s.default for s in parameter_specs(PipelineParams())}[spec.name]
    # what each job receives, with the defaults put in, is exactly the parameters
    steps = steps_by_name(d)
    for job in ("Preprocess", "Evaluate"):
        args = [substitute(a, defaults) for a in steps[job]["Arguments"]["AppSpecification"]["ContainerArguments"]]
        pairs = [args[i + 1] for i, a in enumerate(args) if a == "--param"]
        assert params_from(pairs) == params, job
    hyper = {k: substitute(v, defaults) for k, v in steps["Train"]["Arguments"]["HyperParameters"].items()}
    assert params_from([f"{k}={v}" for k, v in hyper.items()]) == params


def test_the_settings_are_in_the_definition(aws_calls):
    text = json.dumps(definition())
    for expected in (SETTINGS.role_arn, SETTINGS.image_uri, "ml.c5.2xlarge", "ml.m5.large", "alias/edge-inspect",
                     "s3://plant-ml/config/", "s3://plant-ml/photos/"):
        assert expected in text


def test_start_passes_every_parameter_and_refuses_a_second_run(aws_calls):
    client = boto3.client("sagemaker", region_name=REGION)
    stub = Stubber(client)
    params = PipelineParams.model_validate({"train": {"epochs": 40}, "as_of": 1.7e9})
    stub.add_response("list_pipeline_executions", {"PipelineExecutionSummaries": [
        {"PipelineExecutionArn": "arn:aws:sagemaker:eu-west-1:123456789012:pipeline/p/execution/old",
         "PipelineExecutionStatus": "Succeeded"}]},
        {"PipelineName": SETTINGS.name, "SortBy": "CreationTime", "SortOrder": "Descending", "MaxResults": 20})
    expected = execution_parameters(params)
    assert {"Name": "TrainEpochs", "Value": "40"} in expected and {"Name": "AsOf", "Value": "1700000000.0"} in expected
    new = "arn:aws:sagemaker:eu-west-1:123456789012:pipeline/p/execution/new"
    stub.add_response("start_pipeline_execution", {"PipelineExecutionArn": new},
                      {"PipelineName": SETTINGS.name, "PipelineExecutionDisplayName": "run-1",
                       "PipelineParameters": expected, "ClientRequestToken": hashlib.sha256(b"run-1").hexdigest()})
    stub.add_response("list_pipeline_executions", {"PipelineExecutionSummaries": [
        {"PipelineExecutionArn": "arn:aws:sagemaker:eu-west-1:123456789012:pipeline/p/execution/new",
         "PipelineExecutionStatus": "Executing"}]},
        {"PipelineName": SETTINGS.name, "SortBy": "CreationTime", "SortOrder": "Descending", "MaxResults": 20})
    with stub:
        assert start_execution(client, SETTINGS, params, "run-1").endswith("/execution/new")
        with pytest.raises(PipelineBusy, match="one run at a time"):
            start_execution(client, SETTINGS, params, "run-2")
    stub.assert_no_pending_responses()


def test_cloud_pipeline_definition_prints_the_json_without_aws(tmp_path):
    config = write_cloud_config(
        tmp_path / "cloud.yaml", region=REGION,
        label_store={"backend": "local", "local": {"path": str(tmp_path / "labels")}},
        pipeline={"state_path": str(tmp_path / "runs.sqlite"), "work_dir": str(tmp_path / "runs"),
                  "registry": {"backend": "sagemaker", "sagemaker": {"bucket": "plant-ml"}},
                  "sagemaker": SETTINGS.model_dump(exclude_none=True)})
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "none", "AWS_SECRET_ACCESS_KEY": "none",
           "AWS_EC2_METADATA_DISABLED": "true", "HTTPS_PROXY": "http://127.0.0.1:9"}  # any network use would fail
    done = subprocess.run([sys.executable, "-m", "edge_inspect", "cloud", "--config", str(config), "pipeline", "definition"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [s["Name"] for s in json.loads(done.stdout)["Steps"]] == ["Preprocess", "Train", "Evaluate", "Gate"]


def test_the_pipeline_iam_policies_name_actions_and_resources_and_say_why():
    policy = REPO / "cloud" / "pipeline" / "pipeline_policy.json"
    documents = json.loads(policy.read_text())
    why = json.loads(policy.with_name("pipeline_policy_why.json").read_text())
    listed = lambda value: value if isinstance(value, list) else [value]  # noqa: E731
    statements = {s["Sid"]: s for doc in documents.values() for s in doc["Statement"]}
    assert sum(len(doc["Statement"]) for doc in documents.values()) == len(statements), "Sids are unique"
    assert set(statements) == set(why["statements"]), "every statement has its reason"
    assert set(re.findall(r"\$\{(\w+)\}", policy.read_text())) == set(why["placeholders"])
    assert not [a for s in statements.values() for a in listed(s["Action"]) if "*" in a], "no wildcard action"
    star = {sid for sid, s in statements.items() if "*" in listed(s.get("Resource", []))}
    assert star == {"CallerListVersions", "RoleEcrToken", "RoleJobMetrics", "RoleListVersions"}
    assert all("Resource is *" in why["statements"][sid] for sid in star)
    # the pipeline's role can register but never approve
    role = {a for s in documents["PipelineRolePolicy"]["Statement"] for a in listed(s["Action"])}
    assert "sagemaker:UpdateModelPackage" not in role
    assert statements["RoleRegistryVersions"]["Condition"] == {
        "StringEquals": {"sagemaker:ModelApprovalStatus": "PendingManualApproval"}}
    # what the code calls is allowed: the registry's and the start command's calls
    caller = {a for s in documents["CallerPolicy"]["Statement"] for a in listed(s["Action"])}
    assert {"sagemaker:CreateModelPackage", "sagemaker:UpdateModelPackage", "sagemaker:DescribeModelPackage",
            "sagemaker:ListModelPackages", "sagemaker:DescribeModelPackageGroup", "sagemaker:CreateModelPackageGroup",
            "sagemaker:StartPipelineExecution", "sagemaker:ListPipelineExecutions", "sagemaker:CreatePipeline",
            "s3:PutObject", "s3:GetObject"} <= caller
