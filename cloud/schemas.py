"""JSON Schemas of the cloud side's documents, generated from their models: the version card (kept
by the registry beside every model, in S3 on AWS) and the evaluation report (the SageMaker
PropertyFile). `python -m cloud.schemas --write` regenerates `cloud/schemas/`; a test fails when a
checked-in schema differs from the generated one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import BaseModel

from cloud.pipeline.card import VersionCard
from cloud.pipeline.report import EvaluationReport

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
SCHEMA_BASE_URL = "https://edge-inspect.dev/schemas/cloud"
DOCUMENTS: dict[str, type[BaseModel]] = {"version-card": VersionCard, "evaluation-report": EvaluationReport}


def schema_text(kind: str) -> str:
    schema = DOCUMENTS[kind].model_json_schema(mode="serialization")
    return json.dumps({"$schema": "https://json-schema.org/draft/2020-12/schema",
                       "$id": f"{SCHEMA_BASE_URL}/{kind}", **schema}, indent=2) + "\n"


def schema_path(kind: str) -> Path:
    return SCHEMA_DIR / f"{kind}.schema.json"


def write_schemas() -> list[Path]:
    changed = []
    for kind in DOCUMENTS:
        path, text = schema_path(kind), schema_text(kind)
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
            changed.append(path)
    return changed


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m cloud.schemas --write   (regenerates cloud/schemas/*.schema.json)")
    for changed_path in write_schemas():
        print(f"wrote {changed_path}")
