"""`evaluation.json`: what the evaluate job writes and the SageMaker ConditionStep reads (its
PropertyFile): the gate's verdict beside both models' scores."""

from __future__ import annotations

from pydantic import ConfigDict

from cloud.pipeline.evaluate import Evaluation
from cloud.pipeline.gate import GateDecision


class EvaluationReport(Evaluation):
    model_config = ConfigDict(extra="forbid")

    gate: GateDecision
