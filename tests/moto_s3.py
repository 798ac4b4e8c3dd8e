"""moto's S3 in server mode: a real HTTP endpoint on loopback."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from edge_inspect.loopback import free_port, wait_until_listening

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


class MotoS3:
    def __init__(self, port: int, logdir: Path) -> None:
        self.port, self.logdir = port, logdir
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> MotoS3:
        moto = Path(sys.executable).with_name("moto_server")
        self.proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=(self.logdir / "moto.log").open("a"))
        if not wait_until_listening(self.port, 30, interval=0.1):
            raise RuntimeError("moto_server did not start")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def client(self):
        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def objects(self, bucket: str) -> dict[str, bytes]:
        s3 = self.client()
        keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                for o in page.get("Contents", [])]
        return {k: s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def set_credentials() -> None:
    os.environ.update(CREDENTIALS)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    """moto's S3 server, one per test module; each test makes its own bucket in it."""
    server = MotoS3(free_port(), tmp_path_factory.mktemp("moto")).start()
    yield server
    server.stop()
