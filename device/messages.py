"""What goes on the wire. Every message is a typed model in `device.contracts` (its JSON Schema in
`device/schemas/` is generated from it); the functions here turn models into `Outbound`
messages, and are the only place that does. Free text that may come from configuration or an
exception (reasons, error messages) is redacted here, on its way out."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cache
from typing import Any

from device.contracts import (
    SCHEMA_DIR,
    Available,
    CameraState,
    CameraStatus,
    DefectEvent,
    DriftStatus,
    ErrorMessage,
    ModelIdentity,
    ModelServing,
    Notice,
    SampleDetection,
    Samples,
    Sidecar,
    Stats,
)
from device.drift import DriftSettings, Verdict
from device.redact import redact


def utc_iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_message_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Outbound:
    """One message for every sink: topic relative to `{prefix}/{thing}/`, and the exact bytes that
    go on the wire. Built only by the functions below, from the models in `device.contracts`.

    `durable` messages (defect events) wait on disk while the broker is away and survive a
    restart; `message_id` is the same on every delivery attempt of one message, so a subscriber
    drops the one repeat a crash can cause."""

    kind: str  # a key of device.contracts.CONTRACTS: names the schema
    subtopic: str  # "events", "available", "{camera}/status", ...
    body: bytes
    retain: bool = False
    qos: int = 1
    durable: bool = False
    message_id: str = field(default_factory=new_message_id)

    @property
    def payload(self) -> Any:
        """The body as data: JSON for every kind but `available`, which is bare text."""
        return self.body.decode() if self.kind == "available" else json.loads(self.body)


def event(payload: DefectEvent) -> Outbound:
    """Defect events are durable: they wait on disk for the broker and survive a restart."""
    return Outbound("event", "events", payload.wire(), durable=True, message_id=payload.message_id)


def available(online: bool) -> Outbound:
    return Outbound("available", "available", Available("online" if online else "offline").wire(), retain=True)


def camera_status(thing: str, camera: str, state: CameraState, since: float, reason: str) -> Outbound:
    payload = CameraStatus(thing=thing, camera=camera, state=state, since=utc_iso(since), reason=redact(reason))
    return Outbound("status", f"{camera}/status", payload.wire(), retain=True)


def error(thing: str, kind: str, message: str, model: ModelIdentity, candidate: str | None = None) -> Outbound:
    payload = ErrorMessage(thing=thing, type=kind, message=redact(message), time=utc_iso(time.time()), model=model,
                           candidate=redact(candidate) if candidate else None)
    return Outbound("error", "errors", payload.wire())


def notice(thing: str, kind: str, message: str, model: ModelIdentity, candidate: str | None = None,
           applied: list[str] | None = None, pending_restart: list[str] | None = None) -> Outbound:
    payload = Notice(thing=thing, type=kind, message=redact(message), time=utc_iso(time.time()), model=model,
                     candidate=redact(candidate) if candidate else None, applied=applied,
                     pending_restart=pending_restart)
    return Outbound("notice", "notices", payload.wire())


def model_serving(thing: str, model: ModelIdentity, since: float, previous: ModelIdentity | None) -> Outbound:
    payload = ModelServing(thing=thing, model=model, since=utc_iso(since), previous=previous)
    return Outbound("model", "model", payload.wire(), retain=True)


def drift(thing: str, verdict: Verdict, settings: DriftSettings, model: ModelIdentity) -> Outbound:
    payload = DriftStatus(thing=thing, camera=verdict.camera, state=verdict.state, since=utc_iso(verdict.since),
                          time=utc_iso(time.time()), score=verdict.score, worst=verdict.worst,
                          measures=verdict.measures, raise_at=settings.raise_at, clear_below=settings.clear_below,
                          frames=verdict.frames, model=model)
    return Outbound("drift", f"{verdict.camera}/drift", payload.wire(), retain=True)


def stats(payload: Stats) -> Outbound:
    return Outbound("stats", "stats", payload.wire(), qos=0)


def samples(thing: str, bucket: str, keys: list[str]) -> Outbound:
    payload = Samples(thing=thing, time=utc_iso(time.time()), bucket=bucket, count=len(keys), keys=keys)
    return Outbound("samples", "samples", payload.wire())


def sidecar(thing: str, camera: str, frame_time: float, width: int, height: int, model: ModelIdentity,
            detections: list[SampleDetection], strategies: list[str], tags: list[str]) -> dict[str, Any]:
    """The sidecar of a sampled frame, as the spool stores it (it adds the JPEG's sha256 and size)."""
    payload = Sidecar(thing=thing, camera=camera, frame_time=utc_iso(frame_time), frame_time_epoch=frame_time,
                      width=width, height=height, model=model, detections=detections, strategies=strategies,
                      tags=tags)
    return payload.model_dump(mode="json", by_alias=True, exclude_none=True)


@cache
def _registry():
    from referencing import Registry, Resource

    resources = []
    for path in SCHEMA_DIR.glob("*.schema.json"):
        schema = json.loads(path.read_text())
        resource = Resource.from_contents(schema)
        resources += [(schema["$id"], resource), (path.name, resource)]
    return Registry().with_resources(resources)


@cache
def _validator(kind: str):
    from jsonschema import Draft202012Validator, FormatChecker

    schema = json.loads((SCHEMA_DIR / f"{kind}.schema.json").read_text())
    return Draft202012Validator(schema, registry=_registry(), format_checker=FormatChecker())


def validate(kind: str, payload: Any) -> None:
    """Raise jsonschema.ValidationError if `payload` does not match the checked-in `kind` schema
    (what a subscriber in another language would check against)."""
    _validator(kind).validate(payload)
