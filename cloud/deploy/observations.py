"""Device messages -> typed observations: what a line serves, when it swapped, what it refused,
when it alerted. Every payload is checked against the device's own contract first; a message
that fails it is logged and dropped, never guessed at.

Two clocks: `time` is the device's (alert windows are measured on it, against the device's own
`since`), `received` the cloud's (a refusal counts against a deployment only if it arrived after
the deployment was made, whatever the device's clock says).
"""

from __future__ import annotations

import logging
import time as clock
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from device.config import format_validation_error
from device.contracts import DefectEvent, ErrorMessage, ModelServing, Notice

log = logging.getLogger(__name__)

Kind = Literal["serving", "swapped", "rejected", "alert", "available"]
TOPICS = ("model", "notices", "errors", "events", "available")  # {prefix}/{thing}/{one of these}


class Observation(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    thing: str
    kind: Kind
    time: float  # device clock, epoch seconds
    received: float  # cloud clock
    name: str | None = None
    version: str | None = None
    sha256: str | None = None
    since: float | None = None  # serving: when the model started serving
    detail: str = ""  # rejected: the device's reason; available: online / offline
    message_id: str = ""  # alerts: the event's own id; a message seen twice (two listeners, a re-sent
    #                      retained message) is stored once


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _from(thing: str, sub: str, payload: bytes, received: float) -> Observation | None:
    if sub == "available":
        text = payload.decode(errors="replace").strip()
        return Observation(thing=thing, kind="available", time=received, received=received, detail=text) \
            if text in ("online", "offline") else None
    if sub == "model":
        m = ModelServing.model_validate_json(payload)
        return Observation(thing=m.thing, kind="serving", time=epoch(m.since), received=received, name=m.model.name,
                           version=m.model.version, sha256=m.model.sha256, since=epoch(m.since))
    if sub == "notices":
        n = Notice.model_validate_json(payload)
        if n.type != "model_swapped":
            return None
        return Observation(thing=n.thing, kind="swapped", time=epoch(n.time), received=received, name=n.model.name,
                           version=n.model.version, sha256=n.model.sha256, since=epoch(n.time), detail=n.message)
    if sub == "errors":
        e = ErrorMessage.model_validate_json(payload)
        if e.type != "model_rejected":
            return None
        return Observation(thing=e.thing, kind="rejected", time=epoch(e.time), received=received, name=e.model.name,
                           version=e.model.version, sha256=e.model.sha256, detail=e.message)
    if sub == "events":
        ev = DefectEvent.model_validate_json(payload)
        if ev.type != "new":
            return None
        return Observation(thing=ev.thing, kind="alert", time=epoch(ev.frame_time), received=received,
                           name=ev.model.name, version=ev.model.version, sha256=ev.model.sha256,
                           message_id=ev.message_id)
    return None


def parse(topic: str, payload: bytes, prefix: str, received: float | None = None) -> Observation | None:
    """The observation in one MQTT message on `{prefix}/{thing}/{sub}`, or None (another kind of
    message, or one that fails its contract: logged)."""
    rest = topic[len(prefix) + 1:] if topic.startswith(prefix + "/") else ""
    thing, _, sub = rest.partition("/")
    if not thing or sub not in TOPICS:
        return None
    try:
        observation = _from(thing, sub, payload, received if received is not None else clock.time())
    except (ValidationError, ValueError) as exc:
        reason = format_validation_error(exc) if isinstance(exc, ValidationError) else str(exc)
        log.warning("fleet: a message on %s does not match the device's contract, dropped: %s", topic, reason)
        return None
    if observation is not None and observation.thing != thing:
        log.warning("fleet: a message on %s names thing %r: dropped", topic, observation.thing)
        return None
    return observation
