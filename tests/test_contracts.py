"""The wire contracts: schemas generated from the models match the checked-in files, and every
builder in `device.messages` produces what its schema accepts."""

from __future__ import annotations

import json
import time

import jsonschema
import pytest

from device import messages
from device.config import EventsConfig
from device.contracts import (
    CONTRACTS,
    DefectEvent,
    ModelIdentity,
    SampleDetection,
    StageLatency,
    schema_path,
    schema_text,
)
from device.contracts import _documents as generated_documents
from device.detector import Detection
from device.drift import DriftSettings, Verdict
from device.events import DefectTracker, FrameResult, ended_after_restart

MODEL = ModelIdentity(name="m", version="1", sha256="a" * 64)


@pytest.mark.parametrize("kind", sorted(generated_documents()))
def test_checked_in_schema_is_the_generated_one(kind):
    path = schema_path(kind)
    assert path.is_file(), f"{path} missing: run python -m device.contracts --write"
    assert path.read_text() == schema_text(kind), (
        f"{path.name} differs from the model in device/contracts.py: run python -m device.contracts --write")


def test_every_message_kind_has_a_builder_whose_output_validates():
    result = FrameResult("cam", 1, time.time(), 0.0, 450, 300,
                         (Detection(0, "scratch", 0.9, (10.0, 20.0, 110.0, 90.0)),),
                         StageLatency(queue=1, preprocess=1, inference=10, postprocess=1), MODEL)
    tracker = DefectTracker("line-1", "cam", EventsConfig(min_hits=1, window=1))
    built = {
        "event": tracker.update(result)[0],
        "status": messages.camera_status("line-1", "cam", "online", time.time(), "reading"),
        "available": messages.available(True),
        "error": messages.error("line-1", "config_rejected", "bad", MODEL),
        "notice": messages.notice("line-1", "config_applied", "ok", MODEL, applied=["events"], pending_restart=[]),
        "samples": messages.samples("line-1", "bucket", [f"p/raw/line-1/cam/2026/11/22/{'b' * 64}.jpg"]),
        "model": messages.model_serving("line-1", MODEL, time.time(), previous=MODEL),
        "drift": messages.drift("line-1", Verdict("cam", "drifting", time.time(), 8.9, "blue_share",
                                                  {"blue_share": 8.9, "aspect": 0.0}, 20, changed=True,
                                                  reference=MODEL.sha256),
                                DriftSettings(), MODEL),
    }
    for kind, message in built.items():
        assert message.kind == kind
        messages.validate(kind, message.payload)
        CONTRACTS[kind].model_validate(message.payload)
    sidecar = messages.sidecar("line-1", "cam", time.time(), 450, 300, MODEL,
                               [SampleDetection(class_id=0, class_name="scratch", confidence=0.5, box=[1, 2, 3, 4])],
                               ["random"], [])
    messages.validate("sidecar", {**sidecar, "jpeg_sha256": "c" * 64, "jpeg_bytes": 10})
    assert set(built) | {"sidecar", "stats"} == set(CONTRACTS), "a kind without a builder test"


def test_available_is_bare_text_not_a_json_string():
    assert messages.available(True).body == b"online"
    assert messages.available(False).body == b"offline"


def test_events_are_durable_and_carry_their_message_id():
    result = FrameResult("cam", 1, time.time(), 0.0, 450, 300,
                         (Detection(0, "scratch", 0.9, (10.0, 20.0, 110.0, 90.0)),),
                         StageLatency(queue=1, preprocess=1, inference=10, postprocess=1), MODEL)
    event = DefectTracker("line-1", "cam", EventsConfig(min_hits=1, window=1)).update(result)[0]
    assert event.durable and event.payload["message_id"] == event.message_id
    assert event.payload["class"] == "scratch" and "class_name" not in event.payload
    ended = ended_after_restart(DefectEvent.model_validate(event.payload), "daemon restarted")
    payload = ended.payload
    messages.validate("event", payload)
    assert payload["type"] == "end" and payload["reason"] == "daemon restarted"
    assert payload["event_id"] == event.payload["event_id"] and payload["message_id"] != event.message_id


def test_a_payload_that_breaks_the_contract_is_refused_by_model_and_schema():
    good = json.loads(messages.camera_status("line-1", "cam", "online", time.time(), "x").body)
    bad = {**good, "state": "exploded"}
    with pytest.raises(jsonschema.ValidationError):
        messages.validate("status", bad)
    with pytest.raises(ValueError):
        CONTRACTS["status"].model_validate(bad)
    with pytest.raises(jsonschema.ValidationError):
        messages.validate("status", {**good, "extra": 1})
