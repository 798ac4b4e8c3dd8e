"""Inference runtimes, side by side behind one small interface: ONNX Runtime (always installed)
and OpenVINO (the `openvino` extra, imported only when asked for). A runtime loads a model file,
reports its graph (inputs, outputs) and the Ultralytics metadata written at export, and turns an
NCHW float32 blob into the raw (1, 4+nc, N) output. Everything else (letterbox, decoding, NMS and
every model check) is the Detector's and shared, so a model means the same on either runtime.

Model files: an `.onnx` (either runtime), or an OpenVINO IR, `model.xml` with its weights in
`model.bin` beside it (OpenVINO only). A model's identity covers all of its files.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import onnxruntime as ort

RuntimeName = Literal["onnxruntime", "openvino"]
IR_SUFFIX = ".xml"
OPENVINO_MISSING = ("model.runtime is openvino but the openvino package is not installed: "
                    "pip install 'edge-inspect[openvino]'")
# The metadata the Detector reads, as Ultralytics writes it into an ONNX model's metadata_props.
ULTRALYTICS_KEYS = ("names", "imgsz", "stride", "task", "version", "description")


class ModelError(RuntimeError):
    """The model file cannot serve as a detector; the message says why in plain words."""


class ModelNotFoundError(ModelError):
    pass


class RuntimeUnavailableError(ModelError):
    """The runtime asked for is not installed here: no fault of the model file."""


Dim = int | str  # a static size, or a dynamic dimension ("?" or its name)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[Dim, ...]


@dataclass(frozen=True)
class ModelGraph:
    """What a runtime reports about a loaded model, for the Detector to check."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # Ultralytics' export metadata, as text the way ONNX metadata_props hold it:
    # names "{0: 'scratch'}", imgsz "[448, 448]", stride "32", task "detect", ...
    metadata: Mapping[str, str]


class InferenceModel(Protocol):
    """A loaded model on one runtime."""

    runtime: RuntimeName
    graph: ModelGraph

    def run(self, blob: np.ndarray) -> np.ndarray:
        """NCHW float32 blob -> the first output: (1, 4+nc, N) for a YOLOv8 detector."""
        ...


@dataclass(frozen=True)
class RuntimeSettings:
    """How to run a model. ONNX Runtime takes `providers` and `session_options` (single-use: one
    per load); `threads` are OpenVINO's INFERENCE_NUM_THREADS, or ONNX Runtime's intra-op threads
    when no `session_options` are given."""

    runtime: RuntimeName = "onnxruntime"
    providers: tuple[str, ...] | None = None
    session_options: ort.SessionOptions | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.runtime not in ("onnxruntime", "openvino"):
            raise ValueError(f"runtime must be onnxruntime or openvino, not {self.runtime!r}")
        if self.runtime == "openvino" and (self.providers or self.session_options is not None):
            raise ValueError("providers and session_options are ONNX Runtime settings; OpenVINO takes threads")
        if self.session_options is not None and self.threads:
            raise ValueError("give ONNX Runtime's threads inside session_options, not both")


# --- model files and identity -----------------------------------------------------------------

def is_ir(path: Path) -> bool:
    return Path(path).suffix.lower() == IR_SUFFIX


def resolve_runtime(choice: str, model_path: Path) -> RuntimeName:
    """The runtime a model file runs on. `auto`: OpenVINO for an OpenVINO IR (`.xml`), which only
    it reads; ONNX Runtime for an `.onnx`, as before OpenVINO was an option (it is always installed)."""
    if choice == "auto":
        return "openvino" if is_ir(model_path) else "onnxruntime"
    return "openvino" if choice == "openvino" else "onnxruntime"


def model_files(path: Path) -> tuple[Path, ...]:
    """The files a model is made of: an IR's .xml and its .bin, or the one .onnx."""
    return (path, path.with_suffix(".bin")) if is_ir(path) else (path,)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_sha256(path: Path) -> str:
    """A model's identity: the file's sha256 for an .onnx (as model cards record it); for an IR,
    the sha256 of the .xml's and the .bin's sha256s, so a changed .bin is a different model."""
    files = model_files(path)
    if len(files) == 1:
        return file_sha256(path)
    return hashlib.sha256(" ".join(file_sha256(f) for f in files).encode()).hexdigest()


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


# --- ONNX Runtime -----------------------------------------------------------------------------

def session_options(threads: int | None = None, graph_optimization: str = "all",
                    execution_mode: str = "sequential", spinning: bool = True) -> ort.SessionOptions:
    """ONNX Runtime settings. Defaults chosen by measurement (benchmarks/bench.py): all graph
    optimizations, sequential execution (YOLOv8 is one chain of ops: parallel execution only adds
    scheduling), intra-op threads = physical cores (onnxruntime's own default)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[graph_optimization]
    options.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if execution_mode == "parallel"
                              else ort.ExecutionMode.ORT_SEQUENTIAL)
    if threads:
        options.intra_op_num_threads = threads
    # Idle intra-op threads spin for a while after each run: lowest latency on a dedicated core,
    # but on a small box they take the CPU the camera threads need between frames.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return options


def _ort_spec(arg: Any) -> TensorSpec:
    return TensorSpec(arg.name, tuple("?" if d is None else d for d in arg.shape))


class OnnxRuntimeModel:
    runtime: RuntimeName = "onnxruntime"

    def __init__(self, path: Path, settings: RuntimeSettings) -> None:
        if is_ir(path):
            raise ModelError(f"{path} is an OpenVINO IR (.xml), which ONNX Runtime cannot read: run it on "
                             "OpenVINO (model.runtime: openvino or auto; --runtime openvino)")
        available = ort.get_available_providers()
        chosen = list(settings.providers or ["CPUExecutionProvider"])
        unknown = [p for p in chosen if p not in available]
        if unknown:
            raise ModelError(f"execution provider(s) {unknown} not available here; available: {available}")
        options = settings.session_options or (session_options(settings.threads) if settings.threads else None)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=chosen)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
            raise ModelError(f"{path} is not a loadable ONNX model: {_first_line(exc)}") from None
        self.graph = ModelGraph(
            inputs=tuple(_ort_spec(i) for i in self.session.get_inputs()),
            outputs=tuple(_ort_spec(o) for o in self.session.get_outputs()),
            metadata=dict(self.session.get_modelmeta().custom_metadata_map),
        )

    def run(self, blob: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.graph.inputs[0].name: blob})[0]


# --- OpenVINO ---------------------------------------------------------------------------------

def _import_openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise RuntimeUnavailableError(OPENVINO_MISSING) from None
    return openvino


def _rt_section(model: Any, section: str) -> dict[str, str]:
    """One section of an OpenVINO model's rt_info as text (OpenVINO keeps every value as text)."""
    if not model.has_rt_info([section]):
        return {}
    value = model.get_rt_info([section]).value
    if not isinstance(value, dict):
        return {}
    return {str(k): v.astype(str) if hasattr(v, "astype") else str(v) for k, v in value.items()}


def _as_literal(key: str, text: str) -> str:
    """rt_info stores a list as its items joined by spaces ("448 448"); give names and imgsz the
    Python-literal form the ONNX metadata has ("[448, 448]")."""
    if key not in ("names", "imgsz") or text.lstrip().startswith(("[", "{")):
        return text
    return repr([int(item) if item.isdigit() else item for item in text.split()])


def openvino_metadata(model: Any) -> dict[str, str]:
    """Ultralytics' metadata of a model read by OpenVINO, later sources winning:
    - rt_info["framework"]: OpenVINO's ONNX reader puts an .onnx's metadata_props there (and an IR
      converted from that ONNX keeps them);
    - rt_info["model_info"]: where Ultralytics' OpenVINO export writes. It writes the class names
      as `labels` (spaces turned to "_"), used when no `names` are given; any of ULTRALYTICS_KEYS
      an exporter writes there too wins. (Ultralytics puts its other metadata in a metadata.yaml
      beside the IR, which is not read: the input size then comes from the graph's static shape.)"""
    metadata = _rt_section(model, "framework")
    info = _rt_section(model, "model_info")
    if "labels" in info and "names" not in info and "names" not in metadata:
        metadata["names"] = repr(dict(enumerate(info["labels"].split())))
    metadata.update({key: _as_literal(key, info[key]) for key in ULTRALYTICS_KEYS if key in info})
    return metadata


def _openvino_spec(port: Any) -> TensorSpec:
    names = sorted(port.get_names())
    shape = tuple(d.get_length() if d.is_static else "?" for d in port.get_partial_shape())
    return TensorSpec(names[0] if names else "", shape)


def compile_config(ov: Any, threads: int | None) -> dict[Any, Any]:
    import openvino.properties as props
    import openvino.properties.hint as hints

    config: dict[Any, Any] = {
        hints.performance_mode: hints.PerformanceMode.LATENCY,  # one frame at a time, as soon as it comes
        # f32 said explicitly: on a CPU with bf16 (AVX512_BF16, AMX) OpenVINO otherwise runs an FP32
        # model in bf16, and scores and boxes move away from the FP32 ones that thresholds, the
        # self-test's reference and the accuracy figures were made with.
        hints.inference_precision: ov.Type.f32,
    }
    if threads:
        config[props.inference_num_threads] = threads
    return config


def read_config() -> dict[Any, Any]:
    """How OpenVINO reads a model file. ENABLE_MMAP off: an IR's .bin is read into memory instead
    of memory-mapped (OpenVINO's default), and the compiled model may use those mapped pages as its
    weights. A hot swap that overwrites the serving .bin in place (cp, rsync --inplace) would then
    change the serving model's weights under it (measured: outputs off by hundreds), or crash it
    (SIGBUS) when the file shrinks. The copy is the .bin's size (3 MB for the shipped INT8 IR) of
    anonymous memory in place of the mapped file pages: peak RSS and latency measured the same."""
    import openvino.properties as props

    return {props.enable_mmap: False}


class OpenVinoModel:
    runtime: RuntimeName = "openvino"

    def __init__(self, path: Path, settings: RuntimeSettings) -> None:
        ov = _import_openvino()
        weights = path.with_suffix(".bin")
        if is_ir(path) and not weights.is_file():
            raise ModelNotFoundError(f"{path} is an OpenVINO IR whose weights {weights.name} are missing beside it")
        kind = "OpenVINO IR" if is_ir(path) else "ONNX model"
        core = ov.Core()
        try:
            model = core.read_model(str(path), config=read_config())
            compiled = core.compile_model(model, "CPU", compile_config(ov, settings.threads))
        except Exception as exc:  # OpenVINO raises RuntimeError with the parser's message
            raise ModelError(f"{path} is not a loadable {kind} (OpenVINO: {_first_line(exc)})") from None
        self.graph = ModelGraph(
            inputs=tuple(_openvino_spec(p) for p in compiled.inputs),
            outputs=tuple(_openvino_spec(p) for p in compiled.outputs),
            metadata=openvino_metadata(model),
        )
        self.compiled = compiled
        self._request = compiled.create_infer_request()
        self._lock = threading.Lock()

    def run(self, blob: np.ndarray) -> np.ndarray:
        # An infer request serves one call at a time; an ONNX Runtime session may be called from
        # several threads, and the Detector keeps that promise on either runtime.
        with self._lock:
            return self._request.infer({0: blob})[0]  # a copy (share_outputs=False)


def open_model(path: Path, settings: RuntimeSettings) -> InferenceModel:
    if not path.is_file():
        raise ModelNotFoundError(f"model file {path} does not exist")
    if settings.runtime == "openvino":
        return OpenVinoModel(path, settings)
    return OnnxRuntimeModel(path, settings)
