"""What a runtime's quantizer hands the gate: one INT8 model and what it left in float."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cloud.quantize.gate import QuantizationError


@dataclass(frozen=True)
class CandidateModel:
    name: str  # which float set: "box-decode", "head-tail", ...
    path: Path  # the INT8 model (.onnx, or an OpenVINO .xml with its .bin)
    float_nodes: list[str]  # graph nodes left in float


FloatSet = tuple[str, list[str]]  # (name, graph nodes to keep in float)


def chosen_sets(sets: list[FloatSet], only: list[str] | None) -> list[FloatSet]:
    """The float sets to quantize: all, or those `only` names (an unknown name is an error, so a
    typo never quietly quantizes nothing)."""
    unknown = set(only or []) - {name for name, _ in sets}
    if unknown:
        raise QuantizationError(f"unknown candidate(s) {sorted(unknown)}; known: {', '.join(n for n, _ in sets)}")
    return [(name, nodes) for name, nodes in sets if not only or name in only]
