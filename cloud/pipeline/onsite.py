"""The pipeline on site: the same steps the SageMaker Pipeline runs in its jobs, run one after the
other in this process. Every step leaves its output in the run's folder, so a run interrupted at
any point (kill -9 included) resumes where it stopped: finished steps are not redone, training
continues from its last whole checkpoint, and registering is idempotent by run id.

A run that cannot finish is not resumed for ever: an error known to repeat (the labels, the
production version's files or card, a model that does not load) fails it at once with the
reason; an outage (the bucket or the registry unreachable, a full disk, a locked database) is not
the run's fault and counts nothing (the run resumes when it has passed); any other error is
counted, and the third failure of the same step abandons it (runs.MAX_ATTEMPTS).
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from cloud.dataset import ImageSource
from cloud.label_table import LabelTableError
from cloud.labels.store import LabelStore
from cloud.pipeline import evaluate as evaluate_step
from cloud.pipeline import preprocess as preprocess_step
from cloud.pipeline import train as train_step
from cloud.pipeline.candidate import assemble, export_candidate, production_test_photos, read_card
from cloud.pipeline.gate import decide
from cloud.pipeline.params import PipelineParams
from cloud.pipeline.runs import MAX_ATTEMPTS, RunBusy, RunRecord, RunStore
from cloud.registry.registry import (
    ModelRegistry,
    RegistryError,
    RegistryUnavailable,
    VersionFiles,
    first_line,
    production,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OnSite:
    registry: ModelRegistry
    store: LabelStore
    images: ImageSource
    runs: RunStore
    work_dir: Path


def new_run_id() -> str:
    return time.strftime("run-%Y%m%d-%H%M%S-", time.gmtime()) + uuid.uuid4().hex[:6]


def pin(params: PipelineParams, registry: ModelRegistry) -> PipelineParams:
    """Fix what "now" and "production" mean when a run starts, so a resumed run uses the same."""
    as_of = params.as_of if params.as_of is not None else time.time()
    version = params.production_version
    if version is not None:
        registry.get(version)  # a version that does not exist is refused before a run is made of it
    else:
        current = production(registry)
        version = current.version if current else None
    return params.model_copy(update={"as_of": as_of, "production_version": version})


def start_or_resume(site: OnSite, params: PipelineParams, command: str) -> RunRecord:
    """Resume the interrupted run if there is one, else start one with `params`. One at a time."""
    with site.runs.exclusive():
        record = site.runs.unfinished()
        if record is not None:
            log.info("resuming %s (interrupted at %s) with the parameters it started with", record.run_id, record.step)
            if pin(params, site.registry).model_copy(update={"as_of": record.params.as_of}) != record.params:
                log.warning("the parameters given now differ from the interrupted run's; they apply to the next run")
        else:
            record = site.runs.create(new_run_id(), pin(params, site.registry))
            log.info("started %s: labels as of %s, production version %s", record.run_id,
                     record.params.as_of, record.params.production_version or "none")
        return execute(site, record, command)


def abandon(site: OnSite, run_id: str, reason: str) -> RunRecord:
    """Give up an interrupted run that cannot finish (its production version was deleted, its
    folder lost): it is marked failed, and the next start makes a new run."""
    with site.runs.exclusive():
        record = site.runs.unfinished()
        if record is None or record.run_id != run_id:
            raise RunBusy(f"{run_id} is not an interrupted run; `cloud runs list` shows the runs") from None
        return site.runs.finish(run_id, "failed", reason=f"abandoned: {reason}")


def permanent(exc: BaseException) -> bool:
    """An error a retry would repeat: the labels, the registry's answer about a version (not an AWS
    outage), a model or checkpoint that does not load."""
    from cloud.aws import AwsError
    from cloud.checkpoint import CheckpointError
    from device.detector import ModelError

    if isinstance(exc, (AwsError, RegistryUnavailable)):
        return False
    return isinstance(exc, (LabelTableError, RegistryError, ModelError, CheckpointError))


# outages: errno values of a full disk or an unreachable peer
OUTAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.ECONNREFUSED, errno.ECONNRESET, errno.ETIMEDOUT,
                 errno.EHOSTUNREACH, errno.ENETUNREACH}


def _mlflow_outage(exc: BaseException) -> bool:
    """Any MLflow error but "no such version" (a locked database, a server down)."""
    try:
        from mlflow.exceptions import MlflowException
    except ImportError:  # a plant on AWS has no MLflow
        return False
    return isinstance(exc, MlflowException) and \
        exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def outage(exc: BaseException) -> bool:
    """An error that says nothing about the run (the bucket, the registry or the disk was away):
    it is not counted toward abandoning it. Looks through the exception's causes."""
    from cloud.storage import StorageError

    seen: BaseException | None = exc
    for _ in range(10):  # a chain, not a cycle
        if seen is None:
            return False
        if isinstance(seen, (StorageError, RegistryUnavailable, ConnectionError, TimeoutError)):
            return True
        if isinstance(seen, OSError) and seen.errno in OUTAGE_ERRNOS:
            return True
        if isinstance(seen, sqlite3.OperationalError) and "locked" in str(seen):
            return True
        if _mlflow_outage(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def execute(site: OnSite, record: RunRecord, command: str) -> RunRecord:
    try:
        return _steps(site, record, command)
    except Exception as exc:
        reason = first_line(exc)
        if permanent(exc):
            log.error("%s failed: %s", record.run_id, reason)
            return site.runs.finish(record.run_id, "failed", reason=reason)
        if outage(exc):
            log.warning("%s: an outage stopped it (%s); not counted against the run, which resumes at the next "
                        "start", record.run_id, reason)
            raise
        counted = site.runs.failed_attempt(record.run_id, reason)
        if counted.attempts >= MAX_ATTEMPTS:
            log.error("%s abandoned after %d failed attempts at %s: %s", record.run_id, counted.attempts,
                      counted.failed_step, reason)
            return site.runs.finish(record.run_id, "failed", reason=f"abandoned after {counted.attempts} failed "
                                                                     f"attempts at {counted.failed_step}: {reason}")
        log.warning("%s: attempt %d of %d at %s failed (%s); the run resumes at the next start", record.run_id,
                    counted.attempts, MAX_ATTEMPTS, counted.failed_step, reason)
        raise


def _production_files(site: OnSite, version: str | None, work: Path) -> VersionFiles | None:
    if version is None:
        return None
    files = VersionFiles(folder=work / "production")
    if files.missing():
        site.registry.download(version, files.folder)
    return files


def _steps(site: OnSite, record: RunRecord, command: str) -> RunRecord:
    params, run_id = record.params, record.run_id
    work = site.work_dir / run_id
    work.mkdir(parents=True, exist_ok=True)
    prod = _production_files(site, params.production_version, work)

    site.runs.step(run_id, "preprocess")
    pre = preprocess_step.read_output(work / "dataset") or preprocess_step.preprocess(
        site.store, site.images, params.as_of, params.split, params.class_names, work / "dataset")
    log.info("%s dataset: %s images, fingerprint %s", run_id, pre.dataset.images, pre.dataset.fingerprint[:12])

    site.runs.step(run_id, "train")
    trained = train_step.read_output(work / "train") or train_step.train(
        pre.data_yaml, params.train, work / "train", prod.checkpoint if prod else None, params.production_version)

    site.runs.step(run_id, "evaluate")
    candidate = export_candidate(trained.checkpoint, params.train.imgsz, work / "candidate")
    evaluation = evaluate_step.read_output(work) or evaluate_step.evaluate_pair(
        candidate.onnx, prod.onnx if prod else None, pre.data_yaml, params.gate.alert_conf, work,
        production_test_photos(prod))

    site.runs.step(run_id, "gate")
    decision = decide(evaluation, params.gate)
    assemble(candidate, params, run_id, pre.dataset, trained, evaluation, decision, command, pre.data_yaml)
    for line in decision.reasons:
        log.info("%s gate: %s", run_id, line)
    if not decision.passed:
        return site.runs.finish(run_id, "refused", reason=decision.summary)

    site.runs.step(run_id, "register")
    version = site.registry.register(candidate, read_card(candidate))
    log.info("%s registered as %s version %s (%s)", run_id, params.model_group, version.version, version.status.value)
    return site.runs.finish(run_id, "registered", version=version.version, reason="; ".join(decision.reasons))

