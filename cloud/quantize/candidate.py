"""What a runtime's quantizer hands the gate: one INT8 model and what it left in float."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CandidateModel:
    name: str  # which float set: "box-decode", "head-tail", ...
    path: Path  # the INT8 model (.onnx, or an OpenVINO .xml with its .bin)
    float_nodes: list[str]  # graph nodes left in float
