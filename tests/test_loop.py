"""`edge-inspect loop` on a CI-sized schedule (one epoch, a few labels, one turn), run as a user
runs it: the mechanics are real (mosquitto, moto's S3 server, the daemon, the replay labeler, the
pipeline, the MLflow registry, the local deployer), only the schedule is tiny, and the gate is
opened so that a one-epoch model is registered. The full-size run and its figures are in the
README (`make loop`)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO

from cloud.labels.local import LocalLabelStore
from cloud.registry.mlflow_registry import MlflowRegistry
from cloud.registry.registry import Approval
from device.messages import validate


def test_one_turn_of_the_loop_on_a_tiny_schedule(tmp_path):
    out = tmp_path / "loop"
    done = subprocess.run(
        [sys.executable, "-m", "edge_inspect", "loop", "--drift", "warm-light", "--out", str(out), "--auto-approve",
         "--epochs", "1", "--trigger-labels", "16", "--max-turns", "1", "--baseline-s", "2", "--fps", "10",
         "--hold-frames", "2", "--time-limit-minutes", "14", "--after-s", "5",
         "--param", "gate.tolerance=1", "--param", "gate.forgetting_tolerance=1",
         "--param", "gate.floor_map50=0", "--param", "gate.floor_map50_95=0",
         "--param", "train.batch=8"],
        cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert done.returncode in (0, 3), (done.stdout[-4000:], done.stderr[-4000:])
    report = json.loads((out / "report.json").read_text())
    assert (out / "report.md").read_text().startswith("# Closed loop rehearsal: warm-light")
    assert (out / "report.png").stat().st_size > 10_000

    # the device noticed: the undrifted line stayed ok, the drifted one raised the alarm
    states = [state for _, state, _ in report["series"]["drift"]]
    assert states[0] == "ok" and "drifting" in states, states
    assert "drift raised on tagcam: blue_share" in done.stdout

    # the frames went through the bucket and came back as labels (their source_ref is their S3 key)
    rows = LocalLabelStore(out / "cloud" / "labels").as_of(time.time())
    sampled = [r for r in rows if r.source_ref.startswith("edge-inspect/raw/line-1/tagcam/")]
    assert len(sampled) >= 16 and all(r.labeling_job.startswith("replay:") for r in sampled)

    # a new version, fine-tuned from production, with the dataset it was made from, approved
    registry = MlflowRegistry(out / "cloud" / "registry", "metal-tags")
    v2 = registry.get("2")
    assert v2.card.parent_version == "1" and v2.card.start.kind == "checkpoint" and v2.card.start.version == "1"
    # the 175 shipped photos and at least the 16 line frames that triggered the run
    assert v2.card.dataset.fingerprint and sum(v2.card.dataset.images.values()) >= 175 + 16
    assert v2.status is Approval.APPROVED and v2.decided_by == "edge-inspect loop --auto-approve"

    # the line serves it: the daemon's retained model message carries v2's sha256
    assert report["before"]["version"] == "1" and report["after"]["version"] == "2"
    assert report["after"]["sha256"] == v2.card.onnx_sha256
    assert report["series"]["served"][-1][1] == v2.card.onnx_sha256
    assert report["before"]["onnx"] != report["after"]["onnx"]

    # the verdict after the swap is what the figures say
    [turn] = report["turns"]
    state, score = turn["drift_after"], turn["drift_score_after"]  # the new model's first verdict
    assert turn["rollout"] == "deployed" and [state, score] in [p[1:] for p in report["series"]["drift"]]
    assert turn["outcome"] == ("drift cleared" if state == "ok" else "drift persists")
    # hysteresis: a camera still drifting is at or above clear_below; one back to ok is below raise_at
    assert score >= 2.0 if state == "drifting" else score < 3.0
    assert report["targets_met"] == (report["after"]["drifted"]["map50"] >= 0.85
                                     and report["after"]["undrifted"]["map50"]
                                     >= report["before"]["undrifted"]["map50"] - 0.02)
    assert report["before"]["drifted"]["map50"] < 0.5, "the production model is nearly blind under the warm lamp"
    for line in (out / "line" / "daemon.log").read_text().splitlines():
        assert "Traceback" not in line
    sent = [json.loads(line) for line in (out / "line" / "messages.jsonl").read_text().splitlines()]
    drift_messages = [m["payload"] for m in sent if m["topic"].endswith("/tagcam/drift")]
    assert {"ok", "drifting"} <= {m["state"] for m in drift_messages}, "the line's own record of its verdicts"
    for message in drift_messages:
        validate("drift", message)


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and text in cmdline:
            found.append(cmdline)
    return found


def test_sigterm_stops_the_line_and_the_private_peers_with_the_loop(tmp_path):
    out = tmp_path / "stopped"
    loop = subprocess.Popen([sys.executable, "-m", "edge_inspect", "loop", "--drift", "warm-light", "--out", str(out),
                             "--baseline-s", "600"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        for line in loop.stdout:  # waits on the loop's own words, not a clock
            if "the undrifted line starts" in line:
                break
        children = _processes_mentioning(str(out))
        assert any("mosquitto" in c for c in children) and any(" run --config" in c for c in children), children
        loop.send_signal(signal.SIGTERM)
        assert loop.wait(60) == 128 + signal.SIGTERM
    finally:
        if loop.poll() is None:
            loop.terminate()
            loop.wait(60)
    assert _processes_mentioning(str(out)) == []


def test_a_label_table_with_no_photo_for_the_line_is_refused_in_one_line(tmp_path):
    """Every labelled photo here is one the production model never trained on: nothing to show on
    the line. A clear error, exit 2, no traceback, and the broker it started is gone again."""
    import csv

    from cloud.heldout import split_by_training
    from device.bundled import bundled_model_path
    from device.model_card import ModelCard, card_path_for

    labels = REPO / "data" / "metal-tags" / "labels.csv"
    heldout = {r.source_ref for r in split_by_training(ModelCard.read(card_path_for(bundled_model_path())),
                                                        labels).heldout}
    (tmp_path / "images").symlink_to(REPO / "data" / "metal-tags" / "images")
    with labels.open(newline="") as src, (tmp_path / "labels.csv").open("w", newline="") as dst:
        rows = csv.DictReader(src)
        out = csv.DictWriter(dst, fieldnames=rows.fieldnames)
        out.writeheader()
        out.writerows(r for r in rows if r["source_ref"] in heldout)
    done = subprocess.run([sys.executable, "-m", "edge_inspect", "loop", "--drift", "warm-light",
                           "--out", str(tmp_path / "out"), "--labels", str(tmp_path / "labels.csv")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "needs photos the production model trained on" in done.stderr and "Traceback" not in done.stderr
    assert _processes_mentioning(str(tmp_path / "out")) == []
