"""The on-site model registry (cloud/registry/mlflow_registry.py): MLflow's registry on a real
SQLite file; every check also runs against a fresh instance (a restart)."""

from __future__ import annotations

import pytest
from pipeline_helpers import scores, version_files

from cloud.registry.mlflow_registry import PRODUCTION_ALIAS, MlflowRegistry
from cloud.registry.registry import FILES, Approval, DeploymentStatus, RegistryError, production


@pytest.fixture
def registry(tmp_path):
    return MlflowRegistry(tmp_path / "registry", "metal-tags")


def test_a_version_is_registered_pending_with_its_card_and_files(registry, tmp_path, bundled_model):
    files, card = version_files(tmp_path / "v", "run-a", bundled_model, production=scores(0.88, 0.55))
    version = registry.register(files, card)
    assert (version.version, version.status, version.run_id) == ("1", Approval.PENDING, "run-a")
    assert version.card.evaluation.production.map50 == 0.88
    restarted = MlflowRegistry(tmp_path / "registry", "metal-tags")
    assert restarted.get("1").card == card
    got = restarted.download("1", tmp_path / "dl")
    for name in FILES:
        assert got.path(name).read_bytes() == files.path(name).read_bytes()


def test_registering_the_same_run_twice_makes_one_version(registry, tmp_path, bundled_model):
    files, card = version_files(tmp_path / "v", "run-a", bundled_model)
    assert registry.register(files, card).version == registry.register(files, card).version == "1"
    assert len(MlflowRegistry(tmp_path / "registry", "metal-tags").versions()) == 1


def test_approve_and_reject_are_recorded_and_survive_a_restart(registry, tmp_path, bundled_model):
    for run in ("run-a", "run-b", "run-c"):
        registry.register(*version_files(tmp_path / run, run, bundled_model))
    registry.decide("1", Approval.APPROVED, "alice", None)
    registry.decide("2", Approval.APPROVED, "bob", "better on the night shift")
    registry.decide("3", Approval.REJECTED, "carol", "misses faint scratches")
    restarted = MlflowRegistry(tmp_path / "registry", "metal-tags")
    v2, v3 = restarted.get("2"), restarted.get("3")
    assert (v2.status, v2.decided_by, v2.reason) == (Approval.APPROVED, "bob", "better on the night shift")
    assert v2.decided_at and (v3.status, v3.decided_by, v3.reason) == (Approval.REJECTED, "carol", "misses faint scratches")
    # approved is not production: production is what the fleet runs (a finished rollout)
    assert production(restarted) is None
    for version in ("1", "2"):
        restarted.record_deployment(version, DeploymentStatus.DEPLOYED, "canary and fleet serve it")
    assert production(restarted).version == "2"
    assert str(restarted.client.get_registered_model("metal-tags").aliases[PRODUCTION_ALIAS]) == "2"
    assert MlflowRegistry(tmp_path / "registry", "metal-tags").get("2").deployment.status is DeploymentStatus.DEPLOYED
    restarted.decide("2", Approval.REJECTED, "alice", "pulled: false alarms on line 3")
    assert production(restarted).version == "1"


def test_decisions_that_make_no_sense_are_refused(registry, tmp_path, bundled_model):
    registry.register(*version_files(tmp_path / "a", "run-a", bundled_model))
    with pytest.raises(RegistryError, match="needs a reason"):
        registry.decide("1", Approval.REJECTED, "alice", " ")
    registry.decide("1", Approval.REJECTED, "alice", "worse")
    with pytest.raises(RegistryError, match="is Rejected; it cannot become Approved"):
        registry.decide("1", Approval.APPROVED, "bob", None)
    with pytest.raises(RegistryError, match="no version '7'"):
        registry.get("7")


def test_a_version_without_all_its_files_is_not_registered(registry, tmp_path, bundled_model):
    files, card = version_files(tmp_path / "a", "run-a", bundled_model)
    files.checkpoint.unlink()
    with pytest.raises(RegistryError, match=r"lacks \['model.pt'\]"):
        registry.register(files, card)
    assert registry.versions() == []


def test_the_version_card_on_the_wire_validates_against_its_schema(tmp_path, bundled_model):
    import json

    import jsonschema

    from cloud.registry.registry import VERSION_CARD
    from cloud.schemas import schema_path

    files, _ = version_files(tmp_path / "v", "run-a", bundled_model, production=scores())
    written = json.loads(files.path(VERSION_CARD).read_text())
    jsonschema.validate(written, json.loads(schema_path("version-card").read_text()))
    written["dataset"]["fingerprint"] = 7
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(written, json.loads(schema_path("version-card").read_text()))
