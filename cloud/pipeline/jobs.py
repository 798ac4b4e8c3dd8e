"""The pipeline's steps as SageMaker jobs: `python -m cloud.pipeline.jobs STEP ...` inside the
edge-inspect image. Each job only maps SageMaker's folders and arguments onto the same step
functions `cloud train` runs on site (preprocess, train, evaluate + gate, register).

Every job receives every pipeline parameter as `--param path=value` (processing jobs) or as a
hyperparameter named by its path (the training job), and rebuilds the same `PipelineParams` the
on-site runner uses; so no parameter can be silently dropped between the definition and the step.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
from pathlib import Path

import yaml

from cloud.pipeline import evaluate as evaluate_step
from cloud.pipeline import preprocess as preprocess_step
from cloud.pipeline import train as train_step
from cloud.pipeline.backends import pipeline_settings, with_overrides
from cloud.pipeline.candidate import assemble, export_candidate, production_test_photos, read_card
from cloud.pipeline.gate import decide
from cloud.pipeline.params import PipelineParams
from cloud.pipeline.report import EvaluationReport
from cloud.registry.registry import VersionFiles, production

PROCESSING = Path("/opt/ml/processing")
TRAINING = Path("/opt/ml")
PRODUCTION_NOTE = "production.json"  # which version the production folder holds (or none)


def params_from(pairs: list[str]) -> PipelineParams:
    return with_overrides(PipelineParams(), pairs)


def relocate(data_yaml: Path) -> Path:
    """A dataset written in one job and read in another lives at another path: point data.yaml at
    the folder it is in now."""
    spec = yaml.safe_load(data_yaml.read_text())
    spec["path"] = str(data_yaml.parent.resolve())
    data_yaml.write_text(yaml.safe_dump(spec, sort_keys=False))
    return data_yaml


def _production_version(folder: Path) -> str | None:
    note = folder / PRODUCTION_NOTE
    return json.loads(note.read_text())["version"] if note.is_file() else None


def run_preprocess(params: PipelineParams, root: Path = PROCESSING) -> None:
    """Label store as of T -> dataset; also resolves and fetches the production version, so that
    training and evaluation use the same one."""
    import time

    from cloud.pipeline.backends import open_onsite
    from cloud.settings import load_cloud_config

    config = load_cloud_config(root / "input" / "config" / "cloud.yaml")
    photos = root / "input" / "photos"
    site = open_onsite(config.model_copy(update={"pipeline": pipeline_settings(config).model_copy(
        update={"photos": photos if photos.is_dir() else None})}))
    version = params.production_version or (getattr(production(site.registry), "version", None))
    out = root / "output"
    (out / "production").mkdir(parents=True, exist_ok=True)
    if version is not None:
        site.registry.download(version, out / "production")
    (out / "production" / PRODUCTION_NOTE).write_text(json.dumps({"version": version}))
    as_of = params.as_of if params.as_of is not None else time.time()
    preprocess_step.preprocess(site.store, site.images, as_of, params.split, params.class_names, out / "dataset")


def run_train(params: PipelineParams, root: Path = TRAINING) -> None:
    """Checkpoints live in /opt/ml/checkpoints (synced to S3 by SageMaker), so a restarted job
    resumes; the kept weights and train.json go to /opt/ml/model."""
    dataset, prod = root / "input" / "data" / "dataset", root / "input" / "data" / "production"
    checkpoint = prod / "model.pt"
    trained = train_step.train(relocate(dataset / "data.yaml"), params.train, root / "checkpoints",
                               checkpoint if checkpoint.is_file() else None, _production_version(prod))
    model = root / "model"
    model.mkdir(parents=True, exist_ok=True)
    (model / "model.pt").write_bytes(trained.checkpoint.read_bytes())
    (model / train_step.OUTPUT).write_text(trained.model_copy(update={"checkpoint": Path("model.pt")}).model_dump_json())


def run_evaluate(params: PipelineParams, run_id: str, command: str, root: Path = PROCESSING) -> None:
    """Export, score candidate and production on the test split, gate, and write the candidate's
    files and cards; `evaluation.json` carries the gate for the ConditionStep's PropertyFile."""
    inputs, out = root / "input", root / "output"
    model = inputs / "model"
    for archive in model.glob("*.tar.gz"):
        with tarfile.open(archive) as tar:
            tar.extractall(model, filter="data")  # refuses absolute paths and `..`
    trained = train_step.TrainOutput.model_validate_json((model / train_step.OUTPUT).read_text())
    dataset = preprocess_step.read_output(inputs / "dataset")
    data_yaml = relocate(inputs / "dataset" / "data.yaml")
    prod = VersionFiles(folder=inputs / "production")
    version = _production_version(prod.folder)
    params = params.model_copy(update={"production_version": version, "as_of": dataset.dataset.as_of})
    candidate = export_candidate(model / "model.pt", params.train.imgsz, out / "candidate")
    (out / "evaluation").mkdir(parents=True, exist_ok=True)
    evaluation = evaluate_step.evaluate_pair(candidate.onnx, prod.onnx if version else None, data_yaml,
                                             params.gate.alert_conf, out / "evaluation",
                                             production_test_photos(prod if version else None))
    decision = decide(evaluation, params.gate)
    assemble(candidate, params, run_id, dataset.dataset, trained.model_copy(update={"checkpoint": model / "model.pt"}),
             evaluation, decision, command, data_yaml)
    report = EvaluationReport(**evaluation.model_dump(), gate=decision)
    (out / "evaluation" / evaluate_step.OUTPUT).write_text(report.model_dump_json(indent=2))


def run_register(root: Path = PROCESSING) -> None:
    from cloud.registry.backends import open_registry
    from cloud.settings import load_cloud_config

    config = load_cloud_config(root / "input" / "config" / "cloud.yaml")
    candidate = VersionFiles(folder=root / "input" / "candidate")
    card = read_card(candidate)
    registry = open_registry(pipeline_settings(config).registry, card.name, config.region)
    version = registry.register(candidate, card)
    print(f"registered {version.group} version {version.version} ({version.status.value})")


def _hyperparameters(root: Path = TRAINING) -> list[str]:
    """SageMaker writes the training job's hyperparameters (all strings) here."""
    path = root / "input" / "config" / "hyperparameters.json"
    return [f"{k}={v}" for k, v in json.loads(path.read_text()).items()] if path.is_file() else []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cloud.pipeline.jobs")
    parser.add_argument("step", choices=["preprocess", "train", "evaluate", "register"])
    parser.add_argument("--param", action="append", default=[], metavar="PATH=VALUE")
    parser.add_argument("--run-id", default="local")
    args = parser.parse_args(argv)
    command = " ".join(["python -m cloud.pipeline.jobs", *(argv if argv is not None else sys.argv[1:])])
    if args.step == "preprocess":
        run_preprocess(params_from(args.param))
    elif args.step == "train":
        run_train(params_from(args.param + _hyperparameters()))
    elif args.step == "evaluate":
        run_evaluate(params_from(args.param), args.run_id, command)
    else:
        run_register()
    return 0


if __name__ == "__main__":
    sys.exit(main())
