"""The on-site registry: MLflow's model registry on a SQLite file, artifacts in a folder beside it.

Why MLflow: it is the registry plants already know (UI: `mlflow ui --backend-store-uri
sqlite:///<path>/mlflow.db`), keeps runs and versions in one embedded database, and needs no
server. A version's approval state, who decided and when live as model-version tags (MLflow's
own stages are deprecated), and so does its deployment status (`deployment_status`: deployed or
ship-failed, `deployment_at`, `deployment_reason`); the alias `production` follows the version the
fleet runs (cloud/registry/registry.py `production`). The model's sha256 is also a tag
(`onnx_sha256`, set at registration): it lives in the database, not beside the bytes it vouches for,
so a model replaced in the artifact folder together with its cards is still refused at download.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from cloud.pipeline.card import VersionCard, now_iso
from cloud.registry.registry import (
    FILES,
    VERSION_CARD,
    Approval,
    Deployment,
    DeploymentStatus,
    ModelVersion,
    RegistryError,
    RegistryUnavailable,
    UnreadableVersion,
    VersionFiles,
    by_run,
    check_decision,
    first_line,
    production,
    readable,
    require_files,
)
from device.detector import file_sha256

log = logging.getLogger(__name__)

# MLflow 3 reports usage to its developers unless told not to; plants have no internet anyway
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one line per file in logs otherwise

STATUS, RUN_ID, BY, AT, REASON = "approval_status", "edge_inspect_run_id", "decided_by", "decided_at", "reason"
DEPLOYMENT, DEPLOYMENT_AT, DEPLOYMENT_REASON = "deployment_status", "deployment_at", "deployment_reason"
ONNX_SHA = "onnx_sha256"
PRODUCTION_ALIAS = "production"
ARTIFACT_PATH = "model"


class MlflowRegistry:
    def __init__(self, root: Path, group: str) -> None:
        from mlflow import MlflowClient

        root = Path(root).resolve()
        root.mkdir(parents=True, exist_ok=True)
        self.group, self.root = group, root
        uri = f"sqlite:///{root / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        self.experiment_id = self._experiment()
        self._ensure_group()

    def _experiment(self) -> str:
        # an explicit artifact location: MLflow's default is ./mlruns under whatever the cwd is
        found = self.client.get_experiment_by_name(self.group)
        if found is not None:
            return found.experiment_id
        return self.client.create_experiment(self.group, artifact_location=(self.root / "artifacts").as_uri())

    def _ensure_group(self) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.group)
        except MlflowException:
            self.client.create_registered_model(self.group, description="edge-inspect detector versions")

    def register(self, files: VersionFiles, card: VersionCard, status: Approval = Approval.PENDING,
                 decided_by: str | None = None) -> ModelVersion:
        existing = by_run(self, card.run_id)
        if existing is not None:
            return existing
        missing = files.missing()
        if missing:
            raise RegistryError(f"cannot register run {card.run_id}: {files.folder} lacks {missing}")
        run = self.client.create_run(self.experiment_id, run_name=card.run_id, tags={RUN_ID: card.run_id})
        run_id = run.info.run_id
        self._log_run(run_id, card)
        for name in FILES:
            self.client.log_artifact(run_id, str(files.path(name)), artifact_path=ARTIFACT_PATH)
        self.client.set_terminated(run_id)
        tags = {STATUS: status.value, RUN_ID: card.run_id, ONNX_SHA: card.onnx_sha256}
        if status is not Approval.PENDING:
            tags.update({BY: decided_by or "edge-inspect", AT: now_iso()})
        made = self.client.create_model_version(
            self.group, f"{run.info.artifact_uri}/{ARTIFACT_PATH}", run_id=run_id, tags=tags,
            description="; ".join(card.gate.reasons))
        self._follow_production()
        return self.get(str(made.version))

    def _log_run(self, run_id: str, card: VersionCard) -> None:
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        metrics = [Metric(f"{who}_{k}", float(v), now, 0)
                   for who, scores in (("candidate", card.evaluation.candidate), ("production", card.evaluation.production))
                   if scores is not None for k, v in scores.model_dump().items()]
        metrics += [Metric("val_map50_95", row["val_map50_95"], now, int(row["epoch"])) for row in card.curve]
        params = [Param("dataset_fingerprint", card.dataset.fingerprint), Param("as_of", str(card.dataset.as_of)),
                  Param("parent_version", str(card.parent_version)), Param("code_version", card.code_version[:500])]
        params += [Param(f"train.{k}", json.dumps(v)[:500]) for k, v in card.params.train.model_dump(mode="json").items()]
        self.client.log_batch(run_id, metrics=metrics, params=params)

    def _load(self, made) -> ModelVersion:
        import mlflow.artifacts

        text = mlflow.artifacts.load_text(f"{made.source}/{VERSION_CARD}")
        tags = made.tags or {}
        deployment = None
        if tags.get(DEPLOYMENT):
            deployment = Deployment(status=DeploymentStatus(tags[DEPLOYMENT]), at=tags.get(DEPLOYMENT_AT, ""),
                                    reason=tags.get(DEPLOYMENT_REASON, ""))
        return ModelVersion(
            group=self.group, version=str(made.version), status=Approval(tags.get(STATUS, Approval.PENDING.value)),
            created=_iso_ms(made.creation_timestamp), run_id=tags.get(RUN_ID, ""),
            card=VersionCard.model_validate_json(text), decided_by=tags.get(BY), decided_at=tags.get(AT),
            reason=tags.get(REASON), location=made.source, deployment=deployment)

    def _entry(self, made) -> ModelVersion | UnreadableVersion:
        try:
            return self._load(made)
        except Exception as exc:  # a lost or edited card, a tag no one wrote: this version only
            return UnreadableVersion(group=self.group, version=str(made.version),
                                     reason=f"its version card cannot be read: {first_line(exc)}")

    def entries(self) -> list[ModelVersion | UnreadableVersion]:
        found = self.client.search_model_versions(f"name = '{self.group}'")
        return sorted((self._entry(v) for v in found), key=lambda v: int(v.version))

    def versions(self) -> list[ModelVersion]:
        return readable(self.entries())

    def get(self, version: str) -> ModelVersion:
        from mlflow.exceptions import MlflowException

        try:
            made = self.client.get_model_version(self.group, str(version))
        except MlflowException as exc:  # only a missing version is an answer; anything else is an outage
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):  # absent, or not a number
                raise RegistryError(f"{self.group} has no version {version!r}") from None
            raise RegistryUnavailable(f"the registry could not be read for {self.group} version {version} "
                                      f"({exc.error_code}: {first_line(exc)}); try again") from None
        entry = self._entry(made)
        if isinstance(entry, UnreadableVersion):
            raise RegistryError(f"{self.group} version {version} is unreadable: {entry.reason}")
        return entry

    def decide(self, version: str, status: Approval, by: str, reason: str | None) -> ModelVersion:
        current = self.get(version)
        check_decision(current, status, by, reason)
        for key, value in ((STATUS, status.value), (BY, by), (AT, now_iso()), (REASON, reason or "")):
            self.client.set_model_version_tag(self.group, current.version, key, value)
        self._follow_production()
        return self.get(version)

    def record_deployment(self, version: str, status: DeploymentStatus, reason: str = "") -> ModelVersion:
        current = self.get(version)
        for key, value in ((DEPLOYMENT, status.value), (DEPLOYMENT_AT, now_iso()), (DEPLOYMENT_REASON, reason[:4000])):
            self.client.set_model_version_tag(self.group, current.version, key, value)
        self._follow_production()
        return self.get(version)

    def _follow_production(self) -> None:
        latest = production(self)
        if latest is not None:
            self.client.set_registered_model_alias(self.group, PRODUCTION_ALIAS, latest.version)
        elif PRODUCTION_ALIAS in (self.client.get_registered_model(self.group).aliases or {}):
            self.client.delete_registered_model_alias(self.group, PRODUCTION_ALIAS)

    def download(self, version: str, dest: Path) -> VersionFiles:
        found = self.get(version)
        dest.mkdir(parents=True, exist_ok=True)
        for name in FILES:  # what an earlier download left must not stand in for a file the registry lost
            (dest / name).unlink(missing_ok=True)
        with tempfile.TemporaryDirectory(dir=dest) as scratch:
            import mlflow.artifacts

            got = Path(mlflow.artifacts.download_artifacts(found.location, dst_path=scratch))
            for name in FILES:
                if (got / name).is_file():
                    os.replace(got / name, dest / name)
        shutil.rmtree(dest / ARTIFACT_PATH, ignore_errors=True)
        files = require_files(VersionFiles(folder=dest), found.version)
        recorded = (self.client.get_model_version(self.group, found.version).tags or {}).get(ONNX_SHA)
        actual = file_sha256(files.onnx)
        if recorded and actual != recorded:  # versions registered before the tag: the cards decide
            files.onnx.unlink()
            raise RegistryError(f"version {found.version}'s model.onnx in the registry's artifacts has sha256 "
                                f"{actual[:12]}, not the {recorded[:12]} recorded when it was registered: the file "
                                "was replaced; it is not shipped or trained from")
        return files


def _iso_ms(ms: int) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="seconds")
