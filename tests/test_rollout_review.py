"""Review of the rollout code: each situation a rollout could misjudge or leave half done, with the
real peers (mosquitto, the on-site deployer on real files, a real MLflow registry and sqlite state):
- a watcher that cannot record covers nothing until it records again;
- a stage is all or nothing on site (a line that cannot be written puts the others back);
- only the version's own bytes reject it: an outage leaves it Approved for a retry, so does an
  unmeasured rate and an operator's rejection meanwhile ("withdrawn");
- production is the version deployed last; one rollout per site;
- a rollback that fails on one stage still rolls back the others, and says so;
- an outage does not count toward abandoning a pipeline run; MLflow's "no such version" is the only
  answer about a version, anything else is the registry being unreadable."""

from __future__ import annotations

import errno
import shutil
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.publish as publish
import pytest
from conftest import REPO
from daemon_helpers import wait_until
from pipeline_helpers import version_files

from cloud.deploy.deployer import DeployError, ShipmentRefused, StageDeployment
from cloud.deploy.fleet_store import LISTEN_GRACE_S, SqliteFleetStore
from cloud.deploy.local import LocalDeployer
from cloud.deploy.observations import Observation
from cloud.deploy.promotion import Judgement, Verdict
from cloud.deploy.rollout import Rollout, RolloutLog, rollout_lock
from cloud.deploy.settings import DeploySettings, LocalDeploySettings, LocalLine
from cloud.deploy.shipping import Shipment
from cloud.deploy.watcher import FleetWatcher
from cloud.ingest.announcements import BrokerSettings
from cloud.pipeline.card import now_iso
from cloud.pipeline.onsite import OnSite, execute
from cloud.pipeline.params import PipelineParams
from cloud.pipeline.runs import MAX_ATTEMPTS, RunStore
from cloud.registry.registry import Approval, DeploymentStatus, RegistryError, RegistryUnavailable, production
from device.detector import file_sha256
from device.model_card import ModelCard, card_path_for


class FailsOnce(SqliteFleetStore):
    """A state file that refuses one write (locked, full disk), then works again."""

    def __init__(self, path) -> None:
        super().__init__(path)
        self.fail_next = False

    def record(self, o: Observation) -> None:
        if self.fail_next:
            self.fail_next = False
            raise OSError(28, "No space left on device")
        super().record(o)


def _available(store: SqliteFleetStore) -> int:
    return len(store._rows("WHERE kind = 'available'"))


def test_a_watcher_that_cannot_record_stops_covering_and_resumes_when_it_records(broker, tmp_path):
    store = FailsOnce(tmp_path / "fleet.sqlite")
    watcher = FleetWatcher(BrokerSettings(host="127.0.0.1", port=broker.port, client_id="review"), store,
                           "review-watcher", persistent=False).start()

    def send() -> None:
        publish.single("edge-inspect/line-1/available", "online", qos=1, hostname="127.0.0.1", port=broker.port)

    try:
        assert watcher.subscribed.wait(20)
        send()
        assert wait_until(lambda: _available(store) == 1, 10)
        store.fail_next = True
        failed_at = time.time()
        send()  # this one is lost: nothing after it may count as heard
        assert wait_until(lambda: store.listened_since(time.time()) is None, 10), \
            "a watcher that cannot record covers nothing (its heartbeat must not keep it current)"
        time.sleep(LISTEN_GRACE_S + 0.5)  # the heartbeat would have renewed a row by now
        assert not store.covered(failed_at - 0.1, time.time())
        send()
        assert wait_until(lambda: _available(store) == 2, 10), "later messages are recorded again"
        assert wait_until(lambda: store.listened_since(time.time()) is not None, 5), "coverage restarts"
        assert not store.covered(failed_at - 0.1, time.time()), "the failure stays a gap"
    finally:
        watcher.stop()
        store.close()


# --- a stage is all or nothing ----------------------------------------------------------------

V1 = REPO / "device" / "models" / "metal-tags-yolov8n.onnx"
V2 = REPO / "device" / "models" / "metal-tags-yolov8n-int8.onnx"


def shipment_of(model: Path, folder: Path, version: str = "2") -> Shipment:
    folder.mkdir(parents=True)
    shutil.copyfile(model, folder / "model.onnx")
    shutil.copyfile(card_path_for(model), card_path_for(folder / "model.onnx"))
    return Shipment(version=version, precision="fp32", model_file=folder / "model.onnx", sha256=file_sha256(model),
                    reason="test")


def serving(path: Path, model: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model, path)
    shutil.copyfile(card_path_for(model), card_path_for(path))
    return path


def test_a_stage_that_fails_on_its_second_line_puts_the_first_back(tmp_path):
    first = serving(tmp_path / "line-1" / "model.onnx", V1)
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where line-2's model folder belongs")
    lines = LocalDeploySettings(lines=[LocalLine(thing="line-1", model_path=first),
                                       LocalLine(thing="line-2", model_path=blocked / "model.onnx")])
    deployer = LocalDeployer(lines, ["line-1", "line-2"], tmp_path / "backups")
    with pytest.raises(DeployError, match=r"cannot write the model for line-2 .*; line-1 rolled back") as raised:
        deployer.deploy(shipment_of(V2, tmp_path / "ship"), "canary")
    assert not isinstance(raised.value, ShipmentRefused), "a line that cannot be written is not the version's fault"
    assert file_sha256(first) == file_sha256(V1), "line-1 runs what it ran before the stage"
    assert ModelCard.read(card_path_for(first)).model_sha256 == file_sha256(V1)


# --- the registry's side: what is production, what a failure leaves ----------------------------

@pytest.fixture
def registry(tmp_path):
    from cloud.registry.mlflow_registry import MlflowRegistry

    return MlflowRegistry(tmp_path / "registry", "metal-tags")


def test_production_is_the_version_deployed_last_not_the_highest_number(registry, tmp_path):
    for n in (1, 2, 3):
        registry.register(*version_files(tmp_path / f"v{n}", f"run-{n}", V1))
        registry.decide(str(n), Approval.APPROVED, "plant", None)
    first = registry.record_deployment("3", DeploymentStatus.DEPLOYED, "canary and fleet serve it").deployment.at
    assert production(registry).version == "3"
    assert wait_until(lambda: now_iso() != first, 5)  # the next second: deployment times are to the second
    registry.record_deployment("2", DeploymentStatus.DEPLOYED, "the plant went back to v2")
    assert production(registry).version == "2", "the fleet runs v2 now"


class Judged(Rollout):
    """The on-site rollout with its stages' verdicts given (what the lines said is tested in
    test_deploy_promotion.py); `during` runs while a stage is watched (an operator acting)."""

    verdicts: dict[str, Judgement]
    during: Callable[[str], None] = lambda self, stage: None

    def _watch(self, deployment: StageDeployment) -> Judgement:
        self.during(deployment.stage)
        return self.verdicts[deployment.stage]


PROMOTE = Judgement(verdict=Verdict.PROMOTE, reason="in band")


@pytest.fixture
def site(tmp_path, registry):
    """v1 on both lines and deployed, v2 Approved with its shipment ready; `cloud serve` heard the
    lines (no baseline to wait for)."""
    paths = {t: serving(tmp_path / t / "model.onnx", V1) for t in ("line-1", "line-2")}
    for n, model in ((1, V1), (2, V2)):
        registry.register(*version_files(tmp_path / f"v{n}", f"run-{n}", model))
        registry.decide(str(n), Approval.APPROVED, "plant", None)
    registry.record_deployment("1", DeploymentStatus.DEPLOYED, "the lines run it")
    settings = DeploySettings(state_path=tmp_path / "deploy.sqlite", work_dir=tmp_path / "work", canary=["line-1"],
                              quantize=False, local=LocalDeploySettings(
                                  lines=[LocalLine(thing=t, model_path=p) for t, p in paths.items()]))
    store = SqliteFleetStore(settings.state_path)
    store.listening("serve", time.time() - 3600)
    store.heartbeat("serve")
    said: list[str] = []

    def rollout(deployer=None, **verdicts: Judgement) -> Judged:
        r = Judged(registry, deployer or LocalDeployer(settings.local, settings.canary, tmp_path / "backups"), store,
                   settings, RolloutLog(settings.state_path), say=said.append)
        r.verdicts = {"canary": PROMOTE, "fleet": PROMOTE, **verdicts}
        return r

    yield rollout, registry, paths, shipment_of(V2, tmp_path / "ship"), said
    store.close()


def test_an_outage_while_preparing_leaves_the_version_approved(site, tmp_path):
    rollout, registry, paths, _, _ = site
    r = rollout()
    r.settings = r.settings.model_copy(update={"work_dir": tmp_path / "not-a-folder" / "work"})
    (tmp_path / "not-a-folder").write_text("a file where the work folder belongs (a mount that is down)")
    with pytest.raises(DeployError, match=r"version 2 was not deployed and stays Approved: cannot prepare the shipment"):
        r.run("2")
    v2 = registry.get("2")
    assert v2.status is Approval.APPROVED and v2.deployment is None, "a retry can ship it"
    assert production(registry).version == "1"


def test_an_unmeasured_rate_rolls_back_and_keeps_the_version_approved(site):
    rollout, registry, paths, shipment, _ = site
    unmeasured = Judgement(verdict=Verdict.ROLLBACK, unmeasured=True,
                           reason="alert rate not measured: nobody listened to line-1 through the 10 min before the swap")
    result = rollout(canary=unmeasured).run("2", shipment)
    assert result.outcome == "rolled back" and "not measured" in result.reason and "stays Approved" in result.reason
    assert registry.get("2").status is Approval.APPROVED
    assert file_sha256(paths["line-1"]) == file_sha256(V1)


def test_a_version_rejected_while_its_canary_runs_is_withdrawn_not_sent_to_the_fleet(site):
    rollout, registry, paths, shipment, _ = site
    r = rollout()
    r.during = lambda stage: registry.decide("2", Approval.REJECTED, "alice", "wrong line") if stage == "canary" \
        else None
    result = r.run("2", shipment)
    assert result.outcome == "rolled back" and result.reason.startswith("withdrawn by alice"), result.reason
    assert file_sha256(paths["line-1"]) == file_sha256(V1), "the canary went back"
    assert file_sha256(paths["line-2"]) == file_sha256(V1), "the fleet never got it"
    assert registry.get("2").deployment is None and production(registry).version == "1"


class FleetRollbackFails(LocalDeployer):
    def rollback(self, deployment: StageDeployment) -> None:
        if deployment.stage == "fleet":
            raise OSError(5, "Input/output error")
        super().rollback(deployment)


def test_a_rollback_that_fails_on_one_stage_still_rolls_back_the_others_and_says_so(site, tmp_path):
    rollout, registry, paths, shipment, said = site
    lines = rollout().settings.local
    out = Judgement(verdict=Verdict.ROLLBACK, reason="line-2 refused the model: bad")
    with pytest.raises(DeployError, match=r"version 2 was rolled back \(line-2 refused the model: bad\), but rolling "
                                          r"back the fleet \(line-2\) failed: .*Input/output error"):
        rollout(FleetRollbackFails(lines, ["line-1"], tmp_path / "backups"), fleet=out).run("2", shipment)
    assert file_sha256(paths["line-1"]) == file_sha256(V1), "the canary was still rolled back"
    assert registry.get("2").status is Approval.REJECTED, "and the version still marked"


def test_a_second_rollout_on_one_site_is_refused_at_once(tmp_path):
    state = tmp_path / "deploy.sqlite"
    with rollout_lock(state):
        with pytest.raises(DeployError, match="another rollout is running on this site"):
            with rollout_lock(state):
                pass
    with rollout_lock(state):  # released with the first
        pass


# --- a run is not abandoned for an outage ------------------------------------------------------

class Unreachable:
    """A registry whose answers stop on the way (the disk under it full, its database locked)."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def download(self, version: str, dest: Path):
        raise self.error


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   sqlite3.OperationalError("database is locked"),
                                   RegistryUnavailable("the registry could not be read for metal-tags version 1")],
                         ids=["full-disk", "locked", "registry-unreadable"])
def test_an_outage_does_not_count_toward_abandoning_a_run(tmp_path, error):
    runs = RunStore(tmp_path / "runs.sqlite")
    record = runs.create("run-1", PipelineParams(production_version="1", as_of=1.7e9))
    site = OnSite(registry=Unreachable(error), store=None, images=None, runs=runs,  # type: ignore[arg-type]
                  work_dir=tmp_path / "work")
    for _ in range(MAX_ATTEMPTS + 1):
        with pytest.raises(type(error)):
            execute(site, record, "cloud train")
    after = runs.unfinished()
    assert after is not None and after.state == "running" and after.attempts == 0, "resumed once the outage passes"
    # a failure that is the run's own is still counted
    site = OnSite(registry=Unreachable(ValueError("bad")), store=None, images=None, runs=runs,  # type: ignore[arg-type]
                  work_dir=tmp_path / "work")
    with pytest.raises(ValueError):
        execute(site, record, "cloud train")
    assert runs.unfinished().attempts == 1
    runs.close()


def test_only_a_missing_version_is_an_answer_from_mlflow(registry, tmp_path):
    with pytest.raises(RegistryError, match="has no version '9'") as missing:
        registry.get("9")
    assert not isinstance(missing.value, RegistryUnavailable)
    registry.register(*version_files(tmp_path / "v1", "run-1", V1))
    db = next((tmp_path / "registry").glob("*.db"))
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process writing: the registry cannot be read now
    try:
        with pytest.raises(RegistryUnavailable, match="the registry could not be read .* try again"):
            registry.get("1")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert registry.get("1").version == "1"


def test_a_fleet_line_that_cannot_be_written_rolls_back_the_canary_and_keeps_the_version_approved(site, tmp_path):
    rollout, registry, paths, shipment, _ = site
    blocked = tmp_path / "mount-down"
    blocked.write_text("a file where line-2's mounted folder belongs")
    lines = LocalDeploySettings(lines=[LocalLine(thing="line-1", model_path=paths["line-1"]),
                                       LocalLine(thing="line-2", model_path=blocked / "model.onnx")])
    with pytest.raises(DeployError, match=r"version 2 was not deployed and stays Approved: the fleet deployment "
                                          r"failed: cannot write the model for line-2"):
        rollout(LocalDeployer(lines, ["line-1"], tmp_path / "backups")).run("2", shipment)
    assert file_sha256(paths["line-1"]) == file_sha256(V1), "the canary went back"
    v2 = registry.get("2")
    assert v2.status is Approval.APPROVED and v2.deployment is None and production(registry).version == "1"


def test_a_registry_that_cannot_mark_the_version_deployed_says_how_to_and_rolls_nothing_back(site, monkeypatch):
    rollout, registry, paths, shipment, _ = site

    def locked(*args, **kwargs):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(registry, "record_deployment", locked)
    with pytest.raises(DeployError, match=r"version 2: canary and fleet serve it, but it could not be marked deployed "
                                          r"\(database is locked\): run `cloud models mark-deployed 2`"):
        rollout().run("2", shipment)
    assert file_sha256(paths["line-2"]) == file_sha256(V2), "the fleet keeps the promoted model"
