"""What goes on the wire. Every message has a JSON Schema in `device/schemas/`; the builders here
are the only place payloads are shaped, and `validate` checks one against its schema."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
KINDS = ("event", "status", "available", "error", "stats", "samples", "sidecar")


@dataclass(frozen=True)
class Outbound:
    """One message for every sink: topic relative to `{prefix}/{thing}/`, JSON payload."""

    kind: str  # one of KINDS: names the schema
    subtopic: str  # "events", "available", "{camera}/status", ...
    payload: Any
    retain: bool = False
    qos: int = 1

    def body(self) -> bytes:
        return json.dumps(self.payload, separators=(",", ":")).encode()


def utc_iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def available(online: bool) -> Outbound:
    return Outbound("available", "available", "online" if online else "offline", retain=True)


def camera_status(thing: str, camera: str, state: str, since: float, reason: str) -> Outbound:
    payload = {"schema_version": SCHEMA_VERSION, "thing": thing, "camera": camera, "state": state,
               "since": utc_iso(since), "reason": reason}
    return Outbound("status", f"{camera}/status", payload, retain=True)


def operational(thing: str, kind: str, message: str, model: dict[str, str], when: float,
                candidate: str | None = None) -> Outbound:
    payload = {"schema_version": SCHEMA_VERSION, "thing": thing, "type": kind, "message": message,
               "time": utc_iso(when), "model": model}
    if candidate:
        payload["candidate"] = candidate
    return Outbound("error", "errors", payload)


@lru_cache(maxsize=None)
def _registry():
    from referencing import Registry, Resource

    resources = []
    for path in SCHEMA_DIR.glob("*.schema.json"):
        schema = json.loads(path.read_text())
        resource = Resource.from_contents(schema)
        resources += [(schema["$id"], resource), (path.name, resource)]
    return Registry().with_resources(resources)


@lru_cache(maxsize=None)
def _validator(kind: str):
    from jsonschema import Draft202012Validator, FormatChecker

    schema = json.loads((SCHEMA_DIR / f"{kind}.schema.json").read_text())
    return Draft202012Validator(schema, registry=_registry(), format_checker=FormatChecker())


def validate(kind: str, payload: Any) -> None:
    """Raise jsonschema.ValidationError if `payload` does not match the `kind` schema."""
    _validator(kind).validate(payload)
