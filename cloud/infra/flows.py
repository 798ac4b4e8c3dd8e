"""The flows that run in AWS without the `edge-inspect cloud` process: the Ground Truth labeling
of a batch and the deployment of an approved version, each a Step Functions state machine
(`cloud/labeling/step_functions.py`, `cloud/deploy/step_functions.py`) whose tasks are Lambda
functions running the repo's handlers from the edge-inspect image; and the EventBridge rule that
starts the deployment when a model package of the group becomes Approved.

Each function has its own role, granted only the calls its handler makes, and its own log group
(KMS, retention); the state machines log without execution data (frames' keys, labels and model
metadata stay out of the logs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cloud.deploy.step_functions import DeployMachineSettings, deployment_state_machine_json
from cloud.labeling.step_functions import StateMachineSettings, labeling_state_machine_json

from .ml import FEATURE_STORE_POLICY, GROUND_TRUTH_POLICY, LABELING_ROLE
from .policy import arn, document, from_file, fsub, statement, trust
from .storage import BUCKET, KEY

DEPLOY_MACHINE, LABELING_MACHINE = "DeployStateMachine", "LabelingStateMachine"
APPROVAL_RULE, APPROVAL_RULE_ROLE = "ApprovedModelRule", "ApprovedModelRuleRole"
IMAGE_URI = "${AWS::AccountId}.dkr.ecr.${AWS::Region}.${AWS::URLSuffix}/${ImageRepository}:${ImageTag}"
_LAMBDA_SKIPS = [
    {"id": "CKV_AWS_116", "comment": "no dead-letter queue: the state machine invokes the function synchronously "
                                     "(a DLQ only receives failed asynchronous invocations); a failure reaches "
                                     "the state machine's Catch"},
    {"id": "CKV_AWS_117", "comment": "not in a VPC: the handler calls AWS APIs only, reaches no private resource, "
                                     "and a VPC would need NAT or an interface endpoint per service it calls"},
]


@dataclass(frozen=True)
class Handler:
    logical_id: str  # the function's logical id; its role is `{logical_id}Role`
    name: str  # function name suffix: {stack}-{name}
    entry: str  # the handler, module.function
    statements: tuple[dict[str, Any], ...]
    environment: dict[str, Any]
    memory_mb: int = 1024
    timeout_s: int = 300
    concurrency: int = 2
    ephemeral_mb: int = 512  # Lambda's /tmp


def _log_group(name: Any) -> dict[str, Any]:
    return {"Type": "AWS::Logs::LogGroup", "Properties": {
        "LogGroupName": name, "RetentionInDays": {"Ref": "LogDays"}, "KmsKeyId": {"Fn::GetAtt": [KEY, "Arn"]}}}


def _function_resources(h: Handler) -> dict[str, Any]:
    name = fsub("${AWS::StackName}-" + h.name)
    log_group = f"{h.logical_id}Logs"
    logs = statement(f"{h.logical_id}Logs", ["logs:CreateLogStream", "logs:PutLogEvents"],
                     fsub("${" + log_group + ".Arn}"),
                     "the function writes its own log group only (created here, so it needs no CreateLogGroup).")
    env_key = statement(f"{h.logical_id}Environment", ["kms:Decrypt"], {"Fn::GetAtt": [KEY, "Arn"]},
                        "the function's environment is encrypted with the product's key.")
    return {
        f"{h.logical_id}Role": {"Type": "AWS::IAM::Role", "Properties": {
            "Description": f"edge-inspect handler {h.entry}",
            "AssumeRolePolicyDocument": trust("lambda.amazonaws.com", f"{h.logical_id}Trust",
                                              "only Lambda assumes the role, for this account's function.",
                                              {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}),
            "Policies": [{"PolicyName": "handler", "PolicyDocument": document(logs, env_key, *h.statements)}],
        }},
        log_group: _log_group(fsub("/aws/lambda/${AWS::StackName}-" + h.name)),
        h.logical_id: {"Type": "AWS::Lambda::Function", "Metadata": {"checkov": {"skip": _LAMBDA_SKIPS}},
                       "DependsOn": [log_group], "Properties": {
            "FunctionName": name,
            "Description": f"edge-inspect: {h.entry}",
            "PackageType": "Image",
            "Code": {"ImageUri": fsub(IMAGE_URI)},
            "ImageConfig": {"Command": [h.entry]},
            "Role": {"Fn::GetAtt": [f"{h.logical_id}Role", "Arn"]},
            "MemorySize": h.memory_mb,
            "EphemeralStorage": {"Size": h.ephemeral_mb},
            "Timeout": h.timeout_s,
            "ReservedConcurrentExecutions": h.concurrency,
            "KmsKeyArn": {"Fn::GetAtt": [KEY, "Arn"]},
            "Environment": {"Variables": h.environment},
        }},
    }


# -- labeling ----------------------------------------------------------------------------------

def _labeling_env() -> dict[str, Any]:
    """The handlers' settings, built from this template's resources (cloud/labeling/
    ground_truth_handlers.py reads them), so that they name exactly what the stack made."""
    ground_truth = json.dumps({
        "role_arn": "${" + LABELING_ROLE + ".Arn}",
        "workteam_arn": "arn:${AWS::Partition}:sagemaker:${AWS::Region}:${AWS::AccountId}:workteam/private-crowd/"
                        "${WorkteamName}",
        "manifest_s3_uri": "s3://${" + BUCKET + "}/${LabelingPrefix}",
        "kms_key_id": "${" + KEY + ".Arn}",
        "job_name_prefix": "${JobNamePrefix}",
    })
    label_store = json.dumps({"backend": "feature_store", "feature_store": {
        "feature_group_name": "${FeatureGroup}",
        "role_arn": "${FeatureStoreRole.Arn}",
        "offline_store_s3_uri": "s3://${" + BUCKET + "}/${OfflineStorePrefix}",
        "athena_output_s3_uri": "s3://${" + BUCKET + "}/${AthenaPrefix}",
        "athena_workgroup": "${AthenaWorkGroup}",
        "kms_key_id": "${" + KEY + ".Arn}",
    }})
    return {"EDGE_INSPECT_GROUND_TRUTH": fsub(ground_truth), "EDGE_INSPECT_LABEL_STORE": fsub(label_store)}


def _from_policy_file(path: Any, name: str | None, sids: set[str], names: dict[str, Any], prefix: str) -> tuple:
    doc = from_file(path, name, names, prefix)
    return tuple(s for s in doc["Statement"] if s["Sid"].removeprefix(prefix) in sids)


def labeling_handlers(names: dict[str, Any]) -> list[Handler]:
    """The S3 and KMS statements of the Ground Truth caller policy (what the handlers do of it),
    and for write_labels the label store's put (it appends; it never queries)."""
    s3 = {"CallerWriteBatchInputs", "CallerReadJobOutput", "CallerKms"}
    env = _labeling_env()
    return [
        Handler("WriteAdjustmentManifestFunction", "write-adjustment-manifest",
                "cloud.labeling.ground_truth_handlers.lambda_write_adjustment_manifest",
                _from_policy_file(GROUND_TRUTH_POLICY, "CallerPolicy", {"CallerWriteBatchInputs", "CallerKms"}, names,
                                  "AdjustmentHandler"), env),
        Handler("WriteVerificationManifestFunction", "write-verification-manifest",
                "cloud.labeling.ground_truth_handlers.lambda_write_verification_manifest",
                _from_policy_file(GROUND_TRUTH_POLICY, "CallerPolicy", s3, names, "VerificationHandler"), env),
        Handler("WriteLabelsFunction", "write-labels", "cloud.labeling.ground_truth_handlers.lambda_write_labels",
                _from_policy_file(GROUND_TRUTH_POLICY, "CallerPolicy", {"CallerReadJobOutput", "CallerKms"}, names,
                                  "LabelsHandler")
                + _from_policy_file(FEATURE_STORE_POLICY, None, {"FeatureGroupUse"}, names, "LabelsHandler"), env),
    ]


# -- deployment --------------------------------------------------------------------------------

def _registry_read(sid: str) -> list[dict[str, Any]]:
    return [
        statement(f"{sid}Versions", ["sagemaker:DescribeModelPackage"],
                  fsub(arn("sagemaker", "model-package/${ModelGroup}/*")),
                  "reads the approved version (its card and file URIs) from the model package group."),
        statement(f"{sid}Group", ["sagemaker:DescribeModelPackageGroup"],
                  fsub(arn("sagemaker", "model-package-group/${ModelGroup}")), "the registry resolves its group."),
        statement(f"{sid}List", ["sagemaker:ListModelPackages"], "*",
                  "Resource is *: ListModelPackages supports no resource-level permission (the group is a request "
                  "parameter); the registry lists the group's versions to find the previous production one."),
    ]


def _components(sid: str) -> list[dict[str, Any]]:
    component = arn("greengrass", "components:${ComponentName}")
    return [
        statement(f"{sid}Artifacts", ["s3:PutObject"], fsub("${" + BUCKET + ".Arn}/${ComponentPrefix}/*"),
                  "uploads the shipped ONNX and card under their content address."),
        statement(f"{sid}ArtifactCheck", ["s3:GetObject"], fsub("${" + BUCKET + ".Arn}/${ComponentPrefix}/*"),
                  "an object already at an artifact's content address is reused only once its stored SHA-256 "
                  "(HeadObject, or its bytes read back) is the artifact's: a key is not trusted by its name."),
        statement(f"{sid}ArtifactList", ["s3:ListBucket"], {"Fn::GetAtt": [BUCKET, "Arn"]},
                  "lists the artifact's own key to see whether those bytes are already there; only under the "
                  "component prefix.",
                  condition={"StringLike": {"s3:prefix": [fsub("${ComponentPrefix}/*")]}}),
        statement(f"{sid}Component", ["greengrass:CreateComponentVersion", "greengrass:TagResource",
                                       "greengrass:GetComponent"],
                  [fsub(component), fsub(component + ":versions:*")],
                  "creates com.edgeinspect.Model versions, and only those, tagged with the model's sha256 and "
                  "precision (a tag on create needs TagResource); reads one back when an approval arrives twice."),
    ]


def _thing_groups(sid: str) -> list[dict[str, Any]]:
    groups = [fsub(arn("iot", "thinggroup/${CanaryThingGroup}")), fsub(arn("iot", "thinggroup/${FleetThingGroup}"))]
    return [statement(f"{sid}ThingGroups", ["iot:DescribeThingGroup", "iot:ListThingsInThingGroup"], groups,
                      "reads the canary and fleet groups: their ARNs (deployment targets) and members.")]


def _deployments(sid: str) -> list[dict[str, Any]]:
    return [
        statement(f"{sid}Deployments", ["greengrass:CreateDeployment", "greengrass:ListDeployments"], "*",
                  "Resource is *: CreateDeployment and ListDeployments support no resource-level permission (the "
                  "target is a thing group ARN in the request); the IoT statements below bound what a deployment "
                  "can reach (the two thing groups)."),
        statement(f"{sid}ReadDeployment", ["greengrass:GetDeployment"], fsub(arn("greengrass", "deployments:*")),
                  "reads a group's current deployment to keep its other components; deployment ids are made by "
                  "Greengrass, hence deployments:*."),
        statement(f"{sid}DeploymentJobs", ["iot:CreateJob", "iot:DescribeJob", "iot:UpdateJob", "iot:CancelJob"],
                  [fsub(arn("iot", "job/*")), fsub(arn("iot", "thinggroup/${CanaryThingGroup}")),
                   fsub(arn("iot", "thinggroup/${FleetThingGroup}"))],
                  "a Greengrass deployment to a thing group is an IoT job (the calls CreateDeployment makes on the "
                  "caller's behalf); job ids are made by Greengrass, hence job/*, and the targets are our groups only."),
        statement(f"{sid}DeploymentShadows", ["iot:DescribeThing", "iot:GetThingShadow", "iot:UpdateThingShadow",
                                              "iot:DeleteThingShadow"], fsub(arn("iot", "thing/*")),
                  "CreateDeployment's dependent actions on the target group's core devices, whose names are not "
                  "known when the stack is made (devices join the groups later)."),
    ]


def deploy_handlers() -> list[Handler]:
    env = {"EDGE_INSPECT_CLOUD_CONFIG": "/var/task/cloud.yaml"}  # baked into the image with the handlers
    fleet_read = statement("JudgeFleetRead", ["dynamodb:Query"], {"Fn::GetAtt": ["FleetMessages", "Arn"]},
                           "reads the devices' messages (model, notices, errors, events) per thing.")
    fleet_kms = statement("JudgeFleetKms", ["kms:Decrypt"], {"Fn::GetAtt": [KEY, "Arn"]},
                          "the fleet table is encrypted with the product's key.")
    mark = statement("RollbackMarkVersion", ["sagemaker:UpdateModelPackage"],
                     fsub(arn("sagemaker", "model-package/${ModelGroup}/*")),
                     "a rolled-back version is marked Rejected, with the reason, in the registry.")
    registry_files = statement("PrepareRegistryFiles", ["s3:GetObject"],
                               fsub("${" + BUCKET + ".Arn}/${RegistryPrefix}/${ModelGroup}/*"),
                               "downloads the approved version's ONNX, card and checkpoint.")
    kms = statement("PrepareKms", ["kms:Decrypt", "kms:GenerateDataKey"], {"Fn::GetAtt": [KEY, "Arn"]},
                    "registry files are read and artifacts written with SSE-KMS.")
    rollback_cards = statement("RollbackRegistryCards", ["s3:GetObject"],
                               fsub("${" + BUCKET + ".Arn}/${RegistryPrefix}/${ModelGroup}/*"),
                               "the registry reads a version's card before it marks the version Rejected.")
    rollback_kms = statement("RollbackKms", ["kms:Decrypt"], {"Fn::GetAtt": [KEY, "Arn"]},
                             "registry cards are SSE-KMS with the product's key.")
    return [
        # quantizing under the fidelity gate runs several INT8 candidates over every labelled photo
        # the version's files, the INT8 candidates and the labelled photos live in /tmp: 10 GiB
        Handler("PrepareFunction", "deploy-prepare", "cloud.deploy.handlers.lambda_prepare",
                (*_registry_read("Prepare"), registry_files, kms, *_components("Prepare")), env,
                memory_mb=6144, timeout_s=900, concurrency=1, ephemeral_mb=10240),
        Handler("DeployFunction", "deploy-stage", "cloud.deploy.handlers.lambda_deploy",
                (*_thing_groups("Deploy"), *_deployments("Deploy")), env),
        # the judge reads only the messages of the things the deployment names (StageDeployment.things)
        Handler("JudgeFunction", "deploy-judge", "cloud.deploy.handlers.lambda_judge", (fleet_read, fleet_kms), env),
        Handler("RollbackFunction", "deploy-rollback", "cloud.deploy.handlers.lambda_rollback",
                (*_thing_groups("Rollback"), *_deployments("Rollback"), *_registry_read("Rollback"), rollback_cards,
                 rollback_kms, mark), env),
    ]


# -- state machines ----------------------------------------------------------------------------

def _machine_extras(sid: str) -> list[dict[str, Any]]:
    return [
        statement(f"{sid}LogDelivery", ["logs:CreateLogDelivery", "logs:GetLogDelivery", "logs:UpdateLogDelivery",
                                        "logs:DeleteLogDelivery", "logs:ListLogDeliveries", "logs:PutResourcePolicy",
                                        "logs:DescribeResourcePolicies", "logs:DescribeLogGroups"], "*",
                  "Resource is *: Step Functions' log delivery calls support no resource-level permission (AWS "
                  "documents this policy for a state machine that logs to CloudWatch Logs)."),
        statement(f"{sid}Tracing", ["xray:PutTraceSegments", "xray:PutTelemetryRecords", "xray:GetSamplingRules",
                                    "xray:GetSamplingTargets"], "*",
                  "Resource is *: X-Ray's trace calls support no resource-level permission."),
    ]


def _machine(definition: str, substitutions: dict[str, Any], role: str, log_group: str) -> dict[str, Any]:
    return {"Type": "AWS::StepFunctions::StateMachine", "Properties": {
        "StateMachineType": "STANDARD",
        "DefinitionString": definition,
        "DefinitionSubstitutions": substitutions,
        "RoleArn": {"Fn::GetAtt": [role, "Arn"]},
        "LoggingConfiguration": {"Level": "ERROR", "IncludeExecutionData": False,
                                 "Destinations": [{"CloudWatchLogsLogGroup": {
                                     "LogGroupArn": {"Fn::GetAtt": [log_group, "Arn"]}}}]},
        "TracingConfiguration": {"Enabled": True},
    }}


def _placeholders(fields: list[str]) -> dict[str, str]:
    return {f: "${" + "".join(p.capitalize() for p in f.split("_")) + "}" for f in fields}


def labeling_machine(names: dict[str, Any]) -> dict[str, Any]:
    fields = ["write_adjustment_manifest_function", "write_verification_manifest_function", "write_labels_function"]
    placeholders = _placeholders(fields)
    definition = labeling_state_machine_json(StateMachineSettings.model_construct(**placeholders))
    functions = ["WriteAdjustmentManifestFunction", "WriteVerificationManifestFunction", "WriteLabelsFunction"]
    role_doc = from_file(GROUND_TRUTH_POLICY, "StateMachineRolePolicy", names, "Labeling")
    role_doc["Statement"] += _machine_extras("LabelingMachine")
    return {
        "LabelingStateMachineRole": {"Type": "AWS::IAM::Role", "Properties": {
            "Description": "edge-inspect labeling state machine",
            "AssumeRolePolicyDocument": trust("states.amazonaws.com", "LabelingMachineTrust",
                                              "only Step Functions assumes the role, for this account.",
                                              {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}),
            "Policies": [{"PolicyName": "labeling", "PolicyDocument": role_doc}]}},
        "LabelingStateMachineLogs": _log_group(fsub("/aws/vendedlogs/states/${AWS::StackName}-labeling")),
        LABELING_MACHINE: _machine(definition, {placeholders[f][2:-1]: {"Fn::GetAtt": [fn, "Arn"]}
                                                for f, fn in zip(fields, functions, strict=True)},
                                   "LabelingStateMachineRole", "LabelingStateMachineLogs"),
    }


def deploy_machine(poll_seconds: int) -> dict[str, Any]:
    fields = ["prepare_function", "deploy_function", "judge_function", "rollback_function"]
    placeholders = _placeholders(fields)
    definition = deployment_state_machine_json(
        DeployMachineSettings.model_construct(**placeholders, poll_seconds=poll_seconds))
    functions = ["PrepareFunction", "DeployFunction", "JudgeFunction", "RollbackFunction"]
    invoke = statement("DeployMachineInvoke", ["lambda:InvokeFunction"],
                       [{"Fn::GetAtt": [fn, "Arn"]} for fn in functions],
                       "runs the four deployment handlers, and nothing else.")
    return {
        "DeployStateMachineRole": {"Type": "AWS::IAM::Role", "Properties": {
            "Description": "edge-inspect deployment state machine",
            "AssumeRolePolicyDocument": trust("states.amazonaws.com", "DeployMachineTrust",
                                              "only Step Functions assumes the role, for this account.",
                                              {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}),
            "Policies": [{"PolicyName": "deploy", "PolicyDocument": document(invoke, *_machine_extras("DeployMachine"))}]}},
        "DeployStateMachineLogs": _log_group(fsub("/aws/vendedlogs/states/${AWS::StackName}-deploy")),
        DEPLOY_MACHINE: _machine(definition, {placeholders[f][2:-1]: {"Fn::GetAtt": [fn, "Arn"]}
                                              for f, fn in zip(fields, functions, strict=True)},
                                 "DeployStateMachineRole", "DeployStateMachineLogs"),
    }


def approval_rule() -> dict[str, Any]:
    start = statement("ApprovalStartDeployment", ["states:StartExecution"], {"Ref": DEPLOY_MACHINE},
                      "the rule starts the deployment state machine, and only it.")
    return {
        APPROVAL_RULE_ROLE: {"Type": "AWS::IAM::Role", "Properties": {
            "Description": "edge-inspect: EventBridge starts a deployment on approval",
            "AssumeRolePolicyDocument": trust("events.amazonaws.com", "ApprovalRuleTrust",
                                              "only EventBridge assumes the role, for this account.",
                                              {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}),
            "Policies": [{"PolicyName": "start-deployment", "PolicyDocument": document(start)}]}},
        APPROVAL_RULE: {"Type": "AWS::Events::Rule", "Properties": {
            "Description": "edge-inspect: a model package of the group becomes Approved -> deploy it",
            "State": "ENABLED",
            "EventPattern": {"source": ["aws.sagemaker"], "detail-type": ["SageMaker Model Package State Change"],
                             "detail": {"ModelPackageGroupName": [{"Ref": "ModelGroup"}],
                                        "ModelApprovalStatus": ["Approved"],
                                        # not the events of a package still being made
                                        "ModelPackageStatus": ["Completed"]}},
            # the whole event is the execution's input (cloud/deploy/step_functions.py)
            "Targets": [{"Id": "deploy", "Arn": {"Ref": DEPLOY_MACHINE},
                         "RoleArn": {"Fn::GetAtt": [APPROVAL_RULE_ROLE, "Arn"]},
                         "RetryPolicy": {"MaximumRetryAttempts": 24, "MaximumEventAgeInSeconds": 86400}}],
        }},
    }


def resources(names: dict[str, Any], poll_seconds: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for handler in [*labeling_handlers(names), *deploy_handlers()]:
        out.update(_function_resources(handler))
    return {**out, **labeling_machine(names), **deploy_machine(poll_seconds), **approval_rule()}
