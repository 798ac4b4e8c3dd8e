"""What can run here: every model x runtime pair the machine supports.

A setup is one model file on one runtime. ONNX models run on ONNX Runtime and, when the
`openvino` extra is installed, on OpenVINO too (it reads ONNX, QDQ INT8 included); an OpenVINO IR
(.xml) runs on OpenVINO only. Every setup then meets the same self-test and accuracy gate here:
a model quantized for one runtime earns no trust on the other without it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from benchmarks.flops import Ops, model_ops
from device.model_card import ModelCard, card_path_for

RUNTIMES = ("onnxruntime", "openvino")


@dataclass(frozen=True)
class Setup:
    model: Path
    runtime: str
    ops: Ops  # counted from the graph once per model, shared by its setups

    @property
    def precision(self) -> str:
        """int8 when the graph holds any 8-bit arithmetic, else fp32 (never taken on trust from a card)."""
        return "int8" if self.ops.int8 > 0 else "fp32"

    @property
    def name(self) -> str:
        return f"{self.model.name} @ {self.runtime}"


def available_runtimes() -> list[str]:
    return [r for r in RUNTIMES if importlib.util.find_spec(r) is not None]


def _card(model: Path) -> ModelCard | None:
    path = card_path_for(model)
    return ModelCard.read(path) if path.is_file() else None


def setups_for(models: list[Path], runtimes: list[str]) -> list[Setup]:
    out = []
    for model in models:
        ops = model_ops(model)
        wanted = ["openvino"] if model.suffix == ".xml" else list(RUNTIMES)
        out += [Setup(model, runtime, ops) for runtime in wanted if runtime in runtimes]
    return out


def bundled_models(models_dir: Path) -> list[Path]:
    """Every model shipped in device/models that has a card, FP32 first."""
    found = [p for p in sorted(models_dir.iterdir()) if p.suffix in (".onnx", ".xml") and card_path_for(p).is_file()]
    return sorted(found, key=lambda p: (_card(p).precision != "fp32", p.name))
