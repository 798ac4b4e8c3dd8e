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
"""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict

from .fleet_store import FleetReader
from .settings import PromotionRule

# the alerts of a window's last frames are still on their way when the window closes
SETTLE_S = 3.0


class Verdict(str, Enum):
    WAIT = "wait"
    PROMOTE = "promote"
    ROLLBACK = "rollback"


class RateCheck(BaseModel):
    model_config = ConfigDict(extra="forbid")

    thing: str
    before: int  # alerts of the previous model in the window before the swap
    after: int  # alerts of the new model in the window after it
    in_band: bool


class Judgement(BaseModel):
    model_config = ConfigDict(extra="forbid")

    verdict: Verdict
    reason: str
    swapped: list[str] = []
    waiting: list[str] = []
    rates: list[RateCheck] = []


def _rate_check(rule: PromotionRule, store: FleetReader, thing: str, since: float) -> RateCheck:
    window = rule.window_minutes * 60
    before = store.alerts(thing, since - window, since)
    after = store.alerts(thing, since, since + window)
    in_band = max(before, after) < rule.min_alerts or rule.min_ratio * before <= after <= rule.max_ratio * before
    return RateCheck(thing=thing, before=before, after=after, in_band=in_band)


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
    rates = [_rate_check(rule, store, t, serving[t].since) for t in things]  # type: ignore[union-attr]
    out = [r for r in rates if not r.in_band]
    if out:
        text = "; ".join(f"{r.thing}: {r.after} alerts in {window / 60:g} min after the swap, {r.before} before "
                         f"(allowed {rule.min_ratio:g}x to {rule.max_ratio:g}x)" for r in out)
        return Judgement(verdict=Verdict.ROLLBACK, swapped=swapped, rates=rates, reason=f"alert rate out of band: {text}")
    return Judgement(verdict=Verdict.PROMOTE, swapped=swapped, rates=rates,
                     reason=f"every device serves {sha256[:12]}, refused nothing and alerts within the band")
