"""Drifts to rehearse with: a named change a camera applies to every frame it reads
(`cameras[].drift`), so that a plant can see what its loop does when the line changes, before
the line changes. Applied in the camera's thread, before anything else sees the frame.

- `warm-light`: a warmer lamp. B, G, R multiplied by 0.6, 0.85, 1.0 (clipped).
- `rotate90`: the camera remounted a quarter turn clockwise.
- `dim`: a lamp at half power (every channel x0.5).
- `blur`: the lens out of focus (Gaussian blur, sigma 2 px).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import cv2
import numpy as np

DriftName = Literal["warm-light", "rotate90", "dim", "blur"]


def _gain(b: float, g: float, r: float) -> Callable[[np.ndarray], np.ndarray]:
    gains = np.array([b, g, r], dtype=np.float32)

    def apply(image: np.ndarray) -> np.ndarray:
        if image.ndim == 2:
            return np.clip(image.astype(np.float32) * float(gains.mean()), 0, 255).astype(np.uint8)
        return np.clip(image.astype(np.float32) * gains, 0, 255).astype(np.uint8)

    return apply


DRIFTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "warm-light": _gain(0.6, 0.85, 1.0),
    "rotate90": lambda image: cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE),
    "dim": _gain(0.5, 0.5, 0.5),
    "blur": lambda image: cv2.GaussianBlur(image, (0, 0), 2.0),
}


def apply_drift(name: str | None, image: np.ndarray) -> np.ndarray:
    """`image` as the drifted line would show it (unchanged for None)."""
    return image if name is None else DRIFTS[name](image)
