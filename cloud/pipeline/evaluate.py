"""Step 3, evaluate: the candidate's ONNX export and the production model, each run through the
device's own detector, scored on the same current test split (photos neither trained on), and
again on production's own test photos: what production was proven to know when it was registered.

Why both: the test split grows with every new label. After a drift it holds the drifted line's
frames too, where the candidate gains most, and a gain there can hide a loss on the photos the
plant already relied on. The gate checks the second comparison with its own tolerance."""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from collections.abc import Collection
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict

from cloud.dataset import SPLIT_FILE, read_split_file
from cloud.evaluation import evaluate
from cloud.label_table import LabelTableError
from device.runtimes import file_sha256

log = logging.getLogger(__name__)

OUTPUT = "evaluation.json"
PRODUCTION_TEST = "production_test"  # the split (and folder) of production's own test photos


class Scores(BaseModel):
    model_config = ConfigDict(extra="forbid")

    map50: float
    map50_95: float
    precision: float
    recall: float
    recall_at_alert: float
    alert_conf: float
    images: int
    instances: int


class KnownPhotos(BaseModel):
    """Candidate and production on the test images of the photos production was tested on. (Not the
    device card's `metrics.production_test`: that is production on the whole current test split.)"""

    model_config = ConfigDict(extra="forbid")

    candidate: Scores
    production: Scores


class Evaluation(BaseModel):
    """Candidate and production on the same photos; `production` is None for the first model.
    `production_test` is None without production, or, with `production_test_note` saying why, when
    the comparison on production's own photos could not be made (the gate then refuses)."""

    model_config = ConfigDict(extra="forbid")

    split: str = "test"
    candidate: Scores
    production: Scores | None = None
    production_test: KnownPhotos | None = None
    production_test_note: str | None = None


def score(model: Path, data_yaml: Path, alert_conf: float, split: str = "test") -> Scores:
    result = evaluate(model, data_yaml, split, alert_conf=alert_conf)
    return Scores.model_validate(result.to_dict())


class NoSubset(ValueError):
    """Why production's own test photos cannot be picked from this dataset."""


def photos_subset(data_yaml: Path, photo_ids: Collection[str], out: Path) -> Path:
    """A dataset under `out` whose `production_test` split holds the test images of `photo_ids`."""
    if not photo_ids:
        raise NoSubset("production's version card lists no test photos")
    spec = yaml.safe_load(data_yaml.read_text())
    root = Path(spec.get("path") or data_yaml.parent)
    split_file = root / SPLIT_FILE
    try:
        index = read_split_file(split_file) if split_file.is_file() else None
    except LabelTableError as exc:  # split.json may come from another machine (S3): a clear refusal, no traceback
        raise NoSubset(str(exc)) from None
    if index is None or index.files is None:
        raise NoSubset("the dataset does not say which photo each image shows (written before it did): "
                       "start a new run")
    wanted = set(photo_ids)
    chosen = sorted(name for name, photo in index.files.get("test", {}).items() if photo in wanted)
    if not chosen:
        raise NoSubset(f"none of production's {len(wanted)} test photos is in this test split (were the split "
                       "settings changed?)")
    for sub in ("images", "labels"):
        shutil.rmtree(out / sub / PRODUCTION_TEST, ignore_errors=True)
        (out / sub / PRODUCTION_TEST).mkdir(parents=True)
    recorded = index.sha256.get("test", {})
    copied = 0
    for name in chosen:
        if Path(name).name != name or name in ("", ".", ".."):  # split.json may come from another machine (S3)
            raise NoSubset(f"split.json names an image {name!r} that is not a plain file name")
        image, label = root / "images" / "test" / name, root / "labels" / "test" / Path(name).with_suffix(".txt").name
        if not image.is_file() or not label.is_file():
            raise NoSubset(f"split.json names a test image {name!r} the dataset does not hold: start a new run")
        expected = recorded.get(name) or _sha256_in_name(name)
        if expected is not None and file_sha256(image) != expected:
            log.warning("evaluate: set aside %s: its sha256 is not the one the dataset recorded (the file changed "
                        "after the dataset was built)", name)
            continue
        shutil.copyfile(image, out / "images" / PRODUCTION_TEST / name)
        shutil.copyfile(label, out / "labels" / PRODUCTION_TEST / label.name)
        copied += 1
    if not copied:
        raise NoSubset("every test image of production's photos changed after the dataset was built (see the log)")
    subset = out / "data.yaml"
    subset.write_text(yaml.safe_dump({"path": str(out.resolve()), PRODUCTION_TEST: f"images/{PRODUCTION_TEST}",
                                      "names": spec["names"]}, sort_keys=False))
    return subset


def _sha256_in_name(name: str) -> str | None:
    """A device frame's file is named by its bytes' sha256 (`{sha256}.jpg`)."""
    match = re.fullmatch(r"([0-9a-f]{64})\.jpg", name)
    return match[1] if match else None


def _on_production_test(candidate: Path, production: Path, data_yaml: Path, alert_conf: float,
                        photo_ids: Collection[str]) -> KnownPhotos:
    # a scratch folder: on SageMaker the step's output folder is uploaded, and these are photo copies
    with tempfile.TemporaryDirectory(prefix="production-test-") as tmp:
        subset = photos_subset(data_yaml, photo_ids, Path(tmp))
        return KnownPhotos(candidate=score(candidate, subset, alert_conf, PRODUCTION_TEST),
                           production=score(production, subset, alert_conf, PRODUCTION_TEST))


def evaluate_pair(candidate: Path, production: Path | None, data_yaml: Path, alert_conf: float,
                  out: Path, production_test_photos: Collection[str] = ()) -> Evaluation:
    """`production_test_photos`: the photo ids of production's own test split (its version card)."""
    known, note = None, None
    if production is not None:
        try:
            known = _on_production_test(candidate, production, data_yaml, alert_conf, production_test_photos)
        except NoSubset as exc:
            note = str(exc)
    result = Evaluation(candidate=score(candidate, data_yaml, alert_conf),
                        production=score(production, data_yaml, alert_conf) if production else None,
                        production_test=known, production_test_note=note)
    (out / OUTPUT).write_text(result.model_dump_json(indent=2))
    return result


def read_output(out: Path) -> Evaluation | None:
    path = out / OUTPUT
    return Evaluation.model_validate(json.loads(path.read_text())) if path.is_file() else None
