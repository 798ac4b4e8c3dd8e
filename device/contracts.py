"""The daemon's contracts: every message it puts on the wire, the sidecar of a sampled frame, as
typed models. The JSON Schemas in `device/schemas/` are generated from these models
(`python -m device.contracts --write`; a test fails when a checked-in schema differs), and the
cloud side imports them rather than guessing at shapes. Payloads are built from these models in
`device.messages`, and nowhere else.

Wire names that are not Python names (`class`) use aliases; payloads are always dumped by alias.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

SCHEMA_VERSION = 2
SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
SCHEMA_BASE_URL = "https://edge-inspect.dev/schemas"

SAFE_ID = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"  # thing and camera ids: safe in topics, files, S3 keys
UTC_TIME = r"Z$"  # ISO 8601 in UTC, e.g. 2026-11-22T07:26:34.387Z
SHA256 = r"^[0-9a-f]{64}$"
# Bounds the cloud side enforces on what devices send (a hostile or broken device must not stall
# or flood it): the uploader announces at most SAMPLES_MAX_KEYS keys per `samples` message (it
# splits longer lists), and a sidecar names at most SIDECAR_MAX_DETECTIONS detections (the
# detector keeps 300 at most).
SAMPLES_MAX_KEYS = 100
SIDECAR_MAX_DETECTIONS = 1000
S3_RAW_KEY = r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*/raw/[A-Za-z0-9_-]+/[A-Za-z0-9_-]+/[0-9]{4}/[0-9]{2}/[0-9]{2}/[0-9a-f]{64}\.jpg$"


class Contract(BaseModel):
    """Unknown fields are refused both ways: a sender cannot add a field by accident, and a
    receiver (the cloud side, a test) that validates learns at once that the contract moved."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    def wire(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()


class ModelIdentity(Contract):
    """The model that produced a message: every event, stats and notice carries it."""

    name: str
    version: str
    sha256: str = Field(pattern=SHA256)


class StageLatency(Contract):
    queue: float = Field(ge=0)
    preprocess: float = Field(ge=0)
    inference: float = Field(ge=0)
    postprocess: float = Field(ge=0)


class DefectEvent(Contract):
    """`{root}/events`: a defect is `new` (seen in min_hits of window frames), `update`d (its
    score rose), or `end`s (gone end_after_s, the stream ended, or the daemon restarted)."""

    schema_version: Literal[2] = SCHEMA_VERSION
    message_id: str = Field(pattern=r"^[0-9a-f]{32}$",
                            description="the same on every delivery of this message: drop repeats by it")
    thing: str = Field(pattern=SAFE_ID)
    camera: str = Field(pattern=SAFE_ID)
    event_id: str = Field(pattern=r"^[0-9a-f-]{36}$", description="one defect, from new to end")
    type: Literal["new", "update", "end"]
    class_name: str = Field(alias="class")
    class_id: int = Field(ge=0)
    score: float = Field(ge=0, le=1)
    top_score: float = Field(ge=0, le=1)
    box: list[float] = Field(min_length=4, max_length=4, description="x1, y1, x2, y2 in pixels")
    box_norm: list[float] = Field(min_length=4, max_length=4, description="the box over width and height")
    frame_time: str = Field(pattern=UTC_TIME)
    sent_time: str = Field(pattern=UTC_TIME)
    frames_seen: int = Field(ge=1)
    model: ModelIdentity
    latency_ms: StageLatency
    reason: str | None = Field(None, description="why an `end` came other than by the defect going away")


CameraState = Literal["starting", "online", "offline", "finished", "stopped"]


class CameraStatus(Contract):
    """`{root}/{camera}/status`, retained: the camera's state on every change."""

    schema_version: Literal[2] = SCHEMA_VERSION
    thing: str = Field(pattern=SAFE_ID)
    camera: str = Field(pattern=SAFE_ID)
    state: CameraState
    since: str = Field(pattern=UTC_TIME)
    reason: str


class Available(RootModel[Literal["online", "offline"]]):
    """`{root}/available`, retained: the bare text `online` or `offline` (no JSON quotes), as
    Home Assistant and Frigate subscribers expect; `offline` is also the MQTT last will."""

    def wire(self) -> bytes:
        return self.root.encode()


class _Operational(Contract):
    schema_version: Literal[2] = SCHEMA_VERSION
    thing: str = Field(pattern=SAFE_ID)
    message: str
    time: str = Field(pattern=UTC_TIME)
    model: ModelIdentity = Field(description="the model serving when it happened")
    candidate: str | None = Field(None, description="the model file concerned, for model_* types")


class ErrorMessage(_Operational):
    """`{root}/errors`: something was refused, and the daemon goes on with what it had."""

    type: Literal["model_rejected", "config_rejected", "camera_failed"]


class Notice(_Operational):
    """`{root}/notices`: an operational change that took effect (a model swapped in, a
    configuration applied, defects ended after a restart)."""

    type: Literal["model_swapped", "config_applied", "defects_closed"]
    applied: list[str] | None = Field(None, description="config_applied: keys in effect now")
    pending_restart: list[str] | None = Field(None, description="config_applied: keys that wait for a restart")


class ModelServing(Contract):
    """`{root}/model`, retained: the model this thing serves now and since when, sent at start and
    on every swap. Any subscriber (the fleet view, the canary judge) learns what every line runs
    the moment it subscribes, without waiting for a swap or a stats interval."""

    schema_version: Literal[2] = SCHEMA_VERSION
    thing: str = Field(pattern=SAFE_ID)
    model: ModelIdentity
    since: str = Field(pattern=UTC_TIME, description="when this model started serving here")
    previous: ModelIdentity | None = Field(None, description="the model it replaced (None at start)")


class DriftStatus(Contract):
    """`{root}/{camera}/drift`, retained: whether what the camera sees still looks like what the
    serving model was trained on (device/drift.py). Sent when the verdict changes and every stats
    interval; none until the camera has shown `min_frames` distinct frames."""

    schema_version: Literal[2] = SCHEMA_VERSION
    thing: str = Field(pattern=SAFE_ID)
    camera: str = Field(pattern=SAFE_ID)
    state: Literal["ok", "drifting"]
    since: str = Field(pattern=UTC_TIME, description="when the camera entered this state")
    time: str = Field(pattern=UTC_TIME)
    score: float = Field(ge=0, description="the largest measure among the alarm features")
    worst: str = Field(description="the alarm feature with that measure")
    measures: dict[str, float] = Field(description="per feature: Wasserstein-1 distance from the model's reference, "
                                                   "in reference standard deviations")
    raise_at: float = Field(gt=0)
    clear_below: float = Field(gt=0)
    frames: int = Field(ge=1, description="distinct frames in the window")
    model: ModelIdentity = Field(description="the model whose reference the frames were compared with")


class CameraFigures(Contract):
    state: CameraState
    capture_fps: float = Field(ge=0)
    processed_fps: float = Field(ge=0)
    skipped_fps: float = Field(ge=0)
    dropped_frames: int = Field(ge=0)
    queue_depth: int = Field(ge=0)
    frames_processed: int = Field(ge=0)
    restarts: int = Field(0, ge=0, description="times the camera's loop failed and was restarted")
    rejected_files: int = Field(0, ge=0, description="folder sources: files set aside unread")


class Percentiles(Contract):
    p50: float
    p95: float
    p99: float


class SinkFigures(Contract):
    queued: int = Field(ge=0, description="messages waiting (events on disk included)")
    delivered: int = Field(ge=0)
    evicted: int = Field(0, ge=0, description="events dropped, oldest first, because the outbox was full")
    dropped: int = Field(0, ge=0, description="other messages dropped because the queue was full")


class ActiveLearningFigures(Contract):
    spooled: int = Field(ge=0)
    spool_bytes: int = Field(ge=0)
    written: int = Field(ge=0)
    evicted: int = Field(ge=0)
    quarantined: int = Field(ge=0)
    dropped: int = Field(ge=0)
    write_failures: int = Field(0, ge=0)
    rate_limited: int = Field(ge=0)
    duplicates_suppressed: int = Field(ge=0)
    uploaded: int = Field(ge=0)
    upload_online: bool


class Stats(Contract):
    """`{root}/stats`, every stats.interval_s."""

    schema_version: Literal[2] = SCHEMA_VERSION
    thing: str = Field(pattern=SAFE_ID)
    time: str = Field(pattern=UTC_TIME)
    uptime_s: float = Field(ge=0)
    model: ModelIdentity
    free_disk_bytes: int = Field(ge=0)
    cameras: dict[str, CameraFigures]
    latency_ms: dict[str, Percentiles]
    sinks: dict[str, SinkFigures]
    frame_errors: int = Field(0, ge=0)
    active_learning: ActiveLearningFigures | None = None


class Samples(Contract):
    """`{root}/samples`: the S3 keys of sampled frames just uploaded (the cloud side's trigger)."""

    schema_version: Literal[2] = SCHEMA_VERSION
    thing: str = Field(pattern=SAFE_ID)
    time: str = Field(pattern=UTC_TIME)
    bucket: str = Field(min_length=3)
    count: int = Field(ge=1)
    keys: list[Annotated[str, Field(pattern=S3_RAW_KEY)]] = Field(min_length=1)


class SampleDetection(Contract):
    class_id: int = Field(ge=0)
    class_name: str = Field(alias="class")
    confidence: float = Field(ge=0, le=1)
    box: list[float] = Field(min_length=4, max_length=4)


class Sidecar(Contract):
    """`<sha256>.json` beside each sampled JPEG, in the spool and in S3."""

    schema_version: Literal[2] = SCHEMA_VERSION
    thing: str = Field(pattern=SAFE_ID)
    camera: str = Field(pattern=SAFE_ID)
    frame_time: str = Field(pattern=UTC_TIME)
    frame_time_epoch: float
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    model: ModelIdentity
    detections: list[SampleDetection] = Field(max_length=SIDECAR_MAX_DETECTIONS)
    strategies: list[str] = Field(min_length=1)
    tags: list[str]
    jpeg_sha256: str | None = Field(None, pattern=SHA256)
    jpeg_bytes: int | None = Field(None, ge=1)


# kind -> model: the kind names the schema file (`{kind}.schema.json`) and `Outbound.kind`
CONTRACTS: dict[str, type[BaseModel]] = {
    "event": DefectEvent,
    "status": CameraStatus,
    "available": Available,
    "error": ErrorMessage,
    "notice": Notice,
    "model": ModelServing,
    "drift": DriftStatus,
    "stats": Stats,
    "samples": Samples,
    "sidecar": Sidecar,
}


def _documents() -> dict[str, type[BaseModel]]:
    """Every generated schema: the wire messages, and the model card that travels with a model."""
    from device.model_card import ModelCard

    return {**CONTRACTS, "model-card": ModelCard}


def json_schema(kind: str) -> dict:
    model = _documents()[kind]
    schema = model.model_json_schema(by_alias=True, mode="serialization")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"{SCHEMA_BASE_URL}/{kind}/{SCHEMA_VERSION}", **schema}


def schema_text(kind: str) -> str:
    return json.dumps(json_schema(kind), indent=2, sort_keys=False) + "\n"


def schema_path(kind: str) -> Path:
    return SCHEMA_DIR / f"{kind}.schema.json"


def write_schemas() -> list[Path]:
    """Regenerate every checked-in schema; returns the files that changed."""
    changed = []
    for kind in _documents():
        path = schema_path(kind)
        text = schema_text(kind)
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
            changed.append(path)
    return changed


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m device.contracts --write   (regenerates device/schemas/*.schema.json)")
    for changed_path in write_schemas():
        print(f"wrote {changed_path}")
