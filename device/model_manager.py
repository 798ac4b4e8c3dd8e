"""Model hot swap. A watcher notices a new model file (a watched path, or the Greengrass model
component's artifact after a deployment), loads and checks it in the background, and offers it to
the inference stage, which swaps at a frame boundary. A model that fails the check is refused and
the old one keeps serving; either way an operational message says what happened. The check starts
with custody (device/custody.py): a model that is not the file its card names, or not signed as
`model.public_key` requires, is refused before it is loaded.

The file checked is the file loaded: each load copies the model and its card into a private
folder first (device/model_snapshot.py), checks custody on that copy, loads that copy, and takes
everything it needs from the card (version, self-test, drift reference) from the one card custody
parsed and checked. Messages name the configured path, never the private copy.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from pathlib import Path

import numpy as np

from device import cpu
from device.contracts import ModelIdentity
from device.custody import MAX_CARD_BYTES, Custody, ModelRefused, check_custody
from device.detector import Detector, ModelError
from device.drift import DriftReference
from device.model_card import ModelCard, card_path_for
from device.model_snapshot import Snapshot, take_snapshot
from device.runtimes import RuntimeSettings, model_files
from device.self_test import SelfTestResult, run_self_test
from device.signing import TrustedKeys

log = logging.getLogger(__name__)

MODEL_SNAPSHOTS = "models"  # the folder under state_dir that holds the private copies of served models


class CheckedDetector(Detector):
    """A Detector loaded by `load_checked`: from a private copy of the model (removed when this
    object goes), with the card custody checked. `source` is the configured path."""

    def __init__(self, snapshot: Snapshot, custody: Custody, settings: RuntimeSettings) -> None:
        super().__init__(snapshot.model, runtime=settings.runtime, providers=settings.providers,
                         session_options=settings.session_options, threads=settings.threads)
        self.source = snapshot.source
        self.custody = custody
        self.card: ModelCard | None = custody.card
        weakref.finalize(self, snapshot.remove)


def shown_path(detector: Detector) -> Path:
    """The path to name in messages: the configured one, not a private copy."""
    return detector.source if isinstance(detector, CheckedDetector) else detector.info.path


def card_of(detector: Detector) -> ModelCard | None:
    """The model's card: the one custody checked for a CheckedDetector; else the file beside the
    model (a Detector made directly, as `edge-inspect self-test` does). Raises ValueError/OSError."""
    if isinstance(detector, CheckedDetector):
        return detector.card
    card_file = card_path_for(detector.info.path)
    return ModelCard.read(card_file) if card_file.is_file() else None


def model_identity(detector: Detector) -> ModelIdentity:
    """Name, version and sha256 of a loaded model, as every event and stats message carries it.
    The version is the model card's `version` (set by the registry) when there is one, else the
    card's creation time, else the first 12 hex digits of the sha256."""
    info = detector.info
    version = info.sha256[:12]
    try:
        card = card_of(detector)
    except (ValueError, OSError):
        card = None
        log.warning("model card of %s unreadable; version from the sha256", shown_path(detector))
    if card is not None:
        version = str(getattr(card, "version", None) or card.created or version)
    return ModelIdentity(name=info.name, version=version, sha256=info.sha256)


def check_candidate(detector: Detector, reference: np.ndarray | None) -> None:
    """A model must run on a real frame (or a grey one before any frame) and give finite output:
    a model whose scores are NaN would otherwise be served and never raise an alert."""
    frame = reference if reference is not None else np.full((480, 640, 3), 114, np.uint8)
    blob, _ = detector.preprocess(frame)
    output = detector.infer(blob)
    if not np.isfinite(output).all():
        bad = int((~np.isfinite(output)).sum())
        raise ModelError(f"{shown_path(detector)} gives non-finite output (NaN or inf in {bad} of {output.size} "
                         "values) on a test frame")


class SelfTestFailed(ModelError):
    """The model runs, but does not see on this machine what its FP32 reference saw."""


def self_test(detector: Detector) -> SelfTestResult | None:
    """Run the reference frames of the model's card, if it has them; raise SelfTestFailed."""
    name = shown_path(detector).name
    try:
        card = card_of(detector)
    except (ValueError, OSError) as exc:
        card_name = card_path_for(detector.info.path).name
        raise ModelError(f"{card_name} is not a readable model card: {str(exc).splitlines()[0]}") from None
    if card is None or card.self_test is None:
        return None
    try:
        result = run_self_test(detector, card.self_test)
    except ValueError as exc:  # a damaged reference frame
        raise ModelError(f"{name}: self-test cannot run: {exc}") from None
    if not result.passed:
        raise SelfTestFailed(f"{name} failed its self-test on this CPU ({cpu.describe()}): {result.summary()}")
    log.info("model %s passed its self-test on this CPU: %s", name, result.summary())
    return result


def load_checked(path: Path, settings: RuntimeSettings | None = None, trusted: TrustedKeys | None = None,
                 snapshots: Path | None = None) -> CheckedDetector:
    """Copy the model and its card into a private folder (under `snapshots`, else a private
    temporary one), check the copy's custody (its card names these bytes; signed by a `trusted`
    key when given), load that same copy, check it runs, and run its self-test from the checked
    card: what start-up, `--check-config`, `detect` and a hot swap all do. Default settings: ONNX
    Runtime on the CPU. Errors name `path`, never the private copy."""
    path = Path(path)
    snapshot = take_snapshot(path, snapshots, card_limit=MAX_CARD_BYTES)
    try:
        custody = check_custody(snapshot.model, trusted)  # before any runtime reads the copy
        detector = CheckedDetector(snapshot, custody, settings or RuntimeSettings())
    except ModelError as exc:
        snapshot.remove()
        raise type(exc)(snapshot.shown(str(exc))) from None
    except BaseException:
        snapshot.remove()
        raise
    try:
        if detector.info.sha256 != custody.sha256:  # cannot differ: nothing else writes the copy
            raise ModelRefused(f"{path.name} changed while it was loaded (sha256 {custody.sha256[:12]} when "
                               f"checked, {detector.info.sha256[:12]} when loaded)")
        check_candidate(detector, None)
        self_test(detector)
    except ModelError as exc:
        snapshot.remove()  # now, not when the traceback holding the detector is collected
        raise type(exc)(snapshot.shown(str(exc))) from None
    if custody.signed_by:
        log.info("model %s: card signed by trusted key %s", path.name, custody.signed_by)
    return detector


def drift_reference_of(detector: Detector) -> DriftReference | None:
    """The reference profile in the model's card (None without a card or a profile: the drift
    monitor then has nothing to compare with, and says so once)."""
    try:
        card = card_of(detector)
    except (ValueError, OSError):
        return None
    return card.drift_reference if card is not None else None


class ModelManager:
    """Holds the serving detector; swaps only when the inference stage calls `take_pending`."""

    def __init__(self, path: Path, settings_for: Callable[[Path], RuntimeSettings],
                 on_message: Callable[[str, str, str], None], loaded: Detector | None = None,
                 trusted: TrustedKeys | None = None, snapshots: Path | None = None) -> None:
        """`settings_for`: the runtime settings for a model file, made anew for each load (an ONNX
        Runtime SessionOptions is single-use). `loaded`: the model at `path`, already loaded and
        checked (by the start-up checks). `trusted`: the public keys of `model.public_key`; when
        given, every model swapped in must have a card signed by one of them. `snapshots`: where
        the private copies of the models go (the daemon: `<state_dir>/models`)."""
        self.path = Path(path)
        self._settings_for = settings_for
        self._trusted = trusted
        self._snapshots = snapshots
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
        return load_checked(path, self._settings_for(path), self._trusted, self._snapshots)

    def _stat(self) -> tuple[tuple[int, int], ...] | None:
        """(mtime, size) of each of the model's files (an IR: the .xml and the .bin), and of its
        card: a model refused because its card named other bytes is checked again when the
        right card arrives."""
        try:
            stats = [f.stat() for f in model_files(self.path)]
        except OSError:
            return None
        try:
            card = card_path_for(self.path).stat()
            stats.append(card)
        except OSError:
            pass  # no card (yet): the model alone
        return tuple((s.st_mtime_ns, s.st_size) for s in stats)

    def poll(self) -> None:
        """Called by the watcher thread: load and check a changed model."""
        fingerprint, seen = self._stat(), self._seen
        self._seen = fingerprint
        if fingerprint is None or fingerprint == self._fingerprint:
            return
        if len(fingerprint) > 1 and fingerprint != seen:
            # An IR is two files, and a model comes with its card, replaced one after the other
            # (no rename makes both appear at once): wait until none has changed for one
            # interval, rather than load a new .xml with the old .bin, or a model before its card.
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
                         f"(was {old.sha256[:12]})", str(shown_path(candidate)))
        return True
