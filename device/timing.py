"""Timing bare inference: the one loop the benchmark and the quantizer's candidate ranking share."""

from __future__ import annotations

import time

import numpy as np

from device.detector import Detector


def time_inference(detector: Detector, runs: int, frame: np.ndarray | None = None) -> list[float]:
    """Seconds per `session.run` over `runs` calls on one prepared frame, after a warm-up."""
    if frame is None:
        frame = np.full((*detector.info.input_size, 3), 114, np.uint8)
    blob = detector.preprocess(frame)[0]
    for _ in range(max(3, runs // 10)):
        detector.infer(blob)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        detector.infer(blob)
        times.append(time.perf_counter() - started)
    return times
