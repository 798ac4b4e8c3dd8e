"""The rule that decides a stage, on what its devices report; it knows no backend.

A stage is promoted when every one of its devices
- reports serving the shipped model (its sha256, from the daemon's `model` / `model_swapped`
  messages),
- has refused nothing since the deployment (no `model_rejected`), and
- (canary only) alerts at a rate within [min_ratio, max_ratio] x the previous model's rate on the
  same device, each measured over `window_minutes`: after the swap for the new model, before it
  for the old one. A model that goes blind or floods the line leaves the band.
It waits while devices have not swapped (up to `swap_timeout_minutes`) or the window has not
passed; any refusal, a timeout, or a rate out of band rolls the stage back.

A rate is judged only on measured windows: the store must have been listening through the window
before the swap and the window after it (`FleetReader.covered`; the on-site rollout measures the
current model first when nobody was). An unmeasured window is never read as "0 alerts". The
window before the swap cannot be measured again: unheard, the stage goes back (`unmeasured`: the
version is not to blame). The new model can: when the first window after the swap was not heard
through (a broker blip), the rule waits for a later whole window on the new model that was, up to
`swap_timeout_minutes` more.
The band, with `min_alerts` as "enough to compare":
- the old model alerted at least `min_alerts` times: the new one must raise [min_ratio, max_ratio]
  times as many, and more than none (a model that goes blind is out, whatever min_ratio says);
- it alerted fewer times (a quiet line, really measured): the new one is in band unless it raises
  at least `min_alerts` and more than max_ratio times the old count (it floods a quiet line), or
  it raises none where the old one raised at least BLIND_FROM (it went blind on a quiet line).
"""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict

from .fleet_store import FleetReader
from .settings import PromotionRule

# the alerts of a window's last frames are still on their way when the window closes
SETTLE_S = 3.0
# a line whose old model alerted this often in a window and whose new one alerts not once went blind:
# at a true rate of 3 per window, a window with none happens by chance with P = e^-3, about 5%
BLIND_FROM = 3


class Verdict(str, Enum):
    WAIT = "wait"
    PROMOTE = "promote"
    ROLLBACK = "rollback"


class RateCheck(BaseModel):
    model_config = ConfigDict(extra="forbid")

    thing: str
    before: int  # alerts of the previous model in the window before the swap
    after: int  # alerts of the new model in the window after it
    measured: bool = True  # someone listened through both windows
    before_measured: bool = True  # through the window before the swap (it cannot be measured again)
    in_band: bool


class Judgement(BaseModel):
    model_config = ConfigDict(extra="forbid")

    verdict: Verdict
    reason: str
    swapped: list[str] = []
    waiting: list[str] = []
    rates: list[RateCheck] = []
    unmeasured: bool = False  # a rollback because the rate could not be measured: not the version's fault


def in_band(rule: PromotionRule, before: int, after: int) -> bool:
    """The band on two measured counts (see the module's docstring)."""
    if before >= rule.min_alerts:
        return after > 0 and rule.min_ratio * before <= after <= rule.max_ratio * before
    if before >= BLIND_FROM and after == 0:
        return False
    return after < rule.min_alerts or after <= rule.max_ratio * before


def _rate_check(rule: PromotionRule, store: FleetReader, thing: str, since: float, heard: float,
                now: float) -> RateCheck:
    """`since`: the swap on the device's clock (alert times are on it too); `heard`: when the
    cloud heard of it (coverage is on the cloud's clock). The window after the swap is the first
    one when it was heard through, else the latest whole window on the new model that was."""
    window = rule.window_minutes * 60
    before = store.alerts(thing, since - window, since)
    before_measured = store.covered(heard - window, heard)
    start = heard  # the after window's start, on the cloud's clock
    after_measured = store.covered(start, start + window)
    if not after_measured:
        start = now - SETTLE_S - window
        after_measured = start >= heard and store.covered(start, start + window)
    offset = start - heard  # from the swap, the same on both clocks
    after = store.alerts(thing, since + offset, since + offset + window)
    measured = before_measured and after_measured
    return RateCheck(thing=thing, before=before, after=after, measured=measured, before_measured=before_measured,
                     in_band=measured and in_band(rule, before, after))


def judge(rule: PromotionRule, store: FleetReader, things: list[str], sha256: str, deployed_at: float, now: float,
          check_rate: bool) -> Judgement:
    """`deployed_at` and `now`: the cloud's clock. Device times are compared only with each other."""
    if not things:
        return Judgement(verdict=Verdict.PROMOTE, reason="no device in this stage")
    for thing in things:
        refused = store.rejections(thing, deployed_at)
        if refused:
            return Judgement(verdict=Verdict.ROLLBACK, reason=f"{thing} refused the model: {refused[-1].detail}")
    serving = {thing: store.serving(thing) for thing in things}
    swapped = [t for t, s in serving.items() if s is not None and s.sha256 == sha256]
    waiting = [t for t in things if t not in swapped]
    if waiting:
        if now - deployed_at > rule.swap_timeout_minutes * 60:
            return Judgement(verdict=Verdict.ROLLBACK, swapped=swapped, waiting=waiting,
                             reason=f"{', '.join(waiting)} did not report the new model within "
                                    f"{rule.swap_timeout_minutes:g} min")
        return Judgement(verdict=Verdict.WAIT, swapped=swapped, waiting=waiting,
                         reason=f"waiting for {', '.join(waiting)} to report {sha256[:12]}")
    if not check_rate:
        return Judgement(verdict=Verdict.PROMOTE, swapped=swapped, reason=f"every device serves {sha256[:12]}")
    window = rule.window_minutes * 60
    heard = max(serving[t].received for t in things)  # type: ignore[union-attr]  # the cloud's clock
    if now - heard < window + SETTLE_S:
        return Judgement(verdict=Verdict.WAIT, swapped=swapped,
                         reason=f"measuring the alert rate: {(window + SETTLE_S - (now - heard)) / 60:.1f} of "
                                f"{window / 60:g} min to go")
    rates = [_rate_check(rule, store, t, serving[t].since, serving[t].received, now)  # type: ignore[union-attr]
             for t in things]
    unheard_before = [r.thing for r in rates if not r.before_measured]
    if unheard_before:
        # the past cannot be measured again: the stage goes back to the model whose rate was known
        return Judgement(verdict=Verdict.ROLLBACK, swapped=swapped, rates=rates, unmeasured=True,
                         reason=f"alert rate not measured: nobody listened to {', '.join(unheard_before)} through the "
                                f"{window / 60:g} min before the swap, so a blind model could not be told from a "
                                "quiet line")
    unheard_after = [r.thing for r in rates if not r.measured]
    if unheard_after:
        if now - heard > window + SETTLE_S + rule.swap_timeout_minutes * 60:
            return Judgement(verdict=Verdict.ROLLBACK, swapped=swapped, rates=rates, unmeasured=True,
                             reason=f"alert rate not measured: no whole {window / 60:g} min on the new model was heard "
                                    f"on {', '.join(unheard_after)} within {rule.swap_timeout_minutes:g} min (is the "
                                    "broker up?)")
        return Judgement(verdict=Verdict.WAIT, swapped=swapped, rates=rates,
                         reason=f"the window after the swap on {', '.join(unheard_after)} was not heard through: "
                                f"measuring the new model over a whole {window / 60:g} min heard without a break")
    out = [r for r in rates if not r.in_band]
    if out:
        text = "; ".join(f"{r.thing}: {r.after} alerts in {window / 60:g} min after the swap, {r.before} before "
                         f"(allowed {rule.min_ratio:g}x to {rule.max_ratio:g}x)" for r in out)
        return Judgement(verdict=Verdict.ROLLBACK, swapped=swapped, rates=rates, reason=f"alert rate out of band: {text}")
    return Judgement(verdict=Verdict.PROMOTE, swapped=swapped, rates=rates,
                     reason=f"every device serves {sha256[:12]}, refused nothing and alerts within the band")
