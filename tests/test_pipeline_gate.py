"""The gate (cloud/pipeline/gate.py): floor AND not worse than production by more than the
tolerance, with a reason for every check whichever way it goes."""

from __future__ import annotations

import pytest
from pipeline_helpers import scores

from cloud.pipeline.evaluate import Evaluation, KnownPhotos, Scores
from cloud.pipeline.gate import GateParams, decide


def test_first_model_is_held_to_the_floors_only():
    decision = decide(Evaluation(candidate=scores(0.85, 0.55)), GateParams())
    assert decision.passed and decision.reasons[-1].startswith("no production model")
    refused = decide(Evaluation(candidate=scores(0.79, 0.55)), GateParams())
    assert not refused.passed and "map50 0.7900 < floor 0.8000" in refused.reasons


def compared(candidate: Scores, production: Scores) -> Evaluation:
    """Both models on the test split, and alike on production's own test photos."""
    return Evaluation(candidate=candidate, production=production,
                      production_test=KnownPhotos(candidate=scores(), production=scores()))


def test_worse_than_production_beyond_the_tolerance_is_refused_with_the_reason():
    evaluation = compared(scores(0.92, 0.60), scores(0.94, 0.60))
    decision = decide(evaluation, GateParams(tolerance=0.01))
    assert not decision.passed
    assert "map50 0.9200 < production 0.9400 - tolerance 0.0100" in decision.reasons
    assert decide(evaluation, GateParams(tolerance=0.03)).passed


def test_recall_at_the_alert_threshold_is_gated_too():
    evaluation = compared(scores(recall_at_alert=0.70), scores(recall_at_alert=0.80))
    decision = decide(evaluation, GateParams())
    assert not decision.passed and decision.summary.startswith("gate: recall_at_alert 0.7000 < production")
    assert not decide(Evaluation(candidate=scores(recall_at_alert=0.7)), GateParams(floor_recall_at_alert=0.75)).passed


def test_the_cloud_documents_schemas_are_the_generated_ones_and_validate_what_is_written():
    import json

    import jsonschema

    from cloud.pipeline.report import EvaluationReport
    from cloud.schemas import DOCUMENTS, schema_path, schema_text

    for kind in DOCUMENTS:
        assert schema_path(kind).read_text() == schema_text(kind), f"run: python -m cloud.schemas --write ({kind})"
    evaluation = Evaluation(candidate=scores(0.85, 0.55), production=scores(0.9, 0.6))
    report = EvaluationReport(**evaluation.model_dump(), gate=decide(evaluation, GateParams()))
    schema = json.loads(schema_path("evaluation-report").read_text())
    jsonschema.validate(json.loads(report.model_dump_json()), schema)
    broken = json.loads(report.model_dump_json())
    del broken["gate"]["passed"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_a_candidate_that_forgets_what_production_knew_is_refused_though_it_gains_overall():
    # better on the whole test split (the drifted line's new frames), worse on production's own photos
    evaluation = Evaluation(candidate=scores(0.90), production=scores(0.65),
                            production_test=KnownPhotos(candidate=scores(0.87), production=scores(0.90)))
    decision = decide(evaluation, GateParams())
    assert not decision.passed
    assert decision.summary == ("gate: map50 on production's 27 test images 0.8700 < production 0.9000 - "
                                "forgetting tolerance 0.0200")
    assert decide(evaluation, GateParams(forgetting_tolerance=0.05)).passed
    kept = evaluation.model_copy(update={"production_test": KnownPhotos(candidate=scores(0.885), production=scores(0.90))})
    assert decide(kept, GateParams()).passed


def test_a_candidate_not_compared_on_production_s_photos_is_refused_with_why():
    """Fail closed: the comparison could not be made (the note says why), or an evaluation written
    before the check existed is read back on resume."""
    noted = Evaluation(candidate=scores(0.9), production=scores(0.9),
                       production_test_note="none of production's 7 test photos is in this test split")
    decision = decide(noted, GateParams())
    assert not decision.passed
    assert decision.summary == "gate: forgetting not checked: none of production's 7 test photos is in this test split"
    old = decide(Evaluation(candidate=scores(0.9), production=scores(0.9)), GateParams())
    assert not old.passed and "made before this check existed" in old.summary
    assert decide(Evaluation(candidate=scores(0.9)), GateParams()).passed, "a first model has nothing to forget"
