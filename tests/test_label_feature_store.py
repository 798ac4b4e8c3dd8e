"""The label store on AWS (cloud/labels/feature_store.py), against botocore's `Stubber`: every request
is checked against botocore's models of sagemaker, sagemaker-featurestore-runtime and athena, and
every response is one those services could send. Nothing reaches AWS: fake credentials, and the one
client that is not stubbed points at a closed local port."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest
from botocore.config import Config
from botocore.stub import Stubber

from cloud.label_table import BoxLabel, LabelRecord, LabelTableError
from cloud.labels.as_of import as_of_sql
from cloud.labels.feature_store import FeatureStoreLabelStore, FeatureStoreSettings
from cloud.labels.store import LabelStoreError
from cloud.labels.versions import COLUMNS, LabelVersion, deletion

REGION = "eu-west-1"
SECRET = "fakeSecretThatMustNeverBeInAMessage"
CREDENTIALS = {"aws_access_key_id": "AKIAFAKEFAKEFAKEFAKE", "aws_secret_access_key": SECRET}
GROUP = "edge-inspect-labels"
DATABASE, TABLE = "sagemaker_featurestore", "edge_inspect_labels_1763800000"
QUOTED_TABLE = f'"{DATABASE}"."{TABLE}"'
OUTPUT = "s3://athena-results/edge-inspect"
SETTINGS = dict(feature_group_name=GROUP, role_arn="arn:aws:iam::123456789012:role/edge-inspect-feature-store",
                offline_store_s3_uri="s3://edge-inspect-labels/offline", athena_output_s3_uri=OUTPUT,
                poll_interval_s=2.0, query_timeout_s=10.0)
POLICY = Path(__file__).resolve().parent.parent / "cloud" / "labels" / "feature_store_policy.json"


class FakeClock:
    """`clock` and `sleep` for the store: sleeping moves the clock, nothing waits."""

    def __init__(self) -> None:
        self.now, self.sleeps = 1000.0, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def client(service: str, **kwargs):
    return boto3.client(service, region_name=REGION, **CREDENTIALS, **kwargs)


@pytest.fixture
def aws():
    """A store on stubbed clients; every queued response must have been used by the end."""
    clients = {name: client(service) for name, service in
               (("sagemaker", "sagemaker"), ("runtime", "sagemaker-featurestore-runtime"), ("athena", "athena"))}
    stubs = {name: Stubber(c) for name, c in clients.items()}
    for stub in stubs.values():
        stub.activate()
    clock = FakeClock()

    def store(**settings) -> FeatureStoreLabelStore:
        return FeatureStoreLabelStore(FeatureStoreSettings(**{**SETTINGS, **settings}), clients["sagemaker"],
                                      clients["runtime"], clients["athena"], sleep=clock.sleep, clock=clock)

    yield SimpleNamespace(store=store, clock=clock, **stubs)
    for stub in stubs.values():
        stub.assert_no_pending_responses()
        stub.deactivate()


def record(ref: str, t: float, status: str = "APPROVED", boxes: int = 1, job: str = "job-1") -> LabelRecord:
    return LabelRecord(ref, 450, 300, tuple(BoxLabel(i, 10.0 * i, 20.0, 30.0, 40.5) for i in range(boxes)), status, t, job)


def described(status: str = "Created", **changes) -> dict:
    """A describe_feature_group response for the group this store creates."""
    response = {
        "FeatureGroupArn": f"arn:aws:sagemaker:{REGION}:123456789012:feature-group/{GROUP}",
        "FeatureGroupName": GROUP, "RecordIdentifierFeatureName": "source_ref", "EventTimeFeatureName": "event_time",
        "FeatureDefinitions": [{"FeatureName": n, "FeatureType": t} for n, t in COLUMNS.items()],
        "CreationTime": "2025-11-22T08:00:00Z", "NextToken": "",
        "OnlineStoreConfig": {"EnableOnlineStore": False},
        "OfflineStoreConfig": {"S3StorageConfig": {"S3Uri": SETTINGS["offline_store_s3_uri"]}, "DisableGlueTableCreation": False,
                               "DataCatalogConfig": {"Catalog": "AwsDataCatalog", "Database": DATABASE, "TableName": TABLE}},
        "RoleArn": SETTINGS["role_arn"], "FeatureGroupStatus": status,
    }
    return {**response, **changes}


DESCRIBE = {"FeatureGroupName": GROUP}


def not_found(aws) -> None:
    aws.sagemaker.add_client_error("describe_feature_group", service_error_code="ResourceNotFound",
                                   service_message=f"Resource Not Found: feature group {GROUP}", expected_params=DESCRIBE)


# -- ensure_feature_group --------------------------------------------------------------------


def test_a_missing_feature_group_is_created_offline_only_and_waited_for(aws):
    store = aws.store(kms_key_id="arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab")
    not_found(aws)
    aws.sagemaker.add_response("create_feature_group", {"FeatureGroupArn": described()["FeatureGroupArn"]}, {
        "FeatureGroupName": GROUP,
        "RecordIdentifierFeatureName": "source_ref",
        "EventTimeFeatureName": "event_time",
        "FeatureDefinitions": [
            {"FeatureName": "source_ref", "FeatureType": "String"},
            {"FeatureName": "image_width", "FeatureType": "Integral"},
            {"FeatureName": "image_height", "FeatureType": "Integral"},
            {"FeatureName": "annotations", "FeatureType": "String"},
            {"FeatureName": "status", "FeatureType": "String"},
            {"FeatureName": "event_time", "FeatureType": "Fractional"},
            {"FeatureName": "labeling_job", "FeatureType": "String"},
            {"FeatureName": "deleted", "FeatureType": "Integral"},
        ],
        "OnlineStoreConfig": {"EnableOnlineStore": False},
        "OfflineStoreConfig": {
            "S3StorageConfig": {"S3Uri": "s3://edge-inspect-labels/offline",
                                "KmsKeyId": "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"},
            "DisableGlueTableCreation": False,
        },
        "RoleArn": "arn:aws:iam::123456789012:role/edge-inspect-feature-store",
        "Description": "edge-inspect label store: every label row version, append-only",
    })
    not_found(aws)  # SageMaker may not show a group for a moment after creating it
    aws.sagemaker.add_response("describe_feature_group", described("Creating"), DESCRIBE)
    aws.sagemaker.add_response("describe_feature_group", described("Created"), DESCRIBE)
    store.ensure_feature_group()
    assert aws.clock.sleeps == [2.0, 2.0]
    assert "KmsKeyId" not in aws.store().create_params()["OfflineStoreConfig"]["S3StorageConfig"]


def test_an_existing_matching_feature_group_is_left_alone(aws):
    aws.sagemaker.add_response("describe_feature_group", described(), DESCRIBE)
    aws.store().ensure_feature_group()  # no create_feature_group queued: calling it would fail the stub
    assert aws.clock.sleeps == []


def test_a_group_another_process_is_creating_is_waited_for(aws):
    not_found(aws)
    aws.sagemaker.add_client_error("create_feature_group", service_error_code="ResourceInUse",
                                   service_message=f"Resource Already Exists: FeatureGroup with name {GROUP} already exists")
    aws.sagemaker.add_response("describe_feature_group", described("Created"), DESCRIBE)
    aws.store().ensure_feature_group()


def test_a_feature_group_of_another_shape_is_refused_naming_the_differences(aws):
    features = [{"FeatureName": n, "FeatureType": "String" if n == "event_time" else t} for n, t in COLUMNS.items() if n != "deleted"]
    features.append({"FeatureName": "quality", "FeatureType": "Fractional"})
    aws.sagemaker.add_response("describe_feature_group",
                               described(RecordIdentifierFeatureName="image", FeatureDefinitions=features), DESCRIBE)
    with pytest.raises(LabelStoreError) as error:
        aws.store().ensure_feature_group()
    message = str(error.value)
    assert f"feature group {GROUP} exists with a different definition" in message
    for difference in ("RecordIdentifierFeatureName is 'image', expected 'source_ref'", "feature 'deleted' is missing",
                       "feature 'event_time' is String, expected Fractional", "feature 'quality' is not one of ours"):
        assert difference in message


def test_a_failed_creation_is_an_error_with_aws_reason(aws):
    not_found(aws)
    aws.sagemaker.add_response("create_feature_group", {"FeatureGroupArn": described()["FeatureGroupArn"]})
    aws.sagemaker.add_response("describe_feature_group", described("CreateFailed", FailureReason="Access denied to S3 bucket"),
                               DESCRIBE)
    with pytest.raises(LabelStoreError, match=f"feature group {GROUP} is CreateFailed: Access denied to S3 bucket"):
        aws.store().ensure_feature_group()


# -- append ----------------------------------------------------------------------------------


def test_append_puts_one_offline_record_per_version_deletions_included(aws):
    versions = [LabelVersion(record("images/a.jpg", 1763800000.25, boxes=2)), deletion("images/b.jpg", 1763800001.0)]
    expected = [
        [("source_ref", "images/a.jpg"), ("image_width", "450"), ("image_height", "300"),
         ("annotations", '[{"class_id": 0, "left": 0.0, "top": 20.0, "width": 30.0, "height": 40.5}, '
                         '{"class_id": 1, "left": 10.0, "top": 20.0, "width": 30.0, "height": 40.5}]'),
         ("status", "APPROVED"), ("event_time", "1763800000.25"), ("labeling_job", "job-1"), ("deleted", "0")],
        [("source_ref", "images/b.jpg"), ("image_width", "1"), ("image_height", "1"), ("annotations", "[]"),
         ("status", "DELETED"), ("event_time", "1763800001.0"), ("labeling_job", ""), ("deleted", "1")],
    ]
    for features in expected:
        aws.runtime.add_response("put_record", {}, {
            "FeatureGroupName": GROUP, "TargetStores": ["OfflineStore"],
            "Record": [{"FeatureName": name, "ValueAsString": value} for name, value in features]})
    assert aws.store().append(iter(versions)) == 2


# -- as_of and history -----------------------------------------------------------------------


def athena_row(values) -> dict:
    return {"Data": [{} if v is None else {"VarCharValue": v} for v in values]}


def athena_values(version: LabelVersion) -> list[str]:
    """A version as Athena prints it: all text, doubles in Java's notation."""
    columns = {k: str(v) for k, v in version.columns().items()}
    if version.record.event_time >= 1e7:  # Java switches to E notation there: 1.7638000005E9
        columns["event_time"] = f"{Decimal(repr(version.record.event_time)).normalize():E}".replace("E+", "E")
    return [columns[c] for c in COLUMNS]


def queue_query(aws, sql: str, states=("QUEUED", "RUNNING", "SUCCEEDED"), query_id: str = "q-1", reason: str | None = None):
    aws.athena.add_response("start_query_execution", {"QueryExecutionId": query_id}, {
        "QueryString": sql, "QueryExecutionContext": {"Catalog": "AwsDataCatalog", "Database": DATABASE},
        "ResultConfiguration": {"OutputLocation": OUTPUT}, "WorkGroup": "primary"})
    for state in states:
        status = {"State": state, **({"StateChangeReason": reason} if reason and state == states[-1] else {})}
        aws.athena.add_response("get_query_execution", {"QueryExecution": {"QueryExecutionId": query_id, "Status": status}},
                                {"QueryExecutionId": query_id})


def queue_results(aws, pages: list[list[LabelVersion]], query_id: str = "q-1") -> None:
    for n, page in enumerate(pages):
        rows = ([athena_row(COLUMNS)] if n == 0 else []) + [athena_row(athena_values(v)) for v in page]
        response = {"ResultSet": {"Rows": rows}, **({"NextToken": f"page-{n + 1}"} if n + 1 < len(pages) else {})}
        aws.athena.add_response("get_query_results", response, {
            "QueryExecutionId": query_id, "MaxResults": 1000, **({"NextToken": f"page-{n}"} if n else {})})


def test_as_of_runs_the_shared_query_on_athena_and_reads_every_page(aws):
    a, b, c = (LabelVersion(record(f"images/{n}.jpg", 1763800000.5 + i, boxes=i + 1)) for i, n in enumerate("abc"))
    aws.sagemaker.add_response("describe_feature_group", described(), DESCRIBE)
    queue_query(aws, as_of_sql(QUOTED_TABLE, 1763900000.0))
    queue_results(aws, [[a, b], [c]])
    assert aws.store().as_of(1763900000.0) == [a.record, b.record, c.record]
    assert aws.clock.sleeps == [2.0, 2.0]  # QUEUED, RUNNING, then SUCCEEDED


def test_a_failed_query_is_an_error_with_athena_reason(aws):
    aws.sagemaker.add_response("describe_feature_group", described(), DESCRIBE)
    queue_query(aws, as_of_sql(QUOTED_TABLE, 5.0), states=("RUNNING", "FAILED"),
                reason="TABLE_NOT_FOUND: line 1:170: Table 'awsdatacatalog.sagemaker_featurestore.x' does not exist")
    with pytest.raises(LabelStoreError, match="athena query q-1 FAILED: TABLE_NOT_FOUND"):
        aws.store().as_of(5.0)


def test_a_query_past_its_timeout_is_stopped_and_an_error(aws):
    aws.sagemaker.add_response("describe_feature_group", described(), DESCRIBE)
    queue_query(aws, as_of_sql(QUOTED_TABLE, 5.0), states=("RUNNING",) * 6)  # at 0, 2, 4, 6, 8 and 10 s
    aws.athena.add_response("stop_query_execution", {}, {"QueryExecutionId": "q-1"})
    with pytest.raises(LabelStoreError, match="athena query q-1 did not finish within 10 s; stopped it"):
        aws.store().as_of(5.0)
    assert sum(aws.clock.sleeps) == 10.0


def test_history_quotes_a_source_ref_with_a_quote_as_one_literal(aws):
    ref = "images/o'brien' OR '1'='1.jpg"
    sql = ("SELECT source_ref, image_width, image_height, annotations, status, event_time, labeling_job, deleted "
           f"FROM {QUOTED_TABLE} WHERE source_ref = 'images/o''brien'' OR ''1''=''1.jpg' ORDER BY event_time, deleted")
    versions = [LabelVersion(record(ref, 100.0)), deletion(ref, 200.0)]
    aws.sagemaker.add_response("describe_feature_group", described(), DESCRIBE)
    queue_query(aws, sql, states=("SUCCEEDED",))
    queue_results(aws, [versions])
    assert aws.store().history(ref) == versions

    # the same text in a SQL engine (DuckDB's literals are Trino's): it matches that one image only
    duckdb = pytest.importorskip("duckdb")
    with duckdb.connect() as db:
        db.execute(f"CREATE SCHEMA {DATABASE}")
        db.execute(f"CREATE TABLE {QUOTED_TABLE} AS SELECT * FROM (VALUES (?, 1, 1, '[]', 'APPROVED', 1.0, '', 0), "
                   "('images/other.jpg', 1, 1, '[]', 'APPROVED', 2.0, '', 0)) "
                   f"AS t({', '.join(COLUMNS)})", [ref])
        assert db.execute(sql).fetchall() == [(ref, 1, 1, "[]", "APPROVED", 1.0, "", 0)]


@pytest.mark.parametrize("ref", ["../secrets.jpg", "/etc/passwd", "images/a\nb.jpg", ""])
def test_history_refuses_a_source_ref_that_is_not_a_label_path_before_any_call(aws, ref):
    with pytest.raises(LabelTableError):
        aws.store().history(ref)  # nothing queued: any AWS call would fail the stub instead


def test_glue_names_that_are_not_plain_names_never_reach_sql(aws):
    catalog = {"Catalog": "AwsDataCatalog", "Database": DATABASE, "TableName": 'x" UNION SELECT 1 --'}
    aws.sagemaker.add_response("describe_feature_group", described(OfflineStoreConfig={
        "S3StorageConfig": {"S3Uri": SETTINGS["offline_store_s3_uri"]}, "DataCatalogConfig": catalog}), DESCRIBE)
    with pytest.raises(LabelStoreError, match="unexpected Glue name"):
        aws.store().as_of(5.0)


def test_as_of_sql_takes_quoted_glue_names_and_nothing_looser():
    assert f"FROM {QUOTED_TABLE} WHERE" in as_of_sql(QUOTED_TABLE, 1.0)
    assert "FROM labels WHERE" in as_of_sql("labels", 1.0)
    for bad in ('"db"."t" --', "labels--", '"a"b"', "x y", '"db".'):
        with pytest.raises(ValueError, match="not a table name"):
            as_of_sql(bad, 1.0)


# -- errors ----------------------------------------------------------------------------------


def test_a_client_error_becomes_a_label_store_error_naming_call_and_code(aws):
    aws.runtime.add_client_error("put_record", service_error_code="AccessDeniedException", http_status_code=403,
                                 service_message="User is not authorized to perform: sagemaker:PutRecord")
    with pytest.raises(LabelStoreError) as error:
        aws.store().append([LabelVersion(record("images/a.jpg", 1.0))])
    message = str(error.value)
    assert ("append: 0 version(s) written, then images/a.jpg: sagemaker-featurestore-runtime.put_record failed: "
            "AccessDeniedException: User is not authorized to perform: sagemaker:PutRecord") == message
    assert SECRET not in message and CREDENTIALS["aws_access_key_id"] not in message


def test_botocore_own_errors_become_label_store_errors_too():
    # an unstubbed client on a closed local port, tried once: nothing can reach AWS
    runtime = client("sagemaker-featurestore-runtime", endpoint_url="http://127.0.0.1:9",
                     config=Config(retries={"total_max_attempts": 1}))
    version = LabelVersion(record("images/a.jpg", 1.0))
    # a request botocore refuses before sending it (settings validation normally rules this one out)
    unchecked = FeatureStoreSettings.model_construct(**{**SETTINGS, "feature_group_name": ""})
    with pytest.raises(LabelStoreError, match="put_record failed: ParamValidationError: .*FeatureGroupName"):
        FeatureStoreLabelStore(unchecked, client("sagemaker"), runtime, client("athena")).append([version])
    # and one that cannot be sent
    with pytest.raises(LabelStoreError, match="put_record failed: EndpointConnectionError"):
        FeatureStoreLabelStore(FeatureStoreSettings(**SETTINGS), client("sagemaker"), runtime, client("athena")).append([version])


# -- construction, settings and the IAM policy -----------------------------------------------


def test_from_session_builds_the_three_clients_in_the_session_region():
    store = FeatureStoreLabelStore.from_session(FeatureStoreSettings(**SETTINGS), boto3.Session(region_name=REGION, **CREDENTIALS))
    services = [c.meta.service_model.service_name for c in (store.sagemaker, store.runtime, store.athena)]
    assert services == ["sagemaker", "sagemaker-featurestore-runtime", "athena"]
    assert {c.meta.region_name for c in (store.sagemaker, store.runtime, store.athena)} == {REGION}


@pytest.mark.parametrize("change", [{"offline_store_s3_uri": "https://bucket/x"}, {"feature_group_name": "bad name"},
                                    {"role_arn": "arn:aws:iam::123:role/x"}, {"poll_interval_s": 0}, {"unknown": 1}])
def test_settings_refuse_what_aws_would(change):
    with pytest.raises(ValueError):
        FeatureStoreSettings(**{**SETTINGS, **change})


def test_the_iam_policy_grants_named_actions_on_named_resources():
    policy = json.loads(POLICY.read_text())
    why = json.loads(POLICY.with_name("feature_store_policy_why.json").read_text())
    statements = policy["Statement"]
    listed = lambda value: value if isinstance(value, list) else [value]  # noqa: E731
    actions = [a for s in statements for a in listed(s["Action"])]
    resources = [r for s in statements for r in listed(s["Resource"])]
    assert policy["Version"] == "2012-10-17" and all(s["Effect"] == "Allow" for s in statements)
    assert not [a for a in actions if "*" in a], "no wildcard action"
    assert "*" not in resources
    # the only wildcards: object keys under a prefix, whose names Feature Store and Athena choose
    assert [r for r in resources if "*" in r] == ["arn:${Partition}:s3:::${OfflineStoreBucket}/${OfflineStorePrefix}/*",
                                                  "arn:${Partition}:s3:::${AthenaOutputBucket}/${AthenaOutputPrefix}/*"]
    assert {s["Sid"] for s in statements} == set(why["statements"]), "every statement has its reason"
    placeholders = set(re.findall(r"\$\{(\w+)\}", POLICY.read_text()))
    assert placeholders == set(why["placeholders"])
    pass_role = next(s for s in statements if s["Action"] == ["iam:PassRole"])
    assert pass_role["Condition"] == {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}
    for needed in ("sagemaker:DescribeFeatureGroup", "sagemaker:CreateFeatureGroup", "sagemaker:PutRecord",
                   "athena:StartQueryExecution", "athena:GetQueryExecution", "athena:GetQueryResults", "athena:StopQueryExecution",
                   "glue:GetTable", "glue:GetDatabase", "glue:GetPartitions", "s3:GetObject", "s3:PutObject", "s3:ListBucket"):
        assert needed in actions
