"""The registry on AWS: SageMaker Model Registry. A version is a model package in the model group's
model package group; its files sit in S3 under content-addressed keys
(`<prefix>/<group>/sha256/<digest>/<file>`: a key names exactly one content, so a deployment can
pin it and nothing can change under it).

What the package holds:
- `ModelApprovalStatus`: PendingManualApproval -> Approved | Rejected (the same values on site);
- `CustomerMetadataProperties`: the files' S3 URIs, the run id, the test figures of candidate and
  production, the dataset fingerprint and as-of time, the parent version, who decided and when,
  and the deployment status the deployment state machine records (`deployment_status`: deployed
  or ship-failed, `deployment_at`, `deployment_reason`; UpdateModelPackage merges these keys);
- `ModelMetrics.ModelQuality.Statistics`: the whole version card (JSON) in S3;
- `MetadataProperties.CommitId`: the code version; `SourceUri`: the ONNX.
No `InferenceSpecification`: the model is served by the edge daemon, not by a SageMaker endpoint.
`ClientToken` is derived from the run id, so a retried registration cannot make a second version.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from cloud.aws import AwsError, aws_call
from cloud.pipeline.card import VersionCard, now_iso
from cloud.registry.registry import (
    CHECKPOINT,
    DEVICE_CARD,
    FILES,
    ONNX,
    VERSION_CARD,
    Approval,
    Deployment,
    DeploymentStatus,
    ModelVersion,
    RegistryError,
    UnreadableVersion,
    VersionFiles,
    by_run,
    check_decision,
    first_line,
    readable,
    require_files,
)
from cloud.settings import SageMakerRegistrySettings

URI_KEYS = {ONNX: "onnx_uri", CHECKPOINT: "checkpoint_uri", DEVICE_CARD: "device_card_uri", VERSION_CARD: "card_uri"}
# CustomerMetadataProperties values: at most 256 of these characters (botocore's service model)
_METADATA_VALUE = re.compile(r"^[\w\s.:/=+\-@]{1,256}$")
_DIGEST_IN_KEY = re.compile(r"/sha256/(?P<digest>[0-9a-f]{64})/[^/]+$")  # `_upload`'s content-addressed keys
_S3_URI = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])/(?P<key>[A-Za-z0-9_.\-/]+)$")


class RegistryAwsError(AwsError, RegistryError):
    pass


def metadata_value(name: str, value: object) -> str:
    text = str(value)
    if not _METADATA_VALUE.match(text):
        raise RegistryError(f"{name} {text[:40]!r} cannot be stored in SageMaker's customer metadata "
                            "(letters, digits, spaces and _.:/=+-@ only, at most 256)")
    return text


def metadata_text(text: str) -> str:
    """Free text (a failure's reason) as a metadata value: other characters become spaces."""
    cleaned = " ".join(re.sub(r"[^\w\s.:/=+\-@]", " ", text).split())[:256]
    return cleaned or "-"


def client_token(run_id: str) -> str:
    return hashlib.sha256(run_id.encode()).hexdigest()[:36]


class SageMakerRegistry:
    def __init__(self, settings: SageMakerRegistrySettings, group: str, sagemaker: Any, s3: Any) -> None:
        self.settings, self.group, self.sagemaker, self.s3 = settings, group, sagemaker, s3
        self._group_checked = False

    @classmethod
    def from_settings(cls, settings: SageMakerRegistrySettings, group: str, region: str | None) -> SageMakerRegistry:
        import boto3

        session = boto3.Session(region_name=region)
        return cls(settings, group, session.client("sagemaker"), session.client("s3"))

    def _call(self, operation: str, **params: Any) -> dict[str, Any]:
        return aws_call(self.sagemaker, operation, RegistryAwsError, **params)

    def _ensure_group(self) -> None:
        if self._group_checked:
            return
        try:
            self._call("describe_model_package_group", ModelPackageGroupName=self.group)
        except RegistryAwsError as exc:
            if exc.code != "ValidationException":  # what SageMaker answers for a missing group
                raise
            self._call("create_model_package_group", ModelPackageGroupName=self.group,
                       ModelPackageGroupDescription="edge-inspect detector versions")
        self._group_checked = True

    # --- files ----------------------------------------------------------------------------------
    def _upload(self, path: Path) -> str:
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        key = f"{self.settings.prefix}/{self.group}/sha256/{digest}/{path.name}"
        # no SSE header: the bucket's default (the product's KMS key) applies; the header alone would
        # pick the account's aws/s3 key instead
        aws_call(self.s3, "put_object", RegistryAwsError, Bucket=self.settings.bucket, Key=key, Body=data)
        return f"s3://{self.settings.bucket}/{key}"

    def _read(self, uri: str) -> bytes:
        match = _S3_URI.match(uri)
        if not match or match["bucket"] != self.settings.bucket or ".." in match["key"].split("/"):
            raise RegistryError(f"{uri!r} is not an object of the registry's bucket {self.settings.bucket}")
        response = aws_call(self.s3, "get_object", RegistryAwsError, Bucket=match["bucket"], Key=match["key"])
        data = response["Body"].read()
        named = _DIGEST_IN_KEY.search(match["key"])
        # a key `_upload` made names its content: bytes that are not that content were replaced in the bucket
        if named is not None and hashlib.sha256(data).hexdigest() != named["digest"]:
            raise RegistryError(f"{uri} does not hold the content its key names: the object was replaced in the "
                                "bucket; it is not shipped or trained from")
        return data

    # --- versions -------------------------------------------------------------------------------
    def register(self, files: VersionFiles, card: VersionCard, status: Approval = Approval.PENDING,
                 decided_by: str | None = None) -> ModelVersion:
        self._ensure_group()
        existing = by_run(self, card.run_id)
        if existing is not None:
            return existing
        missing = files.missing()
        if missing:
            raise RegistryError(f"cannot register run {card.run_id}: {files.folder} lacks {missing}")
        uris = {URI_KEYS[name]: self._upload(files.path(name)) for name in FILES}
        metadata = {**uris, **self._figures(card)}
        if status is not Approval.PENDING:
            metadata.update(decided_by=metadata_value("decided_by", decided_by or "edge-inspect"), decided_at=now_iso())
        made = self._call(
            "create_model_package", ModelPackageGroupName=self.group, ClientToken=client_token(card.run_id),
            ModelPackageDescription=f"run {card.run_id}: " + "; ".join(card.gate.reasons)[:900],
            ModelApprovalStatus=status.value, SourceUri=uris["onnx_uri"],
            MetadataProperties={"CommitId": card.code_version[:1024], "GeneratedBy": card.run_id},
            ModelMetrics={"ModelQuality": {"Statistics": {"ContentType": "application/json",
                                                          "S3Uri": uris["card_uri"]}}},
            CustomerMetadataProperties=metadata)
        return self._version(made["ModelPackageArn"])

    @staticmethod
    def _figures(card: VersionCard) -> dict[str, str]:
        figures = {"run_id": metadata_value("run_id", card.run_id),
                   "dataset_fingerprint": card.dataset.fingerprint, "as_of": str(card.dataset.as_of),
                   "parent_version": card.parent_version or "none"}
        for who, scores in (("candidate", card.evaluation.candidate), ("production", card.evaluation.production)):
            if scores is not None:
                figures.update({f"{who}_map50": f"{scores.map50:.4f}", f"{who}_map50_95": f"{scores.map50_95:.4f}",
                                f"{who}_recall_at_alert": f"{scores.recall_at_alert:.4f}"})
        return figures

    def _arns(self) -> list[str]:
        arns, token = [], None
        while True:
            page = self._call("list_model_packages", ModelPackageGroupName=self.group, SortBy="CreationTime",
                              SortOrder="Ascending", MaxResults=100, **({"NextToken": token} if token else {}))
            arns += [p["ModelPackageArn"] for p in page.get("ModelPackageSummaryList", [])]
            token = page.get("NextToken")
            if not token:
                return arns

    def _version(self, arn: str) -> ModelVersion:
        found = self._call("describe_model_package", ModelPackageName=arn)
        meta = found.get("CustomerMetadataProperties", {})
        if "card_uri" not in meta:
            raise RegistryError(f"{arn} was not registered by edge-inspect (no card_uri in its metadata)")
        card = VersionCard.model_validate_json(self._read(meta["card_uri"]))
        description = found.get("ApprovalDescription") or ""
        deployment = None
        if meta.get("deployment_status"):
            deployment = Deployment(status=DeploymentStatus(meta["deployment_status"]), at=meta.get("deployment_at", ""),
                                    reason=meta.get("deployment_reason", ""))
        return ModelVersion(
            group=self.group, version=str(found["ModelPackageVersion"]), status=Approval(found["ModelApprovalStatus"]),
            created=found["CreationTime"].isoformat(timespec="seconds"), run_id=meta.get("run_id", card.run_id),
            card=card, decided_by=meta.get("decided_by"), decided_at=meta.get("decided_at"),
            reason=description.split(": ", 1)[1] if ": " in description else None,
            location=arn, deployment=deployment)

    def _entry(self, arn: str) -> ModelVersion | UnreadableVersion:
        try:
            return self._version(arn)
        except RegistryAwsError as exc:
            if exc.code in ("ThrottlingException", "InternalFailure", "ServiceUnavailable"):
                raise  # the service, not this version: the whole listing is retried
            reason = first_line(exc)
        except Exception as exc:  # a lost card object, an edited one: this version only
            reason = first_line(exc)
        return UnreadableVersion(group=self.group, version=arn.rsplit("/", 1)[-1],
                                 reason=f"its version card cannot be read: {reason}")

    def entries(self) -> list[ModelVersion | UnreadableVersion]:
        self._ensure_group()
        return sorted((self._entry(arn) for arn in self._arns()),
                      key=lambda v: int(v.version) if v.version.isdigit() else 0)

    def versions(self) -> list[ModelVersion]:
        return readable(self.entries())

    def _arn(self, version: str) -> str:
        if not str(version).isdigit():
            raise RegistryError(f"version {version!r} is not a number")
        # the ARN of a version is the group's ARN path plus the version number
        group = self._call("describe_model_package_group", ModelPackageGroupName=self.group)["ModelPackageGroupArn"]
        return group.replace(":model-package-group/", ":model-package/") + f"/{int(version)}"

    def get(self, version: str) -> ModelVersion:
        try:
            return self._version(self._arn(version))
        except RegistryAwsError as exc:
            if exc.code == "ValidationException":
                raise RegistryError(f"{self.group} has no version {version!r}") from None
            raise

    def decide(self, version: str, status: Approval, by: str, reason: str | None) -> ModelVersion:
        current = self.get(version)
        check_decision(current, status, by, reason)
        self._call("update_model_package", ModelPackageArn=current.location, ModelApprovalStatus=status.value,
                   ApprovalDescription=f"{status.value} by {by}: {reason or ''}"[:1024],
                   CustomerMetadataProperties={"decided_by": metadata_value("decided_by", by), "decided_at": now_iso()})
        return self.get(version)

    def record_deployment(self, version: str, status: DeploymentStatus, reason: str = "") -> ModelVersion:
        current = self.get(version)
        self._call("update_model_package", ModelPackageArn=current.location, CustomerMetadataProperties={
            "deployment_status": status.value, "deployment_at": now_iso(), "deployment_reason": metadata_text(reason)})
        return self.get(version)

    def download(self, version: str, dest: Path) -> VersionFiles:
        found = self._call("describe_model_package", ModelPackageName=self._arn(version))
        meta = found.get("CustomerMetadataProperties", {})
        dest.mkdir(parents=True, exist_ok=True)
        for name, key in URI_KEYS.items():
            (dest / name).unlink(missing_ok=True)
            if key in meta:
                (dest / name).write_bytes(self._read(meta[key]))
        return require_files(VersionFiles(folder=dest), version)
