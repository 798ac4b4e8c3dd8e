"""The rehearsal's report: `report.json` (the model below; its JSON Schema is generated from it),
`report.md` for people, `report.png` (alerts per minute, the drift measure, and the mAP of the
model serving, over time)."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

DRIFTED_MAP50_TARGET = 0.85  # after one turn, on held-out drifted photos
UNDRIFTED_DROP_LIMIT = 0.02  # and at most this far below the model before, on held-out undrifted photos


class Step(BaseModel):
    model_config = ConfigDict(extra="forbid")

    t: float
    what: str


class TurnRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    turn: int
    started: float
    labels: int = Field(0, description="new approved labels when the turn ended (its run's dataset says how many "
                                       "it used)")
    run_id: str | None = None
    run_state: str | None = None
    reason: str | None = None
    version: str | None = None
    rollout: str | None = None
    drift_after: str | None = None
    drift_score_after: float | None = None
    outcome: str = ""


class ModelScores(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str
    sha256: str
    onnx: str = Field(description="the model's ONNX file, as the registry keeps it")
    undrifted: dict[str, float]
    drifted: dict[str, float]


class Series(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alerts: list[float] = Field(description="times of `new` defect events")
    drift: list[tuple[float, str, float]] = Field(description="(time, state, score) of each drift message")
    served: list[tuple[float, str]] = Field(description="(time, sha256) of each model message")


class LoopReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    drift: str
    started: float
    finished: float
    minutes: float
    cpu: str
    heldout_photos: int
    before: ModelScores
    after: ModelScores
    drifted_map50_target: float = DRIFTED_MAP50_TARGET
    undrifted_drop_limit: float = UNDRIFTED_DROP_LIMIT
    targets_met: bool
    outcome: str
    turns: list[TurnRecord]
    steps: list[Step]
    series: Series


def targets_met(before: ModelScores, after: ModelScores) -> bool:
    return (after.drifted["map50"] >= DRIFTED_MAP50_TARGET
            and after.undrifted["map50"] >= before.undrifted["map50"] - UNDRIFTED_DROP_LIMIT)


def markdown(report: LoopReport) -> str:
    b, a = report.before, report.after
    lines = [
        f"# Closed loop rehearsal: {report.drift}",
        "",
        f"{report.outcome}. {report.minutes:.1f} minutes on {report.cpu}.",
        "",
        f"| model | version | held-out mAP50 (mAP50-95), undrifted | drifted ({report.drift}) | ONNX |",
        "|---|---|---|---|---|",
        f"| before | v{b.version} | {b.undrifted['map50']:.4f} ({b.undrifted['map50_95']:.4f}) | "
        f"{b.drifted['map50']:.4f} ({b.drifted['map50_95']:.4f}) | `{b.onnx}` |",
        f"| after | v{a.version} | {a.undrifted['map50']:.4f} ({a.undrifted['map50_95']:.4f}) | "
        f"{a.drifted['map50']:.4f} ({a.drifted['map50_95']:.4f}) | `{a.onnx}` |",
        "",
        f"Targets: drifted mAP50 >= {report.drifted_map50_target}, undrifted no more than "
        f"{report.undrifted_drop_limit:.2f} below before: **{'met' if report.targets_met else 'not met'}** "
        f"({report.heldout_photos} held-out photos the line never showed).",
        "",
        "| turn | labels | run | version | rollout | drift after | outcome |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in report.turns:
        after = f"{t.drift_after} ({t.drift_score_after:.2f})" if t.drift_after else "-"
        lines.append(f"| {t.turn} | {t.labels} | {t.run_id or '-'} {t.run_state or ''} | {t.version or '-'} | "
                     f"{t.rollout or '-'} | {after} | {t.outcome} |")
    lines += ["", "## Steps", ""]
    lines += [f"- {(s.t - report.started) / 60:5.1f} min: {s.what}" for s in report.steps]
    lines += ["", "![the loop](report.png)", ""]
    return "\n".join(lines)


def plot(report: LoopReport, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = report.started
    minutes = lambda t: (t - t0) / 60  # noqa: E731
    fig, (ax_alerts, ax_drift, ax_map) = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    span = max(1.0, report.minutes)
    edges = [i * 0.5 for i in range(int(span / 0.5) + 2)]
    ax_alerts.hist([minutes(t) for t in report.series.alerts], bins=edges, color="tab:red")
    ax_alerts.set_ylabel("alerts / 30 s")
    drift = report.series.drift
    ax_drift.plot([minutes(t) for t, _, _ in drift], [s for _, _, s in drift], ".-", color="tab:orange")
    ax_drift.axhline(3.0, ls="--", color="grey", lw=0.8)
    ax_drift.set_ylabel("drift score\n(reference sd)")
    ax_drift.set_yscale("symlog", linthresh=1)
    scores = {report.before.sha256: report.before, report.after.sha256: report.after}
    served = [(minutes(t), sha) for t, sha in report.series.served if sha in scores]
    if served:
        xs = [x for x, _ in served] + [span]
        for name, colour in (("undrifted", "tab:blue"), ("drifted", "tab:purple")):
            ys = [scores[v].model_dump()[name]["map50"] for _, v in served]
            ax_map.step(xs, ys + ys[-1:], where="post", color=colour, label=f"held-out {name}")
    ax_map.axhline(report.drifted_map50_target, ls="--", color="grey", lw=0.8)
    ax_map.set_ylabel("mAP50 of the\nmodel serving")
    ax_map.set_ylim(0, 1)
    ax_map.legend(loc="lower right")
    ax_map.set_xlabel("minutes")
    for s in report.steps:
        for ax in (ax_alerts, ax_drift, ax_map):
            ax.axvline(minutes(s.t), color="lightgrey", lw=0.5, zorder=0)
    fig.suptitle(f"edge-inspect loop --drift {report.drift}: {report.outcome}")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_report(report: LoopReport, folder: Path) -> list[Path]:
    paths = [folder / "report.json", folder / "report.md", folder / "report.png"]
    paths[0].write_text(json.dumps(report.model_dump(mode="json"), indent=2) + "\n")
    paths[1].write_text(markdown(report))
    plot(report, paths[2])
    return paths
