"""`edge-inspect train`: label table -> split dataset -> Ultralytics training from the model YAML
(no pretrained weights: nothing can be downloaded) -> ONNX export -> test-split evaluation through
the device detector -> model card.

Resumable: the run lives in one output folder. Run the same command again after an interruption
and it continues from the last whole checkpoint (`resume.pt`, see `keep_resume_point`); a
finished run is not retrained, only re-exported and re-scored if those steps did not finish.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cloud.dataset import SplitFractions, split_by_photo, write_yolo_dataset
from cloud.evaluation import evaluate
from cloud.label_table import read_label_csv
from cloud.pipeline.train import RUN_SUBDIR, TrainingError, TrainParams, export_onnx, read_curve, train
from device.detector import file_sha256
from device.model_card import ModelCard, card_path_for, package_versions

log = logging.getLogger(__name__)

STATE_FILE = "train_state.json"


class TrainSettings(BaseModel):
    """Everything that decides the trained model; stored with the run so a resume can check that
    it continues the same training."""

    model_config = ConfigDict(extra="forbid")

    labels: Path
    images_root: Path | None = Field(None, description="folder source_ref is relative to; default: the table's")
    name: str = Field("metal-tags-yolov8n", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    model_yaml: str = "yolov8n.yaml"
    class_names: list[str] = ["scratch"]
    imgsz: int = Field(448, ge=64, le=2048, multiple_of=32)
    epochs: int = Field(120, ge=1)
    batch: int = Field(16, ge=1)
    seed: int = 0
    split_seed: int = 0
    train_fraction: float = 0.70
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    workers: int = Field(2, ge=0)
    augment: dict[str, float] = Field(default_factory=dict, description="Ultralytics augmentation overrides")
    mlflow: bool = False

    def fractions(self) -> SplitFractions:
        return SplitFractions(self.train_fraction, self.val_fraction, self.test_fraction)

    def comparable(self) -> dict[str, Any]:
        """What must be equal for a resume; `workers` and `mlflow` may change between attempts."""
        return self.model_dump(mode="json", exclude={"workers", "mlflow"})


def _load_state(out: Path) -> dict[str, Any]:
    state_file = out / STATE_FILE
    return json.loads(state_file.read_text()) if state_file.is_file() else {}


def _save_state(out: Path, state: dict[str, Any]) -> None:
    tmp = out / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, out / STATE_FILE)


def _train(settings: TrainSettings, data_yaml: Path, out: Path, resume: bool) -> Path:
    """The pipeline's train step (cloud/pipeline/train.py), from the architecture YAML."""
    if not resume:
        shutil.rmtree(out / RUN_SUBDIR, ignore_errors=True)
    params = TrainParams(model_yaml=settings.model_yaml, epochs=settings.epochs, imgsz=settings.imgsz,
                         batch=settings.batch, seed=settings.seed, workers=settings.workers,
                         hyperparameters=settings.augment, from_scratch=True)
    return train(data_yaml, params, out, mlflow=settings.mlflow).checkpoint


def _export(best: Path, settings: TrainSettings, out: Path) -> Path:
    return export_onnx(best, settings.imgsz, out / f"{settings.name}.onnx")


def run_training(settings: TrainSettings, out: str | Path, fresh: bool = False) -> ModelCard:
    out = Path(out).resolve()  # Ultralytics files a relative project under its own runs_dir
    out.mkdir(parents=True, exist_ok=True)
    state = {} if fresh else _load_state(out)
    if state and state.get("settings") != settings.comparable():
        raise TrainingError(
            f"{out} holds a run with other settings; use another --out, or --fresh to discard it"
        )

    records = read_label_csv(settings.labels)
    split = split_by_photo(records, seed=settings.split_seed, fractions=settings.fractions())
    images_root = settings.images_root or settings.labels.parent
    data_yaml = write_yolo_dataset(split, images_root, out / "dataset", settings.class_names)
    log.info("dataset: %s", json.dumps(split.summary()["images"]))

    if state.get("phase") not in ("trained", "exported"):
        state = {"settings": settings.comparable(), "phase": "training", "command": command_line()}
        _save_state(out, state)
        best = _train(settings, data_yaml, out, resume=not fresh and (out / RUN_SUBDIR).is_dir())
        state["phase"] = "trained"
        _save_state(out, state)
    best = out / RUN_SUBDIR / "weights" / "best.pt"

    model_path = _export(best, settings, out)
    state["phase"] = "exported"
    _save_state(out, state)

    has_test = bool(split.records["test"])
    test = evaluate(model_path, data_yaml, "test") if has_test else None
    val = evaluate(model_path, data_yaml, "val")
    card = ModelCard(
        name=settings.name,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        model_file=model_path.name,
        model_sha256=file_sha256(model_path),
        task="detect",
        class_names=settings.class_names,
        input_size=[settings.imgsz, settings.imgsz],
        precision="fp32",
        metrics={"test": test.to_dict() if test else None, "val": val.to_dict()},
        data=split.summary(),
        training={
            **settings.model_dump(mode="json", exclude={"labels", "images_root", "workers", "mlflow"}),
            "trained_on": "train split (val picks the best epoch; test never seen)",
            "curve": read_curve(out / RUN_SUBDIR / "results.csv"),
        },
        packages=package_versions(),
        command=state.get("command") or command_line(),
    )
    card.write(card_path_for(model_path))
    return card


def command_line() -> str:
    """The command as a user would type it: `edge-inspect ...` for the console script and for
    `python -m edge_inspect`, the interpreter and script otherwise."""
    program = sys.argv[0] if sys.argv else ""
    if program.endswith("edge-inspect") or Path(program).parts[-2:] == ("edge_inspect", "__main__.py"):
        return shlex.join(["edge-inspect", *sys.argv[1:]])
    return shlex.join([sys.executable, *sys.argv])
