"""A rollout judges on its own measurements, end to end: two real daemons (canary and fleet) on
mosquitto, each fed a video of scratched tags so it alerts; an MLflow registry on disk; the
on-site deployer; and NO `cloud serve` listening. The fleet store holds history from an earlier
rollout (what made the old rule skip its baseline, issue 21 severe 1).

- a version that alerts exactly like its predecessor (the same weights, other bytes) is promoted
  and becomes production (the old rule read "N alerts after the swap, 0 before" and rejected it);
- then a blind version (every class score x 0: a valid detector that detects nothing) is rolled
  back, marked Rejected, and the lines serve the good version again (the old rule promoted it:
  "0 before, 0 after: too few to judge")."""

from __future__ import annotations

import time

import pytest
from conftest import REPO
from daemon_helpers import SCRATCHED
from mosquitto import Subscriber
from pipeline_helpers import version_files
from rollout_helpers import blind_model, line_models, onsite_config, start_lines, twin_model

from cloud.deploy.backends import onsite_rollout
from cloud.deploy.fleet_store import SqliteFleetStore
from cloud.deploy.observations import parse
from cloud.registry.mlflow_registry import MlflowRegistry
from cloud.registry.registry import Approval, DeploymentStatus, production
from cloud.settings import load_cloud_config
from device import messages
from device.contracts import ModelIdentity
from device.detector import file_sha256
from edge_inspect.demo import demo_video

V1 = REPO / "device" / "models" / "metal-tags-yolov8n.onnx"
THINGS = ("line-1", "line-2")
WINDOW_MIN = 0.2


def busy_video(path):
    """A scratched tag (two or three scratches each) every 2.2 s: 1.2 s held, 1 s of gap, in
    which the defects end (`events.end_after_s` below), so every window holds several alerts on a
    model that sees scratches, even on a loaded machine that drops frames."""
    return demo_video(path, SCRATCHED, hold_s=1.2, gap_s=1.0, fps=10)


def earlier_history(state_path, now: float) -> None:
    """What an earlier rollout left: the lines' model messages and its watcher's listening, ten
    minutes ago (nobody has listened since)."""
    store = SqliteFleetStore(state_path)
    old = ModelIdentity(name="metal-tags", version="1", sha256=file_sha256(V1))
    for thing in THINGS:
        message = messages.model_serving(thing, old, now - 900, None)
        store.record(parse(f"edge-inspect/{thing}/{message.subtopic}", message.body, "edge-inspect", now - 660))
    store.listening("earlier-rollout", now - 700)
    store.stopped("earlier-rollout", now - 600)
    store.close()


@pytest.fixture
def plant(tmp_path, broker):
    video = busy_video(tmp_path / "line.avi")
    alerts = Subscriber(broker.port, "edge-inspect/+/events")
    paths = line_models(tmp_path, THINGS, V1)
    daemons = start_lines(broker.port, video, paths)
    registry = MlflowRegistry(tmp_path / "registry", "metal-tags")
    twin = twin_model(V1, tmp_path / "twin.onnx")
    blind = blind_model(V1, tmp_path / "blind.onnx")
    for n, source in ((1, V1), (2, twin), (3, blind)):
        registry.register(*version_files(tmp_path / f"v{n}", f"run-{n}", source))
    registry.decide("1", Approval.APPROVED, "plant", None)
    registry.record_deployment("1", DeploymentStatus.DEPLOYED, "the lines run it")
    state = tmp_path / "deploy.sqlite"
    earlier_history(state, time.time())
    config = onsite_config(tmp_path, broker.port, paths, deploy={
        "state_path": str(state), "quantize": False,
        "promotion": {"window_minutes": WINDOW_MIN, "poll_seconds": 0.5, "min_ratio": 0.25, "max_ratio": 4.0,
                      "min_alerts": 2, "swap_timeout_minutes": 1.0}})
    try:
        # both lines alert on the current model before anything is approved
        assert alerts.wait_for(lambda s: {p["thing"] for p in s.payloads("events")} >= set(THINGS), 60), \
            daemons["line-1"].log_text()[-2000:]
        yield load_cloud_config(config), registry, daemons, {"v1": V1, "v2": twin, "v3": blind}
    finally:
        alerts.close()
        for d in daemons.values():
            d.stop()


def rollout(config, version: str) -> tuple[object, list[str]]:
    """`cloud models approve VERSION` as it runs on site, in this process: approved, then rolled
    out with the rollout's own watcher and no other listener."""
    lines: list[str] = []
    MlflowRegistry(config.pipeline.registry.mlflow.path, "metal-tags").decide(version, Approval.APPROVED, "test", None)
    with onsite_rollout(config, say=lines.append) as r:
        result = r.run(version)
    print("\n".join(lines))  # shown with -rP: the operator's view
    return result, lines


def test_an_equal_version_is_promoted_and_a_blind_one_rolled_back_with_no_serve_running(plant, broker):
    config, registry, daemons, models = plant
    sha = {name: file_sha256(path) for name, path in models.items()}

    result, lines = rollout(config, "2")
    # history in the store did not stand in for a measurement: the rollout measured the baseline
    assert any("baseline: nobody listened to line-1" in line for line in lines), lines
    assert result.outcome == "deployed", "\n".join(lines)
    assert any("canary: promote" in line for line in lines)
    v2 = registry.get("2")
    assert v2.deployment.status is DeploymentStatus.DEPLOYED and production(registry).version == "2"

    result, lines = rollout(config, "3")
    assert any("baseline: nobody listened to line-1" in line for line in lines), lines
    assert (result.outcome, result.stage) == ("rolled back", "canary"), "\n".join(lines)
    assert "alert rate out of band" in result.reason and "line-1: 0 alerts" in result.reason, result.reason
    v3 = registry.get("3")
    assert v3.status is Approval.REJECTED and "rolled back" in v3.reason and v3.deployment is None
    assert production(registry).version == "2", "a rollback leaves the last deployed version as production"

    # both lines serve the good version again; the fleet line never saw the blind one
    models_seen = Subscriber(broker.port, "edge-inspect/+/model")
    try:
        assert models_seen.wait_for(lambda s: {p["thing"]: p["model"]["sha256"] for p in s.payloads("model")}
                                    == {"line-1": sha["v2"], "line-2": sha["v2"]}, 30)
    finally:
        models_seen.close()
    line2_log = daemons["line-2"].log_text()
    assert sha["v3"][:12] not in line2_log
    assert all(d.proc.poll() is None for d in daemons.values())
