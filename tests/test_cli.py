"""`edge-inspect detect` and `eval` as a user runs them: real subprocesses, real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, make_onnx

from device.model_card import ModelCard, card_path_for

SAMPLES = REPO / "samples"


def cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_inspect", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_detect_json_lines_on_the_shipped_samples(tmp_path):
    run = cli("detect", SAMPLES, "--json", "--save", tmp_path / "out")
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(lines) == 6
    for obj in lines:
        assert set(obj) == {"image", "width", "height", "detections"}
        assert (obj["width"], obj["height"]) == (450, 300)
        for det in obj["detections"]:
            assert set(det) == {"class_id", "class", "confidence", "box"} and det["class"] == "scratch"
            x1, y1, x2, y2 = det["box"]
            assert 0 <= x1 < x2 <= 450 and 0 <= y1 < y2 <= 300 and det["confidence"] >= 0.25
    with_scratches = [o for o in lines if o["detections"]]
    assert len(with_scratches) >= 3, "four of the six samples show scratches"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(Path(o["image"]).name for o in lines)
    assert "6 images" in run.stderr


def test_detect_prints_a_summary_line(tmp_path):
    run = cli("detect", SAMPLES / "image-2020-04-22-11-07-42-18-cropped-left-bottom.jpg", "--conf", "0.5")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().startswith("1 images, 1 with defects")


@pytest.mark.parametrize("setup,message", [
    ("missing", "does not exist"),
    ("corrupt", "is not a loadable ONNX model"),
    ("not_yolo", "no class names in its metadata"),
])
def test_bad_models_fail_with_one_clear_line(tmp_path, bundled_model, setup, message):
    model = tmp_path / "model.onnx"
    if setup == "corrupt":
        model.write_bytes(bundled_model.read_bytes()[: len(bundled_model.read_bytes()) // 3])
    elif setup == "not_yolo":
        make_onnx(model)
    run = cli("detect", SAMPLES, "--model", model)
    assert run.returncode == 2
    assert message in run.stderr and "Traceback" not in run.stderr
    assert run.stderr.count("\n") == 1


def test_empty_folder_and_missing_path_are_clear_errors(tmp_path):
    run = cli("detect", tmp_path)
    assert run.returncode == 2 and "folder holds no images" in run.stderr
    run = cli("detect", tmp_path / "nowhere")
    assert run.returncode == 2 and "no such file or folder" in run.stderr


def test_unreadable_image_is_reported_and_the_rest_go_on(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = SAMPLES / "image-2020-04-22-11-07-42-18-cropped-left-bottom.jpg"
    (tmp_path / "truncated.jpg").write_bytes(good.read_bytes()[:200])
    (tmp_path / "good.jpg").write_bytes(good.read_bytes())
    run = cli("detect", tmp_path, "--json")
    assert run.returncode == 1
    assert [Path(json.loads(line)["image"]).name for line in run.stdout.splitlines()] == ["good.jpg"]
    assert "broken.jpg: not a readable image" in run.stderr and "truncated.jpg" in run.stderr
    assert "2 unreadable" in run.stderr


def test_eval_reproduces_the_bundled_model_card(tmp_path, bundled_model, metal_tags):
    """The card's test figures come from the same code path as `edge-inspect eval`: rebuilding the
    split from the table with the pipeline's split rule must give the card's split and figures."""
    from cloud.dataset import write_yolo_dataset
    from cloud.label_table import read_label_csv
    from cloud.pipeline.split import SplitParams, assign

    card = ModelCard.read(card_path_for(bundled_model))
    split = assign(read_label_csv(metal_tags / "labels.csv"), SplitParams())
    assert split.split_sha256 == card.data["split_sha256"], "the card's split is not the one this table gives"
    data_yaml = write_yolo_dataset(split, metal_tags, tmp_path / "ds", card.class_names)
    run = cli("eval", "--data", data_yaml, "--json")
    assert run.returncode == 0, run.stderr
    figures = json.loads(run.stdout)
    for key in ("map50", "map50_95", "precision", "recall"):
        assert figures[key] == pytest.approx(card.metrics["test"][key], abs=2e-4), key
    assert figures["images"] == len(split.records["test"])


def test_eval_of_a_missing_split_is_a_clear_error(tmp_path, bundled_model):
    (tmp_path / "data.yaml").write_text("path: .\ntrain: images/train\nnames: {0: scratch}\n")
    run = cli("eval", "--model", bundled_model, "--data", tmp_path / "data.yaml")
    assert run.returncode == 2 and "has no 'test' split" in run.stderr


def test_quantize_refuses_an_impossible_gate_before_any_work(tmp_path):
    """The deployment gate's settings (IoU 0.9, mean score difference) are the command's too."""
    out = tmp_path / "int8.onnx"
    done = cli("quantize", "device/models/metal-tags-yolov8n.onnx", "--out", str(out), "--match-iou", "1.5")
    assert done.returncode == 2 and "match_iou" in done.stderr and "less than or equal to 1" in done.stderr
    done = cli("quantize", "device/models/metal-tags-yolov8n.onnx", "--out", str(out), "--max-mean-score-diff", "-1")
    assert done.returncode == 2 and "max_mean_score_diff" in done.stderr
    assert not out.exists()
