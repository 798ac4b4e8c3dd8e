"""What an approved version ships as (cloud/deploy/shipping.py), with the real quantizer and gate
on the real bundled model and the labelled photos shipped in the repo."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from cloud.deploy.settings import DeploySettings, LocalDeploySettings, LocalLine, deploy_gate
from cloud.deploy.shipping import prepare_shipment
from cloud.registry.bundled import seed_bundled
from cloud.registry.mlflow_registry import MlflowRegistry
from device.detector import Detector, file_sha256
from device.model_card import ModelCard


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    registry = MlflowRegistry(tmp_path_factory.mktemp("registry"), "metal-tags")
    assert seed_bundled(registry).version == "1"  # the bundled model, Approved
    return registry


def settings(tmp_path, metal_tags, **extra) -> DeploySettings:
    return DeploySettings(backend="local", state_path=tmp_path / "deploy.sqlite", work_dir=tmp_path / "work",
                          gate_labels=metal_tags / "labels.csv", quantize_candidates=["whole-head"],
                          local=LocalDeploySettings(lines=[LocalLine(thing="line-1", model_path=tmp_path / "m.onnx")]),
                          **extra)


def test_a_poorly_calibrated_int8_model_is_refused_and_fp32_ships_with_the_reason(tmp_path, metal_tags, registry):
    calib = tmp_path / "calib"
    calib.mkdir()
    # one flat grey frame: every activation range is wrong, the INT8 model loses FP32's alerts
    cv2.imwrite(str(calib / "grey.jpg"), np.full((300, 450, 3), 128, np.uint8))
    shipment = prepare_shipment(registry, "1", settings(tmp_path, metal_tags, calibration_frames=calib))
    assert shipment.precision == "fp32"
    fp32 = tmp_path / "work" / "1" / "fp32" / "model.onnx"
    assert shipment.sha256 == file_sha256(fp32) == Detector(shipment.model_file).info.sha256
    card = ModelCard.read(shipment.card_file)
    reason = card.model_dump()["shipping"]["reason"]
    assert reason.startswith("INT8 refused, FP32 ships") and "of FP32's" in reason and "alerts" in reason, reason
    assert card.version == "1" and card.model_sha256 == shipment.sha256
    assert json.loads((tmp_path / "work" / "1" / "shipment.json").read_text())["precision"] == "fp32"


def test_a_faithful_int8_model_ships_with_both_figures_on_its_card(tmp_path, metal_tags, registry):
    # The deployment gate, with one point of slack on recall: measured here (AVX-512 VNNI) the
    # percentile-calibrated INT8 model raises 286 of FP32's 291 alerts (0.983); integer kernels
    # round differently without VNNI, and one alert is 0.34 points. The gate's refusals are shown
    # above and in tests/test_quantize*.py with the default 0.98.
    gate = deploy_gate().model_copy(update={"min_fidelity": 0.97})
    shipment = prepare_shipment(registry, "1", settings(tmp_path, metal_tags, gate=gate))
    assert shipment.precision == "int8", shipment.reason
    card = ModelCard.read(shipment.card_file).model_dump()
    fidelity = card["metrics"]["fidelity"]
    assert fidelity["recall"] >= 0.97 and fidelity["mean_score_diff"] <= 0.05 and fidelity["extra_rate"] <= 0.02
    assert card["quantization"]["gate"]["match_iou"] == 0.9
    int8, fp32 = card["metrics"]["heldout"], card["metrics"]["heldout_fp32"]
    assert fp32["map50"] - int8["map50"] <= 0.01
    assert "all 175 labelled photos" in card["quantization"]["gate"]["photos"]
    assert card["shipping"]["precision"] == "int8" and card["version"] == "1"
