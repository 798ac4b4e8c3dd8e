"""Deployment on site, end to end with real parts: two real daemons (subprocesses) on one
mosquitto, an MLflow registry on disk, and `edge-inspect cloud models approve` as an operator
runs it. A good version reaches the canary first, then the fleet; a corrupt one is refused by the
canary, rolled back there, marked Rejected, and never reaches the second line. `cloud fleet`
tells the truth at each step."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from cloud_helpers import cloud, write_cloud_config
from conftest import REPO
from daemon_helpers import DaemonProcess, scratch_video, wait_until, write_config
from mosquitto import Subscriber
from pipeline_helpers import version_files

from cloud.registry.mlflow_registry import MlflowRegistry
from cloud.registry.registry import Approval
from device.detector import file_sha256
from device.model_card import card_path_for

MODELS = REPO / "device" / "models"
V1 = MODELS / "metal-tags-yolov8n.onnx"  # what the lines run at the start
V2 = MODELS / "metal-tags-yolov8n-int8.onnx"  # another real model of the same shape: a new version
THINGS = ("line-1", "line-2")


@pytest.fixture
def plant(tmp_path, broker):
    """Two lines on the same scratch video, each serving V1 from its own watched model path; a
    registry holding V1 (Approved, production), V2 and a corrupt V3 (pending)."""
    video = scratch_video(tmp_path / "line.avi")
    daemons, paths = {}, {}
    for thing in THINGS:
        folder = tmp_path / thing
        folder.mkdir()
        paths[thing] = folder / "model.onnx"
        shutil.copyfile(V1, paths[thing])
        shutil.copyfile(card_path_for(V1), card_path_for(paths[thing]))
        config = write_config(folder / "daemon.yaml", broker.port,
                              [{"id": "cam", "source": str(video), "realtime": True, "loop": True}],
                              thing_name=thing, model={"path": str(paths[thing]), "watch_interval_s": 0.2})
        daemons[thing] = DaemonProcess(config)
    registry = MlflowRegistry(tmp_path / "registry", "metal-tags")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(V2.read_bytes()[: V2.stat().st_size // 3])  # cut short in transit
    for n, source in ((1, V1), (2, V2), (3, corrupt)):
        registry.register(*version_files(tmp_path / f"v{n}", f"run-{n}", source))
    registry.decide("1", Approval.APPROVED, "plant", None)
    config = write_cloud_config(
        tmp_path / "cloud.yaml",
        label_store={"backend": "local", "local": {"path": str(tmp_path / "labels")}},
        broker={"host": "127.0.0.1", "port": broker.port, "client_id": "cloud-under-test"},
        pipeline={"state_path": str(tmp_path / "runs.sqlite"), "work_dir": str(tmp_path / "runs"),
                  "registry": {"backend": "mlflow", "mlflow": {"path": str(tmp_path / "registry")}},
                  "seed_bundled": False},
        deploy={"backend": "local", "state_path": str(tmp_path / "deploy.sqlite"), "work_dir": str(tmp_path / "ship"),
                "canary": ["line-1"], "quantize": False,
                "promotion": {"window_minutes": 0.2, "poll_seconds": 0.3, "min_ratio": 0.2, "max_ratio": 5.0,
                              "min_alerts": 2, "swap_timeout_minutes": 1.5},
                "local": {"lines": [{"thing": t, "model_path": str(paths[t])} for t in THINGS]}})
    watch = Subscriber(broker.port, "edge-inspect/+/notices")
    try:
        yield config, registry, daemons, watch
    finally:
        watch.close()
        for d in daemons.values():
            d.stop()


def fleet(config) -> dict[str, dict]:
    done = cloud(config, "fleet", "--json", timeout=60)
    assert done.returncode == 0, done.stderr
    return {row["thing"]: row for row in json.loads(done.stdout)}


def approve(config, version: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edge_inspect", "cloud", "--config", str(config), "models",
                             "approve", version, "--by", "test"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def swaps(watch) -> list[tuple[str, str]]:
    return [(n["thing"], n["model"]["sha256"]) for n in watch.payloads("notices") if n["type"] == "model_swapped"]


def test_a_good_version_reaches_the_canary_first_then_the_fleet_and_a_corrupt_one_is_rolled_back(plant):
    config, registry, daemons, watch = plant
    v1, v2 = file_sha256(V1), file_sha256(V2)

    run = approve(config, "2")
    # the canary swaps and reports it while the second line still serves v1
    assert wait_until(lambda: ("line-1", v2) in swaps(watch), 120), run.stderr.read() if run.poll() else ""
    view = fleet(config)
    assert view["line-1"]["sha256"] == v2 and view["line-1"]["version"] == "2"
    assert view["line-2"]["sha256"] == v1
    out, err = run.communicate(timeout=240)
    print(out)  # shown with -rP: the operator's view of a rollout
    assert run.returncode == 0, out + err
    assert "canary: promote" in out and "v2: deployed" in out, out
    assert swaps(watch) == [("line-1", v2), ("line-2", v2)], "the fleet line must swap only after the canary"
    view = fleet(config)
    assert {t: view[t]["sha256"] for t in THINGS} == {"line-1": v2, "line-2": v2}
    assert all(view[t]["online"] and view[t]["alerts_per_minute"] is not None for t in THINGS), view
    # the canary was watched for a whole window on the new model: it alerted (the video scratches)
    assert view["line-1"]["alerts_per_minute"] > 0, view

    run = approve(config, "3")
    out, err = run.communicate(timeout=240)
    print(out)
    assert run.returncode == 4, out + err
    assert "line-1 refused the model" in out and "rolled back" in out, out
    assert registry.get("3").status is Approval.REJECTED and "line-1 refused" in registry.get("3").reason
    # the canary serves v2 again (the rollback is a swap), the fleet line never saw v3
    assert wait_until(lambda: fleet(config)["line-1"]["sha256"] == v2, 30)
    view = fleet(config)
    assert view["line-2"]["sha256"] == v2 and view["line-1"]["last_rejection"]
    assert [thing for thing, _ in swaps(watch)].count("line-2") == 1
    assert all(d.proc.poll() is None for d in daemons.values()), "a bad model push must not stop a line"
