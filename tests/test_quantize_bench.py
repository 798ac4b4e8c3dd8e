"""INT8: the accuracy gate refuses a bad quantization and passed the shipped one; the benchmark
writes its three outputs."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import REPO

from device.detector import Detector, file_sha256
from device.model_card import ModelCard, card_path_for

INT8 = REPO / "device" / "models" / "metal-tags-yolov8n-int8.onnx"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, metal_tags, bundled_model):
    from cloud.dataset import split_by_photo, write_yolo_dataset
    from cloud.label_table import read_label_csv

    card = ModelCard.read(card_path_for(bundled_model))
    split = split_by_photo(read_label_csv(metal_tags / "labels.csv"), seed=card.data["seed"])
    return write_yolo_dataset(split, metal_tags, tmp_path_factory.mktemp("ds"), card.class_names)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_inspect", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=1200)


def test_gate_refuses_an_int8_model_that_loses_too_much(tmp_path, bundled_model, dataset):
    calib = tmp_path / "calib"
    calib.mkdir()
    # calibrated on one flat grey frame: every activation range is wrong, and accuracy goes
    cv2.imwrite(str(calib / "grey.jpg"), np.full((300, 450, 3), 128, np.uint8))
    out = tmp_path / "int8.onnx"
    result = run("quantize", bundled_model, "--calib", calib, "--data", dataset, "--out", out, "--max-drop", "0.001")
    assert result.returncode == 2, result.stdout + result.stderr[-2000:]
    assert "refused: every INT8 candidate loses more than 0.001 mAP50" in result.stderr
    assert not out.exists() and not card_path_for(out).exists()


def test_shipped_int8_model_passed_the_gate_and_its_card_reproduces(bundled_model, dataset):
    card = ModelCard.read(card_path_for(INT8))
    assert card.precision == "int8" and card.model_sha256 == file_sha256(INT8)
    assert card.quantization["fp32_model_sha256"] == file_sha256(bundled_model)
    int8, fp32 = card.metrics["test"], card.metrics["test_fp32"]
    assert fp32["map50"] - int8["map50"] <= card.quantization["max_drop"] <= 0.01
    result = run("eval", "--model", INT8, "--data", dataset, "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout)
    assert figures["map50"] == pytest.approx(int8["map50"], abs=2e-3)
    assert figures["map50_95"] == pytest.approx(int8["map50_95"], abs=2e-3)
    assert Detector(INT8).info.class_names == ("scratch",)


def test_benchmark_writes_json_markdown_and_png(tmp_path, bundled_model):
    result = run("bench", "--runs", "10", "--video-seconds", "3", "--out", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "bench.json").read_text())
    assert set(data["models"]) == {"metal-tags-yolov8n.onnx", "metal-tags-yolov8n-int8.onnx"}
    for entry in data["models"].values():
        assert entry["session"]["p50"] > 0 and entry["daemon"]["fps"] > 0 and entry["daemon"]["peak_rss_mb"] > 50
        assert set(entry["stages"]) == {"preprocess", "inference", "postprocess"}
        assert entry["gflops"] > 1 and entry["roofline_ms"] > 0 and entry["daemon"]["first_detection_s"] > 0
        assert entry["ultralytics"]["fps"] > 0
    fp32, int8 = data["models"]["metal-tags-yolov8n.onnx"], data["models"]["metal-tags-yolov8n-int8.onnx"]
    assert 3.5 < fp32["gflops"] < 4.5, "YOLOv8n at 448 is about 4 GFLOPs"
    assert int8["gflops"] == pytest.approx(fp32["gflops"], rel=0.01), "the same network, counted through QDQ"
    assert {r["execution_mode"] for r in fp32["session_options"]} == {"sequential", "parallel"}
    assert data["machine"]["logical_cores"] >= 1 and "onnxruntime" in data["versions"]
    assert any(t["target"].startswith("INT8 p50") for t in data["targets"])
    table = (tmp_path / "bench.md").read_text()
    assert "| metal-tags-yolov8n-int8.onnx | 448x448 |" in table
    image = cv2.imread(str(tmp_path / "bench.png"))
    assert image is not None and image.shape[1] > 500
