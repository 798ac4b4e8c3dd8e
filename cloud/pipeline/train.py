"""Step 2, train: Ultralytics on the preprocessed dataset, fine-tuning from the production model's
checkpoint when there is one, else from the architecture YAML (no weights can be downloaded).

Every setting comes from `TrainParams`; nothing is left to Ultralytics' defaults that decides the
model without being recorded. Resumable: the run lives in `out`; run the step again after an
interruption and it continues from the last whole checkpoint (`resume.pt`, see `keep_resume_point`).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from device.detector import file_sha256

log = logging.getLogger(__name__)

RUN_SUBDIR = "ultralytics"
RESUME_POINT = "resume.pt"  # an always-whole copy of Ultralytics' last.pt
OUTPUT = "train.json"

# Ultralytics hyperparameters a run may set (learning rate, loss gains, augmentation). Anything
# else (paths, devices, output folders) belongs to the pipeline, not to a parameter.
HYPERPARAMETERS = frozenset({
    "lr0", "lrf", "momentum", "weight_decay", "warmup_epochs", "warmup_momentum", "warmup_bias_lr",
    "box", "cls", "dfl", "hsv_h", "hsv_s", "hsv_v", "degrees", "translate", "scale", "shear", "perspective",
    "flipud", "fliplr", "bgr", "mosaic", "mixup", "cutmix", "copy_paste", "erasing", "close_mosaic", "freeze",
    "dropout",
})


class TrainingError(RuntimeError):
    pass


class FineTuneParams(BaseModel):
    """How a run that starts from production's checkpoint learns; a run from the architecture YAML
    keeps Ultralytics' own choice (the bundled model's recipe).

    Ultralytics' choice for a short run is AdamW at 0.002 (ignoring lr0), reached after a 3-epoch
    warm-up: a from-scratch rate, 20 times this one. On a fine-tune it moves the weights far from
    production's and part of what production knew is lost: after one rehearsal turn on the
    warm-light drift, held-out undrifted mAP50 0.8759 against production's 0.9028 (at 0.002 from the
    first step, the first epoch's val mAP50 fell to 0.40). AdamW at 1e-4 (decaying linearly to
    lr0 * lrf) with no warm-up, on the same labels: 0.9073, and 0.9056 drifted instead of 0.8931.
    Explicit `hyperparameters` (lr0, warmup_epochs, ...) still win; the bias warm-up starts at 0,
    as Ultralytics does for its own choice (its default 0.1 would be 1000 times lr0 under AdamW)."""

    model_config = ConfigDict(extra="forbid")

    optimizer: Literal["AdamW", "SGD", "auto"] = Field("AdamW", description="auto: Ultralytics' choice, lr0 ignored")
    lr0: float = Field(1e-4, gt=0, le=1)
    warmup_epochs: float = Field(0.0, ge=0, le=100)

    def recipe(self) -> dict[str, float | str]:
        return {"optimizer": self.optimizer, "lr0": self.lr0, "warmup_epochs": self.warmup_epochs,
                "warmup_bias_lr": 0.0}


class TrainParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_yaml: str = Field("yolov8n.yaml", pattern=r"^[A-Za-z0-9_.-]+\.yaml$",
                            description="architecture when there is no production checkpoint")
    epochs: int = Field(250, ge=1, le=5000)
    imgsz: int = Field(448, ge=64, le=2048, multiple_of=32)
    batch: int = Field(16, ge=1, le=1024)
    seed: int = Field(0, ge=0)
    workers: int = Field(2, ge=0, le=64, description="data loader processes (does not change the model)")
    select: Literal["best", "last"] = Field("best", description="the epoch kept: best on val, or the last")
    train_on_val: bool = Field(False, description="train on the val photos too (then the last epoch is kept)")
    from_scratch: bool = Field(False, description="start from model_yaml even when production has a checkpoint")
    fine_tune: FineTuneParams = Field(default_factory=FineTuneParams,
                                      description="how a run that starts from production's checkpoint learns")
    hyperparameters: dict[str, float] = Field(default_factory=dict, description="Ultralytics lr0, flipud, ...")

    @field_validator("hyperparameters")
    @classmethod
    def _known(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - HYPERPARAMETERS)
        if unknown:
            raise ValueError(f"unknown hyperparameter(s) {unknown}; allowed: {sorted(HYPERPARAMETERS)}")
        return value

    @property
    def kept(self) -> Literal["best", "last"]:
        # picking "best" on photos the model trained on would pick on noise
        return "last" if self.train_on_val else self.select


class StartWeights(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["checkpoint", "architecture"]
    name: str  # the checkpoint's file name, or the YAML
    sha256: str | None = None  # of the checkpoint file: the card proves which weights it started from
    version: str | None = None  # the registry version the checkpoint belongs to


class TrainOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    checkpoint: Path
    start: StartWeights
    epochs: int
    kept: Literal["best", "last"]
    curve: list[dict[str, float]]


def _configure_ultralytics(mlflow: bool) -> None:
    """No hub sync (the machines have no internet); Ultralytics' own MLflow logging only when asked
    (`edge-inspect train --mlflow`): the pipeline's registry records its runs itself."""
    from ultralytics import settings

    settings.update({"mlflow": mlflow, "sync": False})


def keep_resume_point(trainer) -> None:
    """Ultralytics rewrites last.pt in place (`write_bytes`): a kill during that write leaves a
    truncated checkpoint. After each save, copy it to resume.pt by temp file, fsync and rename, so
    there is always one whole checkpoint to resume from."""
    last = Path(trainer.last)
    resume_point = last.with_name(RESUME_POINT)
    tmp = resume_point.with_name(RESUME_POINT + ".tmp")
    with last.open("rb") as source, tmp.open("wb") as target:
        shutil.copyfileobj(source, target)
        target.flush()
        os.fsync(target.fileno())
    os.replace(tmp, resume_point)


def read_curve(results_csv: Path) -> list[dict[str, float]]:
    """Per-epoch validation mAP from Ultralytics' results.csv. An epoch interrupted after its row
    was written is trained again on resume and appears twice: the later row is the one that led to
    the model."""
    if not results_csv.is_file():
        return []
    with results_csv.open(newline="") as handle:
        rows = [{k.strip(): v for k, v in row.items()} for row in csv.DictReader(handle)]
    by_epoch = {
        int(float(r["epoch"])): {
            "epoch": int(float(r["epoch"])),
            "val_map50": round(float(r["metrics/mAP50(B)"]), 4),
            "val_map50_95": round(float(r["metrics/mAP50-95(B)"]), 4),
        }
        for r in rows
    }
    return [by_epoch[e] for e in sorted(by_epoch)]


def _training_data(data_yaml: Path, params: TrainParams) -> Path:
    if not params.train_on_val:
        return data_yaml
    spec = yaml.safe_load(data_yaml.read_text())
    spec["train"] = [spec["train"], spec["val"]] if spec["val"] != spec["train"] else spec["train"]
    path = data_yaml.with_name("data-train-on-val.yaml")
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _recipe(params: TrainParams, start: StartWeights) -> dict[str, float | str]:
    """The optimizer settings and hyperparameters Ultralytics gets: the fine-tune recipe when
    starting from a checkpoint, then the explicit hyperparameters over it."""
    base = params.fine_tune.recipe() if start.kind == "checkpoint" else {}
    return {**base, **params.hyperparameters}


def _start(params: TrainParams, production: Path | None, production_version: str | None) -> StartWeights:
    if production is not None and not params.from_scratch:
        return StartWeights(kind="checkpoint", name=production.name, sha256=file_sha256(production),
                            version=production_version)
    return StartWeights(kind="architecture", name=params.model_yaml)


def train(data_yaml: Path, params: TrainParams, out: Path, production: Path | None = None,
          production_version: str | None = None, mlflow: bool = False) -> TrainOutput:
    """Train into `out` (resuming what is there); `production` is the production checkpoint."""
    from ultralytics import YOLO

    _configure_ultralytics(mlflow)
    out = out.resolve()  # Ultralytics files a relative project under its own runs_dir
    run_dir = out / RUN_SUBDIR
    resume_point = run_dir / "weights" / RESUME_POINT
    start = _start(params, production, production_version)
    if resume_point.is_file():
        log.info("resuming training from %s", resume_point)
        model = YOLO(str(resume_point))
        model.add_callback("on_model_save", keep_resume_point)
        model.train(resume=True, workers=params.workers)
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
        model = YOLO(str(production) if start.kind == "checkpoint" else params.model_yaml)
        model.add_callback("on_model_save", keep_resume_point)
        model.train(
            data=str(_training_data(data_yaml, params)), epochs=params.epochs, imgsz=params.imgsz,
            batch=params.batch, seed=params.seed, deterministic=True, pretrained=start.kind == "checkpoint",
            amp=False, device="cpu", workers=params.workers, project=str(out), name=RUN_SUBDIR, exist_ok=True,
            plots=False,  # plotting fetches a font from the internet
            patience=params.epochs,  # no early stop: the schedule is part of the recipe
            **_recipe(params, start),
        )
    checkpoint = run_dir / "weights" / f"{params.kept}.pt"
    if not checkpoint.is_file():
        raise TrainingError(f"training finished without {checkpoint}")
    result = TrainOutput(checkpoint=checkpoint, start=start, epochs=params.epochs, kept=params.kept,
                         curve=read_curve(run_dir / "results.csv"))
    (out / OUTPUT).write_text(result.model_dump_json(indent=2))
    return result


def read_output(out: Path) -> TrainOutput | None:
    path = out / OUTPUT
    return TrainOutput.model_validate(json.loads(path.read_text())) if path.is_file() else None


def export_onnx(checkpoint: Path, imgsz: int, dest: Path) -> Path:
    """The candidate as the device runs it: ONNX, simplified, static input."""
    from ultralytics import YOLO

    exported = Path(YOLO(str(checkpoint)).export(format="onnx", imgsz=imgsz, simplify=True, dynamic=False))
    tmp = dest.with_name(dest.name + ".part")
    shutil.copyfile(exported, tmp)
    os.replace(tmp, dest)
    return dest
