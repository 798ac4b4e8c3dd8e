"""Active learning: which frames are worth labelling.

Strategies are evaluated in order; a frame is sampled when at least one strategy selects it and
both that strategy's and the overall rate limits allow it. Every strategy that selected (and was
allowed) is named in the sample, with the union of their tags. A frame with no detection is never
"uncertain" by itself: only `random` (or a `detection_count` strategy with `min_detections: 0`)
picks such frames. Near-duplicates of a recent sample from the same camera are suppressed by
perceptual hash (dHash) distance, so a stopped line does not fill the spool with one picture.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from device.config import ActiveLearningConfig, RateLimits, StrategyConfig
from device.detector import Detection
from device.fingerprint import dhash, hamming

__all__ = ["RateLimiter", "SampleDecision", "Sampler", "dhash", "hamming", "strategy_selects"]

WINDOWS = (("per_minute", 60.0), ("per_hour", 3600.0), ("per_day", 86400.0))


@dataclass(frozen=True)
class SampleDecision:
    strategies: tuple[str, ...]
    tags: tuple[str, ...]


class RateLimiter:
    """Sliding-window limits over minute, hour and day, on an injectable clock."""

    def __init__(self, limits: RateLimits) -> None:
        self.limits = limits
        self._times: deque[float] = deque()

    def allows(self, now: float) -> bool:
        while self._times and now - self._times[0] >= 86400.0:
            self._times.popleft()
        for field, span in WINDOWS:
            limit = getattr(self.limits, field)
            if limit is not None and sum(1 for t in self._times if now - t < span) >= limit:
                return False
        return True

    def record(self, now: float) -> None:
        self._times.append(now)


def _relevant(dets: Sequence[Detection], classes: list[str] | None) -> list[Detection]:
    return [d for d in dets if classes is None or d.class_name in classes]


def strategy_selects(strategy: StrategyConfig, dets: Sequence[Detection], default_threshold: float,
                     draw: Callable[[], float], drifting: bool = False) -> bool:
    """Whether one strategy wants this frame (limits aside). `draw` gives uniform [0, 100);
    `drifting`: the frame's camera has its drift alarm up."""
    kind = strategy.type
    if kind == "drift":
        return drifting and draw() < strategy.percent
    if kind == "close_to_threshold":
        threshold = default_threshold if strategy.threshold is None else strategy.threshold
        near = [d for d in _relevant(dets, strategy.classes) if abs(d.confidence - threshold) <= strategy.epsilon]
        return len(near) >= strategy.min_count
    if kind == "uncertainty_band":
        band = [d for d in _relevant(dets, strategy.classes) if strategy.low <= d.confidence < strategy.high]
        return len(band) >= strategy.min_count
    if kind == "random":
        return draw() < strategy.percent
    if kind == "per_class":
        present = {d.class_name for d in dets}
        return any(draw() < pct for cls, pct in strategy.class_percent.items() if cls in present)
    if kind == "detection_count":
        count = sum(1 for d in dets if d.confidence >= strategy.low)
        return count >= strategy.min_detections and (strategy.max_detections is None or count <= strategy.max_detections)
    raise ValueError(f"unknown strategy type {kind}")


class Sampler:
    """Decides per frame; keeps rate-limit and near-duplicate state. Not thread-safe: the
    inference stage owns it. `clock` and `rng` are injectable so tests can simulate days."""

    def __init__(self, config: ActiveLearningConfig, default_threshold: float,
                 clock: Callable[[], float] = time.time, rng: random.Random | None = None) -> None:
        self.clock, self.rng = clock, rng or random.Random()
        self.default_threshold = default_threshold
        self.suppressed_duplicates = 0
        self.rate_limited = 0
        self._recent: dict[str, deque[int]] = {}
        self.configure(config)

    def configure(self, config: ActiveLearningConfig) -> None:
        """A live update: limiters whose limits did not change keep their history."""
        old = getattr(self, "_limiters", {})
        self.config = config
        self._overall = (self._overall if getattr(self, "_overall", None) and self._overall.limits == config.limits
                         else RateLimiter(config.limits))
        self._limiters = {
            s.name: old[s.name] if s.name in old and old[s.name].limits == s.limits else RateLimiter(s.limits)
            for s in config.strategies
        }

    def decide(self, camera: str, image: np.ndarray, dets: Sequence[Detection],
               drifting: bool = False) -> SampleDecision | None:
        if not self.config.enabled or not self.config.strategies:
            return None
        now = self.clock()
        selected = [s for s in self.config.strategies
                    if strategy_selects(s, dets, self.default_threshold, lambda: self.rng.random() * 100, drifting)]
        if not selected:
            return None
        allowed = [s for s in selected if self._limiters[s.name].allows(now)]
        if not allowed or not self._overall.allows(now):
            self.rate_limited += 1
            return None
        if self.config.dedup.enabled and self._is_duplicate(camera, image):
            self.suppressed_duplicates += 1
            return None
        self._overall.record(now)
        for s in allowed:
            self._limiters[s.name].record(now)
        tags = tuple(dict.fromkeys(t for s in allowed for t in s.tags))
        return SampleDecision(tuple(s.name for s in allowed), tags)

    def _is_duplicate(self, camera: str, image: np.ndarray) -> bool:
        recent = self._recent.setdefault(camera, deque(maxlen=self.config.dedup.remember))
        digest = dhash(image)
        if any(hamming(digest, seen) <= self.config.dedup.max_distance for seen in recent):
            return True
        recent.append(digest)
        return False
