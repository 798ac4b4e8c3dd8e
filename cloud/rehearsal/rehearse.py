"""One rehearsal, from an empty folder to its report. The peers (broker, S3 endpoint) are given:
`edge-inspect loop` starts private ones on loopback."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from cloud.registry.registry import ModelRegistry, ModelVersion
from device import cpu

from .heldout import score, write_heldout_sets
from .line import line_photos, line_video
from .plan import Peers, write_plan
from .report import LoopReport, ModelScores, Series, targets_met, write_report
from .settings import LoopSettings
from .turns import Rehearsal


def _scores(registry: ModelRegistry, version: ModelVersion, folder: Path, sets) -> ModelScores:
    files = registry.download(version.version, folder / f"v{version.version}")
    figures = score(files.onnx, sets)
    return ModelScores(version=version.version, sha256=version.card.onnx_sha256, onnx=str(files.onnx.resolve()),
                       undrifted=figures["undrifted"], drifted=figures["drifted"])


def _outcome(rehearsal: Rehearsal, before: ModelVersion, after: ModelVersion) -> str:
    last = rehearsal.turns[-1] if rehearsal.turns else None
    if after.version == before.version:
        return f"the model did not change ({last.outcome if last else 'no turn'})"
    turns = len(rehearsal.turns)
    verdict = "the drift alarm cleared" if last and last.outcome == "drift cleared" else "the drift alarm still stands"
    return f"v{before.version} -> v{after.version} in {turns} turn(s); {verdict}"


def rehearse(settings: LoopSettings, labels_csv: Path, production_model: Path, peers: Peers, command: str,
             say: Callable[[str], None] = print) -> LoopReport:
    started = time.time()
    settings.out.mkdir(parents=True, exist_ok=True)
    photos = line_photos(production_model, labels_csv)
    video = line_video(settings.out / "line.avi", photos, settings.fps, settings.hold_frames, settings.seed)
    plan = write_plan(settings, photos, production_model, video, peers)
    say(f"rehearsal in {settings.out}: {len(photos.shown)} photos on the line, {len(photos.heldout)} held out; "
        f"daemon log {plan.folder / 'line' / 'daemon.log'}")
    rehearsal = Rehearsal(settings, photos, plan, say)
    before, after = rehearsal.run(command)
    rehearsal.note("scoring the models before and after on the held-out photos")
    sets = write_heldout_sets(photos, settings.drift, settings.out / "heldout", before.card.class_names)
    registry = rehearsal.cloud.site.registry
    before_scores = _scores(registry, before, settings.out / "models", sets)
    after_scores = _scores(registry, after, settings.out / "models", sets)
    timeline = rehearsal.timeline
    finished = time.time()
    report = LoopReport(
        drift=settings.drift, started=started, finished=finished, minutes=round((finished - started) / 60, 2),
        cpu=cpu.describe(), heldout_photos=len(photos.heldout), before=before_scores, after=after_scores,
        targets_met=targets_met(before_scores, after_scores), outcome=_outcome(rehearsal, before, after),
        turns=rehearsal.turns, steps=rehearsal.steps,
        series=Series(alerts=[a.t for a in timeline.alerts], drift=[(p.t, p.state, p.score) for p in timeline.drift],
                      served=[(s.t, s.sha256) for s in timeline.served]))
    for path in write_report(report, settings.out):
        say(f"wrote {path}")
    return report

