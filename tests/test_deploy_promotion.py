"""The promotion rule (cloud/deploy/promotion.py) on the messages devices send: each observation
here is made by the device's own message builders (device/messages.py), parsed by the cloud's
parser and stored in the real SQLite fleet store, so the rule is tested on the wire format."""

from __future__ import annotations

import uuid

import pytest

from cloud.deploy.fleet_store import SqliteFleetStore
from cloud.deploy.observations import parse
from cloud.deploy.promotion import SETTLE_S, Verdict, judge
from cloud.deploy.settings import PromotionRule
from device import messages
from device.contracts import DefectEvent, ModelIdentity, StageLatency

PREFIX = "edge-inspect"
OLD = ModelIdentity(name="metal-tags", version="1", sha256="a" * 64)
NEW = ModelIdentity(name="metal-tags", version="2", sha256="b" * 64)
RULE = PromotionRule(window_minutes=10, min_ratio=0.5, max_ratio=2.0, min_alerts=5, swap_timeout_minutes=30)
T0 = 1_800_000_000.0  # the swap, on both clocks
WINDOW = RULE.window_minutes * 60


@pytest.fixture
def store(tmp_path):
    s = SqliteFleetStore(tmp_path / "fleet.sqlite")
    yield s
    s.close()


def send(store, thing: str, outbound, received: float) -> None:
    observation = parse(f"{PREFIX}/{thing}/{outbound.subtopic}", outbound.body, PREFIX, received)
    if observation is not None:
        store.record(observation)


def alert(thing: str, model: ModelIdentity, at: float):
    return messages.event(DefectEvent(
        message_id=uuid.uuid4().hex, thing=thing, camera="cam", event_id=str(uuid.uuid4()), type="new",
        class_name="scratch", class_id=0, score=0.8, top_score=0.8, box=[1, 2, 3, 4], box_norm=[0.1, 0.1, 0.2, 0.2],
        frame_time=messages.utc_iso(at), sent_time=messages.utc_iso(at), frames_seen=3, model=model,
        latency_ms=StageLatency(queue=0, preprocess=1, inference=5, postprocess=1)))


def line(store, thing: str, before: int, after: int | None, swap: bool = True) -> None:
    """A line serving OLD, `before` alerts in the window before T0; then (swap) NEW from T0 with
    `after` alerts in the window after it."""
    send(store, thing, messages.model_serving(thing, OLD, T0 - 2 * WINDOW, None), T0 - 2 * WINDOW)
    for i in range(before):
        send(store, thing, alert(thing, OLD, T0 - WINDOW + (i + 0.5) * WINDOW / before), T0)
    if swap:
        send(store, thing, messages.notice(thing, "model_swapped", "now serving", NEW, "/m.onnx"), T0)
        send(store, thing, messages.model_serving(thing, NEW, T0, OLD), T0)
    for i in range(after or 0):
        send(store, thing, alert(thing, NEW, T0 + (i + 0.5) * WINDOW / after), T0 + WINDOW)


def verdict(store, things, now, deployed_at=T0 - 5, check_rate=True):
    return judge(RULE, store, things, NEW.sha256, deployed_at, now, check_rate)


def test_waits_until_every_device_reports_the_new_model(store):
    line(store, "line-1", 20, 20)
    line(store, "line-2", 20, None, swap=False)
    j = verdict(store, ["line-1", "line-2"], T0 + 60)
    assert j.verdict is Verdict.WAIT and j.waiting == ["line-2"] and j.swapped == ["line-1"]


def test_a_device_that_never_reports_the_new_model_rolls_back_after_the_timeout(store):
    line(store, "line-1", 20, None, swap=False)
    j = verdict(store, ["line-1"], T0 + RULE.swap_timeout_minutes * 60 + 10)
    assert j.verdict is Verdict.ROLLBACK and "did not report the new model" in j.reason


def test_a_refusal_after_the_deployment_rolls_back_at_once(store):
    line(store, "line-1", 20, None, swap=False)
    send(store, "line-1", messages.error("line-1", "model_rejected", "refused: not an ONNX file", OLD, "/m.onnx"), T0)
    j = verdict(store, ["line-1"], T0 + 1)
    assert j.verdict is Verdict.ROLLBACK and "refused the model: refused: not an ONNX file" in j.reason


def test_a_refusal_from_before_the_deployment_does_not_count(store):
    line(store, "line-1", 20, 20)
    send(store, "line-1", messages.error("line-1", "model_rejected", "old news", OLD, "/m.onnx"), T0 - 3600)
    assert verdict(store, ["line-1"], T0 + WINDOW + SETTLE_S + 1).verdict is Verdict.PROMOTE


def test_waits_for_the_window_after_the_swap_then_promotes_a_rate_in_band(store):
    line(store, "line-1", 20, 25)
    assert verdict(store, ["line-1"], T0 + WINDOW / 2).verdict is Verdict.WAIT
    j = verdict(store, ["line-1"], T0 + WINDOW + SETTLE_S + 1)
    assert j.verdict is Verdict.PROMOTE and (j.rates[0].before, j.rates[0].after) == (20, 25)


@pytest.mark.parametrize("after", [0, 9, 41], ids=["blind", "half-blind", "flooding"])
def test_an_alert_rate_out_of_band_rolls_back(store, after):
    line(store, "line-1", 20, after)
    j = verdict(store, ["line-1"], T0 + WINDOW + SETTLE_S + 1)
    assert j.verdict is Verdict.ROLLBACK and "alert rate out of band" in j.reason and f"{after} alerts" in j.reason


def test_too_few_alerts_to_judge_a_rate_by_count_as_in_band(store):
    line(store, "line-1", 3, 0)  # below min_alerts in both windows
    assert verdict(store, ["line-1"], T0 + WINDOW + SETTLE_S + 1).verdict is Verdict.PROMOTE


def test_the_fleet_stage_is_not_judged_on_rate(store):
    line(store, "line-2", 20, 0)
    assert verdict(store, ["line-2"], T0 + 1, check_rate=False).verdict is Verdict.PROMOTE


def test_a_message_that_breaks_the_device_contract_is_dropped(store, caplog):
    assert parse(f"{PREFIX}/line-1/model", b'{"thing": "line-1", "model": {}}', PREFIX, T0) is None
    assert "does not match the device's contract" in caplog.text
    other = messages.model_serving("line-9", NEW, T0, None)
    assert parse(f"{PREFIX}/line-1/model", other.body, PREFIX, T0) is None, "a message about another thing"


def test_the_fleet_view_shows_model_since_and_alert_rate(store):
    line(store, "line-1", 20, 20)
    send(store, "line-1", messages.available(True), T0)
    [row] = store.view(WINDOW)
    assert (row.thing, row.version, row.sha256, row.since, row.online) == ("line-1", "2", NEW.sha256, T0, True)
    assert row.alerts_per_minute == pytest.approx(20 / RULE.window_minutes, rel=0.1)


def test_a_message_heard_twice_is_counted_once(store):
    """`cloud serve` and a rollout may both listen; a retained `model` message comes again on
    every subscribe. Counting either twice would double a rate and roll back a good model."""
    one = alert("line-1", OLD, T0 - 10)
    serving = messages.model_serving("line-1", OLD, T0 - 100, None)
    for _ in range(2):
        send(store, "line-1", one, T0)
        send(store, "line-1", serving, T0)
    assert store.alerts("line-1", T0 - 20, T0) == 1
    assert len([o for o in store._rows("WHERE thing = 'line-1'") if o.kind == "serving"]) == 1
