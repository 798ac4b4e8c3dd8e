"""The candidate as the registry receives it: ONNX export, checkpoint, and both cards (the version
card and the device's model card). Assembled the same way on site and in the SageMaker evaluate
job, so a version looks the same whichever backend made it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from cloud.drift_profile import from_dataset
from cloud.pipeline.card import VersionCard, code_version, device_card, now_iso
from cloud.pipeline.evaluate import Evaluation
from cloud.pipeline.gate import GateDecision
from cloud.pipeline.params import PipelineParams
from cloud.pipeline.preprocess import DatasetSummary
from cloud.pipeline.train import TrainOutput, export_onnx
from cloud.registry.registry import DEVICE_CARD, VERSION_CARD, VersionFiles
from device.detector import file_sha256
from device.model_card import package_versions


def export_candidate(checkpoint: Path, imgsz: int, folder: Path) -> VersionFiles:
    candidate = VersionFiles(folder=folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not candidate.onnx.is_file():
        export_onnx(checkpoint, imgsz, candidate.onnx)
    tmp = candidate.checkpoint.with_name(candidate.checkpoint.name + ".part")
    shutil.copyfile(checkpoint, tmp)
    os.replace(tmp, candidate.checkpoint)
    return candidate


def assemble(candidate: VersionFiles, params: PipelineParams, run_id: str, dataset: DatasetSummary,
             trained: TrainOutput, evaluation: Evaluation, decision: GateDecision, command: str,
             data_yaml: Path) -> VersionCard:
    card = VersionCard(
        name=params.model_group, run_id=run_id, created=now_iso(), class_names=params.class_names,
        imgsz=params.train.imgsz, onnx_sha256=file_sha256(candidate.onnx),
        checkpoint_sha256=file_sha256(candidate.checkpoint), parent_version=params.production_version,
        start=trained.start, dataset=dataset, evaluation=evaluation, gate=decision, params=params,
        curve=trained.curve, code_version=code_version(), packages=package_versions(), command=command)
    candidate.path(VERSION_CARD).write_text(card.model_dump_json(indent=2))
    device = device_card(card, candidate.onnx)
    # what the lines will compare their frames with: the images this model learned from
    device.drift_reference = from_dataset(candidate.onnx, data_yaml, params.train.train_on_val, params.gate.alert_conf)
    device.write(candidate.path(DEVICE_CARD))
    return card


def read_card(candidate: VersionFiles) -> VersionCard:
    return VersionCard.model_validate_json(candidate.path(VERSION_CARD).read_text())


def production_test_photos(production: VersionFiles | None) -> list[str]:
    """The photos production was tested on when it was registered (its version card)."""
    return read_card(production).dataset.photos.get("test", []) if production else []
