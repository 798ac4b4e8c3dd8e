"""The cloud side's configuration (pydantic, like the daemon's): one file, `cloud.yaml`, whose
errors name the key. It grows by capability; each capability's section chooses its backend (an
AWS one or an on-site one) and holds that backend's settings.

    storage: {bucket: plant-frames, prefix: edge-inspect, endpoint_url: https://minio.plant:9000}
    broker: {host: broker.plant, port: 8883, tls: {enabled: true, ca_certs: ca.pem}}
    labeling:
      backend: label_studio           # or ground_truth (AWS), or replay (demo and tests)
      batch_size: 50
      max_wait_minutes: 30
      state_path: /var/lib/edge-inspect/labeling.sqlite
      label_studio: {url: https://label-studio.plant}
    label_store:
      backend: local                  # or feature_store (AWS)
      local: {path: /var/lib/edge-inspect/labels}
      feature_store: {feature_group_name: ..., role_arn: ..., offline_store_s3_uri: ..., athena_output_s3_uri: ...}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cloud.deploy.settings import DeploySettings
from cloud.ingest.announcements import BrokerSettings
from cloud.labeling.ground_truth import GroundTruthSettings
from cloud.labeling.label_studio import LabelStudioSettings
from cloud.labeling.replay import ReplaySettings
from cloud.labels.feature_store import FeatureStoreSettings
from cloud.pipeline.params import PipelineParams
from cloud.pipeline.sagemaker_pipeline import SageMakerPipelineSettings
from cloud.storage import StorageSettings
from device.config import load_config_file, validate_mapping


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LocalLabelStoreSettings(Strict):
    path: Path = Field(description="folder of the on-site label store (Parquet files, append-only)")
    feature_group: str = Field("edge-inspect-labels", pattern=r"^[A-Za-z0-9](-*[A-Za-z0-9]){0,63}$",
                               description="name of the store inside the folder, as on Feature Store")


class LabelStoreSettings(Strict):
    backend: Literal["local", "feature_store"] = "local"
    local: LocalLabelStoreSettings | None = None
    feature_store: FeatureStoreSettings | None = None

    @model_validator(mode="after")
    def _chosen_backend_is_configured(self) -> LabelStoreSettings:
        if getattr(self, self.backend) is None:
            raise ValueError(f"backend is {self.backend} but the `{self.backend}` section is missing")
        return self


class PreLabelSettings(Strict):
    model: Path | None = Field(None, description="the production model (ONNX); default: the bundled model")
    conf: float = Field(0.25, gt=0, lt=1, description="boxes above this score become pre-labels")


class LabelingSettings(Strict):
    backend: Literal["label_studio", "ground_truth", "replay"]
    batch_size: int = Field(50, ge=1, le=10_000, description="frames per batch, per line")
    max_wait_minutes: float = Field(30, gt=0, le=7 * 24 * 60, description="a smaller batch goes after this wait")
    poll_interval_s: float = Field(30, ge=0.1, le=3600, description="how often answers are collected")
    catch_up_minutes: float = Field(60, ge=0.1, le=24 * 60, description="how often the raw prefix is listed")
    state_path: Path = Field(description="the labeling state (SQLite): which frames were batched and answered")
    prelabels: PreLabelSettings = PreLabelSettings()
    label_studio: LabelStudioSettings | None = None
    ground_truth: GroundTruthSettings | None = None
    replay: ReplaySettings | None = None

    @model_validator(mode="after")
    def _chosen_backend_is_configured(self) -> LabelingSettings:
        if getattr(self, self.backend) is None:
            raise ValueError(f"backend is {self.backend} but the `{self.backend}` section is missing")
        return self


class MlflowRegistrySettings(Strict):
    path: Path = Field(description="folder of the on-site registry (MLflow SQLite database and artifacts)")


class SageMakerRegistrySettings(Strict):
    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$", description="bucket for model artifacts")
    prefix: str = Field("edge-inspect/models", pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


class RegistrySettings(Strict):
    backend: Literal["mlflow", "sagemaker"] = "mlflow"
    mlflow: MlflowRegistrySettings | None = None
    sagemaker: SageMakerRegistrySettings | None = None

    @model_validator(mode="after")
    def _chosen_backend_is_configured(self) -> RegistrySettings:
        if getattr(self, self.backend) is None:
            raise ValueError(f"backend is {self.backend} but the `{self.backend}` section is missing")
        return self


class PipelineSettings(Strict):
    state_path: Path = Field(description="the on-site runs (SQLite)")
    work_dir: Path = Field(description="one folder per run: dataset, training, candidate")
    photos: Path | None = Field(None, description="folder that label rows' photo paths are relative to")
    trigger_new_labels: int = Field(200, ge=1, le=10_000_000,
                                    description="`cloud serve` starts a run after this many new APPROVED labels")
    check_minutes: float = Field(10, ge=0.05, le=24 * 60, description="how often `cloud serve` counts new labels")
    params: PipelineParams = PipelineParams()
    registry: RegistrySettings
    seed_bundled: bool = Field(True, description="an empty registry starts with the bundled model, Approved")
    sagemaker: SageMakerPipelineSettings | None = Field(None, description="the same pipeline on SageMaker")


class CloudConfig(Strict):
    region: str | None = Field(None, pattern=r"^[a-z]{2}(-[a-z]+)+-\d$", description="AWS region (AWS backends)")
    storage: StorageSettings | None = None
    broker: BrokerSettings | None = None
    labeling: LabelingSettings | None = None
    label_store: LabelStoreSettings
    pipeline: PipelineSettings | None = None
    deploy: DeploySettings | None = None

    @model_validator(mode="after")
    def _labeling_needs_storage(self) -> CloudConfig:
        if self.labeling is not None and self.storage is None:
            raise ValueError("labeling needs the `storage` section: the bucket the devices upload frames to")
        if self.deploy is not None and self.pipeline is None:
            raise ValueError("deploy needs the `pipeline` section: its registry holds the versions to deploy")
        if self.deploy is not None and self.deploy.backend == "local" and self.broker is None:
            raise ValueError("deploy on site needs the `broker` section: the lines' messages decide each stage")
        return self


def parse_cloud_config(data: Any, origin: str = "cloud config") -> CloudConfig:
    return validate_mapping(CloudConfig, data, origin)


def load_cloud_config(path: str | Path) -> CloudConfig:
    return parse_cloud_config(load_config_file(path), origin=str(path))
