"""The SageMaker jobs' entry points (cloud/pipeline/jobs.py), run here on folders laid out as
SageMaker lays them out (/opt/ml/processing/..., /opt/ml/input/data/..., /opt/ml/model), handing
each job's output to the next as the pipeline does (the training output as model.tar.gz). The
registry is the on-site one: the register job uses whichever cloud.yaml names."""

from __future__ import annotations

import json
import shutil
import tarfile

import yaml

from cloud.labels.local import LocalLabelStore
from cloud.labels.table_io import import_csv
from cloud.pipeline import jobs
from cloud.registry.mlflow_registry import MlflowRegistry
from cloud.registry.registry import FILES, Approval
from device.model_card import ModelCard

PARAMS = ["train.epochs=1", "train.imgsz=128", "train.workers=0", "gate.floor_map50=0", "gate.floor_map50_95=0"]


def test_the_four_jobs_hand_over_to_each_other_and_register_a_pending_version(tmp_path, metal_tags):
    labels, registry_dir = tmp_path / "labels", tmp_path / "registry"
    import_csv(LocalLabelStore(labels), metal_tags / "labels.csv")
    config = {"label_store": {"backend": "local", "local": {"path": str(labels)}},
              "pipeline": {"state_path": str(tmp_path / "runs.sqlite"), "work_dir": str(tmp_path / "runs"),
                           "registry": {"backend": "mlflow", "mlflow": {"path": str(registry_dir)}},
                           "seed_bundled": False}}
    params = jobs.params_from(PARAMS)

    pre = tmp_path / "preprocess"
    (pre / "input" / "config").mkdir(parents=True)
    (pre / "input" / "config" / "cloud.yaml").write_text(yaml.safe_dump(config))
    shutil.copytree(metal_tags / "images", pre / "input" / "photos" / "images")
    jobs.run_preprocess(params, root=pre)
    assert json.loads((pre / "output" / "production" / jobs.PRODUCTION_NOTE).read_text()) == {"version": None}

    ml = tmp_path / "training"
    shutil.copytree(pre / "output" / "dataset", ml / "input" / "data" / "dataset")
    shutil.copytree(pre / "output" / "production", ml / "input" / "data" / "production")
    shutil.rmtree(pre / "output" / "dataset" / "images")  # the training job must not read the first job's folder
    (ml / "input" / "config").mkdir(parents=True)
    (ml / "input" / "config" / "hyperparameters.json").write_text(json.dumps(dict(p.split("=", 1) for p in PARAMS)))
    jobs.run_train(jobs.params_from(jobs._hyperparameters(ml)), root=ml)
    assert (ml / "model" / "model.pt").is_file() and (ml / "checkpoints" / "train.json").is_file()

    ev = tmp_path / "evaluate"
    (ev / "input" / "model").mkdir(parents=True)
    with tarfile.open(ev / "input" / "model" / "model.tar.gz", "w:gz") as tar:
        for item in (ml / "model").iterdir():
            tar.add(item, arcname=item.name)
    shutil.copytree(ml / "input" / "data" / "dataset", ev / "input" / "dataset")
    shutil.copytree(ml / "input" / "data" / "production", ev / "input" / "production")
    jobs.run_evaluate(params, run_id="exec-1234", command="test", root=ev)
    report = json.loads((ev / "output" / "evaluation" / "evaluation.json").read_text())
    assert report["gate"]["passed"] is True and report["candidate"]["images"] == 27
    assert report["production"] is None

    reg = tmp_path / "register"
    shutil.copytree(pre / "input" / "config", reg / "input" / "config")
    shutil.copytree(ev / "output" / "candidate", reg / "input" / "candidate")
    jobs.run_register(root=reg)
    (version,) = MlflowRegistry(registry_dir, "metal-tags").versions()
    assert (version.status, version.run_id) == (Approval.PENDING, "exec-1234")
    assert version.card.params.train.imgsz == 128 and version.card.dataset.images["test"] == 27
    got = MlflowRegistry(registry_dir, "metal-tags").download("1", tmp_path / "dl")
    assert not got.missing() and len(FILES) == 4
    # the lines compare their frames with what this model learned from: the run's training images
    reference = ModelCard.read(got.path("model.card.json")).drift_reference
    images, on_val = version.card.dataset.images, version.card.params.train.train_on_val
    assert reference is not None
    assert reference.features["brightness"].count == images["train"] + (images["val"] if on_val else 0)
    assert reference.features["detections"].count == (images["val"] or images["test"])


def test_a_model_archive_that_tries_to_escape_is_refused(tmp_path):
    import io

    import pytest

    model = tmp_path / "evaluate" / "input" / "model"
    model.mkdir(parents=True)
    with tarfile.open(model / "model.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(tarfile.OutsideDestinationError):
        jobs.run_evaluate(jobs.params_from([]), run_id="x", command="test", root=tmp_path / "evaluate")
    assert not (tmp_path / "escaped.txt").exists()
