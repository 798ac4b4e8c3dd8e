"""Forgetting: fine-tune recipes compared on the labels of one loop turn.

Fine-tunes the loop's production model (v1) on the dataset its pipeline run was made of, once per
recipe, and scores each result on the loop's held-out photos, undrifted and drifted, as the loop's
report does. `--drop N --seed S` first leaves out N of the drifted frames the run trained on (a
turn that learned from fewer or other frames). About 7 minutes per recipe on 2 cores; run nothing
else meanwhile.

    make loop    # or: edge-inspect loop --drift warm-light --out loop-output --auto-approve
    .venv/bin/python -m benchmarks.forgetting --loop loop-output [--recipe fine-tune] [--drop 25 --seed 1]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.machine import cpu_info
from cloud.pipeline.candidate import read_card
from cloud.pipeline.jobs import relocate
from cloud.pipeline.train import TrainParams, export_onnx, train
from cloud.registry.registry import VersionFiles
from cloud.rehearsal.heldout import HeldoutSets, score

# what each recipe changes in the loop's own training parameters
RECIPES: dict[str, dict] = {
    "fine-tune": {},  # the pipeline's default for a run from a checkpoint (FineTuneParams)
    "fine-tune-lr3e-4": {"fine_tune": {"lr0": 3e-4}},
    # Ultralytics' own choice, the pipeline's recipe before FineTuneParams: AdamW at 0.002, reached
    # after a 3-epoch warm-up (lr0 ignored)
    "ultralytics-auto": {"fine_tune": {"optimizer": "auto", "warmup_epochs": 3.0}},
}


class BenchmarkError(RuntimeError):
    pass


def loop_run(loop: Path) -> Path:
    runs = sorted((loop / "cloud" / "runs").glob("run-*/dataset/data.yaml"))
    if not runs:
        raise BenchmarkError(f"{loop} holds no pipeline run: run the loop first (make loop)")
    return runs[0].parent.parent  # the first turn's run


def drifted_frames(run: Path) -> list[str]:
    """Training images whose photo production never saw: the frames the loop labelled."""
    files = json.loads((run / "dataset" / "split.json").read_text()).get("files")
    if files is None:
        raise BenchmarkError(f"{run}/dataset/split.json does not name each image's photo: re-run the loop")
    production = read_card(VersionFiles(folder=run / "production")).dataset.photos
    known = {photo for photos in production.values() for photo in photos}
    return sorted(name for name, photo in files["train"].items() if photo not in known)


def dataset_without(run: Path, drop: int, seed: int, work: Path) -> Path:
    """A copy of the run's dataset without `drop` of its drifted training frames."""
    copy = work / "dataset"
    shutil.copytree(run / "dataset", copy, ignore=shutil.ignore_patterns("*.cache"))
    frames = drifted_frames(run)
    if drop >= len(frames):
        raise BenchmarkError(f"--drop {drop}: the run trained on {len(frames)} drifted frames")
    for name in random.Random(seed).sample(frames, drop):
        (copy / "images" / "train" / name).unlink()
        (copy / "labels" / "train" / Path(name).with_suffix(".txt").name).unlink()
    return relocate(copy / "data.yaml")


def measure(loop: Path, recipe: str, drop: int, seed: int) -> dict:
    run = loop_run(loop)
    card = read_card(VersionFiles(folder=run / "candidate"))
    params = TrainParams.model_validate({**card.params.train.model_dump(), **RECIPES[recipe]})
    sets = HeldoutSets(loop / "heldout" / "undrifted" / "data.yaml", loop / "heldout" / "drifted" / "data.yaml")
    with tempfile.TemporaryDirectory(prefix="forgetting-") as tmp:
        work = Path(tmp)
        data = dataset_without(run, drop, seed, work) if drop else run / "dataset" / "data.yaml"
        started = time.monotonic()
        trained = train(data, params, work / "train", run / "production" / "model.pt", card.parent_version)
        minutes = (time.monotonic() - started) / 60
        scores = score(export_onnx(trained.checkpoint, params.imgsz, work / "model.onnx"), sets)
    return {"recipe": recipe, "drop": drop, "seed": seed, "epochs": params.epochs, "train_minutes": round(minutes, 1),
            "undrifted": scores["undrifted"], "drifted": scores["drifted"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.forgetting", description=__doc__.splitlines()[0])
    parser.add_argument("--loop", type=Path, default=Path("loop-output"), help="an `edge-inspect loop --out` folder")
    parser.add_argument("--recipe", action="append", choices=sorted(RECIPES), help="default: all")
    parser.add_argument("--drop", type=int, default=0, help="drifted training frames to leave out")
    parser.add_argument("--seed", type=int, default=0, help="which frames --drop leaves out")
    args = parser.parse_args(argv)
    cpu = cpu_info()
    print(f"# {cpu['model']}, {cpu['logical_cores']} cores, instruction sets: {' '.join(cpu.get('isa', []))}")
    try:
        for recipe in args.recipe or sorted(RECIPES):
            result = measure(args.loop, recipe, args.drop, args.seed)
            print(json.dumps({**result, "isa": cpu.get("isa", [])}), flush=True)
    except BenchmarkError as exc:
        print(f"forgetting: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
