"""The Ground Truth labeling backend (cloud/labeling/ground_truth.py), its Lambda handlers and its
Step Functions state machine.

- SageMaker: a real boto3 client for eu-west-1 under botocore's `Stubber`: every request passes
  botocore's own parameter validation and is compared with `expected_params`, every response is one
  SageMaker could send; each CreateLabelingJob request is also checked against the model's patterns
  and lengths (which botocore does not check). Nothing reaches AWS (fake credentials).
- S3: moto's server on loopback (a real HTTP endpoint): what the backend writes is read back.
- Output manifests: written in the format of AWS's documented examples
  (https://docs.aws.amazon.com/sagemaker/latest/dg/sms-data-output.html).
- The state machine: the real `asl-validator` (npm, in .tools/: scripts/node-tools.sh installs it).
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import boto3
import botocore.session
import pytest
from botocore.config import Config
from botocore.stub import Stubber

from cloud.labeling import ground_truth_handlers as handlers
from cloud.labeling.ground_truth import (
    BUILTIN_LAMBDA_ACCOUNTS,
    VERIFY_OK,
    VERIFY_WRONG,
    GroundTruthLabeling,
    GroundTruthSettings,
    builtin_lambdas,
    job_names,
    parse_box_manifest,
    parse_creation_date,
    parse_verification_manifest,
)
from cloud.labeling.service import Answer, Batch, Box, LabelingError, Progress, Task
from cloud.labeling.step_functions import REQUEST_FIELDS, StateMachineSettings, labeling_state_machine
from cloud.labels.local import LocalLabelStore

REPO = Path(__file__).resolve().parent.parent
ASL_VALIDATOR = REPO / ".tools" / "node_modules" / ".bin" / "asl-validator"
POLICY = REPO / "cloud" / "labeling" / "ground_truth_policy.json"
REGION = "eu-west-1"
SECRET = "fakeSecretThatMustNeverBeInAMessage"
CREDENTIALS = {"aws_access_key_id": "AKIAFAKEFAKEFAKEFAKE", "aws_secret_access_key": SECRET}
WORKTEAM = "arn:aws:sagemaker:eu-west-1:123456789012:workteam/private-crowd/factory-team"
ROLE = "arn:aws:iam::123456789012:role/edge-inspect-ground-truth"
FRAMES = "plant-frames"
BATCH_ID = "20251122-080000-0123456789ab"
ADJUST, VERIFY = f"edge-inspect-{BATCH_ID}-adjust", f"edge-inspect-{BATCH_ID}-verify"
SHA_A, SHA_B = "a" * 64, "b" * 64
# frame keys name the frame's sha256 (the raw layout): a label row's source_ref references it
KEY_A, KEY_B = (f"edge-inspect/raw/tags/cam1/2025/11/22/{sha}.jpg" for sha in (SHA_A, SHA_B))
CREATED = datetime(2025, 11, 22, 8, 0, tzinfo=timezone.utc).timestamp()


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def make_batch(**changes) -> Batch:
    a = Task(sha256=SHA_A, bucket=FRAMES, key=KEY_A, thing="tags", camera="cam1", width=640, height=480,
             prelabels=[Box(class_name="scratch", left=10.4, top=20.6, width=100.2, height=50.5, score=0.91),
                        Box(class_name="dent", left=300, top=200, width=40, height=30, score=0.42)])
    b = Task(sha256=SHA_B, bucket=FRAMES, key=KEY_B, thing="tags", camera="cam1", width=640, height=480)
    return Batch(**{"batch_id": BATCH_ID, "line": "tags", "created": CREATED, "classes": ["scratch", "dent"], "tasks": [a, b],
                    **changes})


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
def aws(moto):
    """A backend on a stubbed SageMaker client and moto's S3, in a fresh bucket; every queued
    SageMaker response must have been used by the end of the test."""
    bucket = f"gt-{uuid.uuid4().hex[:12]}"
    s3 = moto.client()
    s3.create_bucket(Bucket=bucket)
    sagemaker = boto3.client("sagemaker", region_name=REGION, **CREDENTIALS)
    stub = Stubber(sagemaker)
    stub.activate()
    settings = GroundTruthSettings(role_arn=ROLE, workteam_arn=WORKTEAM, manifest_s3_uri=f"s3://{bucket}/labeling",
                                   tags={"project": "edge-inspect"})
    labeling = GroundTruthLabeling(settings, sagemaker, s3)

    def read(key: str) -> str:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()

    def write(key: str, text: str) -> str:
        s3.put_object(Bucket=bucket, Key=key, Body=text.encode())
        return f"s3://{bucket}/{key}"

    yield SimpleNamespace(labeling=labeling, stub=stub, bucket=bucket, s3=s3, read=read, write=write, settings=settings)
    stub.assert_no_pending_responses()
    stub.deactivate()


# -- what the requests must be (written out, not computed by the code under test) -----------------


def adjustment_request(bucket: str) -> dict:
    return {
        "LabelingJobName": ADJUST,
        "LabelAttributeName": "edge-inspect-adjusted",
        "InputConfig": {"DataSource": {"S3DataSource": {
            "ManifestS3Uri": f"s3://{bucket}/labeling/batches/{BATCH_ID}/adjustment.manifest"}}},
        "OutputConfig": {"S3OutputPath": f"s3://{bucket}/labeling/output/"},
        "RoleArn": ROLE,
        "LabelCategoryConfigS3Uri": f"s3://{bucket}/labeling/batches/{BATCH_ID}/classes.json",
        "HumanTaskConfig": {
            "WorkteamArn": WORKTEAM,
            "UiConfig": {"UiTemplateS3Uri": f"s3://{bucket}/labeling/batches/{BATCH_ID}/adjustment.liquid"},
            "PreHumanTaskLambdaArn": "arn:aws:lambda:eu-west-1:568282634449:function:PRE-AdjustmentBoundingBox",
            "TaskKeywords": ["Images", "Bounding Box", "Defects", "Adjustment"],
            "TaskTitle": "Adjust defect boxes: line tags",
            "TaskDescription": "Correct the inspection model's boxes on each frame",
            "NumberOfHumanWorkersPerDataObject": 1,
            "TaskTimeLimitInSeconds": 600,
            "TaskAvailabilityLifetimeInSeconds": 259200,
            "MaxConcurrentTaskCount": 1000,
            "AnnotationConsolidationConfig": {
                "AnnotationConsolidationLambdaArn": "arn:aws:lambda:eu-west-1:568282634449:function:ACS-AdjustmentBoundingBox"},
        },
        "Tags": [{"Key": "project", "Value": "edge-inspect"}, {"Key": "edge-inspect:batch", "Value": BATCH_ID}],
    }


def verification_request(bucket: str) -> dict:
    request = adjustment_request(bucket)
    request.update({
        "LabelingJobName": VERIFY,
        "LabelAttributeName": "edge-inspect-verified",
        "InputConfig": {"DataSource": {"S3DataSource": {
            "ManifestS3Uri": f"s3://{bucket}/labeling/batches/{BATCH_ID}/verification.manifest"}}},
        "LabelCategoryConfigS3Uri": f"s3://{bucket}/labeling/batches/{BATCH_ID}/verification-categories.json",
    })
    request["HumanTaskConfig"] = {
        **request["HumanTaskConfig"],
        "UiConfig": {"UiTemplateS3Uri": f"s3://{bucket}/labeling/batches/{BATCH_ID}/verification.liquid"},
        "PreHumanTaskLambdaArn": "arn:aws:lambda:eu-west-1:568282634449:function:PRE-VerificationBoundingBox",
        "TaskKeywords": ["Images", "Bounding Box", "Defects", "Verification"],
        "TaskTitle": "Verify defect boxes: line tags",
        "TaskDescription": "Check the corrected boxes on each frame",
        "AnnotationConsolidationConfig": {
            "AnnotationConsolidationLambdaArn": "arn:aws:lambda:eu-west-1:568282634449:function:ACS-VerificationBoundingBox"},
    }
    return request


SAGEMAKER_MODEL = botocore.session.get_session().get_service_model("sagemaker")


def check_against_model(shape, value, where: str = "") -> list[str]:
    """What botocore's validator leaves out: patterns and maximum lengths of the service model."""
    errors = []
    if shape.type_name == "structure":
        errors += [f"{where}.{k}: not in the model" for k in value if k not in shape.members]
        for name, member in shape.members.items():
            if name in value:
                errors += check_against_model(member, value[name], f"{where}.{name}")
    elif shape.type_name == "list":
        if not shape.metadata.get("min", 0) <= len(value) <= shape.metadata.get("max", 10**9):
            errors.append(f"{where}: {len(value)} items")
        for n, item in enumerate(value):
            errors += check_against_model(shape.member, item, f"{where}[{n}]")
    elif shape.type_name == "string":
        pattern = shape.metadata.get("pattern")
        if pattern:
            pattern = pattern.replace(r"\p{L}\p{Z}\p{N}", r"\w\s")  # Java's Unicode classes, near enough
            if not re.fullmatch(pattern, value):
                errors.append(f"{where}: {value!r} does not match {pattern}")
        if not shape.metadata.get("min", 0) <= len(value) <= shape.metadata.get("max", 10**9):
            errors.append(f"{where}: {len(value)} characters")
    elif shape.type_name == "integer":
        if not shape.metadata.get("min", -(10**18)) <= value <= shape.metadata.get("max", 10**18):
            errors.append(f"{where}: {value} out of range")
    return errors


def expect_create(aws, request: dict) -> None:
    assert check_against_model(SAGEMAKER_MODEL.operation_model("CreateLabelingJob").input_shape, request) == []
    aws.stub.add_response("create_labeling_job", {"LabelingJobArn": arn(request["LabelingJobName"])}, request)


def arn(job: str) -> str:
    return f"arn:aws:sagemaker:{REGION}:123456789012:labeling-job/{job}"


def described(request: dict, status: str, output: str | None = None, failure: str | None = None) -> dict:
    """A describe_labeling_job response for the job `request` created."""
    response = {
        "LabelingJobStatus": status, "LabelCounters": {"TotalLabeled": 1, "HumanLabeled": 1, "Unlabeled": 1},
        "CreationTime": datetime(2025, 11, 22, 8, 1, tzinfo=timezone.utc),
        "LastModifiedTime": datetime(2025, 11, 22, 9, 30, tzinfo=timezone.utc),
        "JobReferenceCode": "abcdef0123", "LabelingJobArn": arn(request["LabelingJobName"]),
        **{k: request[k] for k in ("LabelingJobName", "LabelAttributeName", "InputConfig", "OutputConfig", "RoleArn",
                                   "LabelCategoryConfigS3Uri", "HumanTaskConfig")},
    }
    if output:
        response["LabelingJobOutput"] = {"OutputDatasetS3Uri": output}
    if failure:
        response["FailureReason"] = failure
    return response


def expect_describe(aws, job: str, response: dict | None) -> None:
    if response is None:
        aws.stub.add_client_error("describe_labeling_job", service_error_code="ResourceNotFound",
                                  service_message=f"Could not find labeling job {arn(job)}", http_status_code=400,
                                  expected_params={"LabelingJobName": job})
    else:
        aws.stub.add_response("describe_labeling_job", response, {"LabelingJobName": job})


# -- output manifests in the documented format ------------------------------------------------------


def prelabel_fields() -> dict:
    """Frame A's input manifest fields, as the adjustment job's output keeps them."""
    return {
        "source-ref": f"s3://{FRAMES}/{KEY_A}",
        "edge-inspect-prelabels": {"image_size": [{"width": 640, "height": 480, "depth": 3}],
                                   "annotations": [{"class_id": 0, "left": 10, "top": 21, "width": 100, "height": 50},
                                                   {"class_id": 1, "left": 300, "top": 200, "width": 40, "height": 30}]},
        "edge-inspect-prelabels-metadata": {"objects": [{"confidence": 0.91}, {"confidence": 0.42}],
                                            "class-map": {"0": "scratch", "1": "dent"}, "type": "groundtruth/object-detection",
                                            "human-annotated": "no", "creation-date": "2025-11-22T08:00:00.000000",
                                            "job-name": "edge-inspect-model"},
    }


def adjusted_line_a() -> dict:
    """Frame A after adjustment: the scratch moved, the dent deleted, a second scratch added."""
    return {**prelabel_fields(),
            "edge-inspect-adjusted": {"image_size": [{"width": 640, "height": 480, "depth": 3}],
                                      "annotations": [{"class_id": 0, "left": 12, "top": 22, "width": 98, "height": 49},
                                                      {"class_id": 0, "left": 500, "top": 400, "width": 60, "height": 20}]},
            "edge-inspect-adjusted-metadata": {"objects": [{"confidence": 0}, {"confidence": 0}],
                                               "class-map": {"0": "scratch"}, "type": "groundtruth/object-detection",
                                               "human-annotated": "yes", "creation-date": "2025-11-22T09:15:02.123456",
                                               "job-name": f"labeling-job/{ADJUST}", "adjustment-status": "adjusted"}}


def expired_line_b() -> dict:
    return {"source-ref": f"s3://{FRAMES}/{KEY_B}",
            "edge-inspect-prelabels": {"image_size": [{"width": 640, "height": 480, "depth": 3}], "annotations": []},
            "edge-inspect-prelabels-metadata": {"objects": [], "class-map": {"0": "scratch", "1": "dent"},
                                                "type": "groundtruth/object-detection", "human-annotated": "no",
                                                "creation-date": "2025-11-22T08:00:00.000000", "job-name": "edge-inspect-model"},
            "edge-inspect-adjusted-metadata": {"failure-reason": "ClientError: The task expired before a worker answered it",
                                               "job-name": f"labeling-job/{ADJUST}", "creation-date": "2025-11-25T08:01:00.000000"}}


def verified_line_a(category: str, index: str) -> dict:
    return {**adjusted_line_a(),
            "edge-inspect-verified": index,
            "edge-inspect-verified-metadata": {"class-name": category, "confidence": 0, "type": "groundtruth/label-verification",
                                               "job-name": f"labeling-job/{VERIFY}", "human-annotated": "yes",
                                               "creation-date": "2025-11-22T10:40:00.500000"}}


def jsonl(*lines: dict | str) -> str:
    return "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)


# -- submit -----------------------------------------------------------------------------------------


def test_submit_describes_then_creates_the_adjustment_job_with_the_private_team_and_region_lambdas(aws):
    expect_describe(aws, ADJUST, None)
    expect_create(aws, adjustment_request(aws.bucket))
    ref = aws.labeling.submit(make_batch())
    assert json.loads(ref) == {"adjustment": ADJUST, "verification": VERIFY}

    # the input manifest: one line per frame, the model's boxes as Ground Truth's bounding-box output
    lines = [json.loads(line) for line in aws.read(f"labeling/batches/{BATCH_ID}/adjustment.manifest").splitlines()]
    assert lines[0] == prelabel_fields()
    assert lines[1]["source-ref"] == f"s3://{FRAMES}/{KEY_B}"
    assert lines[1]["edge-inspect-prelabels"] == {"image_size": [{"width": 640, "height": 480, "depth": 3}], "annotations": []}
    assert json.loads(aws.read(f"labeling/batches/{BATCH_ID}/classes.json")) == {
        "document-version": "2018-11-28", "labels": [{"label": "scratch"}, {"label": "dent"}]}
    template = aws.read(f"labeling/batches/{BATCH_ID}/adjustment.liquid")
    assert "{% for box in task.input.manifestLine.edge-inspect-prelabels.annotations %}" in template
    assert "task.input.manifestLine.edge-inspect-prelabels-metadata.class-map[class_id]" in template
    # the pre-labels parse back as the boxes the model drew (rounded to whole pixels)
    parsed = parse_box_manifest(aws.read(f"labeling/batches/{BATCH_ID}/adjustment.manifest"), "edge-inspect-prelabels")
    assert parsed.problems == [] and [b.class_name for b in parsed.labels[0].boxes] == ["scratch", "dent"]
    assert parsed.labels[0].created == CREATED and not parsed.labels[0].human_annotated


def test_a_second_submit_finds_the_job_and_creates_nothing(aws):
    expect_describe(aws, ADJUST, None)
    expect_create(aws, adjustment_request(aws.bucket))
    first = aws.labeling.submit(make_batch())
    expect_describe(aws, ADJUST, described(adjustment_request(aws.bucket), "InProgress"))
    assert aws.labeling.submit(make_batch()) == first  # no create_labeling_job queued: calling it would fail the stub


def test_a_job_created_by_a_racing_process_counts_as_ours(aws):
    expect_describe(aws, ADJUST, None)
    aws.stub.add_client_error("create_labeling_job", service_error_code="ResourceInUse", http_status_code=400,
                              service_message=f"Job {ADJUST} already exists", expected_params=adjustment_request(aws.bucket))
    assert json.loads(aws.labeling.submit(make_batch()))["adjustment"] == ADJUST


def test_a_job_name_taken_by_another_job_is_refused(aws):
    other = adjustment_request(aws.bucket)
    other["InputConfig"] = {"DataSource": {"S3DataSource": {"ManifestS3Uri": "s3://someone-else/their.manifest"}}}
    expect_describe(aws, ADJUST, described(other, "InProgress"))
    with pytest.raises(LabelingError, match=f"labeling job {ADJUST} exists but reads 's3://someone-else/their.manifest'"):
        aws.labeling.submit(make_batch())


def test_pre_labels_of_a_class_the_batch_does_not_have_are_refused_before_any_job(aws):
    batch = make_batch(classes=["scratch"])
    expect_describe(aws, ADJUST, None)
    with pytest.raises(LabelingError, match="pre-label class 'dent' is not one of"):
        aws.labeling.submit(batch)


# -- collect ----------------------------------------------------------------------------------------


def adjustment_output_key() -> str:
    return f"labeling/output/{ADJUST}/manifests/output/output.manifest"


def verification_output_key() -> str:
    return f"labeling/output/{VERIFY}/manifests/output/output.manifest"


def submitted(aws) -> str:
    expect_describe(aws, ADJUST, None)
    expect_create(aws, adjustment_request(aws.bucket))
    return aws.labeling.submit(make_batch())


def test_collect_chains_the_verification_job_and_answers_with_the_adjusted_approved_boxes(aws, caplog):
    ref = submitted(aws)
    batch = make_batch()
    adjust, verify = adjustment_request(aws.bucket), verification_request(aws.bucket)

    expect_describe(aws, ADJUST, described(adjust, "InProgress"))
    assert aws.labeling.collect(batch, ref) == Progress()

    # the adjustment job is done: frame A adjusted, frame B expired, and one line we cannot read
    output = aws.write(adjustment_output_key(), jsonl(adjusted_line_a(), expired_line_b(), "{not json"))
    expect_describe(aws, ADJUST, described(adjust, "Completed", output))
    expect_describe(aws, VERIFY, None)
    expect_create(aws, verify)
    with caplog.at_level(logging.WARNING, logger="cloud.labeling.ground_truth"):
        assert aws.labeling.collect(batch, ref) == Progress()
    assert f"{output} line 3 set aside: not JSON" in caplog.text
    # only the labeled frame is verified, its line exactly as Ground Truth wrote it
    assert [json.loads(line) for line in aws.read(f"labeling/batches/{BATCH_ID}/verification.manifest").splitlines()] == \
        [adjusted_line_a()]
    assert json.loads(aws.read(f"labeling/batches/{BATCH_ID}/verification-categories.json"))["labels"] == \
        [{"label": VERIFY_OK}, {"label": VERIFY_WRONG}]
    assert "task.input.manifestLine.edge-inspect-adjusted.annotations" in aws.read(f"labeling/batches/{BATCH_ID}/verification.liquid")

    expect_describe(aws, ADJUST, described(adjust, "Completed", output))
    expect_describe(aws, VERIFY, described(verify, "InProgress"))
    assert aws.labeling.collect(batch, ref) == Progress()

    verified = aws.write(verification_output_key(), jsonl(verified_line_a(VERIFY_OK, "0")))
    expect_describe(aws, ADJUST, described(adjust, "Completed", output))
    expect_describe(aws, VERIFY, described(verify, "Completed", verified))
    progress = aws.labeling.collect(batch, ref)
    assert progress == Progress(finished=True, answers=[Answer(
        sha256=SHA_A, approved=True, labeler="ground_truth:factory-team", job=ADJUST,
        answered_at=utc("2025-11-22T10:40:00.500000"),  # when the verifier said so
        boxes=[Box(class_name="scratch", left=12, top=22, width=98, height=49),
               Box(class_name="scratch", left=500, top=400, width=60, height=20)])])


def test_boxes_the_verification_job_rejects_are_answered_but_not_approved(aws):
    ref = submitted(aws)
    output = aws.write(adjustment_output_key(), jsonl(adjusted_line_a(), expired_line_b()))
    verified = aws.write(verification_output_key(), jsonl(verified_line_a(VERIFY_WRONG, "1")))
    expect_describe(aws, ADJUST, described(adjustment_request(aws.bucket), "Completed", output))
    expect_describe(aws, VERIFY, described(verification_request(aws.bucket), "Completed", verified))
    progress = aws.labeling.collect(make_batch(), ref)
    assert progress.finished and [(a.sha256, a.approved, len(a.boxes)) for a in progress.answers] == [(SHA_A, False, 2)]


def test_boxes_measured_on_another_image_size_are_scaled_and_an_unverified_frame_stays_pending(aws):
    line = adjusted_line_a()
    line["edge-inspect-adjusted"]["image_size"] = [{"width": 1280, "height": 960, "depth": 3}]  # twice the frame's size
    output = aws.write(adjustment_output_key(), jsonl(line))
    expired = {**adjusted_line_a(), "edge-inspect-verified-metadata": {"failure-reason": "expired", "job-name": VERIFY}}
    verified = aws.write(verification_output_key(), jsonl(expired))
    [answer] = aws.labeling.read_answers(make_batch(), ADJUST, output, verified)
    assert answer.boxes == [Box(class_name="scratch", left=6, top=11, width=49, height=24.5),
                            Box(class_name="scratch", left=250, top=200, width=30, height=10)]
    assert not answer.approved and answer.answered_at == utc("2025-11-22T09:15:02.123456")  # the adjustment's time


@pytest.mark.parametrize("status", ["Failed", "Stopped"])
def test_a_failed_or_stopped_adjustment_job_finishes_the_batch_with_its_reason(aws, status):
    ref = submitted(aws)
    expect_describe(aws, ADJUST, described(adjustment_request(aws.bucket), status,
                                           failure="ClientError: Access Denied to s3://plant-frames/edge-inspect/raw"))
    assert aws.labeling.collect(make_batch(), ref) == Progress(
        finished=True, failure=f"labeling job {ADJUST} {status}: ClientError: Access Denied to s3://plant-frames/edge-inspect/raw")


def test_a_failed_verification_job_finishes_the_batch_with_its_reason(aws):
    ref = submitted(aws)
    output = aws.write(adjustment_output_key(), jsonl(adjusted_line_a()))
    expect_describe(aws, ADJUST, described(adjustment_request(aws.bucket), "Completed", output))
    expect_describe(aws, VERIFY, described(verification_request(aws.bucket), "Failed", failure="Internal error"))
    assert aws.labeling.collect(make_batch(), ref) == Progress(finished=True, failure=f"labeling job {VERIFY} Failed: Internal error")


def test_an_adjustment_that_labeled_nothing_finishes_the_batch_without_a_verification_job(aws):
    ref = submitted(aws)
    output = aws.write(adjustment_output_key(), jsonl(expired_line_b()))
    expect_describe(aws, ADJUST, described(adjustment_request(aws.bucket), "Completed", output))
    expect_describe(aws, VERIFY, None)  # and no create_labeling_job
    progress = aws.labeling.collect(make_batch(), ref)
    assert progress.finished and progress.answers == []
    assert progress.failure == (f"adjustment of batch {BATCH_ID} labeled none of its 2 frames: "
                                "ClientError: The task expired before a worker answered it")


def test_collect_refuses_a_reference_it_did_not_make(aws):
    with pytest.raises(LabelingError, match="not a Ground Truth reference"):
        aws.labeling.collect(make_batch(), '{"submitted": 1}')


def test_an_oversized_output_manifest_is_refused_unread(aws):
    ref = submitted(aws)
    aws.labeling.settings = aws.settings.model_copy(update={"max_manifest_bytes": 1024})
    output = aws.write(adjustment_output_key(), jsonl(*[adjusted_line_a()] * 3))
    expect_describe(aws, ADJUST, described(adjustment_request(aws.bucket), "Completed", output))
    expect_describe(aws, VERIFY, None)
    with pytest.raises(LabelingError, match="more than max_manifest_bytes"):
        aws.labeling.collect(make_batch(), ref)


# -- errors -----------------------------------------------------------------------------------------


def test_a_client_error_becomes_a_labeling_error_naming_the_call_without_credentials(aws):
    expect_describe(aws, ADJUST, None)
    aws.stub.add_client_error("create_labeling_job", service_error_code="AccessDeniedException", http_status_code=400,
                              service_message="User is not authorized to perform: sagemaker:CreateLabelingJob")
    with pytest.raises(LabelingError) as error:
        aws.labeling.submit(make_batch())
    assert str(error.value) == ("sagemaker.create_labeling_job failed: AccessDeniedException: "
                                "User is not authorized to perform: sagemaker:CreateLabelingJob")
    assert SECRET not in str(error.value) and CREDENTIALS["aws_access_key_id"] not in str(error.value)


def test_botocore_own_errors_become_labeling_errors_too(moto):
    # an unstubbed SageMaker client on a closed local port, tried once: nothing can reach AWS
    sagemaker = boto3.client("sagemaker", region_name=REGION, endpoint_url="http://127.0.0.1:9",
                             config=Config(retries={"total_max_attempts": 1}), **CREDENTIALS)
    settings = GroundTruthSettings(role_arn=ROLE, workteam_arn=WORKTEAM, manifest_s3_uri="s3://nowhere-bucket/labeling")
    with pytest.raises(LabelingError, match="sagemaker.describe_labeling_job failed: EndpointConnectionError") as error:
        GroundTruthLabeling(settings, sagemaker, moto.client()).submit(make_batch())
    assert SECRET not in str(error.value)


# -- settings, regions and names --------------------------------------------------------------------

SETTINGS = {"role_arn": ROLE, "workteam_arn": WORKTEAM, "manifest_s3_uri": "s3://edge-inspect-labeling/gt"}


@pytest.mark.parametrize("kind", ["public-crowd", "vendor-crowd"])
def test_a_public_or_vendor_workforce_is_refused_naming_the_key(kind):
    workteam = f"arn:aws:sagemaker:eu-west-1:394669845002:workteam/{kind}/default"
    with pytest.raises(ValueError, match=rf"workteam_arn\n.*a {kind} work team is refused: these are factory images"):
        GroundTruthSettings(**{**SETTINGS, "workteam_arn": workteam})
    with pytest.raises(ValueError, match="extra"):  # and there is no switch to allow it
        GroundTruthSettings(**{**SETTINGS, "workteam_arn": workteam, "allow_public_workforce": True})


@pytest.mark.parametrize("change", [
    {"role_arn": "arn:aws:iam::123:role/x"}, {"manifest_s3_uri": "https://bucket/x"}, {"manifest_s3_uri": "s3://bucket"},
    {"manifest_s3_uri": "s3://bucket/x/"}, {"workteam_arn": "private-crowd/factory-team"}, {"task_time_limit_s": 28_801},
    {"task_availability_s": 59}, {"workers_per_object": 10}, {"max_concurrent_tasks": 0}, {"job_name_prefix": "Edge_Inspect"},
    {"label_attribute_prefix": "x-ref-"}, {"tags": {"aws:owner": "me"}}, {"tags": {"team": "a|b"}}, {"unknown": 1}])
def test_settings_refuse_what_aws_would_naming_the_key(change):
    with pytest.raises(ValueError, match=next(iter(change))):
        GroundTruthSettings(**{**SETTINGS, **change})


def test_the_region_table_is_the_documented_one():
    """The account map against the ARN lists of botocore's copy of the API reference: every region
    listed there for the four Lambdas we use, with the same account."""
    docs = " ".join(SAGEMAKER_MODEL.shape_for(shape).members[member].documentation for shape, member in
                    (("HumanTaskConfig", "PreHumanTaskLambdaArn"), ("AnnotationConsolidationConfig", "AnnotationConsolidationLambdaArn")))
    listed = set(re.findall(r"arn:aws:lambda:([a-z0-9-]+):(\d{12}):function:((?:PRE|ACS)-(?:Adjustment|Verification)BoundingBox)\b", docs))
    assert {(region, account) for region, account, _ in listed} == set(BUILTIN_LAMBDA_ACCOUNTS.items())
    for region in BUILTIN_LAMBDA_ACCOUNTS:
        lambdas = builtin_lambdas(region)
        for arn_ in lambdas.model_dump().values():
            region_, account, name = re.match(r"arn:aws:lambda:([a-z0-9-]+):(\d{12}):function:(.+)$", arn_).groups()
            assert (region_, account, name) in listed


def test_a_region_without_built_in_lambdas_is_refused_by_name():
    with pytest.raises(LabelingError, match="no built-in bounding-box Lambdas listed for region 'eu-south-2'"):
        builtin_lambdas("eu-south-2")
    sagemaker = boto3.client("sagemaker", region_name="eu-south-2", **CREDENTIALS)
    settings = GroundTruthSettings(**{**SETTINGS, "workteam_arn": WORKTEAM.replace("eu-west-1", "eu-south-2")})
    with pytest.raises(LabelingError, match="eu-south-2"):
        GroundTruthLabeling(settings, sagemaker, None)


def test_a_work_team_of_another_region_is_refused():
    sagemaker = boto3.client("sagemaker", region_name="us-east-1", **CREDENTIALS)
    with pytest.raises(LabelingError, match="the work team is in eu-west-1 but SageMaker calls go to us-east-1"):
        GroundTruthLabeling(GroundTruthSettings(**SETTINGS), sagemaker, None)


def test_from_session_builds_sagemaker_and_s3_clients_in_the_session_region():
    labeling = GroundTruthLabeling.from_session(GroundTruthSettings(**SETTINGS), boto3.Session(region_name=REGION, **CREDENTIALS))
    assert [c.meta.service_model.service_name for c in (labeling.sagemaker, labeling.s3)] == ["sagemaker", "s3"]
    assert labeling.sagemaker.meta.region_name == REGION and labeling.name == "ground_truth"


@pytest.mark.parametrize("batch_id", [BATCH_ID, "a", "x" * 63, "a--b-", "20251122-080000-" + "f" * 47])
def test_job_names_are_valid_ground_truth_names_one_pair_per_batch(batch_id):
    names = job_names("edge-inspect", batch_id)
    for name in (names.adjustment, names.verification):
        assert re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", name), name
    assert names.adjustment.endswith("-adjust") and names.verification.endswith("-verify")
    assert job_names("edge-inspect", batch_id) == names
    assert job_names("edge-inspect", batch_id + "0").adjustment != names.adjustment


# -- the manifest parser, on AWS's documented examples ---------------------------------------------

# https://docs.aws.amazon.com/sagemaker/latest/dg/sms-data-output.html, "Bounding Box Job Output"
DOCUMENTED_BOX = {
    "source-ref": "s3://AWSDOC-EXAMPLE-BUCKET/example_image.png",
    "bounding-box": {"image_size": [{"width": 500, "height": 400, "depth": 3}],
                     "annotations": [{"class_id": 0, "left": 111, "top": 134, "width": 61, "height": 128},
                                     {"class_id": 5, "left": 161, "top": 250, "width": 30, "height": 30},
                                     {"class_id": 5, "left": 20, "top": 20, "width": 30, "height": 30}]},
    "bounding-box-metadata": {"objects": [{"confidence": 0.8}, {"confidence": 0.9}, {"confidence": 0.9}],
                              "class-map": {"0": "dog", "5": "bone"}, "type": "groundtruth/object-detection",
                              "human-annotated": "yes", "creation-date": "2018-10-18T22:18:13.527256",
                              "job-name": "identify-dogs-and-toys"},
}
# the same page: the output of a bounding box adjustment job (the original label kept beside it)
DOCUMENTED_ADJUSTED = {
    **DOCUMENTED_BOX,
    "adjusted-bounding-box": {"image_size": [{"width": 500, "height": 400, "depth": 3}],
                              "annotations": [{"class_id": 0, "left": 110, "top": 135, "width": 61, "height": 128},
                                              {"class_id": 5, "left": 161, "top": 250, "width": 30, "height": 30},
                                              {"class_id": 5, "left": 10, "top": 10, "width": 30, "height": 30}]},
    "adjusted-bounding-box-metadata": {"objects": [{"confidence": 0.8}, {"confidence": 0.9}, {"confidence": 0.9}],
                                       "class-map": {"0": "dog", "5": "bone"}, "type": "groundtruth/object-detection",
                                       "human-annotated": "yes", "creation-date": "2018-11-20T22:18:13.527256",
                                       "job-name": "adjust-bounding-boxes-on-dogs-and-toys", "adjustment-status": "adjusted"},
}
# the same page, "Label Verification Job Output"
DOCUMENTED_VERIFIED = {
    **DOCUMENTED_BOX,
    "verify-bounding-box": "1",
    "verify-bounding-box-metadata": {"class-name": "bad", "confidence": 0.93, "type": "groundtruth/label-verification",
                                     "job-name": "verify-bounding-boxes", "human-annotated": "yes",
                                     "creation-date": "2018-11-20T22:18:13.527256",
                                     "worker-feedback": [{"comment": "The bounding box on the bird is too wide on the right side."},
                                                         {"comment": "The bird on the upper right is not labeled."}]},
}


def test_the_documented_bounding_box_output_parses():
    parsed = parse_box_manifest(jsonl(DOCUMENTED_BOX), "bounding-box")
    assert parsed.problems == [] and parsed.failures == []
    [label] = parsed.labels
    assert (label.source_ref, label.width, label.height, label.job_name) == \
        ("s3://AWSDOC-EXAMPLE-BUCKET/example_image.png", 500, 400, "identify-dogs-and-toys")
    assert label.boxes == [Box(class_name="dog", left=111, top=134, width=61, height=128),
                           Box(class_name="bone", left=161, top=250, width=30, height=30),
                           Box(class_name="bone", left=20, top=20, width=30, height=30)]
    assert label.created == utc("2018-10-18T22:18:13.527256") and label.human_annotated


def test_the_documented_adjustment_output_parses_under_the_new_attribute():
    [label] = parse_box_manifest(jsonl(DOCUMENTED_ADJUSTED), "adjusted-bounding-box").labels
    assert label.adjustment_status == "adjusted" and label.job_name == "adjust-bounding-boxes-on-dogs-and-toys"
    assert [(b.left, b.top) for b in label.boxes] == [(110, 135), (161, 250), (10, 10)]
    # the original label is still there, readable under its own attribute
    assert parse_box_manifest(jsonl(DOCUMENTED_ADJUSTED), "bounding-box").labels[0].boxes[0].left == 111


def test_the_documented_verification_output_parses():
    [verdict] = parse_verification_manifest(jsonl(DOCUMENTED_VERIFIED), "verify-bounding-box").labels
    assert (verdict.class_name, verdict.confidence, verdict.job_name) == ("bad", 0.93, "verify-bounding-boxes")
    assert verdict.created == utc("2018-11-20T22:18:13.527256") and not verdict.approved
    assert verdict.comments == ["The bounding box on the bird is too wide on the right side.",
                                "The bird on the upper right is not labeled."]


def test_malformed_lines_are_set_aside_with_their_line_numbers_and_the_rest_parses():
    def broken(**changes) -> dict:
        line = json.loads(json.dumps(DOCUMENTED_BOX))
        for path, value in changes.items():
            *parents, leaf = path.split("/")
            target = line
            for part in parents:
                target = target[int(part)] if part.isdigit() else target[part]
            if value is None:
                del target[leaf]
            else:
                target[leaf] = value
        return line

    text = jsonl(
        DOCUMENTED_BOX,                                                        # 1 fine
        '{"source-ref": "s3://b/x.png", "bounding-box": {',                    # 2 truncated
        "",                                                                    # 3 blank: skipped
        '["not", "an", "object"]',                                             # 4
        broken(**{"bounding-box/annotations/0/class_id": 7}),                  # 5 not in the class-map
        broken(**{"bounding-box/annotations/1/width": -30}),                   # 6 negative width
        broken(**{"bounding-box-metadata/type": "groundtruth/image-classification"}),  # 7 another task type
        broken(**{"bounding-box-metadata/creation-date": "yesterday"}),        # 8
        broken(**{"source-ref": None}),                                        # 9
        broken(**{"bounding-box": None}),                                      # 10 no label, no failure-reason
        broken(**{"bounding-box/annotations/0/left": "111"}),                  # 11 a string coordinate
        broken(**{"bounding-box/annotations/0/class_id": True}),               # 12 a boolean class id
        {"source-ref": "s3://b/y.png", "bounding-box-metadata": {"failure-reason": "expired", "job-name": "j"}},  # 13 failed object
        DOCUMENTED_BOX,                                                        # 14 fine again
        json.dumps(broken(**{"bounding-box/annotations/0/top": 1.0})).replace("1.0", "NaN"),  # 15 json.loads takes NaN
    )
    parsed = parse_box_manifest(text, "bounding-box")
    assert len(parsed.labels) == 2
    assert [(f.source_ref, f.reason) for f in parsed.failures] == [("s3://b/y.png", "expired")]
    problems = {p.line: p.message for p in parsed.problems}
    assert sorted(problems) == [2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 15]
    assert problems[2].startswith("not JSON")
    assert "a JSON list" in problems[4]
    assert "bounding-box.annotations[0].class_id 7 is not in the class-map" in problems[5]
    assert "bounding-box.annotations[1] is -30x30: a box needs a positive width and height" in problems[6]
    assert "expected 'groundtruth/object-detection'" in problems[7]
    assert "creation-date 'yesterday'" in problems[8]
    assert "no 'source-ref'" in problems[9]
    assert "no 'bounding-box' label and no failure-reason" in problems[10]
    assert "bounding-box.annotations[0].left is '111', expected a number" in problems[11]
    assert "class_id is True" in problems[12]
    assert "bounding-box.annotations[0].top is nan" in problems[15]


def test_a_verification_line_of_another_task_type_is_set_aside():
    line = {**DOCUMENTED_VERIFIED, "verify-bounding-box-metadata": {**DOCUMENTED_VERIFIED["verify-bounding-box-metadata"],
                                                                     "type": "groundtruth/object-detection"}}
    parsed = parse_verification_manifest(jsonl(DOCUMENTED_VERIFIED, line), "verify-bounding-box")
    assert len(parsed.labels) == 1 and [p.line for p in parsed.problems] == [2]


@pytest.mark.parametrize("text, expected", [
    ("2018-10-18T22:18:13.527256", "2018-10-18T22:18:13.527256+00:00"),  # the documented form: UTC, no zone
    ("2020-05-15T08:01:16+0000", "2020-05-15T08:01:16+00:00"),          # the video frame example's form
    ("2020-05-15T10:01:16+0200", "2020-05-15T08:01:16+00:00"),
    ("2020-05-15T08:01:16Z", "2020-05-15T08:01:16+00:00")])
def test_creation_dates_in_every_documented_form(text, expected):
    assert parse_creation_date(text) == datetime.fromisoformat(expected).timestamp()


# -- the Lambda handlers -----------------------------------------------------------------------------


def test_the_handlers_run_the_backend_steps_and_return_the_jobs_requests(aws):
    batch = make_batch()
    result = handlers.write_adjustment_manifest(handlers.BatchInput(batch=batch), aws.labeling)
    assert result.job_name == ADJUST and result.request == adjustment_request(aws.bucket)
    assert aws.read(f"labeling/batches/{BATCH_ID}/adjustment.manifest").count("\n") == 2

    output = aws.write(adjustment_output_key(), jsonl(adjusted_line_a(), expired_line_b()))
    done = handlers.AdjustmentDone(batch=batch, adjustment_job=ADJUST, adjustment_output=output)
    result = handlers.write_verification_manifest(done, aws.labeling)
    assert result.job_name == VERIFY and result.request == verification_request(aws.bucket)

    verified = aws.write(verification_output_key(), jsonl(verified_line_a(VERIFY_OK, "0")))
    written = []
    result = handlers.write_labels(handlers.VerificationDone(**done.model_dump(), verification_job=VERIFY,
                                                             verification_output=verified),
                                   aws.labeling, lambda b, answers: written.append((b.batch_id, answers)))
    assert result == handlers.LabelsWritten(batch_id=BATCH_ID, answers=1, approved=1)
    [(batch_id, [answer])] = written
    assert batch_id == BATCH_ID and answer.sha256 == SHA_A and answer.approved and answer.job == ADJUST


def test_the_lambda_entry_points_take_settings_and_write_rows_to_the_configured_store(aws, moto, monkeypatch, tmp_path):
    monkeypatch.setenv(handlers.SETTINGS_ENV, aws.settings.model_dump_json())
    monkeypatch.setenv(handlers.LABEL_STORE_ENV, json.dumps({"backend": "local", "local": {"path": str(tmp_path)}}))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto.url)                    # S3 is moto's
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER", "http://127.0.0.1:9")  # the handlers never call SageMaker
    handlers.labeling_from_environment.cache_clear()
    handlers.write_answers_from_environment.cache_clear()
    try:
        batch = json.loads(make_batch().model_dump_json())
        result = handlers.lambda_write_adjustment_manifest({"batch": batch})
        assert result["job_name"] == ADJUST and result["request"]["RoleArn"] == ROLE
        assert aws.read(f"labeling/batches/{BATCH_ID}/adjustment.manifest")  # written through the Lambda's own client
        output = aws.write(adjustment_output_key(), jsonl(adjusted_line_a()))
        verified = aws.write(verification_output_key(), jsonl(verified_line_a(VERIFY_OK, "0")))
        result = handlers.lambda_write_labels({"batch": batch, "adjustment_job": ADJUST, "adjustment_output": output,
                                               "verification_job": VERIFY, "verification_output": verified})
        assert result == {"batch_id": BATCH_ID, "answers": 1, "approved": 1}
        (row,) = LocalLabelStore(tmp_path).as_of(2e9)  # the shared conversion wrote it, APPROVED
        assert row.status == "APPROVED" and row.labeling_job == ADJUST and row.boxes
        with pytest.raises(ValueError, match="adjustment_output"):  # a malformed event is refused, not guessed at
            handlers.lambda_write_verification_manifest({"batch": batch, "adjustment_job": ADJUST, "adjustment_output": "x"})
    finally:
        handlers.labeling_from_environment.cache_clear()
        handlers.write_answers_from_environment.cache_clear()


def test_the_lambda_entry_points_say_which_setting_is_missing(monkeypatch):
    monkeypatch.delenv(handlers.SETTINGS_ENV, raising=False)
    monkeypatch.delenv(handlers.LABEL_STORE_ENV, raising=False)
    handlers.labeling_from_environment.cache_clear()
    handlers.write_answers_from_environment.cache_clear()
    with pytest.raises(LabelingError, match=f"{handlers.SETTINGS_ENV} is not set"):
        handlers.labeling_from_environment()
    with pytest.raises(LabelingError, match=f"{handlers.LABEL_STORE_ENV} is not set"):
        handlers.write_answers_from_environment()
    handlers.write_answers_from_environment.cache_clear()


# -- the state machine -------------------------------------------------------------------------------

MACHINE = StateMachineSettings(
    write_adjustment_manifest_function="arn:aws:lambda:eu-west-1:123456789012:function:edge-inspect-gt-adjustment-manifest",
    write_verification_manifest_function="arn:aws:lambda:eu-west-1:123456789012:function:edge-inspect-gt-verification-manifest",
    write_labels_function="arn:aws:lambda:eu-west-1:123456789012:function:edge-inspect-gt-labels")


def asl_validator(definition: dict, tmp_path) -> subprocess.CompletedProcess:
    assert ASL_VALIDATOR.exists(), f"{ASL_VALIDATOR} is missing: run scripts/node-tools.sh (npm install --prefix .tools asl-validator@4)"
    path = tmp_path / f"machine-{uuid.uuid4().hex[:8]}.json"
    path.write_text(json.dumps(definition))
    return subprocess.run([str(ASL_VALIDATOR), "--json-path", str(path)], capture_output=True, text=True, timeout=120)


def test_the_state_machine_is_valid_amazon_states_language(tmp_path):
    result = asl_validator(labeling_state_machine(MACHINE), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("breakage", ["dangling Next", "no End", "bad path"])
def test_asl_validator_rejects_a_broken_state_machine(tmp_path, breakage):
    definition = labeling_state_machine(MACHINE)
    states = definition["States"]
    if breakage == "dangling Next":
        states["AdjustmentJob"]["Next"] = "NoSuchState"
    elif breakage == "no End":
        del states["WriteLabels"]["End"]
    else:
        states["VerificationJob"]["Parameters"]["RoleArn.$"] = "not a JSON path"
    result = asl_validator(definition, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr


def test_the_state_machine_runs_the_documented_steps_with_retries_and_a_failure_state():
    definition = labeling_state_machine(MACHINE)
    states = definition["States"]
    order, name = [], definition["StartAt"]
    while name:
        order.append(name)
        name = states[name].get("Next")
    assert order == ["WriteAdjustmentManifest", "AdjustmentJob", "WriteVerificationManifest", "VerificationJob", "WriteLabels"]
    assert states["WriteLabels"]["End"] is True
    functions = [states[s]["Parameters"]["FunctionName"] for s in ("WriteAdjustmentManifest", "WriteVerificationManifest", "WriteLabels")]
    assert functions == [MACHINE.write_adjustment_manifest_function, MACHINE.write_verification_manifest_function,
                         MACHINE.write_labels_function]
    for job in ("AdjustmentJob", "VerificationJob"):
        assert states[job]["Resource"] == "arn:aws:states:::sagemaker:createLabelingJob.sync"
        assert states[job]["Retry"][0]["ErrorEquals"] == ["SageMaker.ResourceLimitExceededException"]
    for step in ("WriteAdjustmentManifest", "WriteVerificationManifest", "WriteLabels"):
        assert states[step]["Resource"] == "arn:aws:states:::lambda:invoke"
        assert "Lambda.TooManyRequestsException" in states[step]["Retry"][0]["ErrorEquals"]
    for step in order:
        assert states[step]["Catch"] == [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.failure", "Next": "LabelingFailed"}]
    assert states["LabelingFailed"] == {**states["LabelingFailed"], "Type": "Fail", "CausePath": "$.failure.Cause",
                                        "ErrorPath": "$.failure.Error"}


def test_the_job_states_pass_on_every_field_of_the_backends_request(aws):
    """The state machine copies the Lambda's request field by field: the field list must be exactly
    what create_request builds, or a field would be dropped (or a missing one fail at run time)."""
    request = aws.labeling.create_request(make_batch(), ADJUST, "adjustment")
    assert set(REQUEST_FIELDS) == set(request)
    job = labeling_state_machine(MACHINE)["States"]["AdjustmentJob"]
    assert job["Parameters"] == {f"{f}.$": f"$.adjustment.result.request.{f}" for f in request}
    # and what the Lambdas read from the state is what the handler payloads take
    states = labeling_state_machine(MACHINE)["States"]
    assert {k.removesuffix(".$") for k in states["WriteVerificationManifest"]["Parameters"]["Payload"]} == \
        set(handlers.AdjustmentDone.model_fields)
    assert {k.removesuffix(".$") for k in states["WriteLabels"]["Parameters"]["Payload"]} == set(handlers.VerificationDone.model_fields)
    assert {k.removesuffix(".$") for k in states["WriteAdjustmentManifest"]["Parameters"]["Payload"]} == \
        set(handlers.BatchInput.model_fields)


# -- the IAM policies --------------------------------------------------------------------------------


def test_the_iam_policies_grant_named_actions_on_named_resources():
    documents = json.loads(POLICY.read_text())
    why = json.loads(POLICY.with_name("ground_truth_policy_why.json").read_text())
    listed = lambda value: value if isinstance(value, list) else [value]  # noqa: E731
    assert set(documents) == {"CallerPolicy", "ExecutionRolePolicy", "ExecutionRoleTrustPolicy", "StateMachineRolePolicy"}
    statements = {s["Sid"]: s for doc in documents.values() for s in doc["Statement"]}
    assert sum(len(doc["Statement"]) for doc in documents.values()) == len(statements), "Sids are unique"
    assert set(statements) == set(why["statements"]), "every statement has its reason"
    assert set(re.findall(r"\$\{(\w+)\}", POLICY.read_text())) == set(why["placeholders"])
    assert all(doc["Version"] == "2012-10-17" for doc in documents.values())
    actions = {sid: listed(s["Action"]) for sid, s in statements.items()}
    assert not [a for acts in actions.values() for a in acts if "*" in a], "no wildcard action"
    # Resource "*" only where the reason says why: a Deny, and an action with no resource ARN
    star = {sid for sid, s in statements.items() if "*" in listed(s.get("Resource", []))}
    assert star == {"CallerDenyNonPrivateWorkforces", "ExecJobMetrics"}
    assert statements["CallerDenyNonPrivateWorkforces"]["Effect"] == "Deny"
    assert actions["ExecJobMetrics"] == ["cloudwatch:PutMetricData"]
    assert all("Resource is *" in why["statements"][sid] for sid in star)
    # every other wildcard is a trailing one under a named prefix, and said so
    for s in statements.values():
        for resource in listed(s.get("Resource", [])):
            if "*" in resource and resource != "*":
                assert resource.endswith("/*") or resource.endswith("-*") or resource.endswith(":*"), resource
    # the workforce and the role cannot be swapped
    for sid in ("CallerCreateLabelingJobs", "MachineCreateLabelingJobs"):
        assert statements[sid]["Condition"] == {"StringEquals": {"sagemaker:WorkteamType": "private-crowd"},
                                                "ArnEquals": {"sagemaker:WorkteamArn": "${WorkteamArn}"}}
        assert statements[sid]["Resource"].endswith(":labeling-job/${JobNamePrefix}-*")
    for sid in ("CallerPassExecutionRole", "MachinePassExecutionRole"):
        assert statements[sid]["Resource"] == "${ExecutionRoleArn}"
        assert statements[sid]["Condition"] == {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}
    # the caller may do what the backend does, the execution role what the brief and AWS's page list
    caller = {a for s in documents["CallerPolicy"]["Statement"] if s["Effect"] == "Allow" for a in listed(s["Action"])}
    assert {"sagemaker:CreateLabelingJob", "sagemaker:DescribeLabelingJob", "iam:PassRole", "s3:PutObject", "s3:GetObject"} <= caller
    execution = {(a, r) for s in documents["ExecutionRolePolicy"]["Statement"] for a in listed(s["Action"]) for r in listed(s["Resource"])}
    assert ("s3:GetObject", "arn:${Partition}:s3:::${FramesBucket}/${FramesPrefix}/raw/*") in execution
    assert ("s3:GetObject", "arn:${Partition}:s3:::${ManifestBucket}/${ManifestPrefix}/*") in execution
    assert ("s3:PutObject", "arn:${Partition}:s3:::${ManifestBucket}/${ManifestPrefix}/output/*") in execution
    assert not [a for a, r in execution if a == "s3:PutObject" and "/output/" not in r], "the jobs write only their output"
    machine = {a for s in documents["StateMachineRolePolicy"]["Statement"] for a in listed(s["Action"])}
    assert {"lambda:InvokeFunction", "sagemaker:CreateLabelingJob", "sagemaker:DescribeLabelingJob", "events:PutRule"} <= machine
    trust = documents["ExecutionRoleTrustPolicy"]["Statement"][0]
    assert trust["Principal"] == {"Service": "sagemaker.amazonaws.com"} and trust["Action"] == "sts:AssumeRole"
    assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": "${AccountId}"}}, "no confused deputy"


def test_the_backend_writes_and_reads_only_where_the_policies_allow(aws):
    """The paths the backend uses fall under the policy's prefixes (batches/ to write, output/ to read)."""
    batch = make_batch()
    request = aws.labeling.create_request(batch, ADJUST, "adjustment")
    prefix = f"s3://{aws.bucket}/labeling/"
    written = [request["InputConfig"]["DataSource"]["S3DataSource"]["ManifestS3Uri"], request["LabelCategoryConfigS3Uri"],
               request["HumanTaskConfig"]["UiConfig"]["UiTemplateS3Uri"]]
    assert all(uri.startswith(prefix + "batches/") for uri in written)
    assert request["OutputConfig"]["S3OutputPath"] == prefix + "output/"


def test_the_cli_prints_a_state_machine_that_asl_validator_accepts(tmp_path):
    arn = "arn:aws:lambda:eu-west-1:123456789012:function:edge-inspect-gt-{}"
    done = subprocess.run([sys.executable, "-m", "edge_inspect", "cloud", "state-machine",
                           "--adjustment-manifest-function", arn.format("a"),
                           "--verification-manifest-function", arn.format("v"), "--labels-function", arn.format("l")],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert asl_validator(json.loads(done.stdout), tmp_path).returncode == 0
    refused = subprocess.run([sys.executable, "-m", "edge_inspect", "cloud", "state-machine",
                              "--adjustment-manifest-function", "not-an-arn", "--verification-manifest-function",
                              arn.format("v"), "--labels-function", arn.format("l")],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "write_adjustment_manifest_function" in refused.stderr
