"""The version card: everything needed to tell, for any registered model, exactly which labels
made it, from which weights, with which settings and code, and how it scored against production.
The registry keeps it beside the ONNX and the checkpoint; the device gets a `ModelCard` derived
from it (`device_card`)."""

from __future__ import annotations

import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from cloud.pipeline.evaluate import Evaluation
from cloud.pipeline.gate import GateDecision
from cloud.pipeline.params import PipelineParams
from cloud.pipeline.preprocess import DatasetSummary
from cloud.pipeline.train import StartWeights
from device.detector import file_sha256
from device.model_card import ModelCard, package_versions


class VersionCard(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str  # the model group
    run_id: str
    created: str
    class_names: list[str]
    imgsz: int
    onnx_sha256: str
    checkpoint_sha256: str
    parent_version: str | None  # the production version it was compared with (and fine-tuned from)
    start: StartWeights
    dataset: DatasetSummary
    evaluation: Evaluation
    gate: GateDecision
    params: PipelineParams
    curve: list[dict[str, float]]
    code_version: str
    packages: dict[str, str]
    command: str


def code_version() -> str:
    """The package version and, in a git checkout, the commit (with `+dirty` when edited), so a
    card names the exact code; EDGE_INSPECT_CODE_VERSION overrides it (container builds)."""
    override = os.environ.get("EDGE_INSPECT_CODE_VERSION")
    if override:
        return override
    version = package_versions(("edge-inspect",)).get("edge-inspect", "unknown")
    repo = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(repo), "describe", "--always", "--dirty=+dirty", "--abbrev=12"],
                                capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version} ({commit})" if commit else version


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def device_card(card: VersionCard, onnx: Path, version: str | None = None) -> ModelCard:
    """The card the device reads beside the ONNX (name, metrics, photos trained on)."""
    photos = dict(card.dataset.photos)
    if card.params.train.train_on_val:
        photos = {"train": sorted(photos.get("train", []) + photos.get("val", [])), "test": photos.get("test", [])}
    return ModelCard(
        name=card.name + (f"-v{version}" if version else ""), created=card.created, model_file=onnx.name,
        model_sha256=file_sha256(onnx), class_names=card.class_names, input_size=[card.imgsz, card.imgsz],
        metrics={"test": card.evaluation.candidate.model_dump(),
                 "production_test": card.evaluation.production.model_dump() if card.evaluation.production else None},
        data={"as_of": card.dataset.as_of, "table_sha256": card.dataset.fingerprint,
              "split_sha256": card.dataset.split_sha256, "images": card.dataset.images, "photos": photos},
        training={**card.params.train.model_dump(mode="json"), "start": card.start.model_dump(),
                  "parent_version": card.parent_version, "run_id": card.run_id, "curve": card.curve,
                  "code_version": card.code_version},
        packages=card.packages, command=card.command)
