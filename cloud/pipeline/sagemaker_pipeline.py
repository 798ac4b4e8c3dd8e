"""The retraining pipeline on AWS, built with the SageMaker Python SDK v3 (`sagemaker.mlops.workflow`):

    Preprocess (processing) -> Train (training) -> Evaluate (processing, PropertyFile evaluation.json)
      -> Gate (condition: evaluation.json `gate.passed`)
           true:  Register (processing: the registry's register, PendingManualApproval)
           false: Refused (fail, with the gate's reasons)

Every step runs `python -m cloud.pipeline.jobs STEP` in the edge-inspect image, so the code is
the image's, not uploaded at build time (the definition is the same on every build), and the steps
are the same functions `cloud train` runs on site. The gate's rule is `cloud.pipeline.gate.decide`
in the evaluate job, not a second copy in the condition: the condition only reads its verdict.
Registering with the registry's own code (not a ModelStep) gives a version the same files,
content-addressed keys and card on AWS as on site, and needs no inference container.

Parameters: every field of `PipelineParams` becomes one pipeline parameter (`TrainEpochs`,
`GateFloorMap50`, ...), passed to every job, plus the instance types. `parameter_specs` is the one
mapping; the tests change each one and find it in the definition.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cloud.aws import AwsError, aws_call
from cloud.pipeline.params import PipelineParams

JOBS = ["python", "-m", "cloud.pipeline.jobs"]
PROCESSING = "/opt/ml/processing"


class SageMakerPipelineSettings(BaseModel):
    """`pipeline.sagemaker` in cloud.yaml."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("edge-inspect-retraining", pattern=r"^[A-Za-z0-9](-*[A-Za-z0-9]){0,255}$")
    role_arn: str = Field(pattern=r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+$",
                          description="the role the jobs run as (see pipeline_policy.json)")
    image_uri: str = Field(pattern=r"^\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/[a-z0-9._/-]+(:[\w.-]+|@sha256:[0-9a-f]{64})$",
                           description="the edge-inspect image (ECR), with the train extra")
    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$", description="for datasets, checkpoints, outputs")
    prefix: str = Field("edge-inspect/pipeline", pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
    config_s3_prefix: str = Field(pattern=r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]/([A-Za-z0-9_.-]+/)*$",
                                  description="the S3 folder (ending in /) holding cloud.yaml for the jobs: label "
                                              "store, storage and a sagemaker registry")
    photos_s3_uri: str | None = Field(None, pattern=r"^s3://", description="photos that label rows name by path")
    training_instance_type: str = Field("ml.m5.xlarge", pattern=r"^ml\.[a-z0-9]+\.[a-z0-9]+$")
    processing_instance_type: str = Field("ml.m5.xlarge", pattern=r"^ml\.[a-z0-9]+\.[a-z0-9]+$")
    volume_size_gb: int = Field(30, ge=1, le=16384)
    max_runtime_s: int = Field(24 * 3600, ge=60, le=28 * 24 * 3600)
    kms_key_id: str | None = Field(None, description="KMS key for volumes and outputs")


@dataclass(frozen=True)
class ParameterSpec:
    name: str  # the pipeline parameter, e.g. TrainEpochs
    path: str  # the PipelineParams field, e.g. train.epochs
    kind: str  # Integer | Float | String
    default: Any


def _camel(path: str) -> str:
    return "".join(part.capitalize() for piece in path.split(".") for part in piece.split("_"))


def _leaves(model: BaseModel, prefix: str = "") -> list[tuple[str, Any, Any]]:
    out = []
    for name in type(model).model_fields:
        value = getattr(model, name)
        path = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            out += _leaves(value, path + ".")
        else:
            out.append((path, type(model).model_fields[name].annotation, value))
    return out


def parameter_specs(params: PipelineParams) -> list[ParameterSpec]:
    """One parameter per PipelineParams field, its default the configured value. Integers and
    floats keep their type; everything else is a string (JSON for lists, maps, booleans and none)."""
    specs = []
    for path, annotation, value in _leaves(params):
        if annotation is int:
            specs.append(ParameterSpec(_camel(path), path, "Integer", value))
        elif annotation is float:
            specs.append(ParameterSpec(_camel(path), path, "Float", value))
        elif isinstance(value, str):  # str and Literal[...] fields: the bare text
            specs.append(ParameterSpec(_camel(path), path, "String", value))
        else:
            specs.append(ParameterSpec(_camel(path), path, "String", json.dumps(value)))
    return specs


def _parameter(spec: ParameterSpec):
    from sagemaker.core.workflow.parameters import ParameterFloat, ParameterInteger, ParameterString

    kind = {"Integer": ParameterInteger, "Float": ParameterFloat, "String": ParameterString}[spec.kind]
    return kind(name=spec.name, default_value=spec.default)


def _session(region: str):
    import boto3
    from sagemaker.core.workflow.pipeline_context import PipelineSession

    # telemetry off: plants' networks and our tests have no business calling home
    config = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}
    return PipelineSession(boto_session=boto3.Session(region_name=region), sagemaker_config=config)


def build_pipeline(settings: SageMakerPipelineSettings, params: PipelineParams, region: str):
    """The `Pipeline` object (its `.definition()` is the JSON; `.upsert(role_arn)` creates it)."""
    os.environ.setdefault("AWS_DEFAULT_REGION", region)  # the SDK makes a client at import time
    # ModelTrainer would ask IAM to simulate the role's policy while building: the definition must
    # build offline, and SageMaker checks the role when the pipeline runs anyway
    os.environ.setdefault("SAGEMAKER_VALIDATE_ROLE", "false")
    from sagemaker.core.processing import Processor
    from sagemaker.core.shapes import ProcessingInput, ProcessingOutput, ProcessingS3Input, ProcessingS3Output
    from sagemaker.core.workflow.conditions import ConditionEquals
    from sagemaker.core.workflow.execution_variables import ExecutionVariables
    from sagemaker.core.workflow.functions import Join, JsonGet
    from sagemaker.core.workflow.parameters import ParameterString
    from sagemaker.core.workflow.properties import PropertyFile
    from sagemaker.mlops.workflow.condition_step import ConditionStep
    from sagemaker.mlops.workflow.fail_step import FailStep
    from sagemaker.mlops.workflow.pipeline import Pipeline
    from sagemaker.mlops.workflow.steps import ProcessingStep, TrainingStep
    from sagemaker.train import ModelTrainer
    from sagemaker.train.configs import CheckpointConfig, Compute, InputData, OutputDataConfig, StoppingCondition

    session = _session(region)
    specs = parameter_specs(params)
    values = {spec.path: _parameter(spec) for spec in specs}
    training_type = ParameterString(name="TrainingInstanceType", default_value=settings.training_instance_type)
    processing_type = ParameterString(name="ProcessingInstanceType", default_value=settings.processing_instance_type)
    run_root = f"s3://{settings.bucket}/{settings.prefix}"
    execution = ExecutionVariables.PIPELINE_EXECUTION_ID

    def where(*parts) -> Join:
        return Join(on="/", values=[run_root, execution, *parts])

    param_args = [a for spec in specs for a in ("--param", Join(on="=", values=[spec.path, values[spec.path].to_string()]))]

    def processor(step: str) -> Processor:
        return Processor(role=settings.role_arn, image_uri=settings.image_uri, entrypoint=[*JOBS, step],
                         instance_count=1, instance_type=processing_type, volume_size_in_gb=settings.volume_size_gb,
                         volume_kms_key=settings.kms_key_id, output_kms_key=settings.kms_key_id,
                         max_runtime_in_seconds=settings.max_runtime_s, base_job_name=f"edge-inspect-{step}",
                         sagemaker_session=session, env={"EDGE_INSPECT_CODE_VERSION": settings.image_uri})

    def s3_in(name: str, uri, local: str) -> ProcessingInput:
        return ProcessingInput(input_name=name, s3_input=ProcessingS3Input(
            s3_uri=uri, local_path=f"{PROCESSING}/input/{local}", s3_data_type="S3Prefix", s3_input_mode="File"))

    def s3_out(name: str, local: str) -> ProcessingOutput:
        return ProcessingOutput(output_name=name, s3_output=ProcessingS3Output(
            s3_uri=where(name), local_path=f"{PROCESSING}/output/{local}", s3_upload_mode="EndOfJob"))

    config_in = s3_in("config", settings.config_s3_prefix, "config")
    inputs = [config_in] + ([s3_in("photos", settings.photos_s3_uri, "photos")] if settings.photos_s3_uri else [])
    preprocess = ProcessingStep(name="Preprocess", step_args=processor("preprocess").run(
        inputs=inputs, outputs=[s3_out("dataset", "dataset"), s3_out("production", "production")],
        arguments=param_args))

    def output_of(step, name: str):
        return step.properties.ProcessingOutputConfig.Outputs[name].S3Output.S3Uri

    trainer = ModelTrainer(
        training_image=settings.image_uri, role=settings.role_arn, sagemaker_session=session,
        base_job_name="edge-inspect-train",
        compute=Compute(instance_type=training_type, instance_count=1, volume_size_in_gb=settings.volume_size_gb,
                        volume_kms_key_id=settings.kms_key_id),
        stopping_condition=StoppingCondition(max_runtime_in_seconds=settings.max_runtime_s),
        hyperparameters={spec.path: values[spec.path].to_string() for spec in specs},
        input_data_config=[InputData(channel_name="dataset", data_source=output_of(preprocess, "dataset")),
                           InputData(channel_name="production", data_source=output_of(preprocess, "production"))],
        output_data_config=OutputDataConfig(s3_output_path=where("model"), kms_key_id=settings.kms_key_id),
        # SageMaker syncs /opt/ml/checkpoints: a retried or restarted job resumes from the last epoch
        checkpoint_config=CheckpointConfig(s3_uri=where("checkpoints"), local_path="/opt/ml/checkpoints"),
        environment={"EDGE_INSPECT_CODE_VERSION": settings.image_uri})
    train = TrainingStep(name="Train", step_args=trainer.train())

    report = PropertyFile(name="Evaluation", output_name="evaluation", path="evaluation.json")
    evaluate = ProcessingStep(name="Evaluate", property_files=[report], step_args=processor("evaluate").run(
        inputs=[s3_in("model", train.properties.ModelArtifacts.S3ModelArtifacts, "model"),
                s3_in("dataset", output_of(preprocess, "dataset"), "dataset"),
                s3_in("production", output_of(preprocess, "production"), "production")],
        outputs=[s3_out("evaluation", "evaluation"), s3_out("candidate", "candidate")],
        arguments=[*param_args, "--run-id", execution]))

    register = ProcessingStep(name="Register", step_args=processor("register").run(
        inputs=[config_in, s3_in("candidate", output_of(evaluate, "candidate"), "candidate")], arguments=[]))
    refused = FailStep(name="Refused", error_message=Join(on=" ", values=[
        "the candidate did not pass the gate:", JsonGet(step_name=evaluate.name, property_file=report,
                                                        json_path="gate.summary")]))
    gate = ConditionStep(
        name="Gate", conditions=[ConditionEquals(
            left=JsonGet(step_name=evaluate.name, property_file=report, json_path="gate.passed"), right=True)],
        if_steps=[register], else_steps=[refused])

    return Pipeline(name=settings.name, parameters=[training_type, processing_type, *values.values()],
                    steps=[preprocess, train, evaluate, gate], sagemaker_session=session)


def execution_parameters(params: PipelineParams) -> list[dict[str, str]]:
    """`start_pipeline_execution`'s PipelineParameters for these values (all of them, so an
    execution never falls back to a default that differs from what the operator configured)."""
    return [{"Name": spec.name, "Value": str(spec.default)} for spec in parameter_specs(params)]


class PipelineAwsError(AwsError, RuntimeError):
    """A SageMaker Pipelines call failed; says which and AWS's reason."""


class PipelineBusy(RuntimeError):
    """An execution is still running: one run at a time, as on site."""


def start_execution(client, settings: SageMakerPipelineSettings, params: PipelineParams, run_name: str) -> str:
    running = aws_call(client, "list_pipeline_executions", PipelineAwsError, PipelineName=settings.name,
                       SortBy="CreationTime", SortOrder="Descending", MaxResults=20)
    busy = [e["PipelineExecutionArn"] for e in running.get("PipelineExecutionSummaries", [])
            if e.get("PipelineExecutionStatus") in ("Executing", "Stopping")]
    if busy:
        raise PipelineBusy(f"{settings.name} is already running ({busy[0]}); one run at a time")
    started = aws_call(client, "start_pipeline_execution", PipelineAwsError, PipelineName=settings.name,
                       PipelineExecutionDisplayName=run_name, PipelineParameters=execution_parameters(params),
                       ClientRequestToken=hashlib.sha256(run_name.encode()).hexdigest())  # 32-128 characters
    return started["PipelineExecutionArn"]
