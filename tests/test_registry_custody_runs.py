"""A pipeline run that cannot finish is abandoned with the reason, not resumed at every retrain
check for ever (issue 21, severe 4): the real on-site pipeline (cloud/pipeline/onsite.py) on an
MLflow registry seeded with the bundled model, a real label store and run store on disk. No
training runs here: each run fails before it."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import urlparse

import pytest
from cloud_helpers import write_cloud_config

from cloud.pipeline.backends import open_onsite
from cloud.pipeline.onsite import start_or_resume
from cloud.pipeline.params import PipelineParams
from cloud.pipeline.runs import MAX_ATTEMPTS, RunStore
from cloud.registry.registry import CHECKPOINT
from cloud.settings import load_cloud_config


@pytest.fixture
def config(tmp_path) -> Path:
    return write_cloud_config(
        tmp_path / "cloud.yaml", label_store={"backend": "local", "local": {"path": str(tmp_path / "labels")}},
        pipeline={"state_path": str(tmp_path / "runs.sqlite"), "work_dir": str(tmp_path / "runs"),
                  "registry": {"backend": "mlflow", "mlflow": {"path": str(tmp_path / "registry")}}})


def test_a_production_whose_files_are_broken_fails_the_run_at_once_with_the_reason(config):
    site = open_onsite(load_cloud_config(config))  # seeds the bundled model: production v1
    lost = Path(urlparse(site.registry.get("1").location).path) / CHECKPOINT
    lost.unlink()
    record = start_or_resume(site, PipelineParams(), "test")
    assert record.state == "failed" and "lack model.pt" in record.reason, record
    assert site.runs.unfinished() is None, "nothing left to resume at the next retrain check"


def test_a_failure_that_repeats_abandons_the_run_after_max_attempts(config, tmp_path):
    site = open_onsite(load_cloud_config(config))
    site.work_dir.parent.mkdir(parents=True, exist_ok=True)
    site.work_dir.write_text("a file where the runs' folder belongs")  # every attempt fails the same way
    for attempt in range(1, MAX_ATTEMPTS):
        with pytest.raises(OSError):
            start_or_resume(site, PipelineParams(), "test")
        (run,) = site.runs.runs()
        assert (run.state, run.attempts, run.failed_step) == ("running", attempt, "preprocess"), run
        assert f"{attempt} failed attempt(s) at preprocess" in run.line()
    record = start_or_resume(site, PipelineParams(), "test")  # resumed once more: the last attempt
    assert record.state == "failed" and record.run_id == run.run_id
    assert record.reason.startswith(f"abandoned after {MAX_ATTEMPTS} failed attempts at preprocess: "), record.reason
    assert site.runs.unfinished() is None


def test_a_run_store_written_before_attempts_were_counted_opens_and_resumes(tmp_path):
    path = tmp_path / "runs.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE runs (run_id TEXT PRIMARY KEY, state TEXT NOT NULL CHECK (state IN ('running', "
               "'registered', 'refused', 'failed')), step TEXT NOT NULL, params TEXT NOT NULL, created REAL NOT NULL, "
               "updated REAL NOT NULL, version TEXT, reason TEXT)")
    db.execute("INSERT INTO runs VALUES ('run-old', 'running', 'train', ?, 1, 1, NULL, NULL)",
               (PipelineParams().model_dump_json(),))
    db.commit()
    db.close()
    store = RunStore(path)
    run = store.unfinished()
    assert (run.run_id, run.step, run.attempts) == ("run-old", "train", 0)
    assert store.failed_attempt("run-old", "boom").attempts == 1
