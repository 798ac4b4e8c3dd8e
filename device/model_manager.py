"""Model hot swap. A watcher notices a new model file (a watched path, or the Greengrass model
component's artifact after a deployment), loads and checks it in the background, and offers it to
the inference stage, which swaps at a frame boundary. A model that fails the check is refused and
the old one keeps serving; either way an operational message says what happened."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from device import cpu
from device.contracts import ModelIdentity
from device.detector import Detector, ModelError
from device.drift import DriftReference
from device.model_card import ModelCard, card_path_for
from device.runtimes import RuntimeSettings, model_files
from device.self_test import SelfTestResult, run_self_test

log = logging.getLogger(__name__)


def model_identity(detector: Detector) -> ModelIdentity:
    """Name, version and sha256 of a loaded model, as every event and stats message carries it.
    The version is the model card's `version` (set by the registry) when there is one, else the
    card's creation time, else the first 12 hex digits of the sha256."""
    info = detector.info
    version = info.sha256[:12]
    card_file = card_path_for(info.path)
    if card_file.is_file():
        try:
            card = ModelCard.read(card_file)
            version = str(getattr(card, "version", None) or card.created or version)
        except (ValueError, OSError):
            log.warning("model card %s unreadable; version from the sha256", card_file)
    return ModelIdentity(name=info.name, version=version, sha256=info.sha256)


def check_candidate(detector: Detector, reference: np.ndarray | None) -> None:
    """A model must run on a real frame (or a grey one before any frame) and give finite output:
    a model whose scores are NaN would otherwise be served and never raise an alert."""
    frame = reference if reference is not None else np.full((480, 640, 3), 114, np.uint8)
    blob, _ = detector.preprocess(frame)
    output = detector.infer(blob)
    if not np.isfinite(output).all():
        bad = int((~np.isfinite(output)).sum())
        raise ModelError(f"{detector.info.path} gives non-finite output (NaN or inf in {bad} of {output.size} "
                         "values) on a test frame")


class SelfTestFailed(ModelError):
    """The model runs, but does not see on this machine what its FP32 reference saw."""


def self_test(detector: Detector) -> SelfTestResult | None:
    """Run the reference frames of the model's card, if it has them; raise SelfTestFailed."""
    card_file = card_path_for(detector.info.path)
    if not card_file.is_file():
        return None
    try:
        card = ModelCard.read(card_file)
    except (ValueError, OSError) as exc:
        raise ModelError(f"{card_file.name} is not a readable model card: {str(exc).splitlines()[0]}") from None
    if card.self_test is None:
        return None
    try:
        result = run_self_test(detector, card.self_test)
    except ValueError as exc:  # a damaged reference frame
        raise ModelError(f"{detector.info.path.name}: self-test cannot run: {exc}") from None
    if not result.passed:
        raise SelfTestFailed(f"{detector.info.path.name} failed its self-test on this CPU ({cpu.describe()}): "
                             f"{result.summary()}")
    log.info("model %s passed its self-test on this CPU: %s", detector.info.path.name, result.summary())
    return result


def load_checked(path: Path, settings: RuntimeSettings | None = None) -> Detector:
    """Load a model, check it runs, and run its self-test: what start-up, `--check-config`,
    `detect` and a hot swap all do. Default settings: ONNX Runtime on the CPU."""
    s = settings or RuntimeSettings()
    detector = Detector(path, runtime=s.runtime, providers=s.providers, session_options=s.session_options,
                        threads=s.threads)
    check_candidate(detector, None)
    self_test(detector)
    return detector


def drift_reference_of(detector: Detector) -> DriftReference | None:
    """The reference profile in the model's card (None without a card or a profile: the drift
    monitor then has nothing to compare with, and says so once)."""
    card_file = card_path_for(detector.info.path)
    try:
        return ModelCard.read(card_file).drift_reference if card_file.is_file() else None
    except (ValueError, OSError):
        return None


class ModelManager:
    """Holds the serving detector; swaps only when the inference stage calls `take_pending`."""

    def __init__(self, path: Path, settings_for: Callable[[Path], RuntimeSettings],
                 on_message: Callable[[str, str, str], None], loaded: Detector | None = None) -> None:
        """`settings_for`: the runtime settings for a model file, made anew for each load (an ONNX
        Runtime SessionOptions is single-use). `loaded`: the model at `path`, already loaded and
        checked (by the start-up checks)."""
        self.path = Path(path)
        self._settings_for = settings_for
        self._on_message = on_message  # (type, message, candidate path)
        self.detector = loaded or self._load(self.path)
        self.identity = model_identity(self.detector)
        self.drift_reference = drift_reference_of(self.detector)
        self._pending: Detector | None = None
        self._pending_reference: DriftReference | None = None
        self._lock = threading.Lock()
        self._fingerprint = self._seen = self._stat()
        self.reference_frame: np.ndarray | None = None
        self.swaps = 0
        self.rejections = 0
        self.previous: ModelIdentity | None = None  # what the last swap replaced

    def _load(self, path: Path) -> Detector:
        return load_checked(path, self._settings_for(path))

    def _stat(self) -> tuple[tuple[int, int], ...] | None:
        """(mtime, size) of each of the model's files (an IR: the .xml and the .bin)."""
        try:
            stats = [f.stat() for f in model_files(self.path)]
        except OSError:
            return None
        return tuple((s.st_mtime_ns, s.st_size) for s in stats)

    def poll(self) -> None:
        """Called by the watcher thread: load and check a changed model."""
        fingerprint, seen = self._stat(), self._seen
        self._seen = fingerprint
        if fingerprint is None or fingerprint == self._fingerprint:
            return
        if len(fingerprint) > 1 and fingerprint != seen:
            # An IR is two files, replaced one after the other (no rename makes both appear at
            # once): wait until neither has changed for one interval, rather than load a new .xml
            # with the old .bin and refuse it.
            return
        self._fingerprint = fingerprint
        self.offer(self.path)

    def offer(self, candidate_path: Path) -> bool:
        try:
            candidate = self._load(candidate_path)
            check_candidate(candidate, self.reference_frame)  # and on the line's own last frame
            if candidate.info.sha256 == self.detector.info.sha256:
                return False
        except Exception as exc:  # any failure to load or run: refuse, keep serving
            self.rejections += 1
            log.error("model %s refused, keeping %s: %s", candidate_path, self.identity.name, exc)
            self._on_message("model_rejected", f"refused: {exc}", str(candidate_path))
            return False
        reference = drift_reference_of(candidate)  # read here, off the inference thread
        with self._lock:
            self._pending, self._pending_reference = candidate, reference
        log.info("model %s checked; swapping at the next frame", candidate_path)
        return True

    def take_pending(self) -> bool:
        """At a frame boundary: swap in a checked model if one waits. True if swapped."""
        with self._lock:
            candidate, self._pending = self._pending, None
            reference = self._pending_reference
        if candidate is None:
            return False
        old = self.previous = self.identity
        self.detector, self.identity = candidate, model_identity(candidate)
        self.drift_reference = reference
        self.swaps += 1
        self._on_message("model_swapped", f"now serving {self.identity.name} {self.identity.sha256[:12]} "
                         f"(was {old.sha256[:12]})", str(candidate.info.path))
        return True
