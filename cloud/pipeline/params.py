"""Everything a pipeline run is decided by. The same model is the SageMaker Pipeline's parameters
(sagemaker_pipeline.py) and `pipeline:` in cloud.yaml on site; a run stores it in its card."""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cloud.labels.rules import LATEST_TIME
from cloud.pipeline.gate import GateParams
from cloud.pipeline.split import SplitParams
from cloud.pipeline.train import TrainParams

FUTURE_SKEW_S = 60.0  # clock skew between the host that pins a run and the one that checks it


class PipelineParams(BaseModel):
    # numbers given as text (SageMaker parameters, --param) may land in str fields: take them as text
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    model_group: str = Field("metal-tags", pattern=r"^[A-Za-z0-9](-*[A-Za-z0-9]){0,62}$",
                             description="the registry's model group (SageMaker model package group)")
    class_names: list[str] = Field(["scratch"], min_length=1)
    as_of: float | None = Field(None, ge=0, le=LATEST_TIME, allow_inf_nan=False,
                                description="labels as of this time (s since the epoch); None: now")
    production_version: str | None = Field(None, pattern=r"^[0-9]{1,9}$",
                                            description="compare with (and fine-tune from) this version; None: the latest approved")
    split: SplitParams = SplitParams()
    train: TrainParams = TrainParams()
    gate: GateParams = GateParams()

    @field_validator("as_of")
    @classmethod
    def _not_to_come(cls, value: float | None) -> float | None:
        # a dataset as of a time to come would change as labels arrive: its fingerprint could not be
        # rebuilt (the same rule as `--as-of`, cloud.labels.table_io.parse_time); a minute of clock skew allowed
        if value is not None and value > time.time() + FUTURE_SKEW_S:
            raise ValueError(f"as_of {value:.0f} is in the future: use now or an earlier time")
        return value

