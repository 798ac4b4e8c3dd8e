"""Spool and upload throughput: frames per second into the durable spool (JPEG encode, two
fsynced atomic writes per frame), and frames per second from the spool to S3 over loopback
(moto's S3 server; needs the `dev` extra). Run on the box you plan to buy:

    python benchmarks/spool_upload.py [--frames 300] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import boto3
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from device.config import UploadConfig  # noqa: E402
from device.images import read_image  # noqa: E402
from device.spool import Spool  # noqa: E402
from device.uploader import Uploader, make_s3_client  # noqa: E402
from edge_inspect.loopback import free_port, wait_until_listening  # noqa: E402


def frames(count: int) -> list[np.ndarray]:
    """The shipped sample photos, each made distinct by one changed pixel (distinct sha256)."""
    base = [read_image(p) for p in sorted((REPO / "samples").glob("*.jpg"))]
    out = []
    for i in range(count):
        image = base[i % len(base)].copy()
        image[0, 0] = (i % 256, (i // 256) % 256, 7)
        out.append(image)
    return out


def sidecar(i: int) -> dict:
    return {"schema_version": 1, "thing": "bench", "camera": "cam", "frame_time": "2026-01-01T00:00:00.000Z",
            "frame_time_epoch": 1767225600.0 + i, "width": 450, "height": 300,
            "model": {"name": "m", "version": "1", "sha256": "0" * 64}, "detections": [],
            "strategies": ["bench"], "tags": []}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    images = frames(args.frames)
    with tempfile.TemporaryDirectory(prefix="spool-bench-", dir=os.environ.get("SPOOL_BENCH_DIR")) as tmp:
        spool = Spool(Path(tmp) / "spool", max_bytes=10**10)
        print(f"spooling {args.frames} frames (450x300, JPEG q90, fsync) ...", flush=True)
        started = time.perf_counter()
        for i, image in enumerate(images):
            spool.put(image, sidecar(i))
        spool_fps = args.frames / (time.perf_counter() - started)
        print(f"  {spool_fps:.1f} frames/s into the spool", flush=True)

        port = free_port()
        moto = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until_listening(port, 20, interval=0.1)
            os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"})
            config = UploadConfig(bucket="bench", endpoint_url=f"http://127.0.0.1:{port}", region="us-east-1")
            boto3.client("s3", endpoint_url=config.endpoint_url, region_name="us-east-1").create_bucket(Bucket="bench")
            stop = threading.Event()
            uploader = Uploader(spool, config, "bench", lambda message: None, stop, make_s3_client(config))
            print(f"uploading them to S3 on loopback (moto server, port {port}) ...", flush=True)
            started = time.perf_counter()
            uploader.start()
            while len(spool):
                time.sleep(0.01)
            upload_fps = args.frames / (time.perf_counter() - started)
            stop.set()
            uploader.join(5)
        finally:
            moto.terminate()
            moto.wait(10)
    print(f"  {upload_fps:.1f} frames/s to S3 (each frame: a JPEG and a sidecar, confirmed, then deleted)")
    result = {"frames": args.frames, "spool_fps": round(spool_fps, 1), "upload_fps": round(upload_fps, 1),
              "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
