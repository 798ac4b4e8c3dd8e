"""The frames' bucket: where the devices upload sampled frames (`{prefix}/raw/...`, see
`device.uploader`). One implementation serves both kinds of plant: S3 speaks the same API on AWS
and on site (MinIO, Ceph, moto in the tests), so "AWS or on site" is only the endpoint.

Every read is bounded (`max_object_bytes`): an object in the bucket is untrusted input.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict, Field, field_validator

from device.config import check_key_prefix

MAX_PRESIGN_S = 7 * 24 * 3600  # SigV4's limit for a presigned URL


class StorageSettings(BaseModel):
    """`storage` in cloud.yaml: the bucket the devices upload to (their `upload` section)."""

    model_config = ConfigDict(extra="forbid")

    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
    prefix: str = Field("edge-inspect", pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$",
                        description="the devices' upload.prefix")
    endpoint_url: str | None = Field(None, pattern=r"^https?://",
                                     description="an S3-compatible store on site (MinIO...); none on AWS")
    region: str | None = Field(None, pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")
    ca_bundle: Path | None = Field(None, description="CA certificates for an on-site endpoint's TLS")
    max_object_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="larger objects are set aside unread")

    _prefix = field_validator("prefix")(check_key_prefix)

    @property
    def raw_prefix(self) -> str:
        return f"{self.prefix}/raw/"


class StorageError(RuntimeError):
    """A bucket call failed; the message names the call and the key, never a credential."""


class ObjectTooLarge(StorageError):
    pass


class ObjectMissing(StorageError):
    """The key names no object (never uploaded, or deleted since it was listed)."""


MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


class ObjectStore:
    def __init__(self, settings: StorageSettings, client: Any) -> None:
        self.settings, self.client = settings, client

    @classmethod
    def from_settings(cls, settings: StorageSettings) -> ObjectStore:
        import boto3

        client = boto3.client(
            "s3", endpoint_url=settings.endpoint_url, region_name=settings.region,
            verify=str(settings.ca_bundle) if settings.ca_bundle else None,
            # SigV4 presigned URLs everywhere (botocore still presigns SigV2 for some regions/endpoints)
            config=Config(signature_version="s3v4", retries={"mode": "standard", "max_attempts": 5},
                          connect_timeout=10, read_timeout=60),
        )
        return cls(settings, client)

    @property
    def bucket(self) -> str:
        return self.settings.bucket

    def _fail(self, call: str, key: str, exc: Exception) -> StorageError:
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            detail = f"{error.get('Code', 'Unknown')}: {error.get('Message', '')}".rstrip(": ")
        else:
            detail = " ".join(str(exc).split())
        return StorageError(f"s3.{call} s3://{self.bucket}/{key} failed: {detail}")

    def list_keys(self, prefix: str, start_after: str = "") -> Iterator[str]:
        """Keys under `prefix`, in S3's (lexical) order, after `start_after`."""
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix, **({"StartAfter": start_after} if start_after else {}))
            for page in pages:
                for item in page.get("Contents", []):
                    yield item["Key"]
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("list_objects_v2", prefix, exc) from exc

    def read(self, key: str, limit: int | None = None, limit_name: str = "") -> bytes:
        """The object's bytes; refused unread when larger than `limit` (named `limit_name` in the
        error; max_object_bytes unless a smaller limit is given: a sidecar is a few KB, see
        cloud.ingest.frames), with ObjectMissing when there is no such object."""
        if limit is None or limit >= self.settings.max_object_bytes:
            limit, limit_name = self.settings.max_object_bytes, "storage.max_object_bytes"
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            if response.get("ContentLength", 0) > limit:
                response["Body"].close()
                raise ObjectTooLarge(f"s3://{self.bucket}/{key} is {response['ContentLength']} bytes; "
                                     f"the limit ({limit_name}) is {limit}")
            data = response["Body"].read(limit + 1)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in MISSING_CODES:
                raise ObjectMissing(f"s3://{self.bucket}/{key}: no such object (never uploaded, or deleted)") from None
            raise self._fail("get_object", key, exc) from exc
        except BotoCoreError as exc:
            raise self._fail("get_object", key, exc) from exc
        if len(data) > limit:
            raise ObjectTooLarge(f"s3://{self.bucket}/{key} is over {limit} bytes ({limit_name})")
        return data

    def presigned_url(self, key: str, expires_s: int) -> str:
        """A GET URL that a labeling tool's browser can open without credentials."""
        try:
            return self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=min(expires_s, MAX_PRESIGN_S))
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("generate_presigned_url", key, exc) from exc


RAW_KEY = re.compile(
    r"^(?P<prefix>.+)/raw/(?P<thing>[A-Za-z0-9][A-Za-z0-9_-]{0,63})/(?P<camera>[A-Za-z0-9][A-Za-z0-9_-]{0,63})/"
    r"(?P<y>[0-9]{4})/(?P<m>[0-9]{2})/(?P<d>[0-9]{2})/(?P<sha256>[0-9a-f]{64})\.jpg$")
