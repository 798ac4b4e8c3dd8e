"""Step 3, evaluate: the candidate's ONNX export and the production model, each run through the
device's own detector, scored on the same current test split (photos neither trained on)."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from cloud.evaluation import evaluate

OUTPUT = "evaluation.json"


class Scores(BaseModel):
    model_config = ConfigDict(extra="forbid")

    map50: float
    map50_95: float
    precision: float
    recall: float
    recall_at_alert: float
    alert_conf: float
    images: int
    instances: int


class Evaluation(BaseModel):
    """Candidate and production on the same photos; `production` is None for the first model."""

    model_config = ConfigDict(extra="forbid")

    split: str = "test"
    candidate: Scores
    production: Scores | None = None


def score(model: Path, data_yaml: Path, alert_conf: float, split: str = "test") -> Scores:
    result = evaluate(model, data_yaml, split, alert_conf=alert_conf)
    return Scores.model_validate(result.to_dict())


def evaluate_pair(candidate: Path, production: Path | None, data_yaml: Path, alert_conf: float,
                  out: Path) -> Evaluation:
    result = Evaluation(candidate=score(candidate, data_yaml, alert_conf),
                        production=score(production, data_yaml, alert_conf) if production else None)
    (out / OUTPUT).write_text(result.model_dump_json(indent=2))
    return result


def read_output(out: Path) -> Evaluation | None:
    path = out / OUTPUT
    return Evaluation.model_validate(json.loads(path.read_text())) if path.is_file() else None
