"""Custody of a model from the registry to a line's watched path (cloud/deploy/shipping.py,
local.py): the shipment is the approved bytes or nothing, and the on-site deployer writes a line's
model only when the bytes it is about to rename in are the shipment's. A real MLflow registry on
disk, the real bundled models, real files replaced behind the registry's back."""

from __future__ import annotations

import json
import logging
import shutil
import traceback
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from conftest import REPO, make_onnx
from pipeline_helpers import version_files

from cloud.deploy.deployer import DeployError
from cloud.deploy.local import LocalDeployer
from cloud.deploy.settings import DeploySettings, LocalDeploySettings, LocalLine
from cloud.deploy.shipping import prepare_shipment
from cloud.deploy.signing import generate_keys
from cloud.registry.mlflow_registry import MlflowRegistry
from cloud.registry.registry import Approval
from device.custody import check_custody
from device.detector import file_sha256
from device.model_card import ModelCard, card_path_for
from device.signing import TrustedKeys

MODELS = REPO / "device" / "models"
FP32 = MODELS / "metal-tags-yolov8n.onnx"
OTHER = MODELS / "metal-tags-yolov8n-int8.onnx"  # a real model of the same shape, other bytes


def stored(registry: MlflowRegistry, version: str, name: str) -> Path:
    """The file the registry keeps for `version` (MLflow's artifact folder on disk)."""
    return Path(unquote(urlparse(registry.get(version).location).path)) / name


def settings(tmp_path: Path, **extra) -> DeploySettings:
    return DeploySettings(backend="local", state_path=tmp_path / "deploy.sqlite", work_dir=tmp_path / "work",
                          quantize=False, canary=["line-1"],
                          local=LocalDeploySettings(lines=[LocalLine(thing=t, model_path=tmp_path / t / "model.onnx")
                                                           for t in ("line-1", "line-2")]),
                          **extra)


def approved(tmp_path: Path, source: Path = FP32) -> MlflowRegistry:
    registry = MlflowRegistry(tmp_path / "registry", "metal-tags")
    registry.register(*version_files(tmp_path / "v1", "run-1", source), Approval.APPROVED, "plant")
    return registry


def test_a_model_replaced_in_the_registry_after_approval_is_not_shipped(tmp_path):
    registry = approved(tmp_path)
    # the replacement comes with a device card that describes it: only the version card knows
    onnx, card = stored(registry, "1", "model.onnx"), stored(registry, "1", "model.card.json")
    shutil.copyfile(OTHER, onnx)
    forged = ModelCard.read(card)
    forged.model_sha256 = file_sha256(OTHER)
    forged.write(card)
    # refused by the registry when it hands the file out, or else by the shipment: either names both sha256s
    with pytest.raises(DeployError, match=rf"version 1.*model.onnx.* has sha256 {file_sha256(OTHER)[:12]}, "
                                          rf"(but the version card approved|not the) {file_sha256(FP32)[:12]}"):
        prepare_shipment(registry, "1", settings(tmp_path))
    assert not (tmp_path / "work" / "1" / "ship").exists() and not (tmp_path / "work" / "1" / "shipment.json").exists()


def test_a_device_card_that_describes_other_bytes_is_not_shipped(tmp_path):
    registry = approved(tmp_path)
    card = stored(registry, "1", "model.card.json")
    edited = ModelCard.read(card)
    edited.model_sha256 = file_sha256(OTHER)
    edited.write(card)
    with pytest.raises(DeployError, match=r"version 1: model.card.json describes sha256 \w{12}, not the approved "
                                          r"model.onnx"):
        prepare_shipment(registry, "1", settings(tmp_path))


def test_a_version_whose_files_lack_the_model_is_a_clear_error(tmp_path):
    registry = approved(tmp_path)
    stored(registry, "1", "model.onnx").unlink()
    # said by the registry's download, or by the shipment's own check of the files it got
    with pytest.raises(DeployError, match=r"^version 1(: the registry's files|'s files in the registry) lack model.onnx"):
        prepare_shipment(registry, "1", settings(tmp_path))


def test_a_corrupt_onnx_is_refused_before_shipping_with_the_reason(tmp_path):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(OTHER.read_bytes()[: OTHER.stat().st_size // 3])  # registered as it is: its card agrees
    registry = approved(tmp_path, corrupt)
    with pytest.raises(DeployError, match=r"^version 1: model.onnx is not a model the lines can serve: "):
        prepare_shipment(registry, "1", settings(tmp_path))
    assert not (tmp_path / "work" / "1" / "ship").exists()


def test_a_classifier_is_refused_before_shipping(tmp_path):
    classifier = make_onnx(tmp_path / "classifier.onnx", output_shape=(1, 2),
                           metadata={"task": "classify", "names": "{0: 'ok', 1: 'scratch'}", "imgsz": "[64, 64]"})
    registry = approved(tmp_path, classifier)
    with pytest.raises(DeployError, match=r"model.onnx is not a model the lines can serve: .*'classify' model"):
        prepare_shipment(registry, "1", settings(tmp_path))


def test_a_signed_shipment_names_its_own_bytes_and_verifies_as_the_daemon_checks_it(tmp_path):
    keys = generate_keys(tmp_path / "keys")
    registry = approved(tmp_path)
    shipment = prepare_shipment(registry, "1", settings(tmp_path, signing_key=keys.private))
    card = json.loads(shipment.card_file.read_text())
    assert card["model_sha256"] == shipment.sha256 == file_sha256(shipment.model_file) == file_sha256(FP32)
    assert card["signature"]["key_id"] == keys.key_id == shipment.signed_by
    custody = check_custody(shipment.model_file, TrustedKeys.load([keys.trusted]))
    assert custody.signed_by == keys.key_id
    assert json.loads((tmp_path / "work" / "1" / "shipment.json").read_text())["signed_by"] == keys.key_id


def test_a_signing_key_that_cannot_be_read_fails_the_shipment_without_showing_the_file(tmp_path, caplog):
    secret = "c2VjcmV0LWtleS1tYXRlcmlhbC1uZXZlci1wcmludGVk"
    bad = tmp_path / "signing.key"
    bad.write_text(f"-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n")
    registry = approved(tmp_path)
    with caplog.at_level(logging.DEBUG), pytest.raises(DeployError) as raised:
        prepare_shipment(registry, "1", settings(tmp_path, signing_key=bad))
    assert "is not an unencrypted PEM private key" in str(raised.value) and str(bad) in str(raised.value)
    assert secret not in str(raised.value) and secret not in caplog.text
    assert secret not in "".join(traceback.format_exception(raised.value)), "nor in the exception chain"


# --- the on-site deployer -------------------------------------------------------------------


def lines_serving(tmp_path: Path, model: Path = FP32) -> dict[str, Path]:
    paths = {}
    for thing in ("line-1", "line-2"):
        paths[thing] = tmp_path / thing / "model.onnx"
        paths[thing].parent.mkdir(parents=True)
        shutil.copyfile(model, paths[thing])
        shutil.copyfile(card_path_for(model), card_path_for(paths[thing]))
    return paths


def deployer(tmp_path: Path) -> LocalDeployer:
    s = settings(tmp_path)
    return LocalDeployer(s.local, s.canary, tmp_path / "backups")


def test_the_local_deployer_refuses_a_shipment_changed_after_it_was_prepared(tmp_path):
    paths = lines_serving(tmp_path, OTHER)
    shipment = prepare_shipment(approved(tmp_path), "1", settings(tmp_path))
    shutil.copyfile(OTHER, shipment.model_file)  # swapped in the work folder between prepare and deploy
    with pytest.raises(DeployError, match=rf"version 1: the shipment's model.onnx is now sha256 {file_sha256(OTHER)[:12]}, "
                                          rf"not the {shipment.sha256[:12]} prepared"):
        deployer(tmp_path).deploy(shipment, "canary")
    assert file_sha256(paths["line-1"]) == file_sha256(OTHER), "nothing was written to the line"
    assert ModelCard.read(card_path_for(paths["line-1"])).model_sha256 == file_sha256(OTHER)


def test_the_local_deployer_refuses_a_shipment_whose_card_names_other_bytes(tmp_path):
    paths = lines_serving(tmp_path, OTHER)
    shipment = prepare_shipment(approved(tmp_path), "1", settings(tmp_path))
    card = ModelCard.read(shipment.card_file)
    card.model_sha256 = file_sha256(OTHER)
    card.write(shipment.card_file)
    with pytest.raises(DeployError, match=r"the shipment's card names sha256 \w{12}, not the model's"):
        deployer(tmp_path).deploy(shipment, "canary")
    assert file_sha256(paths["line-1"]) == file_sha256(OTHER)


def test_a_good_shipment_is_written_card_first_and_a_rollback_to_a_model_without_card_drops_the_new_card(tmp_path):
    paths = lines_serving(tmp_path, OTHER)
    card_path_for(paths["line-1"]).unlink()  # line-1 ran a model with no card
    shipment = prepare_shipment(approved(tmp_path), "1", settings(tmp_path))
    local = deployer(tmp_path)
    done = local.deploy(shipment, "canary")
    assert file_sha256(paths["line-1"]) == shipment.sha256
    assert ModelCard.read(card_path_for(paths["line-1"])).model_sha256 == shipment.sha256
    local.rollback(done)
    assert file_sha256(paths["line-1"]) == file_sha256(OTHER)
    assert not card_path_for(paths["line-1"]).exists(), "the new card would name another model than the one restored"
    assert check_custody(paths["line-1"]).sha256 == file_sha256(OTHER)
