"""The promotion rule (cloud/deploy/promotion.py) on the messages devices send: each observation
here is made by the device's own message builders (device/messages.py), parsed by the cloud's
parser and stored in the real SQLite fleet store, so the rule is tested on the wire format."""

from __future__ import annotations

import uuid

import pytest

from cloud.deploy.fleet_store import SqliteFleetStore
from cloud.deploy.observations import parse
from cloud.deploy.promotion import BLIND_FROM, SETTLE_S, Verdict, judge
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
    """A store whose watcher listened through every window these tests use."""
    s = SqliteFleetStore(tmp_path / "fleet.sqlite")
    s.listening("watcher", T0 - 3 * WINDOW)
    s.stopped("watcher", T0 + 3 * WINDOW)
    yield s
    s.close()


@pytest.fixture
def unheard(tmp_path):
    """A store that holds messages (an earlier rollout's) but no record of anyone listening now."""
    s = SqliteFleetStore(tmp_path / "unheard.sqlite")
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
    line(store, "line-1", BLIND_FROM - 1, 0)  # below min_alerts in both windows, too few to call the new one blind
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


# -- coverage: a rate is judged only on windows someone listened through ---------------------------

def test_a_window_nobody_listened_to_is_not_read_as_zero_alerts(unheard):
    """Severe 1: history from an earlier rollout, nobody listening before this swap: the old
    rule read "0 before" and promoted a blind model as "too few to judge"."""
    unheard.listening("earlier-rollout", T0 - 10 * WINDOW)
    unheard.stopped("earlier-rollout", T0 - 8 * WINDOW)
    unheard.listening("this-rollout", T0 - 1)  # it subscribed only just before the swap
    unheard.stopped("this-rollout", T0 + 2 * WINDOW)
    line(unheard, "line-1", 0, 0)
    j = verdict(unheard, ["line-1"], T0 + WINDOW + SETTLE_S + 1)
    assert j.verdict is Verdict.ROLLBACK and "not measured" in j.reason and not j.rates[0].measured


def test_a_listener_that_stopped_mid_window_does_not_cover_it(unheard):
    unheard.listening("serve", T0 - 2 * WINDOW)
    unheard.heartbeat("serve", T0 - WINDOW / 2)  # killed outright: no more heartbeats
    unheard.listening("rollout", T0 - 5)
    unheard.stopped("rollout", T0 + 2 * WINDOW)
    assert not unheard.covered(T0 - WINDOW, T0)
    assert unheard.covered(T0 - 2 * WINDOW, T0 - WINDOW / 2)
    # a second listener that took over before the first stopped: one unbroken coverage
    unheard.listening("rollout-2", T0 - WINDOW / 2 - 1)
    unheard.stopped("rollout-2", T0 + 1)
    assert unheard.covered(T0 - 2 * WINDOW, T0 + 2 * WINDOW)


def test_a_blind_model_rolls_back_even_when_min_ratio_allows_zero(store):
    rule = RULE.model_copy(update={"min_ratio": 0.0})
    line(store, "line-1", RULE.min_alerts, 0)
    j = judge(rule, store, ["line-1"], NEW.sha256, T0 - 5, T0 + WINDOW + SETTLE_S + 1, True)
    assert j.verdict is Verdict.ROLLBACK and "0 alerts" in j.reason


def test_a_model_alerting_like_its_predecessor_is_promoted(store):
    line(store, "line-1", 6, 6)
    j = verdict(store, ["line-1"], T0 + WINDOW + SETTLE_S + 1)
    assert j.verdict is Verdict.PROMOTE and (j.rates[0].before, j.rates[0].after, j.rates[0].measured) == (6, 6, True)


@pytest.mark.parametrize(("after", "expected"), [(0, Verdict.PROMOTE), (4, Verdict.PROMOTE), (6, Verdict.ROLLBACK)],
                         ids=["still-quiet", "a-few", "floods-a-quiet-line"])
def test_a_quiet_line_really_measured(store, after, expected):
    line(store, "line-1", 0, after)
    assert verdict(store, ["line-1"], T0 + WINDOW + SETTLE_S + 1).verdict is expected


def test_a_quiet_line_that_goes_silent_rolls_back(store):
    """4 alerts before (under min_alerts), none after: read as "too few to judge" it was promoted;
    at a true rate of 4 per window, a window with none is a 2% chance."""
    line(store, "line-1", 4, 0)
    j = verdict(store, ["line-1"], T0 + WINDOW + SETTLE_S + 1)
    assert j.verdict is Verdict.ROLLBACK and "0 alerts" in j.reason and not j.unmeasured


def test_min_alerts_of_zero_is_refused():
    with pytest.raises(ValueError, match="min_alerts"):
        PromotionRule(min_alerts=0)


def test_a_blip_after_the_swap_waits_for_a_later_whole_window_on_the_new_model(unheard):
    unheard.listening("rollout", T0 - 2 * WINDOW)
    unheard.stopped("rollout", T0 + WINDOW / 2)  # the broker went away mid-window
    unheard.listening("rollout-2", T0 + WINDOW / 2 + 30)
    line(unheard, "line-1", 6, 0)
    for i in range(6):  # the new model alerts like the old one, also after the blip
        send(unheard, "line-1", alert("line-1", NEW, T0 + WINDOW + 60 + i * 40), T0 + WINDOW + 60 + i * 40)
    j = verdict(unheard, ["line-1"], T0 + WINDOW + SETTLE_S + 1)
    assert j.verdict is Verdict.WAIT and "not heard through" in j.reason, "the new model can be measured again"
    unheard.heartbeat("rollout-2", T0 + 2 * WINDOW)
    later = T0 + WINDOW / 2 + 30 + WINDOW + SETTLE_S + 1
    j = verdict(unheard, ["line-1"], later)
    assert j.verdict is Verdict.PROMOTE and j.rates[0].after == 6, j.reason


def test_no_whole_window_after_the_swap_within_the_timeout_rolls_back_unmeasured(unheard):
    unheard.listening("rollout", T0 - 2 * WINDOW)
    unheard.stopped("rollout", T0 + WINDOW / 2)
    line(unheard, "line-1", 6, 6)
    j = verdict(unheard, ["line-1"], T0 + WINDOW + SETTLE_S + RULE.swap_timeout_minutes * 60 + 2)
    assert j.verdict is Verdict.ROLLBACK and j.unmeasured and "not measured" in j.reason


def test_an_unheard_window_before_the_swap_rolls_back_without_blaming_the_version(unheard):
    unheard.listening("rollout", T0 - 1)
    unheard.stopped("rollout", T0 + 3 * WINDOW)
    line(unheard, "line-1", 0, 0)
    j = verdict(unheard, ["line-1"], T0 + WINDOW + SETTLE_S + 1)
    assert j.verdict is Verdict.ROLLBACK and j.unmeasured and "before the swap" in j.reason
