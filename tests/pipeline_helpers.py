"""Small, real pieces for registry and gate tests: a version card as the pipeline writes it, and a
version's files (a real ONNX, made by tests.conftest.make_onnx; the checkpoint is opaque bytes to
a registry)."""

from __future__ import annotations

from pathlib import Path

from cloud.pipeline.card import VersionCard, device_card, now_iso
from cloud.pipeline.evaluate import Evaluation, Scores
from cloud.pipeline.gate import GateDecision
from cloud.pipeline.params import PipelineParams
from cloud.pipeline.preprocess import DatasetSummary
from cloud.pipeline.split import SplitParams
from cloud.pipeline.train import StartWeights
from cloud.registry.registry import CHECKPOINT, DEVICE_CARD, ONNX, VERSION_CARD, VersionFiles
from device.detector import file_sha256


def scores(map50: float = 0.9, map50_95: float = 0.6, recall_at_alert: float = 0.8) -> Scores:
    return Scores(map50=map50, map50_95=map50_95, precision=0.9, recall=0.85, recall_at_alert=recall_at_alert,
                  alert_conf=0.5, images=27, instances=52)


def version_files(folder: Path, run_id: str, onnx_source: Path, candidate: Scores | None = None,
                  production: Scores | None = None, parent: str | None = None) -> tuple[VersionFiles, VersionCard]:
    folder.mkdir(parents=True, exist_ok=True)
    files = VersionFiles(folder=folder)
    files.onnx.write_bytes(onnx_source.read_bytes())
    files.checkpoint.write_bytes(b"checkpoint of " + run_id.encode())
    card = VersionCard(
        name="metal-tags", run_id=run_id, created=now_iso(), class_names=["scratch"], imgsz=448,
        onnx_sha256=file_sha256(files.onnx), checkpoint_sha256=file_sha256(files.checkpoint), parent_version=parent,
        start=StartWeights(kind="architecture", name="yolov8n.yaml"),
        dataset=DatasetSummary(as_of=1.7e9, fingerprint="f" * 64, split_sha256="s" * 64,
                               images={"train": 3, "val": 1, "test": 1},
                               photos={"train": ["a", "b", "c"], "val": ["d"], "test": ["e"]}, split=SplitParams()),
        evaluation=Evaluation(candidate=candidate or scores(), production=production),
        gate=GateDecision(passed=True, reasons=["map50 0.9000 >= floor 0.8000"], summary="gate: all 1 checks passed"),
        params=PipelineParams(),
        curve=[{"epoch": 1, "val_map50": 0.5, "val_map50_95": 0.3}], code_version="test", packages={}, command="test")
    (folder / VERSION_CARD).write_text(card.model_dump_json())
    device_card(card, files.onnx).write(folder / DEVICE_CARD)
    assert {ONNX, CHECKPOINT} <= {p.name for p in folder.iterdir()}
    return files, card
