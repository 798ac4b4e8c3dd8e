"""Defects left open by a crash: the durable record `device.open_defects` keeps the last payload of
every defect published `new`/`update` and not `end`ed, across a close (or a kill) and a reopen."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys

from conftest import REPO

from device.open_defects import OpenDefects


def payload(event_id: str, kind: str, score: float = 0.5) -> dict:
    return {"event_id": event_id, "type": kind, "class": "scratch", "score": score, "message_id": "0" * 32}


def test_new_and_update_keep_the_last_payload_end_forgets(tmp_path):
    record = OpenDefects(tmp_path / "open-defects.sqlite")
    record.record(payload("a", "new", 0.6))
    record.record(payload("b", "new", 0.7))
    record.record(payload("a", "update", 0.8))
    record.record(payload("c", "new"))
    record.record(payload("c", "end"))
    record.record({"type": "stats"})  # not a defect event: ignored
    assert record.left_open() == [payload("a", "update", 0.8), payload("b", "new", 0.7)], "first seen first"
    record.clear()
    assert record.left_open() == []


def test_what_was_open_is_read_back_after_a_reopen(tmp_path):
    path = tmp_path / "state" / "open-defects.sqlite"
    record = OpenDefects(path)
    record.record(payload("a", "new"))
    record.record(payload("b", "new"))
    record.record(payload("b", "end"))
    record.close()
    assert OpenDefects(path).left_open() == [payload("a", "new")]


RUN = """
import sys
from device.open_defects import OpenDefects

record = OpenDefects(sys.argv[1])
record.record({"event_id": "a", "type": "new", "score": 0.5})
record.record({"event_id": "b", "type": "new", "score": 0.6})
record.record({"event_id": "a", "type": "update", "score": 0.9})
print("recorded", flush=True)
sys.stdin.read()  # until killed
"""


def test_a_kill_9_leaves_the_open_defects_readable(tmp_path):
    path = tmp_path / "open-defects.sqlite"
    run = subprocess.Popen([sys.executable, "-c", RUN, str(path)], cwd=REPO, stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
    assert run.stdout.readline().strip() == "recorded"
    run.send_signal(signal.SIGKILL)
    run.wait(10)
    assert OpenDefects(path).left_open() == [{"event_id": "a", "type": "update", "score": 0.9},
                                             {"event_id": "b", "type": "new", "score": 0.6}]


def test_a_damaged_file_is_moved_aside_and_the_record_starts_empty(tmp_path, caplog):
    path = tmp_path / "open-defects.sqlite"
    path.write_bytes(b"\x00garbage" * 1000)
    record = OpenDefects(path)
    assert record.left_open() == []
    record.record(payload("a", "new"))
    assert record.left_open() == [payload("a", "new")]
    assert list(tmp_path.glob("open-defects.sqlite.corrupt-*"))
    assert any(r.levelno == logging.WARNING and "damaged" in r.getMessage() for r in caplog.records)
