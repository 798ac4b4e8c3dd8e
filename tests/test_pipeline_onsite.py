"""The retraining pipeline on site, end to end, as an operator runs it: the shipped labels in a real
label store (Parquet + DuckDB) -> `edge-inspect cloud train` (subprocess; real Ultralytics on a
short schedule) -> the MLflow registry on SQLite, seeded with the bundled model and its checkpoint.

Short schedules keep this to minutes on two cores; the figures that matter (the bundled model's)
come from `models/bundled-model.cloud.yaml`, not from here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from cloud_helpers import CloudServe, cloud, write_cloud_config
from conftest import REPO
from daemon_helpers import wait_until
from moto_s3 import MotoS3, set_credentials

from cloud.labels.local import LocalLabelStore
from cloud.labels.table_io import import_csv
from cloud.pipeline.runs import RunStore
from cloud.pipeline.trigger import RetrainTrigger, new_approved_labels
from cloud.registry.bundled import BUNDLED_BY, bundled_files
from cloud.registry.mlflow_registry import MlflowRegistry
from cloud.registry.registry import CHECKPOINT, Approval
from cloud.settings import load_cloud_config
from device.detector import file_sha256
from edge_inspect.loopback import free_port

FAST = ["--param", "train.epochs=1", "--param", "train.workers=0", "--param", "train.batch=16"]


@pytest.fixture
def site(tmp_path, metal_tags) -> Path:
    """A cloud.yaml with the shipped labels in its label store; the registry is still empty."""
    config = write_cloud_config(
        tmp_path / "cloud.yaml",
        label_store={"backend": "local", "local": {"path": str(tmp_path / "labels")}},
        pipeline={"state_path": str(tmp_path / "runs.sqlite"), "work_dir": str(tmp_path / "runs"),
                  "photos": str(metal_tags),
                  "registry": {"backend": "mlflow", "mlflow": {"path": str(tmp_path / "registry")}},
                  # a permissive gate here: these tests are about the flow; the gate has its own tests
                  "params": {"gate": {"floor_map50": 0.0, "floor_map50_95": 0.0, "tolerance": 1.0,
                                              "forgetting_tolerance": 1.0}}})
    import_csv(LocalLabelStore(tmp_path / "labels"), metal_tags / "labels.csv")
    return config


def registry_of(config: Path) -> MlflowRegistry:
    return MlflowRegistry(config.parent / "registry", "metal-tags")


def test_first_run_fine_tunes_from_the_bundled_checkpoint_and_waits_for_approval(site, tmp_path):
    done = cloud(site, "train", *FAST, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "registered done       version 2" in done.stdout

    registry = registry_of(site)
    bundled, candidate = registry.versions()
    assert (bundled.status, bundled.decided_by) == (Approval.APPROVED, BUNDLED_BY)
    assert candidate.status is Approval.PENDING
    card = candidate.card
    # the starting weights are production's checkpoint, and the card says so
    assert card.parent_version == "1" and card.start.kind == "checkpoint" and card.start.version == "1"
    production_files = registry.download("1", tmp_path / "v1")
    assert card.start.sha256 == file_sha256(production_files.path(CHECKPOINT)) == file_sha256(bundled_files()[CHECKPOINT])
    # candidate and production scored on the same test photos (the 7 the first model never saw)
    assert card.evaluation.production is not None
    assert card.evaluation.candidate.images == card.evaluation.production.images == 27
    assert card.evaluation.production.map50 > 0.85  # the bundled model, through the device detector
    assert sorted(card.dataset.photos["test"]) == sorted(bundled.card.dataset.photos["test"])
    # no new photo yet: production's own test photos are the whole test split, scored alike
    known = card.evaluation.production_test
    assert known is not None and known.production == card.evaluation.production
    assert known.candidate == card.evaluation.candidate
    assert any(r.startswith("map50 on production's 27 test images") for r in card.gate.reasons)
    assert card.dataset.images == {"train": 121, "val": 27, "test": 27}
    assert card.params.train.epochs == 1 and card.code_version and card.command.startswith("edge-inspect")
    # a fine-tune learns at the fine-tune recipe's rate, not Ultralytics' from-scratch choice
    (args,) = (tmp_path / "runs").glob("*/train/ultralytics/args.yaml")
    used = yaml.safe_load(args.read_text())
    assert (used["optimizer"], used["lr0"], used["warmup_epochs"], used["warmup_bias_lr"]) == ("AdamW", 0.0001, 0.0, 0.0)

    listed = cloud(site, "models", "list")
    assert "v2  PendingManualApproval" in listed.stdout and "parent 1" in listed.stdout
    assert cloud(site, "models", "reject", "2").returncode != 0  # a reason is required
    approved = cloud(site, "models", "approve", "2", "--by", "alice")
    assert approved.returncode == 0 and "Approved by alice" in approved.stdout
    rejected = cloud(site, "models", "reject", "2", "--by", "bob", "--reason", "false alarms on line 3")
    assert rejected.returncode == 0, rejected.stderr
    # a new process (a restart) reads the same states
    shown = registry_of(site).get("2")
    assert (shown.status, shown.decided_by, shown.reason) == (Approval.REJECTED, "bob", "false alarms on line 3")
    assert "registered" in cloud(site, "runs", "list").stdout


def test_a_one_epoch_model_from_scratch_is_refused_by_the_gate_with_the_reason(site):
    done = cloud(site, "train", *FAST, "--param", "train.from_scratch=true", "--param", "gate.tolerance=0.01",
                 "--param", "gate.forgetting_tolerance=0.02",
                 timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "refused" in done.stdout and "gate: map50 0.0" in done.stdout and "< production" in done.stdout
    assert "on production's 27 test images 0.0" in done.stdout and "- forgetting tolerance 0.0200" in done.stdout
    (args,) = (site.parent / "runs").glob("*/train/ultralytics/args.yaml")
    assert yaml.safe_load(args.read_text())["optimizer"] == "auto", "from scratch: the bundled model's recipe"
    assert [v.version for v in registry_of(site).versions()] == ["1"]  # only the bundled model
    assert "refused" in cloud(site, "runs", "list").stdout


def test_a_run_killed_mid_training_resumes_and_registers_exactly_one_version(site):
    args = [sys.executable, "-m", "edge_inspect", "cloud", "--config", str(site), "train", "--param", "train.epochs=3",
            "--param", "train.workers=0"]
    log = (site.parent / "first.log").open("w")
    first = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    work = site.parent / "runs"
    deadline = time.monotonic() + 600
    while not list(work.glob("*/train/ultralytics/weights/resume.pt")):  # a whole epoch is saved
        assert first.poll() is None, (site.parent / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no epoch finished in 10 minutes"
        time.sleep(0.5)
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    (run,) = RunStore(site.parent / "runs.sqlite").runs()
    assert (run.state, run.step) == ("running", "train")
    assert "not an interrupted run" in cloud(site, "runs", "abandon", "run-x", "--reason", "test").stderr

    again = cloud(site, "train", timeout=900)  # no parameters: the interrupted run's own are used
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming" in again.stderr and run.run_id in again.stdout
    (finished,) = RunStore(site.parent / "runs.sqlite").runs()
    assert finished.state == "registered" and finished.version == "2"
    versions = registry_of(site).versions()
    assert [v.version for v in versions] == ["1", "2"] and versions[1].run_id == run.run_id
    assert [row["epoch"] for row in versions[1].card.curve] == [1, 2, 3]


def test_labels_that_cannot_train_fail_the_run_with_the_reason(tmp_path, metal_tags):
    config = write_cloud_config(
        tmp_path / "cloud.yaml", label_store={"backend": "local", "local": {"path": str(tmp_path / "labels")}},
        pipeline={"state_path": str(tmp_path / "runs.sqlite"), "work_dir": str(tmp_path / "runs"),
                  "photos": str(metal_tags), "registry": {"backend": "mlflow", "mlflow": {"path": str(tmp_path / "r")}}})
    done = cloud(config, "train")
    assert done.returncode == 1 and "failed" in done.stdout and "no APPROVED rows" in done.stdout
    bad = cloud(config, "train", "--param", "train.epochs=many")
    assert bad.returncode == 2 and "train.epochs" in bad.stderr and "Traceback" not in bad.stderr
    assert "no such parameter" in cloud(config, "train", "--param", "train.epoch=3").stderr
    missing = cloud(config, "train", "--param", "production_version=9")
    assert missing.returncode == 2 and "has no version '9'" in missing.stderr
    assert len(RunStore(tmp_path / "runs.sqlite").runs()) == 1  # no run was made of it


def trigger_config(tmp_path: Path, metal_tags: Path, threshold: int = 100, epochs: int = 1) -> Path:
    return write_cloud_config(
        tmp_path / "cloud.yaml", label_store={"backend": "local", "local": {"path": str(tmp_path / "labels")}},
        pipeline={"state_path": str(tmp_path / "runs.sqlite"), "work_dir": str(tmp_path / "runs"),
                  "photos": str(metal_tags), "trigger_new_labels": threshold,
                  "seed_bundled": False,  # an empty registry: the shipped labels are all new to it
                  "registry": {"backend": "mlflow", "mlflow": {"path": str(tmp_path / "registry")}},
                  "params": {"train": {"epochs": epochs, "imgsz": 128, "workers": 0},
                             "gate": {"floor_map50": 0, "floor_map50_95": 0}}})


def test_serve_trigger_starts_a_run_after_enough_new_labels_and_not_twice_on_the_same_labels(tmp_path, metal_tags):
    trigger = RetrainTrigger(load_cloud_config(trigger_config(tmp_path, metal_tags)), command="test")
    assert not trigger.check()  # an empty store
    import_csv(trigger.site.store, metal_tags / "labels.csv")
    assert new_approved_labels(trigger.site.store, 0.0, time.time()) == 175
    assert trigger.check()
    assert trigger.wait(600) == 0
    (run,) = trigger.site.runs.runs()
    assert run.state == "registered", run.reason
    assert not trigger.check()  # the same labels do not start a second run


def test_a_parent_that_exits_mid_training_exits_cleanly_and_the_run_resumes(tmp_path, metal_tags):
    """Training in a thread of `cloud serve` ended the process by SIGABRT when it exited mid-run
    (torch's threads at interpreter exit). In a child process, the parent exits 0; the run is left
    unfinished at its training step and the next trigger resumes it."""
    config = trigger_config(tmp_path, metal_tags, epochs=4)
    import_csv(LocalLabelStore(tmp_path / "labels"), metal_tags / "labels.csv")
    script = f"""
import sys, time
from pathlib import Path
sys.path.insert(0, {str(REPO)!r})
from cloud.pipeline.trigger import RetrainTrigger
from cloud.settings import load_cloud_config
trigger = RetrainTrigger(load_cloud_config(Path({str(config)!r})), command="test")
assert trigger.check()
results = Path({str(tmp_path / "runs")!r})
while not list(results.glob("*/train/ultralytics/weights/resume.pt")):  # a whole epoch is saved
    assert trigger.running(), "the run ended early"
    time.sleep(0.5)
print("exiting mid-run", flush=True)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.returncode, done.stderr[-3000:])
    assert "exiting mid-run" in done.stdout
    (run,) = RunStore(tmp_path / "runs.sqlite").runs()
    assert run.state == "running" and run.step == "train"
    trigger = RetrainTrigger(load_cloud_config(config), command="test")
    assert trigger.check(), "an interrupted run resumes at once"
    assert trigger.wait(600) == 0
    (finished,) = RunStore(tmp_path / "runs.sqlite").runs()
    assert finished.run_id == run.run_id and finished.state == "registered", finished.reason
    (curve,) = (tmp_path / "runs").glob("*/train/train.json")
    assert [c["epoch"] for c in json.loads(curve.read_text())["curve"]] == [1, 2, 3, 4]


def test_cloud_serve_starts_a_run_when_enough_new_labels_have_arrived(tmp_path, metal_tags):
    """The wiring: `cloud serve` with a `pipeline` section counts the label store's new APPROVED
    labels and runs the pipeline in a child process while labeling goes on."""
    set_credentials()
    s3 = MotoS3(free_port(), tmp_path).start()
    s3.client().create_bucket(Bucket="plant-frames")
    # the shipped labels, approved again today: new since the bundled model's dataset
    import csv

    with (metal_tags / "labels.csv").open(newline="") as source:
        rows = list(csv.DictReader(source))
    relabelled = tmp_path / "relabelled.csv"
    with relabelled.open("w", newline="") as target:
        writer = csv.DictWriter(target, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**row, "event_time": str(time.time())} for row in rows)
    import_csv(LocalLabelStore(tmp_path / "labels"), relabelled)
    config = write_cloud_config(
        tmp_path / "cloud.yaml",
        storage={"bucket": "plant-frames", "prefix": "lines", "endpoint_url": s3.url, "region": "us-east-1"},
        labeling={"backend": "replay", "state_path": str(tmp_path / "labeling.sqlite"), "poll_interval_s": 0.5,
                  "replay": {"table": str(metal_tags / "labels.csv"), "images": str(metal_tags)}},
        label_store={"backend": "local", "local": {"path": str(tmp_path / "labels")}},
        pipeline={"state_path": str(tmp_path / "runs.sqlite"), "work_dir": str(tmp_path / "runs"),
                  "photos": str(metal_tags), "trigger_new_labels": 175, "check_minutes": 0.05,
                  "registry": {"backend": "mlflow", "mlflow": {"path": str(tmp_path / "registry")}},
                  "params": {"train": {"epochs": 1, "imgsz": 128, "workers": 0},
                             "gate": {"floor_map50": 0, "floor_map50_95": 0, "tolerance": 1,
                                      "forgetting_tolerance": 1}}})
    serve = CloudServe(config)
    try:
        runs = RunStore(tmp_path / "runs.sqlite")
        assert wait_until(lambda: [r.state for r in runs.runs()] == ["registered"], 600), serve.log_text()[-3000:]
        assert "retrain: 175 new approved labels (>= 175)" in serve.log_text()
    finally:
        serve.stop()
        s3.stop()
    assert len(RunStore(tmp_path / "runs.sqlite").runs()) == 1
    assert [v.version for v in registry_of(config).versions()] == ["1", "2"]
