"""The cloud side's configuration (pydantic, like the daemon's): one file, `cloud.yaml`, whose
errors name the key. It grows by capability; each capability's section chooses its backend (an
AWS one or an on-site one) and holds that backend's settings.

    label_store:
      backend: local                  # or feature_store (AWS)
      local: {path: /var/lib/edge-inspect/labels}
      feature_store: {feature_group_name: ..., role_arn: ..., offline_store_s3_uri: ..., athena_output_s3_uri: ...}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cloud.labels.feature_store import FeatureStoreSettings
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


class CloudConfig(Strict):
    region: str | None = Field(None, pattern=r"^[a-z]{2}(-[a-z]+)+-\d$", description="AWS region (AWS backends)")
    label_store: LabelStoreSettings


def parse_cloud_config(data: Any, origin: str = "cloud config") -> CloudConfig:
    return validate_mapping(CloudConfig, data, origin)


def load_cloud_config(path: str | Path) -> CloudConfig:
    return parse_cloud_config(load_config_file(path), origin=str(path))
