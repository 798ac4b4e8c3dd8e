"""How long a batch of 50 sampled frames takes from the device's `samples` message to Label Studio
tasks, on this machine, with real peers: mosquitto, moto's S3 server and a Label Studio server
(installed by scripts/label-studio.sh), the tests' own peer helpers. The frames are the shipped
photos, uploaded as a device uploads them, announced in one `samples` message.

    .venv/bin/python -m benchmarks.labeling_batch [--frames 50]

Printed per stage: ingest (download, sha256, header and decode checks of every frame), pre-labels
(the bundled model through the device's detector), and the import into Label Studio.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the tests' peer helpers: mosquitto, moto, Label Studio

from label_studio_server import LabelStudioServer, label_studio_executable  # noqa: E402
from mosquitto import Broker  # noqa: E402
from moto_s3 import MotoS3, set_credentials  # noqa: E402

from benchmarks.machine import cpu_info  # noqa: E402
from cloud.ingest.announcements import BrokerSettings, SamplesSubscriber  # noqa: E402
from cloud.ingest.state import LabelingState  # noqa: E402
from cloud.labeling.label_studio import LabelStudioLabeling, LabelStudioSettings  # noqa: E402
from cloud.labeling.loop import BatchRules, LabelingLoop  # noqa: E402
from cloud.labeling.prelabels import PreLabeler  # noqa: E402
from cloud.labeling.serve import Timers, serve  # noqa: E402
from cloud.labels.local import LocalLabelStore  # noqa: E402
from cloud.storage import ObjectStore, StorageSettings  # noqa: E402
from device import messages  # noqa: E402
from device.bundled import bundled_model_path  # noqa: E402
from edge_inspect.loopback import free_port  # noqa: E402

BUCKET, TOKEN_ENV = "plant-frames", "EDGE_INSPECT_LABEL_STUDIO_TOKEN"


def wait_for(predicate, timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(0.02)
    raise TimeoutError(what)


def batch_created(state_path: Path) -> bool:
    with sqlite3.connect(state_path) as db:
        return db.execute("SELECT COUNT(*) FROM batches").fetchone()[0] > 0


def main() -> None:
    import os

    import paho.mqtt.publish as publish
    from frames import upload_frame

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=50)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="labeling-batch-"))
    set_credentials()
    broker, s3 = Broker(work).start(), MotoS3(free_port(), work).start()
    ls = LabelStudioServer(work)
    try:
        peer = ls.start(label_studio_executable())
        os.environ[TOKEN_ENV] = peer.token
        s3.client().create_bucket(Bucket=BUCKET)
        store = ObjectStore(StorageSettings(bucket=BUCKET, prefix="edge-inspect", endpoint_url=s3.url,
                                            region="us-east-1"), s3.client())
        settings = LabelStudioSettings(url=peer.url)
        service = LabelStudioLabeling(settings, image_url=lambda bucket, key: store.presigned_url(key, 3600))
        state_path = work / "state.sqlite"
        loop = LabelingLoop(LabelingState(state_path), store, PreLabeler(bundled_model_path()), service,
                            LocalLabelStore(work / "labels"), BatchRules(batch_size=args.frames, max_wait_s=3600))
        subscriber = SamplesSubscriber(BrokerSettings(host="127.0.0.1", port=broker.port), BUCKET)
        stop = threading.Event()
        thread = threading.Thread(target=serve, args=(loop, subscriber, Timers(3600, 0.2, tick_s=0.1), stop))
        thread.start()
        if not subscriber.subscribed.wait(30):
            raise TimeoutError("serve did not subscribe")
        photos = sorted((REPO / "data" / "metal-tags" / "images").glob("*.jpg"))[: args.frames]
        keys = [upload_frame(s3.client(), BUCKET, p, frame_time=time.time()) for p in photos]
        if loop.state.pending():
            raise RuntimeError("serve's first listing saw the frames: the figure would not start at the message")
        message = messages.samples("line-1", BUCKET, keys)
        t0 = time.monotonic()
        publish.single("edge-inspect/line-1/samples", message.body, qos=1, hostname="127.0.0.1", port=broker.port)
        t_ingested = wait_for(lambda: len(loop.state.pending()) == args.frames or batch_created(state_path), 300,
                              "frames taken in")
        t_batch = wait_for(lambda: batch_created(state_path), 300, "batch made")
        t_tasks = wait_for(lambda: loop.state.batches("submitted"), 300, "tasks in Label Studio")
        stop.set()
        thread.join(30)
        cpu = cpu_info()
        print(f"{cpu['model']}, {cpu['logical_cores']} cores, ISA {' '.join(cpu.get('isa', []))}")
        print(json.dumps({"frames": args.frames, "samples_to_tasks_s": round(t_tasks - t0, 2),
                          "ingest_s": round(t_ingested - t0, 2), "prelabel_s": round(t_batch - t_ingested, 2),
                          "import_s": round(t_tasks - t_batch, 2)}))
    finally:
        ls.stop()
        s3.stop()
        broker.stop()


if __name__ == "__main__":
    main()
