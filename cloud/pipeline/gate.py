"""Step 4, gate: the candidate goes to a person for approval only when it clears an absolute floor
AND is not worse than production by more than a tolerance, on the same test photos, AND has not
forgotten: on production's own test photos it may not fall more than `forgetting_tolerance` below
production (see cloud.pipeline.evaluate). Pure: the decision and its reasons are data, written
into the card whichever way it goes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from cloud.pipeline.evaluate import Evaluation

METRICS = ("map50", "map50_95", "recall_at_alert")
FORGETTING_METRICS = ("map50",)  # the accuracy the plant relied on; mAP50-95 is box tightness


class GateParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    floor_map50: float = Field(0.80, ge=0, le=1)
    floor_map50_95: float = Field(0.50, ge=0, le=1)
    floor_recall_at_alert: float = Field(0.0, ge=0, le=1, description="share of scratches the line alerts on")
    tolerance: float = Field(0.01, ge=0, le=1, description="how much below production a metric may be")
    alert_conf: float = Field(0.5, gt=0, lt=1, description="the daemon's alert threshold (model.conf)")
    # wider than `tolerance`: production's test photos are a few dozen (27 for the bundled model),
    # where one box moves mAP50 by about 2 points
    forgetting_tolerance: float = Field(0.02, ge=0, le=1, description="how much below production a metric may be on "
                                                                      "production's own test photos")

    def floor(self, metric: str) -> float:
        return getattr(self, f"floor_{metric}")


class GateDecision(BaseModel):
    model_config = ConfigDict(extra="forbid")

    passed: bool
    reasons: list[str]  # one line per check, passed or not
    summary: str  # one line: the failed checks, or that all passed (the SageMaker FailStep's message)


def decide(evaluation: Evaluation, params: GateParams) -> GateDecision:
    candidate, production = evaluation.candidate, evaluation.production
    reasons, failed = [], []

    def check(ok: bool, reason: str) -> None:
        reasons.append(reason)
        if not ok:
            failed.append(reason)

    for metric in METRICS:
        value = getattr(candidate, metric)
        ok = value >= params.floor(metric)
        check(ok, f"{metric} {value:.4f} {'>=' if ok else '<'} floor {params.floor(metric):.4f}")
        if production is not None:
            bar = getattr(production, metric) - params.tolerance
            ok = value >= bar - 1e-12
            check(ok, f"{metric} {value:.4f} {'>=' if ok else '<'} production {getattr(production, metric):.4f}"
                      f" - tolerance {params.tolerance:.4f}")
    if production is None:
        reasons.append("no production model: compared with the floors only")
        return _decision(reasons, failed)
    known = evaluation.production_test
    if known is None:
        # fail closed: a candidate nobody could compare on what production knew is not shown to be safe
        why = evaluation.production_test_note or "the evaluation was made before this check existed"
        check(False, f"forgetting not checked: {why}")
        return _decision(reasons, failed)
    for metric in FORGETTING_METRICS:
        value, before = getattr(known.candidate, metric), getattr(known.production, metric)
        ok = value >= before - params.forgetting_tolerance - 1e-12
        check(ok, f"{metric} on production's {known.candidate.images} test images {value:.4f} "
                  f"{'>=' if ok else '<'} production {before:.4f} - forgetting tolerance "
                  f"{params.forgetting_tolerance:.4f}")
    return _decision(reasons, failed)


def _decision(reasons: list[str], failed: list[str]) -> GateDecision:
    summary = "gate: " + ("; ".join(failed) if failed else f"all {len(reasons)} checks passed")
    return GateDecision(passed=not failed, reasons=reasons, summary=summary)
