"""The label store on AWS: a SageMaker Feature Store feature group, offline store only, read back
with Athena.

- Writing: `put_record` per version into the offline store. The offline store keeps every record
  ever put (it is append-only S3 data under a Glue table), which is exactly the store's contract.
- Reading: the Glue table Feature Store creates for the offline store, queried by Athena with the
  same `as_of.as_of_sql` the on-site store runs in DuckDB.
- Feature Store replicates put records to the offline store within minutes (AWS quotes up to ~15),
  so a version appended just now may not be in `as_of`/`history` yet.
- Every AWS call goes through the boto3 clients passed in (tests pass clients under botocore's
  `Stubber`); the caller's IAM policy is `feature_store_policy.json` next to this file.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cloud.aws import AwsError, aws_call
from cloud.label_table import LabelRecord, LabelTableError, safe_relative_path
from cloud.labels.as_of import as_of_sql, check_as_of
from cloud.labels.known import known_sql
from cloud.labels.rules import SetAside, check_versions, versions_from_rows
from cloud.labels.store import LabelStoreError
from cloud.labels.versions import COLUMNS, EVENT_TIME, RECORD_ID, LabelVersion

CREATE_TIMEOUT_S = 900.0  # a feature group usually takes a minute or two to create
_S3_URI = r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$"
_GLUE_NAME = re.compile(r"^[A-Za-z0-9_\-]{1,255}$")  # what as_of_sql accepts inside double quotes


class FeatureStoreSettings(BaseModel):
    """`label_store.feature_store` in cloud.yaml."""

    model_config = ConfigDict(extra="forbid")

    feature_group_name: str = Field(pattern=r"^[a-zA-Z0-9]([_-]*[a-zA-Z0-9]){0,63}$",
                                    description="the feature group (SageMaker's naming rule)")
    role_arn: str = Field(pattern=r"^arn:aws[a-z\-]*:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+$",
                          description="the role Feature Store assumes to write the offline store to S3")
    offline_store_s3_uri: str = Field(pattern=_S3_URI, description="where the offline store's Parquet files go")
    athena_output_s3_uri: str = Field(pattern=_S3_URI, description="where Athena writes query results")
    athena_workgroup: str = Field("primary", pattern=r"^[a-zA-Z0-9._-]{1,128}$")
    kms_key_id: str | None = Field(None, pattern=r"^[a-zA-Z0-9:/_-]{1,2048}$",
                                   description="KMS key for the offline store's S3 objects (default: S3's)")
    poll_interval_s: float = Field(2.0, gt=0, description="between status checks of a query or a creation")
    query_timeout_s: float = Field(300, gt=0, description="an Athena query running longer is stopped")


class AwsCallError(AwsError, LabelStoreError):
    """An AWS call failed (see cloud.aws); `code` lets callers tell an expected error from a real one."""


def _call(client: Any, operation: str, **params: Any) -> dict[str, Any]:
    return aws_call(client, operation, AwsCallError, **params)


def _quote_literal(source_ref: str) -> str:
    """`source_ref` as an Athena (Trino) string literal. It is checked like any label-table path
    first; in a Trino literal only `'` is special (backslashes are plain), so doubling it is the
    whole escape. Control characters are refused rather than reasoned about."""
    safe_relative_path(source_ref)
    if any(ord(c) < 32 or ord(c) == 127 for c in source_ref):
        raise LabelTableError(f"source_ref {source_ref!r} contains control characters")
    return "'" + source_ref.replace("'", "''") + "'"


def _definition_differences(described: dict[str, Any]) -> list[str]:
    """How an existing feature group differs from the one this store writes (empty: it matches)."""
    differences = []
    for key, expected in (("RecordIdentifierFeatureName", RECORD_ID), ("EventTimeFeatureName", EVENT_TIME)):
        if described.get(key) != expected:
            differences.append(f"{key} is {described.get(key)!r}, expected {expected!r}")
    have = {f["FeatureName"]: f.get("FeatureType") for f in described.get("FeatureDefinitions", [])}
    for name, kind in COLUMNS.items():
        if name not in have:
            differences.append(f"feature {name!r} is missing")
        elif have[name] != kind:
            differences.append(f"feature {name!r} is {have[name]}, expected {kind}")
    differences += [f"feature {name!r} is not one of ours" for name in have if name not in COLUMNS]
    if "OfflineStoreConfig" not in described:
        differences.append("it has no offline store (the only place every version is kept)")
    return differences


class FeatureStoreLabelStore:
    def __init__(self, settings: FeatureStoreSettings, sagemaker: Any, featurestore_runtime: Any, athena: Any,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.sagemaker, self.runtime, self.athena = sagemaker, featurestore_runtime, athena
        self._sleep, self._clock = sleep, clock
        self._table: tuple[str, str, str] | None = None  # (catalog, database, table) once described
        self.set_aside: list[SetAside] = []

    @classmethod
    def from_session(cls, settings: FeatureStoreSettings, session: Any) -> FeatureStoreLabelStore:
        """The production clients, from a boto3 Session (its region and credentials)."""
        from botocore.config import Config

        config = Config(retries={"mode": "standard"})  # one put_record per version: back off on throttling
        return cls(settings, session.client("sagemaker", config=config),
                   session.client("sagemaker-featurestore-runtime", config=config),
                   session.client("athena", config=config))

    # -- the feature group ------------------------------------------------------------------

    def ensure_feature_group(self) -> None:
        """Create the feature group if it does not exist and wait until it is usable; an existing
        one must have our definition (appending to another shape would corrupt the store)."""
        described = self._describe()
        if described is None:
            self._create()
        else:
            self._check_definition(described)
        if described is None or described.get("FeatureGroupStatus") != "Created":
            described = self._wait_until_created()
        self._table = self._data_catalog(described)

    def _describe(self) -> dict[str, Any] | None:
        try:
            return _call(self.sagemaker, "describe_feature_group", FeatureGroupName=self.settings.feature_group_name)
        except AwsCallError as exc:
            if exc.code == "ResourceNotFound":
                return None
            raise

    def create_params(self) -> dict[str, Any]:
        """The `create_feature_group` request."""
        s3: dict[str, Any] = {"S3Uri": self.settings.offline_store_s3_uri}
        if self.settings.kms_key_id:
            s3["KmsKeyId"] = self.settings.kms_key_id
        return {
            "FeatureGroupName": self.settings.feature_group_name,
            "RecordIdentifierFeatureName": RECORD_ID,
            "EventTimeFeatureName": EVENT_TIME,
            "FeatureDefinitions": [{"FeatureName": name, "FeatureType": kind} for name, kind in COLUMNS.items()],
            # No online store: it keeps only the latest version of each record, for low-latency
            # reads we never make (as_of and history need every version: the offline store's);
            # it would only add cost and a second copy to keep consistent.
            "OnlineStoreConfig": {"EnableOnlineStore": False},
            # The Glue table is how Athena reads the offline store.
            "OfflineStoreConfig": {"S3StorageConfig": s3, "DisableGlueTableCreation": False},
            "RoleArn": self.settings.role_arn,
            "Description": "edge-inspect label store: every label row version, append-only",
        }

    def _create(self) -> None:
        try:
            _call(self.sagemaker, "create_feature_group", **self.create_params())
        except AwsCallError as exc:
            if exc.code != "ResourceInUse":  # another process created it first: wait for it as ours
                raise

    def _check_definition(self, described: dict[str, Any]) -> None:
        differences = _definition_differences(described)
        if differences:
            raise LabelStoreError(f"feature group {self.settings.feature_group_name} exists with a different definition: "
                                  + "; ".join(differences))

    def _wait_until_created(self) -> dict[str, Any]:
        latest: dict[str, Any] = {}

        def created() -> bool:
            described = self._describe()
            if described is None:  # just created: SageMaker may not show it for a moment
                return False
            latest.update(described)
            status = latest.get("FeatureGroupStatus")
            if status == "Created":
                return True
            if status != "Creating":  # CreateFailed, Deleting, DeleteFailed: never becomes usable
                reason = latest.get("FailureReason", "no reason given")
                raise LabelStoreError(f"feature group {self.settings.feature_group_name} is {status}: {reason}")
            return False

        if not self._wait(created, CREATE_TIMEOUT_S):
            raise LabelStoreError(f"feature group {self.settings.feature_group_name} still Creating after {CREATE_TIMEOUT_S:g} s")
        self._check_definition(latest)
        return latest

    def _data_catalog(self, described: dict[str, Any]) -> tuple[str, str, str]:
        """(catalog, database, table) of the offline store's Glue table, checked to be plain names
        since they end up in SQL."""
        config = described.get("OfflineStoreConfig", {}).get("DataCatalogConfig")
        if not config:
            raise LabelStoreError(f"feature group {self.settings.feature_group_name} has no Glue table for its offline store "
                                  "(created with DisableGlueTableCreation?): Athena cannot read it")
        names = (config["Catalog"], config["Database"], config["TableName"])
        bad = [n for n in names if not _GLUE_NAME.match(n)]
        if bad:
            raise LabelStoreError(f"feature group {self.settings.feature_group_name}: unexpected Glue name(s) {bad}")
        return names

    def _glue_table(self) -> tuple[str, str, str]:
        if self._table is None:
            described = self._describe()
            if described is None:
                raise LabelStoreError(f"feature group {self.settings.feature_group_name} does not exist")
            self._table = self._data_catalog(described)
        return self._table

    # -- writing ----------------------------------------------------------------------------

    def append(self, versions: Iterable[LabelVersion]) -> int:
        written = 0
        for version in check_versions(versions):  # all checked before the first is put
            record = [{"FeatureName": name, "ValueAsString": str(value)} for name, value in version.columns().items()]
            try:
                _call(self.runtime, "put_record", FeatureGroupName=self.settings.feature_group_name, Record=record,
                      TargetStores=["OfflineStore"])  # the only store the group has
            except AwsCallError as exc:
                # the versions before this one are stored; appending them again only adds exact
                # duplicates, which neither as_of nor the datasets it builds can tell apart
                raise LabelStoreError(f"append: {written} version(s) written, then {version.record.source_ref}: {exc}") from exc
            written += 1
        return written

    # -- reading ----------------------------------------------------------------------------

    def as_of(self, as_of: float) -> list[LabelRecord]:
        as_of = check_as_of(as_of)  # before any AWS call
        return [v.record for v in self._query(as_of_sql(self._quoted_table(), as_of))]

    def known(self, prefix: str) -> list[LabelVersion]:
        return self._query(known_sql(self._quoted_table(), prefix))

    def history(self, source_ref: str) -> list[LabelVersion]:
        literal = _quote_literal(source_ref)
        return self._query(f"SELECT {', '.join(COLUMNS)} FROM {self._quoted_table()} "
                           f"WHERE source_ref = {literal} ORDER BY event_time, deleted")

    def _quoted_table(self) -> str:
        _, database, table = self._glue_table()
        return f'"{database}"."{table}"'

    def _query(self, sql: str) -> list[LabelVersion]:
        """Run `sql` on Athena, wait for it, and parse every result row as a label version (a row
        that fails the rules is set aside: `set_aside`)."""
        self.set_aside = []
        catalog, database, _ = self._glue_table()
        query_id = _call(self.athena, "start_query_execution", QueryString=sql,
                         QueryExecutionContext={"Catalog": catalog, "Database": database},
                         ResultConfiguration={"OutputLocation": self.settings.athena_output_s3_uri},
                         WorkGroup=self.settings.athena_workgroup)["QueryExecutionId"]
        self._wait_for_query(query_id)
        versions, self.set_aside = versions_from_rows(self._result_rows(query_id), f"athena query {query_id}")
        return versions

    def _wait_for_query(self, query_id: str) -> None:
        def finished() -> bool:
            status = _call(self.athena, "get_query_execution", QueryExecutionId=query_id)["QueryExecution"]["Status"]
            state = status["State"]
            if state in ("FAILED", "CANCELLED"):
                reason = status.get("StateChangeReason") or status.get("AthenaError", {}).get("ErrorMessage", "no reason given")
                raise LabelStoreError(f"athena query {query_id} {state}: {reason}")
            return state == "SUCCEEDED"

        if not self._wait(finished, self.settings.query_timeout_s):
            # stop it: a forgotten query keeps scanning (and billing) in the workgroup
            _call(self.athena, "stop_query_execution", QueryExecutionId=query_id)
            raise LabelStoreError(f"athena query {query_id} did not finish within {self.settings.query_timeout_s:g} s; stopped it")

    def _result_rows(self, query_id: str) -> list[dict[str, str | None]]:
        """Every row of every page, as {column: text}. Athena returns all values as strings (None
        for NULL) and repeats the column names as the first row of the first page."""
        names: list[str | None] | None = None
        rows: list[dict[str, str | None]] = []
        token = None
        while True:
            page = _call(self.athena, "get_query_results", QueryExecutionId=query_id, MaxResults=1000,
                         **({"NextToken": token} if token else {}))
            values = [[cell.get("VarCharValue") for cell in row["Data"]] for row in page["ResultSet"]["Rows"]]
            if names is None and values:
                names, values = values[0], values[1:]
            rows += [dict(zip(names or [], row, strict=True)) for row in values]
            token = page.get("NextToken")
            if not token:
                return rows

    # -- polling ----------------------------------------------------------------------------

    def _wait(self, done: Callable[[], bool], timeout_s: float) -> bool:
        """Call `done` (which raises on failure) every poll interval until it returns True; False
        once `timeout_s` has passed. Time is `clock`/`sleep`, so tests run it without waiting."""
        deadline = self._clock() + timeout_s
        while not done():
            if self._clock() >= deadline:
                return False
            self._sleep(self.settings.poll_interval_s)
        return True
