"""Deployment on site, end to end with real parts: two real daemons (subprocesses) on one
mosquitto, an MLflow registry on disk, and `edge-inspect cloud models approve` as an operator
runs it. A good version reaches the canary first, then the fleet, and becomes production; a
corrupt one fails to ship (exit 2, one line), is marked ship-failed and Rejected, and reaches no
line. `cloud fleet` tells the truth at each step."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from cloud_helpers import cloud
from conftest import REPO
from daemon_helpers import scratch_video, wait_until
from mosquitto import Subscriber
from pipeline_helpers import version_files
from rollout_helpers import line_models, onsite_config, start_lines

from cloud.registry.mlflow_registry import MlflowRegistry
from cloud.registry.registry import Approval, DeploymentStatus, production
from device.detector import file_sha256

MODELS = REPO / "device" / "models"
V1 = MODELS / "metal-tags-yolov8n.onnx"  # what the lines run at the start
V2 = MODELS / "metal-tags-yolov8n-int8.onnx"  # another real model of the same shape: a new version
THINGS = ("line-1", "line-2")


@pytest.fixture
def plant(tmp_path, broker):
    """Two lines on the same scratch video, each serving V1 from its own watched model path; a
    registry holding V1 (Approved, deployed: production), V2 and a corrupt V3 (pending)."""
    # a scratched tag every 2.2 s, its defects ended in the gap: several alerts in every 12 s window
    # even on a loaded machine, so the canary's rate is judged on counts, not on one burst
    video = scratch_video(tmp_path / "line.avi", hold_frames=12, gap_frames=10)
    paths = line_models(tmp_path, THINGS, V1)
    daemons = start_lines(broker.port, video, paths)
    registry = MlflowRegistry(tmp_path / "registry", "metal-tags")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(V2.read_bytes()[: V2.stat().st_size // 3])  # cut short in transit
    for n, source in ((1, V1), (2, V2), (3, corrupt)):
        registry.register(*version_files(tmp_path / f"v{n}", f"run-{n}", source))
    registry.decide("1", Approval.APPROVED, "plant", None)
    registry.record_deployment("1", DeploymentStatus.DEPLOYED, "the lines run it")
    config = onsite_config(tmp_path, broker.port, paths, deploy={
        "quantize": False, "promotion": {"window_minutes": 0.2, "poll_seconds": 0.3, "min_ratio": 0.2, "max_ratio": 5.0,
                                         "min_alerts": 2, "swap_timeout_minutes": 1.5}})
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


def test_a_good_version_reaches_the_canary_first_then_the_fleet_and_a_corrupt_one_never_ships(plant):
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

    assert registry.get("2").deployment.status is DeploymentStatus.DEPLOYED and production(registry).version == "2"

    run = approve(config, "3")
    out, err = run.communicate(timeout=240)
    print(out + err)
    assert run.returncode == 2, out + err
    errors = [line for line in err.splitlines() if line.startswith("edge-inspect: error:")]
    assert len(errors) == 1 and "version 3 failed to ship" in errors[0] and "Traceback" not in err, err
    v3 = registry.get("3")
    assert v3.status is Approval.REJECTED and v3.reason.startswith("failed to ship: "), v3.reason
    assert v3.deployment.status is DeploymentStatus.SHIP_FAILED and production(registry).version == "2"
    # no line saw v3: both still serve v2, each swapped once
    view = fleet(config)
    assert {t: view[t]["sha256"] for t in THINGS} == {"line-1": v2, "line-2": v2}
    assert swaps(watch) == [("line-1", v2), ("line-2", v2)]
    assert all(d.proc.poll() is None for d in daemons.values()), "a bad model push must not stop a line"
