"""The Ground Truth labeling of one batch as an AWS Step Functions state machine (Amazon States
Language), for running the labeling in AWS without the `edge-inspect cloud` process polling:

    WriteAdjustmentManifest  Lambda: ground_truth_handlers.lambda_write_adjustment_manifest
    AdjustmentJob            sagemaker:createLabelingJob.sync (waits for the job to end)
    WriteVerificationManifest Lambda: ground_truth_handlers.lambda_write_verification_manifest
    VerificationJob          sagemaker:createLabelingJob.sync
    WriteLabels              Lambda: ground_truth_handlers.lambda_write_labels
    LabelingFailed           Fail, with the failing step's error and cause

The execution input is `{"batch": <Batch as JSON>}`. Each Lambda returns the next job's complete
CreateLabelingJob request, which the job state passes on field by field (`REQUEST_FIELDS`), so the
request is built in one place: `GroundTruthLabeling.create_request`.

Retries: Lambda's transient errors (the set the Step Functions console adds to a Lambda task), and
SageMaker's ResourceLimitExceeded (too many jobs running: the job was not created, so trying again
later is safe). Not SageMaker's generic AmazonSageMakerException: a `.sync` task also fails with it
when the job itself fails, and a retry would create the job again, fail on the taken name and hide
the job's real failure reason behind ResourceInUse.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

_LAMBDA_ARN = r"^arn:aws[a-z\-]*:lambda:[a-z0-9\-]+:\d{12}:function:[A-Za-z0-9_\-]{1,64}(:[A-Za-z0-9_$\-]{1,128})?$"
# The top-level fields of a CreateLabelingJob request as GroundTruthLabeling.create_request builds
# them; each is copied from the Lambda's result into the job state's Parameters.
REQUEST_FIELDS = ("LabelingJobName", "LabelAttributeName", "InputConfig", "OutputConfig", "RoleArn",
                  "LabelCategoryConfigS3Uri", "HumanTaskConfig", "Tags")
CREATE_LABELING_JOB_SYNC = "arn:aws:states:::sagemaker:createLabelingJob.sync"
LAMBDA_INVOKE = "arn:aws:states:::lambda:invoke"
FAILED = "LabelingFailed"

LAMBDA_RETRY = {
    "ErrorEquals": ["Lambda.ServiceException", "Lambda.AWSLambdaException", "Lambda.SdkClientException",
                    "Lambda.TooManyRequestsException"],
    "IntervalSeconds": 2, "MaxAttempts": 6, "BackoffRate": 2.0,
}
SAGEMAKER_RETRY = {
    "ErrorEquals": ["SageMaker.ResourceLimitExceededException"],
    "IntervalSeconds": 60, "MaxAttempts": 60, "BackoffRate": 1.0,  # up to an hour for a running job to end
}
CATCH = [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.failure", "Next": FAILED}]


class StateMachineSettings(BaseModel):
    """The deployed Lambda functions, each running one handler of ground_truth_handlers.py."""

    model_config = ConfigDict(extra="forbid")

    write_adjustment_manifest_function: str = Field(pattern=_LAMBDA_ARN,
                                                    description="handler: ground_truth_handlers.lambda_write_adjustment_manifest")
    write_verification_manifest_function: str = Field(pattern=_LAMBDA_ARN,
                                                      description="handler: ground_truth_handlers.lambda_write_verification_manifest")
    write_labels_function: str = Field(pattern=_LAMBDA_ARN, description="handler: ground_truth_handlers.lambda_write_labels")


def _lambda_state(function_arn: str, payload: dict[str, str], result_path: str, next_state: str | None) -> dict[str, Any]:
    state: dict[str, Any] = {
        "Type": "Task",
        "Resource": LAMBDA_INVOKE,
        "Parameters": {"FunctionName": function_arn, "Payload": payload},
        "ResultSelector": {"result.$": "$.Payload"},  # drop lambda:invoke's envelope (status code, headers)
        "ResultPath": result_path,
        "Retry": [LAMBDA_RETRY],
        "Catch": CATCH,
    }
    return {**state, "Next": next_state} if next_state else {**state, "End": True}


def _job_state(request_path: str, result_path: str, next_state: str) -> dict[str, Any]:
    return {
        "Type": "Task",
        "Resource": CREATE_LABELING_JOB_SYNC,
        "Parameters": {f"{field}.$": f"{request_path}.{field}" for field in REQUEST_FIELDS},
        # .sync returns DescribeLabelingJob's response once the job has completed; keep what the
        # next step needs (a Failed or Stopped job fails the state instead, to the Catch)
        "ResultSelector": {"name.$": "$.LabelingJobName", "output.$": "$.LabelingJobOutput.OutputDatasetS3Uri"},
        "ResultPath": result_path,
        "Retry": [SAGEMAKER_RETRY],
        "Catch": CATCH,
        "Next": next_state,
    }


def labeling_state_machine(settings: StateMachineSettings) -> dict[str, Any]:
    """The Amazon States Language definition, as a dict (`json.dumps` it for CreateStateMachine)."""
    adjusted = {"batch.$": "$.batch", "adjustment_job.$": "$.adjustment_job.name", "adjustment_output.$": "$.adjustment_job.output"}
    verified = {**adjusted, "verification_job.$": "$.verification_job.name", "verification_output.$": "$.verification_job.output"}
    return {
        "Comment": "edge-inspect: one batch through a Ground Truth adjustment job, then a verification job, into label rows",
        "StartAt": "WriteAdjustmentManifest",
        "States": {
            "WriteAdjustmentManifest": _lambda_state(settings.write_adjustment_manifest_function, {"batch.$": "$.batch"},
                                                     "$.adjustment", "AdjustmentJob"),
            "AdjustmentJob": _job_state("$.adjustment.result.request", "$.adjustment_job", "WriteVerificationManifest"),
            "WriteVerificationManifest": _lambda_state(settings.write_verification_manifest_function, adjusted,
                                                       "$.verification", "VerificationJob"),
            "VerificationJob": _job_state("$.verification.result.request", "$.verification_job", "WriteLabels"),
            "WriteLabels": _lambda_state(settings.write_labels_function, verified, "$.labels", None),
            FAILED: {"Type": "Fail", "ErrorPath": "$.failure.Error", "CausePath": "$.failure.Cause",
                     "Comment": "a step failed after its retries: its error and message (the Lambda's exception or the job's reason)"},
        },
    }


def labeling_state_machine_json(settings: StateMachineSettings) -> str:
    return json.dumps(labeling_state_machine(settings), indent=2)
