"""Sampling strategies pick the right frames; limits hold over simulated minutes, hours, days."""

from __future__ import annotations

import random

import numpy as np
import pytest

from device.config import ActiveLearningConfig
from device.detector import Detection
from device.sampler import Sampler, dhash, hamming


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def det(conf: float, cls: str = "scratch", box=(10, 10, 50, 50)) -> Detection:
    return Detection(0 if cls == "scratch" else 1, cls, conf, box)


def frames(n: int, seed: int = 0):
    """Distinct random images, so near-duplicate suppression stays out of the way."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(n)]


def sampler(strategies, clock=None, limits=None, dedup=False, seed=0) -> Sampler:
    config = ActiveLearningConfig(enabled=True, upload={"enabled": False}, strategies=strategies,
                                  limits=limits or {}, dedup={"enabled": dedup})
    return Sampler(config, default_threshold=0.5, clock=clock or Clock(), rng=random.Random(seed))


IMG = frames(1)[0]


def test_close_to_threshold_picks_borderline_scores_only():
    s = sampler([{"name": "near", "type": "close_to_threshold", "epsilon": 0.1, "tags": ["borderline"]}])
    assert s.decide("c", IMG, [det(0.45)]).strategies == ("near",)
    assert s.decide("c", IMG, [det(0.58)]).tags == ("borderline",)
    assert s.decide("c", IMG, [det(0.9)]) is None  # confident: not worth labelling
    assert s.decide("c", IMG, [det(0.2)]) is None
    assert s.decide("c", IMG, []) is None, "no detection is not uncertainty"


def test_close_to_threshold_min_count_classes_and_own_threshold():
    s = sampler([{"name": "near", "type": "close_to_threshold", "threshold": 0.3, "epsilon": 0.05,
                  "min_count": 2, "classes": ["scratch"]}])
    assert s.decide("c", IMG, [det(0.31)]) is None
    assert s.decide("c", IMG, [det(0.31), det(0.29, "dent")]) is None
    assert s.decide("c", IMG, [det(0.31), det(0.28)]) is not None


def test_uncertainty_band_is_half_open():
    s = sampler([{"name": "band", "type": "uncertainty_band", "low": 0.25, "high": 0.5}])
    assert s.decide("c", IMG, [det(0.25)]) is not None
    assert s.decide("c", IMG, [det(0.49)]) is not None
    assert s.decide("c", IMG, [det(0.5)]) is None
    assert s.decide("c", IMG, [det(0.1)]) is None


def test_random_takes_about_its_percentage_including_empty_frames():
    s = sampler([{"name": "rnd", "type": "random", "percent": 10}])
    taken = sum(s.decide("c", IMG, []) is not None for _ in range(5000))
    assert 400 < taken < 600


def test_per_class_only_when_the_class_is_present():
    s = sampler([{"name": "pc", "type": "per_class", "class_percent": {"dent": 100, "scratch": 0}}])
    assert s.decide("c", IMG, [det(0.9, "scratch")]) is None
    assert s.decide("c", IMG, [det(0.9, "dent")]) is not None


def test_detection_count_range():
    s = sampler([{"name": "busy", "type": "detection_count", "min_detections": 3, "max_detections": 4, "low": 0.3}])
    assert s.decide("c", IMG, [det(0.9)] * 2) is None
    assert s.decide("c", IMG, [det(0.9)] * 3 + [det(0.1)]) is not None
    assert s.decide("c", IMG, [det(0.9)] * 5) is None


def test_strategies_combine_names_and_tags_in_order():
    s = sampler([
        {"name": "near", "type": "close_to_threshold", "epsilon": 0.1, "tags": ["borderline", "review"]},
        {"name": "band", "type": "uncertainty_band", "low": 0.4, "high": 0.6, "tags": ["review", "band"]},
    ])
    decision = s.decide("c", IMG, [det(0.45)])
    assert decision.strategies == ("near", "band") and decision.tags == ("borderline", "review", "band")


def test_strategy_limits_over_a_simulated_day():
    clock = Clock()
    s = sampler([{"name": "rnd", "type": "random", "percent": 100,
                  "limits": {"per_minute": 2, "per_hour": 10, "per_day": 30}}], clock=clock)
    per_minute = []
    for minute in range(24 * 60):  # one frame every 6 s for a day
        taken = 0
        for tick in range(10):
            clock.now = 1_700_000_000.0 + minute * 60 + tick * 6
            taken += s.decide("c", IMG, []) is not None
        per_minute.append(taken)
    assert max(per_minute) <= 2
    hours = [sum(per_minute[h * 60:(h + 1) * 60]) for h in range(24)]
    assert max(hours) <= 10 and sum(per_minute) == 30
    assert hours[:3] == [10, 10, 10] and sum(hours[3:]) == 0, "the day's budget is spent, then nothing"
    clock.now += 86400
    assert s.decide("c", IMG, []) is not None, "a new day, a new budget"


def test_overall_limit_caps_all_strategies_together():
    clock = Clock()
    s = sampler([{"name": "a", "type": "random", "percent": 100}, {"name": "b", "type": "random", "percent": 100}],
                clock=clock, limits={"per_minute": 5})
    taken = 0
    for _ in range(120):
        clock.now += 1
        taken += s.decide("c", IMG, []) is not None
    assert taken == 10 and s.rate_limited == 110  # 5 per minute over two minutes


def test_near_duplicates_suppressed_per_camera():
    s = sampler([{"name": "rnd", "type": "random", "percent": 100}], dedup=True)
    a, b = frames(2, seed=3)
    noisy = np.clip(a.astype(int) + np.random.default_rng(1).integers(-3, 4, a.shape), 0, 255).astype(np.uint8)
    assert s.decide("c1", a, []) is not None
    assert s.decide("c1", noisy, []) is None and s.suppressed_duplicates == 1
    assert s.decide("c2", noisy, []) is not None, "another camera's frames are compared separately"
    assert s.decide("c1", b, []) is not None


def test_dhash_distance():
    a, b = frames(2, seed=5)
    assert hamming(dhash(a), dhash(a)) == 0
    assert hamming(dhash(a), dhash(b)) > 10


def test_live_reconfigure_keeps_history_of_unchanged_limits():
    clock = Clock()
    strategies = [{"name": "rnd", "type": "random", "percent": 100, "limits": {"per_hour": 3}}]
    s = sampler(strategies, clock=clock)
    for _ in range(5):
        clock.now += 1
        s.decide("c", IMG, [])
    s.configure(ActiveLearningConfig(enabled=True, upload={"enabled": False}, strategies=strategies,
                                     dedup={"enabled": False}, limits={}))
    clock.now += 1
    assert s.decide("c", IMG, []) is None, "the hour's budget was already spent"


@pytest.mark.parametrize("bad,message", [
    ({"name": "b", "type": "uncertainty_band", "low": 0.6, "high": 0.5}, "low"),
    ({"name": "p", "type": "per_class"}, "class_percent"),
    ({"name": "x", "type": "nope"}, "type"),
])
def test_bad_strategies_are_named(bad, message):
    from device.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=f"active_learning.strategies.0.*{message}"):
        parse_config({"cameras": [{"id": "c", "source": 0}],
                      "active_learning": {"enabled": True, "upload": {"enabled": False}, "strategies": [bad]}})
