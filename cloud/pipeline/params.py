"""Everything a pipeline run is decided by. The same model is the SageMaker Pipeline's parameters
(sagemaker_pipeline.py) and `pipeline:` in cloud.yaml on site; a run stores it in its card."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from cloud.pipeline.gate import GateParams
from cloud.pipeline.split import SplitParams
from cloud.pipeline.train import TrainParams


class PipelineParams(BaseModel):
    # numbers given as text (SageMaker parameters, --param) may land in str fields: take them as text
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    model_group: str = Field("metal-tags", pattern=r"^[A-Za-z0-9](-*[A-Za-z0-9]){0,62}$",
                             description="the registry's model group (SageMaker model package group)")
    class_names: list[str] = Field(["scratch"], min_length=1)
    as_of: float | None = Field(None, ge=0, description="labels as of this time (s since the epoch); None: now")
    production_version: str | None = Field(None, pattern=r"^[0-9]{1,9}$",
                                            description="compare with (and fine-tune from) this version; None: the latest approved")
    split: SplitParams = SplitParams()
    train: TrainParams = TrainParams()
    gate: GateParams = GateParams()
