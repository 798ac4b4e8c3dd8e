"""The registry on AWS (cloud/registry/sagemaker_registry.py): SageMaker Model Registry under
botocore's Stubber (every request is checked against the service model; the expected requests are
written out here), the files in moto's S3 server."""

from __future__ import annotations

import datetime as dt
import uuid

import boto3
import pytest
from botocore.stub import ANY, Stubber
from moto_s3 import CREDENTIALS, sha
from pipeline_helpers import scores, version_files

from cloud.registry.registry import Approval, RegistryError
from cloud.registry.sagemaker_registry import SageMakerRegistry, client_token
from cloud.settings import SageMakerRegistrySettings

REGION, ACCOUNT = "eu-west-1", "123456789012"
GROUP_ARN = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:model-package-group/metal-tags"
CREATED = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.timezone.utc)
GROUP = {"ModelPackageGroupName": "metal-tags", "ModelPackageGroupArn": GROUP_ARN, "CreationTime": CREATED,
         "CreatedBy": {}, "ModelPackageGroupStatus": "Completed"}


def package_arn(version: int) -> str:
    return f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:model-package/metal-tags/{version}"


@pytest.fixture
def aws(moto):
    bucket = f"models-{uuid.uuid4().hex[:12]}"
    s3 = moto.client()
    s3.create_bucket(Bucket=bucket)
    sagemaker = boto3.client("sagemaker", region_name=REGION, **{k.lower(): v for k, v in CREDENTIALS.items()
                                                                 if k != "AWS_DEFAULT_REGION"})
    stub = Stubber(sagemaker)
    stub.activate()
    registry = SageMakerRegistry(SageMakerRegistrySettings(bucket=bucket, prefix="edge-inspect/models"), "metal-tags",
                                 sagemaker, s3)
    yield registry, stub, s3, bucket
    stub.assert_no_pending_responses()


def describe(bucket: str, metadata: dict, version: int, status: str, description: str | None = None) -> dict:
    found = {"ModelPackageName": "metal-tags", "ModelPackageGroupName": "metal-tags", "ModelPackageVersion": version,
             "ModelPackageArn": package_arn(version), "CreationTime": CREATED, "ModelPackageStatus": "Completed",
             "ModelPackageStatusDetails": {"ValidationStatuses": []},
             "ModelApprovalStatus": status, "CustomerMetadataProperties": metadata}
    if description:
        found["ApprovalDescription"] = description
    return found


def test_register_uploads_content_addressed_files_and_creates_a_pending_package(aws, tmp_path, bundled_model):
    registry, stub, s3, bucket = aws
    files, card = version_files(tmp_path / "v", "run-a", bundled_model, production=scores(0.88, 0.55), parent="3")
    stub.add_response("describe_model_package_group", GROUP, {"ModelPackageGroupName": "metal-tags"})
    stub.add_response("list_model_packages", {"ModelPackageSummaryList": []},
                      {"ModelPackageGroupName": "metal-tags", "SortBy": "CreationTime", "SortOrder": "Ascending",
                       "MaxResults": 100})
    # content-addressed: the URIs follow from the files' bytes alone
    uris = {key: f"s3://{bucket}/edge-inspect/models/metal-tags/sha256/{sha(files.path(name).read_bytes())}/{name}"
            for name, key in (("model.onnx", "onnx_uri"), ("model.pt", "checkpoint_uri"),
                              ("model.card.json", "device_card_uri"), ("version.card.json", "card_uri"))}
    metadata = {
        **uris, "run_id": "run-a", "dataset_fingerprint": "f" * 64, "as_of": "1700000000.0", "parent_version": "3",
        "candidate_map50": "0.9000", "candidate_map50_95": "0.6000", "candidate_recall_at_alert": "0.8000",
        "production_map50": "0.8800", "production_map50_95": "0.5500", "production_recall_at_alert": "0.8000"}
    stub.add_response("create_model_package", {"ModelPackageArn": package_arn(4)}, {
        "ModelPackageGroupName": "metal-tags", "ClientToken": client_token("run-a"),
        "ModelPackageDescription": "run run-a: map50 0.9000 >= floor 0.8000",
        "ModelApprovalStatus": "PendingManualApproval", "SourceUri": uris["onnx_uri"],
        "MetadataProperties": {"CommitId": "test", "GeneratedBy": "run-a"},
        "ModelMetrics": {"ModelQuality": {"Statistics": {"ContentType": "application/json", "S3Uri": uris["card_uri"]}}},
        "CustomerMetadataProperties": metadata})
    stub.add_response("describe_model_package", describe(bucket, metadata, 4, "PendingManualApproval"),
                      {"ModelPackageName": package_arn(4)})
    made = registry.register(files, card)
    assert (made.version, made.status, made.card) == ("4", Approval.PENDING, card)
    for name, key in (("model.onnx", "onnx_uri"), ("model.pt", "checkpoint_uri"), ("version.card.json", "card_uri")):
        body = s3.get_object(Bucket=bucket, Key=uris[key].removeprefix(f"s3://{bucket}/"))["Body"].read()
        assert body == files.path(name).read_bytes()


def test_a_run_already_registered_is_not_registered_again(aws, tmp_path, bundled_model):
    registry, stub, s3, bucket = aws
    files, card = version_files(tmp_path / "v", "run-a", bundled_model)
    key = "edge-inspect/models/metal-tags/card.json"
    s3.put_object(Bucket=bucket, Key=key, Body=card.model_dump_json().encode())
    stub.add_response("describe_model_package_group", GROUP, {"ModelPackageGroupName": "metal-tags"})
    stub.add_response("list_model_packages", {"ModelPackageSummaryList": [{
        "ModelPackageArn": package_arn(1), "ModelPackageName": "metal-tags", "CreationTime": CREATED,
        "ModelPackageStatus": "Completed"}]}, {"ModelPackageGroupName": "metal-tags", "SortBy": "CreationTime",
                                               "SortOrder": "Ascending", "MaxResults": 100})
    stub.add_response("describe_model_package", describe(bucket, {"card_uri": f"s3://{bucket}/{key}", "run_id": "run-a"},
                                                         1, "PendingManualApproval"), {"ModelPackageName": package_arn(1)})
    assert registry.register(files, card).version == "1"  # and no create_model_package was queued


def test_a_missing_group_is_created_first(aws):
    registry, stub, _, _ = aws
    stub.add_client_error("describe_model_package_group", "ValidationException", "Model Package Group does not exist.",
                          expected_params={"ModelPackageGroupName": "metal-tags"})
    stub.add_response("create_model_package_group", {"ModelPackageGroupArn": GROUP_ARN}, {
        "ModelPackageGroupName": "metal-tags", "ModelPackageGroupDescription": "edge-inspect detector versions"})
    stub.add_response("list_model_packages", {"ModelPackageSummaryList": []}, {
        "ModelPackageGroupName": "metal-tags", "SortBy": "CreationTime", "SortOrder": "Ascending", "MaxResults": 100})
    assert registry.versions() == []


def test_approve_records_who_and_rejecting_needs_a_reason(aws, tmp_path, bundled_model):
    registry, stub, s3, bucket = aws
    files, card = version_files(tmp_path / "v", "run-a", bundled_model)
    key = "edge-inspect/models/metal-tags/card.json"
    s3.put_object(Bucket=bucket, Key=key, Body=card.model_dump_json().encode())
    metadata = {"card_uri": f"s3://{bucket}/{key}", "run_id": "run-a"}

    def expect_get(status, description=None, extra=None):
        stub.add_response("describe_model_package_group", GROUP, {"ModelPackageGroupName": "metal-tags"})
        stub.add_response("describe_model_package", describe(bucket, {**metadata, **(extra or {})}, 2, status, description),
                          {"ModelPackageName": package_arn(2)})

    expect_get("PendingManualApproval")
    stub.add_response("update_model_package", {"ModelPackageArn": package_arn(2)}, {
        "ModelPackageArn": package_arn(2), "ModelApprovalStatus": "Approved",
        "ApprovalDescription": "Approved by alice: ", "CustomerMetadataProperties": {"decided_by": "alice", "decided_at": ANY}})
    expect_get("Approved", "Approved by alice: ", {"decided_by": "alice", "decided_at": "2026-11-22T12:00:00+00:00"})
    approved = registry.decide("2", Approval.APPROVED, "alice", None)
    assert (approved.status, approved.decided_by) == (Approval.APPROVED, "alice")

    expect_get("Approved", "Approved by alice: ", {"decided_by": "alice"})
    with pytest.raises(RegistryError, match="needs a reason"):
        registry.decide("2", Approval.REJECTED, "bob", "")
    expect_get("Approved", "Approved by alice: ", {"decided_by": "alice"})
    with pytest.raises(RegistryError, match="cannot be stored"):
        registry.decide("2", Approval.REJECTED, "bob; DROP", "worse")


def test_a_card_uri_outside_the_registry_bucket_is_not_read(aws, tmp_path):
    registry, stub, s3, bucket = aws
    stub.add_response("describe_model_package", describe(bucket, {"card_uri": "s3://other-bucket/x.json"}, 1, "Approved"),
                      {"ModelPackageName": package_arn(1)})
    with pytest.raises(RegistryError, match="not an object of the registry's bucket"):
        registry._version(package_arn(1))


def test_an_object_replaced_under_its_content_addressed_key_is_not_read(aws, tmp_path, bundled_model):
    # the key names its content; a card or model put under it later (the package's metadata, which the
    # bucket's writers cannot change, still points there) is refused, not trusted by its name
    registry, stub, s3, bucket = aws
    files, card = version_files(tmp_path / "v", "run-a", bundled_model)
    uri = registry._upload(files.path("version.card.json"))
    stub.add_response("describe_model_package", describe(bucket, {"card_uri": uri, "run_id": "run-a"}, 1, "Approved"),
                      {"ModelPackageName": package_arn(1)})
    assert registry._version(package_arn(1)).card == card
    forged = card.model_copy(update={"onnx_sha256": "0" * 64})
    s3.put_object(Bucket=bucket, Key=uri.removeprefix(f"s3://{bucket}/"), Body=forged.model_dump_json().encode())
    stub.add_response("describe_model_package", describe(bucket, {"card_uri": uri, "run_id": "run-a"}, 1, "Approved"),
                      {"ModelPackageName": package_arn(1)})
    with pytest.raises(RegistryError, match="does not hold the content its key names"):
        registry._version(package_arn(1))


def test_a_deployment_status_is_recorded_in_customer_metadata_and_decides_production(aws, tmp_path, bundled_model):
    from cloud.registry.registry import DeploymentStatus, production

    registry, stub, s3, bucket = aws
    files, card = version_files(tmp_path / "v", "run-a", bundled_model)
    key = "edge-inspect/models/metal-tags/card.json"
    s3.put_object(Bucket=bucket, Key=key, Body=card.model_dump_json().encode())
    metadata = {"card_uri": f"s3://{bucket}/{key}", "run_id": "run-a", "decided_by": "alice"}
    failed = {"deployment_status": "ship-failed", "deployment_at": "2026-11-22T12:00:00+00:00",
              "deployment_reason": "ModelError: model.onnx is not a loadable ONNX model INVALID_PROTOBUF"}

    def expect_get(extra=None):
        stub.add_response("describe_model_package_group", GROUP, {"ModelPackageGroupName": "metal-tags"})
        stub.add_response("describe_model_package", describe(bucket, {**metadata, **(extra or {})}, 2, "Approved"),
                          {"ModelPackageName": package_arn(2)})

    expect_get()
    # free text is made to fit SageMaker's metadata characters ([] and the newline are not among them)
    stub.add_response("update_model_package", {"ModelPackageArn": package_arn(2)}, {
        "ModelPackageArn": package_arn(2), "CustomerMetadataProperties": {
            "deployment_status": "ship-failed", "deployment_at": ANY, "deployment_reason": failed["deployment_reason"]}})
    expect_get(failed)
    marked = registry.record_deployment("2", DeploymentStatus.SHIP_FAILED,
                                        "ModelError: model.onnx is not a loadable ONNX model [INVALID_PROTOBUF]\n")
    assert marked.deployment.status is DeploymentStatus.SHIP_FAILED and "INVALID_PROTOBUF" in marked.deployment.reason

    # production: an Approved package is production only once it is marked deployed
    stub.add_response("describe_model_package_group", GROUP, {"ModelPackageGroupName": "metal-tags"})
    stub.add_response("list_model_packages", {"ModelPackageSummaryList": [
        {"ModelPackageArn": package_arn(n), "ModelPackageName": "metal-tags", "CreationTime": CREATED,
         "ModelPackageStatus": "Completed"} for n in (1, 2, 3)]}, {
        "ModelPackageGroupName": "metal-tags", "SortBy": "CreationTime", "SortOrder": "Ascending", "MaxResults": 100})
    deployed = {"deployment_status": "deployed", "deployment_at": "2026-11-22T12:00:00+00:00"}
    for n, extra in ((1, deployed), (2, failed), (3, {})):
        stub.add_response("describe_model_package", describe(bucket, {**metadata, **extra}, n, "Approved"),
                          {"ModelPackageName": package_arn(n)})
    assert production(registry).version == "1"


def test_a_package_whose_card_is_lost_is_listed_unreadable_and_the_others_still_are(aws, tmp_path, bundled_model):
    from cloud.registry.registry import UnreadableVersion

    registry, stub, s3, bucket = aws
    _, card = version_files(tmp_path / "v", "run-a", bundled_model)
    key = "edge-inspect/models/metal-tags/card.json"
    s3.put_object(Bucket=bucket, Key=key, Body=card.model_dump_json().encode())
    stub.add_response("describe_model_package_group", GROUP, {"ModelPackageGroupName": "metal-tags"})
    stub.add_response("list_model_packages", {"ModelPackageSummaryList": [
        {"ModelPackageArn": package_arn(n), "ModelPackageName": "metal-tags", "CreationTime": CREATED,
         "ModelPackageStatus": "Completed"} for n in (1, 2)]}, {
        "ModelPackageGroupName": "metal-tags", "SortBy": "CreationTime", "SortOrder": "Ascending", "MaxResults": 100})
    stub.add_response("describe_model_package", describe(bucket, {"card_uri": f"s3://{bucket}/{key}-lost"}, 1,
                                                         "Approved"), {"ModelPackageName": package_arn(1)})
    stub.add_response("describe_model_package", describe(bucket, {"card_uri": f"s3://{bucket}/{key}"}, 2,
                                                         "PendingManualApproval"), {"ModelPackageName": package_arn(2)})
    lost, kept = registry.entries()
    assert isinstance(lost, UnreadableVersion) and lost.version == "1" and "NoSuchKey" in lost.reason
    assert kept.version == "2" and kept.card == card
