"""Drift: does what a camera sees still look like what its model was trained on?

A model that goes blind (a warmer lamp, a remounted camera) raises no alerts and has no uncertain
detections, so sampling by uncertainty alone never sends the frames that would fix it. This module
compares what each camera sees with the model's own reference profile (in its card):

- **Features** of every frame, cheap enough for every frame on the inference thread (a 96x64
  thumbnail and a half-size grey image): brightness, contrast, sharpness, the blue and red shares
  of the colour, the orientation of edges, the frame's aspect. Also the model's behaviour:
  detections per frame and the top score.
- **Reference** (`DriftReference`, in the card): per feature, 101 quantiles and the standard
  deviation over the model's training images (the image features) and over its own validation
  photos (the behaviour features).
- **Measure**: the Wasserstein-1 distance (earth mover's distance) between the camera's recent
  frames and the reference, per feature, in units of the reference's standard deviation (never
  below the feature's resolution, so a feature that was constant in training still has a scale).
  Chosen over PSI and KL because those compare histogram bins: a line that shows only part of the
  training variety (one product, a stopped conveyor) fills few bins and reads as drift, and a bin
  empty in training makes them blow up. A distance in feature units says how far, not only how
  different: a window of the most extreme training photo is about 2 deviations away; a warm lamp
  moves the blue share by 9.
- **Window**: the last `window_frames` distinct frames per camera (a frame within a few dHash bits
  of the previous one is not counted: a stopped line must not fill the window with one picture).
- **Alarm**: `drifting` when any alarm feature reaches `raise_at`, back to `ok` below `clear_below`
  on all of them (hysteresis, so a border case does not flap).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from device.fingerprint import dhash, hamming

if TYPE_CHECKING:
    from device.detector import Detector

QUANTILES = np.linspace(0.0, 1.0, 101)
THUMBNAIL = (96, 64)  # width, height: colour, brightness, contrast, edge orientation
DUPLICATE_BITS = 3  # dHash distance under which a frame is the previous one again

# feature -> the smallest difference that means something (the floor of its scale)
RESOLUTION: dict[str, float] = {
    "brightness": 2.0,  # grey level, 0-255
    "contrast": 2.0,  # grey standard deviation
    "sharpness": 0.05,  # log(1 + variance of the Laplacian)
    "blue_share": 0.01,  # mean blue / (mean blue + green + red)
    "red_share": 0.01,
    "orientation": 0.01,  # share of vertical gradient in all gradient: text lines, edges
    "aspect": 0.02,  # width / height
    "detections": 0.5,  # per frame, at the alert threshold
    "top_score": 0.05,  # the frame's highest score (0 without a detection)
}
IMAGE_FEATURES = ("brightness", "contrast", "sharpness", "blue_share", "red_share", "orientation", "aspect")
MODEL_FEATURES = ("detections", "top_score")


def image_features(image: np.ndarray) -> dict[str, float]:
    """The image features of one BGR frame."""
    height, width = image.shape[:2]
    colour = image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    small = cv2.resize(colour, THUMBNAIL, interpolation=cv2.INTER_AREA).astype(np.float32)
    means = small.reshape(-1, 3).mean(axis=0)
    total = float(means.sum()) or 1.0
    grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    half = cv2.resize(cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY), (max(1, width // 2), max(1, height // 2)),
                      interpolation=cv2.INTER_AREA)
    across, down = float(np.abs(np.diff(grey, axis=1)).sum()), float(np.abs(np.diff(grey, axis=0)).sum())
    return {
        "brightness": float(grey.mean()),
        "contrast": float(grey.std()),
        "sharpness": float(np.log1p(cv2.Laplacian(half, cv2.CV_32F).var())),
        "blue_share": float(means[0] / total),
        "red_share": float(means[2] / total),
        "orientation": down / (across + down) if across + down else 0.5,
        "aspect": width / height,
    }


def model_features(confidences: Sequence[float], alert_threshold: float) -> dict[str, float]:
    """The model's behaviour on one frame: its detections at the alert threshold, and their top
    score (0 without one). Only scores at the threshold count, so the daemon (which keeps nothing
    below its rules' thresholds) and the reference (made at that threshold) count the same."""
    alerts = [c for c in confidences if c >= alert_threshold]
    return {"detections": float(len(alerts)), "top_score": float(max(alerts, default=0.0))}


class FeatureReference(BaseModel):
    model_config = ConfigDict(extra="forbid")

    quantiles: list[float] = Field(min_length=len(QUANTILES), max_length=len(QUANTILES))
    std: float = Field(ge=0)
    count: int = Field(ge=1)


class DriftReference(BaseModel):
    """What the model was trained on, as the drift monitor compares it (in the model card)."""

    model_config = ConfigDict(extra="forbid")

    made_from: str = Field(description="which images and photos the profile was measured on")
    alert_threshold: float = Field(ge=0, le=1, description="the threshold `detections` was counted at")
    features: dict[str, FeatureReference]


def reference_of(values: Sequence[float]) -> FeatureReference:
    a = np.asarray(values, dtype=np.float64)
    return FeatureReference(quantiles=[round(float(q), 6) for q in np.quantile(a, QUANTILES)],
                            std=round(float(a.std()), 6), count=len(a))


def build_reference(training_images: Iterable[np.ndarray], behaviour: Iterable[Sequence[float]],
                    alert_threshold: float, made_from: str) -> DriftReference:
    """The profile of `training_images` (image features) and of the model's detections on its own
    validation photos (`behaviour`: the confidences of each photo's detections)."""
    columns: dict[str, list[float]] = {name: [] for name in (*IMAGE_FEATURES, *MODEL_FEATURES)}
    for image in training_images:
        for name, value in image_features(image).items():
            columns[name].append(value)
    for confidences in behaviour:
        for name, value in model_features(confidences, alert_threshold).items():
            columns[name].append(value)
    missing = [name for name, values in columns.items() if not values]
    if missing:
        raise ValueError(f"no images to measure {', '.join(missing)} on")
    return DriftReference(made_from=made_from, alert_threshold=alert_threshold,
                          features={name: reference_of(values) for name, values in columns.items()})


def profile_model(detector: Detector, training: Sequence[Path], validation: Sequence[Path], alert_threshold: float,
                  made_from: str) -> DriftReference:
    """The reference of `detector`'s model: image features of the photos it was trained on, and
    its own detections on its validation photos."""
    from device.images import read_image

    images = (read_image(path) for path in training)
    behaviour = ([d.confidence for d in detector.detect(read_image(path), conf=alert_threshold)] for path in validation)
    return build_reference(images, behaviour, alert_threshold, made_from)


def distance(values: Sequence[float], reference: FeatureReference, resolution: float) -> float:
    """Wasserstein-1 between `values` and the reference, in reference standard deviations: the
    mean gap between the two quantile functions, over the reference's spread (at least
    `resolution`)."""
    live = np.quantile(np.asarray(values, dtype=np.float64), QUANTILES)
    gap = float(np.mean(np.abs(live - np.asarray(reference.quantiles))))
    return gap / max(reference.std, resolution)


class DriftSettings(BaseModel):
    """How the monitor decides (the daemon's `drift:` section)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    window_frames: int = Field(60, ge=5, le=100_000, description="distinct frames per camera compared with the reference")
    min_frames: int = Field(20, ge=5, le=100_000, description="no verdict before this many distinct frames")
    raise_at: float = Field(3.0, gt=0, le=1000, description="drifting when a feature is this many reference deviations away")
    clear_below: float = Field(2.0, gt=0, le=1000, description="ok again when every alarm feature is below this")
    alarm_features: list[str] = Field(list(IMAGE_FEATURES), min_length=1,
                                      description="features that raise the alarm; the others are measured and reported")

    @model_validator(mode="after")
    def _consistent(self) -> DriftSettings:
        unknown = sorted(set(self.alarm_features) - set(RESOLUTION))
        if unknown:
            raise ValueError(f"unknown alarm features {unknown}; known: {', '.join(RESOLUTION)}")
        if self.clear_below > self.raise_at:
            raise ValueError(f"clear_below ({self.clear_below}) must not exceed raise_at ({self.raise_at})")
        if self.min_frames > self.window_frames:
            raise ValueError(f"min_frames ({self.min_frames}) cannot exceed window_frames ({self.window_frames})")
        return self


@dataclass
class CameraDrift:
    """One camera's window and verdict."""

    images: deque = field(default_factory=deque)  # feature dicts of distinct frames
    behaviour: deque = field(default_factory=deque)
    last_hash: int | None = None
    state: str = "unknown"  # unknown until min_frames, then ok | drifting
    since: float = 0.0
    measures: dict[str, float] = field(default_factory=dict)
    score: float = 0.0
    worst: str = ""
    judged_with: str = ""  # the reference key of the last verdict


@dataclass(frozen=True)
class Verdict:
    camera: str
    state: str
    since: float
    score: float
    worst: str
    measures: dict[str, float]
    frames: int
    changed: bool
    reference: str  # the key (model sha256) of the reference the frames were compared with


class DriftMonitor:
    """Per camera: the window of distinct frames and the verdict. Owned by the inference thread."""

    def __init__(self, settings: DriftSettings, clock: Callable[[], float] = time.time) -> None:
        self.settings, self.clock = settings, clock
        self.cameras: dict[str, CameraDrift] = {}
        self.reference: DriftReference | None = None
        self._reference_key: str | None = None

    def use(self, reference: DriftReference | None, key: str) -> list[Verdict]:
        """The serving model's reference (`key`: its sha256). A new model behaves differently:
        its behaviour window starts again; the frames seen are still the frames seen, and are
        judged again at once against the new reference. Returns the verdicts that changed."""
        if key == self._reference_key:
            return []
        self.reference, self._reference_key = reference, key
        for cam in self.cameras.values():
            cam.behaviour.clear()
        if reference is None or not self.settings.enabled:
            return []
        verdicts = [self._judge(camera, cam) for camera, cam in list(self.cameras.items())]
        return [v for v in verdicts if v.changed]

    def configure(self, settings: DriftSettings) -> None:
        self.settings = settings

    def drifting(self, camera: str) -> bool:
        cam = self.cameras.get(camera)
        return cam is not None and cam.state == "drifting"

    def observe(self, camera: str, image: np.ndarray, confidences: Sequence[float]) -> Verdict | None:
        """Add one frame; the camera's verdict (None while the monitor is off or has no reference)."""
        if not self.settings.enabled or self.reference is None:
            return None
        cam = self.cameras.setdefault(camera, CameraDrift())
        digest = dhash(image)
        if cam.last_hash is not None and hamming(digest, cam.last_hash) <= DUPLICATE_BITS:
            return self._verdict(camera, cam, changed=False)
        cam.last_hash = digest
        limit = self.settings.window_frames
        cam.images.append(image_features(image))
        cam.behaviour.append(model_features(confidences, self.reference.alert_threshold))
        while len(cam.images) > limit:
            cam.images.popleft()
        while len(cam.behaviour) > limit:
            cam.behaviour.popleft()
        return self._judge(camera, cam)

    def _judge(self, camera: str, cam: CameraDrift) -> Verdict:
        assert self.reference is not None
        if len(cam.images) < self.settings.min_frames:
            return self._verdict(camera, cam, changed=False)
        measures = {}
        for name, ref in self.reference.features.items():
            window = cam.images if name in IMAGE_FEATURES else cam.behaviour
            if len(window) >= self.settings.min_frames:
                measures[name] = round(distance([f[name] for f in window], ref, RESOLUTION.get(name, 1e-6)), 3)
        alarm = {name: value for name, value in measures.items() if name in self.settings.alarm_features}
        cam.measures, cam.judged_with = measures, self._reference_key or ""
        cam.worst = max(alarm, key=alarm.get) if alarm else ""
        cam.score = alarm.get(cam.worst, 0.0)
        if cam.state == "drifting":
            state = "ok" if cam.score < self.settings.clear_below else "drifting"
        else:
            state = "drifting" if cam.score >= self.settings.raise_at else "ok"
        changed = state != cam.state
        if changed:
            cam.state, cam.since = state, self.clock()
        return self._verdict(camera, cam, changed)

    def _verdict(self, camera: str, cam: CameraDrift, changed: bool) -> Verdict:
        return Verdict(camera, cam.state, cam.since, cam.score, cam.worst, dict(cam.measures), len(cam.images), changed,
                       cam.judged_with)

    def verdicts(self) -> list[Verdict]:
        """Every camera's current verdict, once it has one (for the periodic retained message)."""
        return [self._verdict(c, cam, changed=False) for c, cam in self.cameras.items() if cam.state != "unknown"]
