"""Production is what the fleet runs, and one bad version never breaks the registry (issue 21,
severe 4 and 9): an MLflow registry on a temp SQLite, the on-site rollout with its own watcher on
a real mosquitto, `edge-inspect cloud ...` as an operator runs it.

- production() is the newest version whose rollout finished (the bundled model counts), never
  merely the newest Approved; a rollback or a failed shipment leaves the previous one;
- a version that fails to ship (a corrupt ONNX, a classifier, its model.onnx lost from the
  registry) is marked ship-failed with the reason and Rejected, exit 2 with one line, no traceback;
- a version whose card is lost is listed as unreadable; every other version is still listed, and
  the retrain trigger (what `cloud serve` opens at start) does not die on it."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest
from cloud_helpers import cloud, write_cloud_config
from conftest import METAL_TAGS, REPO, make_onnx
from pipeline_helpers import version_files
from rollout_helpers import line_models, onsite_config

from cloud.deploy.backends import onsite_rollout
from cloud.deploy.deployer import DeployError
from cloud.registry.bundled import seed_bundled
from cloud.registry.mlflow_registry import MlflowRegistry
from cloud.registry.registry import (
    ONNX,
    VERSION_CARD,
    Approval,
    DeploymentStatus,
    RegistryError,
    UnreadableVersion,
    production,
)
from cloud.settings import load_cloud_config
from device.detector import file_sha256
from device.model_card import card_path_for

V1 = REPO / "device" / "models" / "metal-tags-yolov8n.onnx"
V2 = REPO / "device" / "models" / "metal-tags-yolov8n-int8.onnx"
THINGS = ("line-1", "line-2")


def artifact(registry: MlflowRegistry, version: str, name: str) -> Path:
    """Where MLflow keeps a version's file on disk (to lose it, as a bad day would)."""
    return Path(urlparse(registry.get(version).location).path) / name


@pytest.fixture
def registry(tmp_path):
    return MlflowRegistry(tmp_path / "registry", "metal-tags")


def test_production_is_the_last_deployed_version_not_the_newest_approved(registry, tmp_path):
    seeded = seed_bundled(registry)
    assert seeded.deployment.status is DeploymentStatus.DEPLOYED, "the daemons ship with the bundled model"
    assert production(registry).version == "1"
    for n in (2, 3, 4):
        registry.register(*version_files(tmp_path / f"v{n}", f"run-{n}", V2))
    registry.decide("2", Approval.APPROVED, "alice", None)
    assert production(registry).version == "1", "approved is not deployed"
    registry.record_deployment("2", DeploymentStatus.DEPLOYED, "canary and fleet serve it")
    assert production(registry).version == "2"
    registry.decide("3", Approval.APPROVED, "alice", None)
    registry.decide("3", Approval.REJECTED, "edge-inspect deploy", "rolled back: 0 alerts after the swap")
    registry.decide("4", Approval.APPROVED, "alice", None)
    registry.record_deployment("4", DeploymentStatus.SHIP_FAILED, "not a loadable ONNX model")
    restarted = MlflowRegistry(tmp_path / "registry", "metal-tags")
    assert production(restarted).version == "2"
    assert restarted.get("4").deployment.reason == "not a loadable ONNX model"


@pytest.fixture
def site(tmp_path, broker, registry):
    """v1 (the lines run it) deployed; the lines' model files (no daemon: a shipment that fails
    never reaches them); quantization on, as a plant ships."""
    paths = line_models(tmp_path, THINGS, V1)
    registry.register(*version_files(tmp_path / "v1", "run-1", V1))
    registry.decide("1", Approval.APPROVED, "plant", None)
    registry.record_deployment("1", DeploymentStatus.DEPLOYED, "the lines run it")
    config = onsite_config(tmp_path, broker.port, paths, pipeline={"trigger_new_labels": 5}, deploy={
        "quantize": True, "gate_labels": str(METAL_TAGS / "labels.csv"), "gate_images_root": str(METAL_TAGS),
        "promotion": {"window_minutes": 0.1, "poll_seconds": 0.3}})
    return config, registry, paths


def corrupt(tmp_path: Path) -> Path:
    out = tmp_path / "corrupt.onnx"
    out.write_bytes(V1.read_bytes()[: V1.stat().st_size // 3])  # cut short in transit
    return out


def classifier(tmp_path: Path) -> Path:
    """A valid ONNX model that classifies (1000 scores), with a detector's metadata."""
    return make_onnx(tmp_path / "classifier.onnx", output_shape=(1, 1000), input_shape=(1, 3, 224, 224),
                     metadata={"names": "{0: 'scratch'}", "imgsz": "[224, 224]", "task": "classify"})


@pytest.mark.parametrize("bad", ["corrupt", "classifier", "model.onnx lost"])
def test_a_version_that_fails_to_ship_is_marked_rejected_and_never_production(site, tmp_path, bad):
    config, registry, paths = site
    source = {"corrupt": corrupt, "classifier": classifier}.get(bad, lambda _: V2)(tmp_path)
    registry.register(*version_files(tmp_path / "v2", "run-2", source))
    if bad == "model.onnx lost":
        artifact(registry, "2", ONNX).unlink()
    registry.decide("2", Approval.APPROVED, "alice", None)
    lines: list[str] = []
    with onsite_rollout(load_cloud_config(config), say=lines.append) as rollout, \
            pytest.raises(DeployError, match="version 2 failed to ship and is marked Rejected"):
        rollout.run("2")
    v2 = registry.get("2")
    assert v2.status is Approval.REJECTED and v2.reason.startswith("failed to ship: "), v2.reason
    assert v2.deployment.status is DeploymentStatus.SHIP_FAILED and v2.deployment.reason
    if bad == "model.onnx lost":
        assert "lack model.onnx" in v2.deployment.reason
    assert production(registry).version == "1", "a version that failed to ship is never production"
    assert all(file_sha256(p) == file_sha256(V1) for p in paths.values()), "no line got it"
    assert any("ship failed" in line for line in lines) and any("marked ship-failed" in line for line in lines)


def test_approving_a_version_that_cannot_ship_exits_2_with_one_line(site, tmp_path):
    config, registry, _ = site
    registry.register(*version_files(tmp_path / "v2", "run-2", corrupt(tmp_path)))
    done = cloud(config, "models", "approve", "2", "--by", "alice", timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("edge-inspect: error:")]
    assert len(errors) == 1 and "version 2 failed to ship" in errors[0], done.stderr
    assert "Traceback" not in done.stderr
    assert registry.get("2").status is Approval.REJECTED
    listed = cloud(config, "models", "list", timeout=60).stdout
    assert "v2  Rejected" in listed and "ship-failed" in listed and "v1  Approved" in listed and "(production)" in listed


def test_a_lost_card_leaves_every_other_version_listed_and_serve_s_trigger_alive(site, tmp_path):
    config, registry, _ = site
    for n in (2, 3):
        registry.register(*version_files(tmp_path / f"v{n}", f"run-{n}", V2))
    artifact(registry, "2", VERSION_CARD).unlink()
    entries = registry.entries()
    assert [type(e) for e in entries] == [type(entries[0]), UnreadableVersion, type(entries[0])]
    assert [v.version for v in registry.versions()] == ["1", "3"]

    listed = cloud(config, "models", "list", timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert "v1  Approved" in listed.stdout and "v3  PendingManualApproval" in listed.stdout
    assert "v2  unreadable: its version card cannot be read" in listed.stdout
    shown = cloud(config, "models", "show", "2", timeout=60)
    assert shown.returncode == 2 and "version 2 is unreadable" in shown.stderr and "Traceback" not in shown.stderr

    # what `cloud serve` does at start with a `pipeline` section: open the site (seeding the bundled
    # model looks at every version) and ask for production
    from cloud.pipeline.trigger import RetrainTrigger

    trigger = RetrainTrigger(load_cloud_config(config).model_copy(update={"pipeline": load_cloud_config(config)
                                                                          .pipeline.model_copy(update={"seed_bundled": True})}),
                             "test")
    assert trigger.check() is False  # no new labels: nothing to start, and no exception
    assert production(registry).version == "1"


def test_a_canary_deployment_that_cannot_be_written_leaves_the_version_approved_for_a_retry(registry, tmp_path):
    """A line's folder that cannot be written is an outage on site, not the version's fault: it is
    not marked ship-failed, stays Approved (never production), and `cloud deploy run` can retry."""
    import time

    from cloud.deploy.deployer import DeployError as Refused
    from cloud.deploy.fleet_store import SqliteFleetStore
    from cloud.deploy.local import LocalDeployer
    from cloud.deploy.rollout import Rollout, RolloutLog
    from cloud.deploy.settings import DeploySettings, LocalDeploySettings, LocalLine
    from cloud.deploy.shipping import Shipment

    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where line-1's model folder belongs")
    lines = LocalDeploySettings(lines=[LocalLine(thing="line-1", model_path=blocked / "model.onnx"),
                                       LocalLine(thing="line-2", model_path=tmp_path / "line-2" / "model.onnx")])
    settings = DeploySettings(state_path=tmp_path / "deploy.sqlite", work_dir=tmp_path / "ship", canary=["line-1"],
                              quantize=False, local=lines)
    for n in (1, 2):
        registry.register(*version_files(tmp_path / f"v{n}", f"run-{n}", V1))
        registry.decide(str(n), Approval.APPROVED, "plant", None)
    registry.record_deployment("1", DeploymentStatus.DEPLOYED, "the lines run it")
    store = SqliteFleetStore(settings.state_path)
    store.listening("serve", time.time() - 3600)  # `cloud serve` heard the lines: no baseline to wait for
    store.heartbeat("serve")
    folder = tmp_path / "shipment"
    folder.mkdir()
    shutil.copyfile(V1, folder / "model.onnx")
    shutil.copyfile(card_path_for(V1), folder / "model.card.json")
    shipment = Shipment(version="2", precision="fp32", model_file=folder / "model.onnx", sha256=file_sha256(V1),
                        reason="test")
    rollout = Rollout(registry, LocalDeployer(lines, ["line-1"], tmp_path / "backups"), store, settings,
                      RolloutLog(settings.state_path), say=lambda _: None)
    with pytest.raises(Refused, match="version 2 was not deployed and stays Approved: the canary deployment failed"):
        rollout.run("2", shipment)
    v2 = registry.get("2")
    assert v2.status is Approval.APPROVED and v2.deployment is None
    assert production(registry).version == "1"
    assert not (tmp_path / "line-2" / "model.onnx").exists(), "the fleet never got it"


def test_lines_updated_by_other_means_are_marked_deployed_by_hand(tmp_path, registry):
    # a plant that upgrades (no deployment recorded yet) or ships models itself says which version
    # its lines run; without it production stays what a rollout last finished
    seed_bundled(registry)
    registry.register(*version_files(tmp_path / "v2", "run-2", V2))
    config = write_cloud_config(tmp_path / "cloud.yaml", label_store={
        "backend": "local", "local": {"path": str(tmp_path / "labels")}}, pipeline={
        "state_path": str(tmp_path / "runs.sqlite"), "work_dir": str(tmp_path / "runs"),
        "registry": {"backend": "mlflow", "mlflow": {"path": str(tmp_path / "registry")}}, "seed_bundled": False})
    refused = cloud(config, "models", "mark-deployed", "2", "--reason", "copied to the lines by hand", timeout=120)
    assert refused.returncode == 2 and "not Approved" in refused.stderr and "Traceback" not in refused.stderr
    approved = cloud(config, "models", "approve", "2", "--by", "alice", "--no-deploy", timeout=120)
    assert approved.returncode == 0 and "production (what retraining starts from) stays v1" in approved.stdout
    done = cloud(config, "models", "mark-deployed", "2", "--by", "bob", "--reason", "copied to the lines by hand",
                 timeout=120)
    assert done.returncode == 0, done.stderr
    assert "production is v2" in done.stdout
    reopened = MlflowRegistry(tmp_path / "registry", "metal-tags")
    assert production(reopened).version == "2"
    assert reopened.get("2").deployment.reason == "marked by bob: copied to the lines by hand"


def test_a_model_replaced_in_the_artifacts_with_matching_cards_is_refused_by_the_recorded_sha256(tmp_path, registry):
    # the cards sit beside the bytes they vouch for: whoever can replace one can replace all three;
    # the sha256 recorded at registration lives in the registry's database
    registry.register(*version_files(tmp_path / "v1", "run-1", V1))
    registry.download("1", tmp_path / "before")  # as registered: fine
    forged = version_files(tmp_path / "forged", "run-1", V2)[0]
    for name in (ONNX, VERSION_CARD, "model.card.json"):
        shutil.copyfile(forged.path(name), artifact(registry, "1", name))
    with pytest.raises(RegistryError, match="recorded when it was registered: the file was replaced"):
        registry.download("1", tmp_path / "after")
    assert not (tmp_path / "after" / ONNX).exists(), "the replaced file is not left to be picked up"
