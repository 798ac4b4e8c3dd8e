"""The Lambda handlers of the Ground Truth state machine (`step_functions.py`).

Each step is a plain function from a typed payload to a typed result, doing what
`GroundTruthLabeling` does for `submit`/`collect` by calling the same methods: the state machine is
another driver of the same steps, not a second implementation.

    write_adjustment_manifest   Batch -> the adjustment job's CreateLabelingJob request
    write_verification_manifest the adjustment job's output -> the verification job's request
    write_labels                both outputs -> answers -> `write_answers(batch, answers)`

Lambda calls `lambda_*` (event, context): they validate the event into the payload, build the
backend once per container from the environment, and return the result as JSON-ready data:

- `EDGE_INSPECT_GROUND_TRUTH`: the `labeling.ground_truth` settings as JSON (no secret in them:
  the function's own role gives the credentials);
- `EDGE_INSPECT_LABEL_STORE`: the `label_store` settings as JSON (on AWS, `feature_store`): where
  `write_labels` appends the rows, through the shared `cloud.labeling.rows.write_answers`.

An exception fails the Lambda task; the state machine's Catch sends its message to the Fail state.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cloud.labeling.ground_truth import JOB_NAME, GroundTruthLabeling, GroundTruthSettings
from cloud.labeling.service import Answer, Batch, LabelingError

WriteAnswers = Callable[[Batch, list[Answer]], Any]
SETTINGS_ENV = "EDGE_INSPECT_GROUND_TRUTH"
LABEL_STORE_ENV = "EDGE_INSPECT_LABEL_STORE"
_S3_URI = r"^s3://[^/]+/.+$"


class Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BatchInput(Payload):
    """The state machine's input: the batch to label."""

    batch: Batch


class JobRequest(Payload):
    """A CreateLabelingJob request, its inputs already in S3; the next state passes its fields on."""

    job_name: str = Field(pattern=JOB_NAME.pattern)
    request: dict[str, Any]


class AdjustmentDone(Payload):
    batch: Batch
    adjustment_job: str = Field(pattern=JOB_NAME.pattern)
    adjustment_output: str = Field(pattern=_S3_URI, description="LabelingJobOutput.OutputDatasetS3Uri")


class VerificationDone(AdjustmentDone):
    verification_job: str = Field(pattern=JOB_NAME.pattern)
    verification_output: str = Field(pattern=_S3_URI)


class LabelsWritten(Payload):
    batch_id: str
    answers: int = Field(description="frames with an answer")
    approved: int = Field(description="of which the verification job approved")


def write_adjustment_manifest(payload: BatchInput, labeling: GroundTruthLabeling) -> JobRequest:
    request = labeling.prepare_adjustment(payload.batch)
    return JobRequest(job_name=request["LabelingJobName"], request=request)


def write_verification_manifest(payload: AdjustmentDone, labeling: GroundTruthLabeling) -> JobRequest:
    request = labeling.prepare_verification(payload.batch, payload.adjustment_output)
    return JobRequest(job_name=request["LabelingJobName"], request=request)


def write_labels(payload: VerificationDone, labeling: GroundTruthLabeling, write_answers: WriteAnswers) -> LabelsWritten:
    answers = labeling.read_answers(payload.batch, payload.adjustment_job, payload.adjustment_output,
                                    payload.verification_output)
    write_answers(payload.batch, answers)
    return LabelsWritten(batch_id=payload.batch.batch_id, answers=len(answers), approved=sum(a.approved for a in answers))


# -- Lambda entry points --------------------------------------------------------------------------


@cache
def labeling_from_environment() -> GroundTruthLabeling:
    """The backend for this Lambda container: settings from the environment, clients from the
    function's role and region. Built once: containers are reused across invocations."""
    import boto3

    raw = os.environ.get(SETTINGS_ENV)
    if not raw:
        raise LabelingError(f"{SETTINGS_ENV} is not set: the labeling.ground_truth settings, as JSON")
    return GroundTruthLabeling.from_session(GroundTruthSettings.model_validate_json(raw), boto3.Session())


@cache
def write_answers_from_environment() -> WriteAnswers:
    """Answers -> rows in the label store named by the environment (cloud.labeling.rows)."""
    from cloud.labeling.rows import write_answers
    from cloud.labels.store import open_label_store
    from cloud.settings import LabelStoreSettings

    raw = os.environ.get(LABEL_STORE_ENV)
    if not raw:
        raise LabelingError(f"{LABEL_STORE_ENV} is not set: the label_store settings, as JSON")
    store = open_label_store(LabelStoreSettings.model_validate_json(raw), os.environ.get("AWS_REGION"))
    return lambda batch, answers: write_answers(store, batch, answers)


def lambda_write_adjustment_manifest(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    return write_adjustment_manifest(BatchInput.model_validate(event), labeling_from_environment()).model_dump(mode="json")


def lambda_write_verification_manifest(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    return write_verification_manifest(AdjustmentDone.model_validate(event), labeling_from_environment()).model_dump(mode="json")


def lambda_write_labels(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    return write_labels(VerificationDone.model_validate(event), labeling_from_environment(),
                        write_answers_from_environment()).model_dump(mode="json")
