"""`edge-inspect loop`: the closed loop rehearsed on this machine (cloud/rehearsal). Wiring only:
private peers on loopback (mosquitto, moto's S3 server in this process), then the rehearsal."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edge_inspect.demo import start_mosquitto
from edge_inspect.loopback import free_port, wait_until_listening

# moto accepts any key; these name what they are, and never leave this machine
REHEARSAL_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "rehearsal", "AWS_SECRET_ACCESS_KEY": "rehearsal-only",
                         "AWS_DEFAULT_REGION": "us-east-1"}


class LoopError(RuntimeError):
    """The rehearsal could not run or finish; one line for the terminal, no traceback."""


@contextmanager
def s3_endpoint(bucket: str) -> Iterator[str]:
    """moto's S3 server on a free loopback port, with `bucket` made; in memory, gone at exit."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        raise LoopError(f"the loop needs moto's S3 server: pip install 'edge-inspect[loop]' ({exc})") from None
    import boto3

    # its web server logs every request at INFO: thousands of lines on the loop's terminal
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        if not wait_until_listening(port, 30):
            raise LoopError("moto's S3 server did not start")
        url = f"http://127.0.0.1:{port}"
        boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(Bucket=bucket)
        yield url
    finally:
        server.stop()


@contextmanager
def broker(workdir: Path) -> Iterator[int]:
    proc, port = start_mosquitto(workdir)
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def run_loop(settings, labels_csv: Path, model: Path, command: str) -> int:
    """0 when the targets are met, 3 when the report says they are not."""
    from cloud.rehearsal.line import LineError
    from cloud.rehearsal.plan import BUCKET, Peers
    from cloud.rehearsal.rehearse import rehearse
    from cloud.rehearsal.turns import RehearsalError

    os.environ.update(REHEARSAL_CREDENTIALS)  # the daemon and the cloud side talk to the private S3 only
    # SIGTERM (a supervisor, `kill`) ends the rehearsal as Ctrl-C does: through every `finally`, so
    # the line's daemon and the private peers stop with it instead of running on
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    settings.out.mkdir(parents=True, exist_ok=True)
    try:
        with broker(settings.out) as port, s3_endpoint(BUCKET) as s3_url:
            report = rehearse(settings, labels_csv, model, Peers(port, s3_url), command,
                              say=lambda line: print(line, flush=True))
    except (RehearsalError, LineError) as exc:
        raise LoopError(str(exc)) from None
    print(f"{report.outcome}; after: drifted mAP50 {report.after.drifted['map50']:.4f}, undrifted "
          f"{report.after.undrifted['map50']:.4f} (before {report.before.drifted['map50']:.4f}, "
          f"{report.before.undrifted['map50']:.4f}); {report.minutes:.1f} min; targets "
          f"{'met' if report.targets_met else 'not met'}")
    return 0 if report.targets_met else 3
