"""`edge-inspect train` for real, at a toy size: dataset, Ultralytics training from the YAML,
ONNX export, evaluation through the device detector, model card; interrupted and resumed."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_helpers import wait_until

from cloud.label_table import read_label_csv, table_fingerprint
from device.detector import Detector, file_sha256
from device.model_card import ModelCard


def small_table(metal_tags: Path, out: Path, photos: int = 12) -> Path:
    with (metal_tags / "labels.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    keep = sorted({r["source_ref"].split("/")[-1].split("-cropped")[0] for r in rows})[:photos]
    rows = [r for r in rows if r["source_ref"].split("/")[-1].split("-cropped")[0] in keep]
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out


def train_command(table: Path, metal_tags: Path, out: Path, epochs: int) -> list[str]:
    return [sys.executable, "-m", "edge_inspect", "train", "--labels", str(table), "--images-root", str(metal_tags),
            "--out", str(out), "--epochs", str(epochs), "--imgsz", "96", "--batch", "8", "--workers", "0",
            "--split", "0.5,0.25,0.25", "--name", "toy"]


def test_train_is_resumable_and_writes_a_model_card(tmp_path, metal_tags):
    table = small_table(metal_tags, tmp_path / "labels.csv")
    out = tmp_path / "run"
    env = {**os.environ, "YOLO_CONFIG_DIR": str(tmp_path / "yolo-config")}
    command = train_command(table, metal_tags, out, epochs=4)

    # first attempt: killed hard once a checkpoint exists, as a power cut would
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    weights = out / "ultralytics" / "weights"
    assert wait_until(lambda: (weights / "resume.pt").exists() or first.poll() is not None, 240, 0.2)
    assert (weights / "resume.pt").exists(), "no checkpoint appeared"
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not (out / "toy.onnx").exists()
    # the power cut landed while Ultralytics was rewriting last.pt in place
    (weights / "last.pt").write_bytes((weights / "last.pt").read_bytes()[:1000])

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming training" in second.stderr.lower()

    card = ModelCard.read(out / "toy.card.json")
    model = out / "toy.onnx"
    assert card.model_sha256 == file_sha256(model)
    assert Detector(model).info.input_size == (96, 96)
    records = read_label_csv(table)
    assert card.data["table_sha256"] == table_fingerprint(records)
    assert len(card.data["split_sha256"]) == 64 and card.data["seed"] == 0
    assert set(card.metrics["test"]) >= {"map50", "map50_95", "precision", "recall"}
    assert card.training["epochs"] == 4 and card.training["imgsz"] == 96 and card.training["seed"] == 0
    assert [p["epoch"] for p in card.training["curve"]] == [1, 2, 3, 4]
    assert {"ultralytics", "torch", "onnxruntime", "numpy", "python"} <= set(card.packages)
    assert card.command.endswith("--name toy") and "--epochs 4" in card.command
    summary = json.loads(second.stdout.strip().splitlines()[-1])
    assert summary["metrics"]["test"] == card.metrics["test"]

    # the same out folder with other settings is refused rather than silently mixed
    clash = subprocess.run(train_command(table, metal_tags, out, epochs=5), env=env,
                           capture_output=True, text=True, timeout=120)
    assert clash.returncode == 2 and "holds a run with other settings" in clash.stderr


def test_bad_training_settings_name_the_field(tmp_path, metal_tags):
    run = subprocess.run([sys.executable, "-m", "edge_inspect", "train", "--labels", str(metal_tags / "labels.csv"),
                          "--out", str(tmp_path), "--imgsz", "100"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "imgsz" in run.stderr and "multiple of 32" in run.stderr


@pytest.mark.parametrize("aug", ["flipud", "flipud=x", "=0.5"])
def test_bad_augmentation_override(tmp_path, metal_tags, aug):
    run = subprocess.run([sys.executable, "-m", "edge_inspect", "train", "--labels", str(metal_tags / "labels.csv"),
                          "--out", str(tmp_path), "--aug", aug], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "expected KEY=NUMBER" in run.stderr


def test_curve_keeps_the_rerun_of_an_interrupted_epoch(tmp_path):
    from cloud.training import read_curve

    header = "epoch,metrics/mAP50(B),metrics/mAP50-95(B)\n"
    (tmp_path / "results.csv").write_text(header + "1,0.1,0.05\n2,0.2,0.1\n2,0.25,0.12\n3,0.3,0.2\n")
    assert read_curve(tmp_path / "results.csv") == [
        {"epoch": 1, "val_map50": 0.1, "val_map50_95": 0.05},
        {"epoch": 2, "val_map50": 0.25, "val_map50_95": 0.12},
        {"epoch": 3, "val_map50": 0.3, "val_map50_95": 0.2},
    ]
