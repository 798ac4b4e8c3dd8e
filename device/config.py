"""The daemon's configuration: pydantic models with defaults, validated with errors that name the
bad key (`cameras.0.source: ...`). Loaded from YAML; under Greengrass the component
configuration is merged over the file (see `merge_config`)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from device.bundled import bundled_model_path
from device.drift import DriftSettings
from device.redact import redact, remember_secrets, secrets_in, secrets_in_text
from device.rehearsal import DriftName
from device.runtimes import RuntimeName, is_ir, resolve_runtime
from device.signing import KeyFileError, TrustedKeys

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"  # safe in MQTT topics and file names


ModelT = TypeVar("ModelT", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration that cannot be used; `str()` lists every bad key with its problem."""


def require_ordered(model: BaseModel, low: str, high: str) -> None:
    if getattr(model, low) > getattr(model, high):
        raise ValueError(f"{low} ({getattr(model, low)}) must not exceed {high} ({getattr(model, high)})")


def require_unique(what: str, names: list[str]) -> None:
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{what} must be unique; repeated: {', '.join(repeated)}")


def check_topic_prefix(value: str) -> str:
    """An MQTT topic prefix: wildcards are refused by the field's pattern, empty levels here."""
    if value.startswith("/") or value.endswith("/") or "//" in value:
        raise ValueError("topic_prefix must not start or end with '/' or contain '//'")
    return value


def check_key_prefix(value: str) -> str:
    """An S3 key prefix: it becomes part of every key, and `..` or `.` segments would climb out."""
    if any(part in (".", "..") for part in value.split("/")):
        raise ValueError("prefix must not contain '.' or '..' segments")
    return value


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TlsConfig(Strict):
    enabled: bool = False
    ca_certs: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None
    insecure: bool = Field(False, description="skip host name checks (never in production)")

    @model_validator(mode="after")
    def _cert_pair(self) -> TlsConfig:
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("certfile and keyfile go together (client certificate authentication)")
        if self.enabled:
            for name in ("ca_certs", "certfile", "keyfile"):
                path = getattr(self, name)
                if path is not None and not Path(path).is_file():
                    raise ValueError(f"{name} {path} is not a file")
        return self


class MqttConfig(Strict):
    enabled: bool = True
    host: str = "localhost"
    port: int = Field(1883, ge=1, le=65535)
    topic_prefix: str = Field("edge-inspect", pattern=r"^[A-Za-z0-9_/-]{1,100}$")
    client_id: str | None = None
    username: str | None = None
    password: SecretStr | None = None  # SecretStr: never printed in logs or errors
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    keepalive_s: int = Field(30, ge=5, le=3600)
    tls: TlsConfig = TlsConfig()
    max_queued_events: int = Field(10000, ge=10, le=1_000_000,
                                   description="events kept on disk while the broker is away; the oldest go first")
    reconnect_min_s: float = Field(0.5, ge=0.1, le=3600)
    reconnect_max_s: float = Field(30.0, ge=0.1, le=3600)

    _topic_prefix = field_validator("topic_prefix")(check_topic_prefix)

    @model_validator(mode="after")
    def _backoff(self) -> MqttConfig:
        require_ordered(self, "reconnect_min_s", "reconnect_max_s")
        return self


RuntimeChoice = Literal["onnxruntime", "openvino", "auto"]
ORT_ONLY_SETTINGS = ("providers", "graph_optimization", "execution_mode", "spinning")


class ModelConfig(Strict):
    path: Path | None = Field(None, description="ONNX model (.onnx), or OpenVINO IR (.xml with its .bin beside it); "
                                                "default: the bundled model")
    fallback_path: Path | None = Field(None, description="an FP32 model to serve when the model fails its "
                                                          "self-test at start (else the daemon exits 2)")
    watch: bool = Field(True, description="swap in a new model when the file changes (an IR: either file)")
    watch_interval_s: float = Field(2.0, ge=0.1, le=3600)
    runtime: RuntimeChoice = Field("auto", description="inference runtime: onnxruntime, openvino (the `openvino` "
                                                       "extra), or auto: openvino for an .xml IR, onnxruntime for "
                                                       "an .onnx; decided per file (path and fallback_path)")
    threads: int | None = Field(None, ge=1, le=256, description="inference threads (onnxruntime intra-op, "
                                                                "openvino INFERENCE_NUM_THREADS); default: physical cores")
    # onnxruntime only (refused when a model file runs on openvino)
    providers: list[str] = ["CPUExecutionProvider"]
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    execution_mode: Literal["sequential", "parallel"] = "sequential"
    spinning: bool = Field(True, description="let idle inference threads spin (lower latency, more CPU)")
    public_key: list[Path] = Field(default_factory=list,
                                   description="PEM public key file(s) of the cloud's model signing key (a path, or a "
                                               "list during a key rotation; a file may hold several keys). When set, "
                                               "only a model whose card is signed by one of them is served, at start "
                                               "and at a hot swap; unset: models are not required to be signed")

    @field_validator("public_key", mode="before")
    @classmethod
    def _one_or_more_keys(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)) and not value:  # would silently turn signatures off
            raise ValueError("an empty list trusts no key: name the public key file(s), or remove model.public_key "
                             "to serve unsigned models")
        return [value] if isinstance(value, (str, Path)) else value

    def trusted_keys(self) -> TrustedKeys | None:
        """The keys of `public_key`, read now (None when unset); a file that is not a public key
        is a ConfigError that names the file, never its content."""
        if not self.public_key:
            return None
        try:
            return TrustedKeys.load(self.public_key)
        except KeyFileError as exc:
            raise ConfigError(f"model.public_key: {exc}") from None

    def runtime_for(self, model_path: Path) -> RuntimeName:
        return resolve_runtime(self.runtime, model_path)

    def served_files(self) -> list[Path]:
        """The model files the daemon may serve: path (none given: the bundled model, which
        EDGE_INSPECT_MODEL may point to an IR) and fallback_path."""
        return [self.path or bundled_model_path(), *([self.fallback_path] if self.fallback_path else [])]

    @model_validator(mode="after")
    def _runtime_fits(self) -> ModelConfig:
        files = self.served_files()
        irs = [str(p) for p in files if is_ir(p) and self.runtime_for(p) == "onnxruntime"]
        if irs:
            raise ValueError(f"{irs[0]} is an OpenVINO IR, which onnxruntime cannot read: set runtime to openvino or auto")
        self._refuse_ort_only_settings(files)
        return self

    def _refuse_ort_only_settings(self, files: list[Path]) -> None:
        """OpenVINO has no counterpart to ONNX Runtime's providers, graph optimization, execution
        mode or spinning: it would ignore them without a word, and a config that says
        `spinning: false` (to leave the cameras their CPU) would not do what it says. So they are
        refused whenever a file would run on OpenVINO, including the one `auto` picks for an IR."""
        given = sorted(self.model_fields_set & set(ORT_ONLY_SETTINGS))
        on_openvino = [p for p in files if self.runtime_for(p) == "openvino"]
        if not given or not on_openvino:
            return
        why = "runtime is openvino" if self.runtime == "openvino" else "runtime auto runs an .xml IR on openvino"
        raise ValueError(f"{', '.join(given)}: onnxruntime-only settings, but {on_openvino[0]} runs on openvino "
                         f"({why}), which would ignore them: remove them (threads applies to both runtimes)")


class ClassRule(Strict):
    min_confidence: float = Field(0.5, ge=0, le=1)
    min_area_px: float = Field(0, ge=0, le=1e9, description="smallest box area (pixels) that counts")


class EventsConfig(Strict):
    min_hits: int = Field(3, ge=1, le=1000, description="a defect is new when seen in N ...")
    window: int = Field(5, ge=1, le=1000, description="... of the last M frames")
    end_after_s: float = Field(2.0, ge=0.01, le=86400, description="end a defect once gone this long")
    update_min_delta: float = Field(0.05, ge=0, le=1, description="score rise that earns an update")
    match_iou: float = Field(0.3, gt=0, le=1, description="IoU that ties a box to a tracked defect")
    default: ClassRule = ClassRule()
    classes: dict[str, ClassRule] = {}

    @model_validator(mode="after")
    def _window(self) -> EventsConfig:
        if self.min_hits > self.window:
            raise ValueError(f"min_hits ({self.min_hits}) cannot exceed window ({self.window})")
        return self

    def rule(self, class_name: str) -> ClassRule:
        return self.classes.get(class_name, self.default)


class CameraConfig(Strict):
    id: str = Field(pattern=ID_PATTERN)
    source: str | int = Field(description="USB index, rtsp://, http(s)://, a video file or a folder")
    kind: Literal["auto", "usb", "stream", "file", "folder"] = "auto"
    watchdog_s: float = Field(5.0, ge=0.1, le=3600, description="no frame this long: reopen the camera")
    reconnect_min_s: float = Field(0.5, ge=0.05, le=3600)
    reconnect_max_s: float = Field(30.0, ge=0.05, le=3600)
    loop: bool = Field(False, description="file sources: start again at the end")
    realtime: bool = Field(False, description="file sources: pace frames at the file's fps")
    queue_size: int = Field(2, ge=1, le=100)
    # Decoding is bounded before any full read: a hostile or broken file must not take the
    # memory of a 1-2 GB edge box (a 389 KB PNG can decode to 20000x20000 pixels).
    max_file_bytes: int = Field(64 * 1024**2, ge=1024, le=2 * 1024**3,
                                description="folder sources: larger image files are set aside unread")
    max_pixels: int = Field(40_000_000, ge=64 * 64, le=200_000_000,
                            description="folder sources: images whose header says more pixels are set aside")
    drift: DriftName | None = Field(None, description="rehearsals and tests only: change every frame as a drifted "
                                                      "line would (device/rehearsal.py)")

    @field_validator("source")
    @classmethod
    def _source(cls, value: str | int) -> str | int:
        if isinstance(value, str) and not value.strip():
            raise ValueError("source is empty")
        return value

    @model_validator(mode="after")
    def _backoff(self) -> CameraConfig:
        require_ordered(self, "reconnect_min_s", "reconnect_max_s")
        return self

    def resolved_kind(self) -> str:
        if self.kind != "auto":
            return self.kind
        if isinstance(self.source, int) or str(self.source).isdigit():
            return "usb"
        if "://" in str(self.source):
            return "stream"
        return "folder" if Path(str(self.source)).is_dir() else "file"


class StatsConfig(Strict):
    interval_s: float = Field(10.0, ge=0.1, le=86400)
    prometheus_port: int | None = Field(None, ge=1, le=65535)
    prometheus_host: str = "127.0.0.1"


class FileSinkConfig(Strict):
    path: Path | None = Field(None, description="append every message as a JSON line here")


class RateLimits(Strict):
    """At most this many samples per sliding minute / hour / day (None: no limit)."""

    per_minute: int | None = Field(None, ge=0, le=1_000_000)
    per_hour: int | None = Field(None, ge=0, le=1_000_000)
    per_day: int | None = Field(None, ge=0, le=10_000_000)


class StrategyConfig(Strict):
    """One sampling strategy. Which fields apply depends on `type`:
    close_to_threshold: threshold (default: events.default.min_confidence), epsilon, min_count, classes
    uncertainty_band:   low, high (score in [low, high)), min_count, classes
    random:             percent (of all frames, detections or not)
    per_class:          class_percent {class: percent of frames showing that class}
    detection_count:    min_detections, max_detections (counted at or above `low`)
    drift:              percent (of the frames of a camera while its drift alarm is up; a blind model
                        has no uncertain detections, so this is what sends the frames that fix it)"""

    name: str = Field(pattern=ID_PATTERN)
    type: Literal["close_to_threshold", "uncertainty_band", "random", "per_class", "detection_count", "drift"]
    tags: list[str] = []
    limits: RateLimits = RateLimits()
    threshold: float | None = Field(None, ge=0, le=1)
    epsilon: float = Field(0.1, ge=0, le=1)
    min_count: int = Field(1, ge=1, le=10000)
    classes: list[str] | None = None
    low: float = Field(0.25, ge=0, le=1)
    high: float = Field(0.5, ge=0, le=1)
    percent: float = Field(1.0, ge=0, le=100)
    class_percent: dict[str, float] = {}
    min_detections: int = Field(1, ge=0, le=10000)
    max_detections: int | None = Field(None, ge=0, le=10000)

    @model_validator(mode="after")
    def _consistent(self) -> StrategyConfig:
        if self.type == "uncertainty_band" and not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.type == "per_class" and not self.class_percent:
            raise ValueError("per_class needs class_percent, e.g. {scratch: 5}")
        if any(not 0 <= v <= 100 for v in self.class_percent.values()):
            raise ValueError("class_percent values are percentages (0 to 100)")
        if self.max_detections is not None and self.max_detections < self.min_detections:
            raise ValueError("max_detections is below min_detections")
        return self


class SpoolConfig(Strict):
    path: Path = Path("/var/lib/edge-inspect/spool")
    jpeg_quality: int = Field(90, ge=10, le=100)
    max_bytes: int = Field(2 * 1024**3, ge=1024, le=2**50)
    min_free_bytes: int = Field(512 * 1024**2, ge=0, le=2**50, description="evict before the disk gets fuller than this")
    queue_size: int = Field(32, ge=1, le=10000, description="frames waiting to be written; more are dropped and counted")


class UploadConfig(Strict):
    enabled: bool = True
    bucket: str = Field("", pattern=r"^$|^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    prefix: str = Field("edge-inspect", pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
    region: str | None = None
    endpoint_url: str | None = None
    batch_size: int = Field(20, ge=1, le=1000)
    max_bytes_per_s: int | None = Field(None, ge=1024, le=10 * 1024**3, description="bandwidth cap")
    retry_min_s: float = Field(1.0, ge=0.05, le=86400)
    retry_max_s: float = Field(300.0, ge=0.05, le=86400)
    timeout_s: float = Field(10.0, ge=0.1, le=600)

    _prefix = field_validator("prefix")(check_key_prefix)

    @model_validator(mode="after")
    def _backoff(self) -> UploadConfig:
        require_ordered(self, "retry_min_s", "retry_max_s")
        return self


class DedupConfig(Strict):
    enabled: bool = True
    max_distance: int = Field(4, ge=0, le=64, description="dHash Hamming distance that counts as the same frame")
    remember: int = Field(256, ge=1, le=100_000, description="recent samples per camera to compare with")


class ActiveLearningConfig(Strict):
    enabled: bool = False
    strategies: list[StrategyConfig] = []
    limits: RateLimits = RateLimits(per_minute=30, per_hour=600, per_day=5000)
    dedup: DedupConfig = DedupConfig()
    spool: SpoolConfig = SpoolConfig()
    upload: UploadConfig = UploadConfig()

    @model_validator(mode="after")
    def _unique_names(self) -> ActiveLearningConfig:
        require_unique("strategy names", [s.name for s in self.strategies])
        if self.enabled and self.upload.enabled and not self.upload.bucket:
            raise ValueError("upload.bucket is required when active learning uploads are enabled")
        return self


class DaemonConfig(Strict):
    thing_name: str = Field("edge-inspect-dev", pattern=ID_PATTERN)
    state_dir: Path = Field(Path("/var/lib/edge-inspect/state"),
                            description="durable state: the alert outbox, open defects, what folder sources saw")
    transport: Literal["auto", "mqtt", "greengrass", "none"] = "auto"
    mqtt: MqttConfig = MqttConfig()
    model: ModelConfig = ModelConfig()
    cameras: list[CameraConfig] = Field(min_length=1)
    events: EventsConfig = EventsConfig()
    stats: StatsConfig = StatsConfig()
    file_sink: FileSinkConfig = FileSinkConfig()
    active_learning: ActiveLearningConfig = ActiveLearningConfig()
    drift: DriftSettings = DriftSettings()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @model_validator(mode="after")
    def _unique_cameras(self) -> DaemonConfig:
        require_unique("camera ids", [c.id for c in self.cameras])
        return self


def format_validation_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(top level)"
        lines.append(f"{key}: {item['msg']}")
    return "; ".join(lines)


def validate_mapping(model: type[ModelT], data: Any, origin: str) -> ModelT:
    """`data` (a parsed YAML file) as `model`, or one ConfigError naming every bad key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(redact(f"{origin}: {format_validation_error(exc)}")) from None


def parse_config(data: Any, origin: str = "config") -> DaemonConfig:
    return validate_mapping(DaemonConfig, data, origin)


def load_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read ({exc})") from None
    remember_secrets(secrets_in_text(text))  # a YAML error quotes the line it failed on
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(redact(f"{path}: not valid YAML ({exc})")) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    remember_secrets(secrets_in(data))  # and what only the parsed structure shows (URL passwords)
    return data


def merge_config(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, anything else (lists included) is replaced."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_config(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_config(path: str | Path) -> DaemonConfig:
    return parse_config(load_config_file(path), origin=str(path))
