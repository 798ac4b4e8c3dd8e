"""The instruction sets this CPU offers, as CPUID reports them (through NumPy's own runtime
detection, so an emulated or virtual CPU is described as the code sees it, not as
/proc/cpuinfo of the host says). Printed beside every speed and accuracy figure: integer
kernels behave differently with and without VNNI."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

# the ones that change how ONNX Runtime's kernels run
ISA_OF_INTEREST = ("SSE42", "AVX", "AVX2", "FMA3", "F16C", "AVX512F", "AVX512BW", "AVX512VL", "AVX512VNNI",
                   "AVX512BF16", "AVXVNNI", "AMX_TILE", "AMX_INT8", "ASIMD", "ASIMDDP")


@lru_cache(maxsize=1)
def instruction_sets() -> tuple[str, ...]:
    features = getattr(getattr(np, "_core", None), "_multiarray_umath", None)
    found = getattr(features, "__cpu_features__", {}) if features else {}
    return tuple(name for name in ISA_OF_INTEREST if found.get(name))


def has_vnni() -> bool:
    """VNNI (AVX-512 or AVX) changes which integer kernels ONNX Runtime runs, and so, slightly,
    an INT8 model's outputs: figures measured with it are compared like for like."""
    return any(isa in instruction_sets() for isa in ("AVX512VNNI", "AVXVNNI"))


def describe() -> str:
    return " ".join(isa.lower() for isa in instruction_sets()) or "unknown"
