"""The split rule (cloud/pipeline/split.py): a photo's split is decided once and never moves."""

from __future__ import annotations

import pytest

from cloud.label_table import LabelRecord, LabelTableError, read_label_csv
from cloud.pipeline.split import SplitParams, assign, base_assignment, hash_split, split_of


def record(photo: str, status: str = "APPROVED") -> LabelRecord:
    return LabelRecord(f"frames/{photo}.jpg", 450, 300, (), status)


def test_adding_photos_moves_no_photo():
    params = SplitParams(use_base=False)
    before = {f"p{i}": hash_split(f"p{i}", params) for i in range(200)}
    after = assign([record(f"p{i}") for i in range(400)], params)
    placed = {r.photo_id: name for name, recs in after.records.items() for r in recs}
    assert all(placed[p] == s for p, s in before.items())


def test_fractions_are_roughly_kept_for_new_photos():
    params = SplitParams(use_base=False, val_fraction=0.2, test_fraction=0.1)
    counts = {"train": 0, "val": 0, "test": 0}
    for i in range(5000):
        counts[hash_split(f"photo-{i}", params)] += 1
    assert abs(counts["test"] / 5000 - 0.1) < 0.02 and abs(counts["val"] / 5000 - 0.2) < 0.02


def test_the_shipped_photos_keep_the_first_models_splits(metal_tags):
    split = assign(read_label_csv(metal_tags / "labels.csv"), SplitParams())
    base = base_assignment()
    for name, records in split.records.items():
        assert {base[r.photo_id] for r in records} == {name}
    assert len(split.photos("test")) == 7 and len(split.records["test"]) == 27


def test_salt_changes_new_photos_only():
    a, b = SplitParams(salt="one"), SplitParams(salt="two")
    base_photo = next(iter(base_assignment()))
    assert split_of(base_photo, a) == split_of(base_photo, b) == base_assignment()[base_photo]
    assert [hash_split(f"x{i}", a) for i in range(50)] != [hash_split(f"x{i}", b) for i in range(50)]


def test_pending_rows_are_not_data_and_an_empty_test_split_is_an_error():
    with pytest.raises(LabelTableError, match="no APPROVED rows"):
        assign([record("p1", "PENDING")], SplitParams(use_base=False))
    train_only = [r for r in (record(f"q{i}") for i in range(40)) if hash_split(r.photo_id, SplitParams(use_base=False)) == "train"]
    with pytest.raises(LabelTableError, match="no photo falls in the test split"):
        assign(train_only[:3], SplitParams(use_base=False))


def test_fractions_must_leave_training_photos():
    with pytest.raises(ValueError, match="leave photos to train on"):
        SplitParams(val_fraction=0.5, test_fraction=0.5)


def test_production_s_test_photos_are_picked_from_the_test_split_by_photo(metal_tags, tmp_path):
    import json

    import yaml

    from cloud.dataset import write_yolo_dataset
    from cloud.pipeline.evaluate import PRODUCTION_TEST, NoSubset, photos_subset

    split = assign(read_label_csv(metal_tags / "labels.csv"), SplitParams())
    data_yaml = write_yolo_dataset(split, metal_tags, tmp_path / "dataset", ["scratch"])
    two = split.photos("test")[:2]
    expected = sorted(r.source_ref.rsplit("/", 1)[-1] for r in split.records["test"] if r.photo_id in two)
    subset = photos_subset(data_yaml, [*two, split.photos("train")[0]], tmp_path / "known")
    assert yaml.safe_load(subset.read_text())[PRODUCTION_TEST] == f"images/{PRODUCTION_TEST}"
    images = sorted(p.name for p in (tmp_path / "known" / "images" / PRODUCTION_TEST).iterdir())
    assert images == expected and 0 < len(images) < 27, "only the test images of those photos, never a training one"
    for name in images:
        label = (tmp_path / "known" / "labels" / PRODUCTION_TEST / name).with_suffix(".txt")
        assert label.read_text() == (tmp_path / "dataset" / "labels" / "test" / label.name).read_text()
    with pytest.raises(NoSubset, match="none of production's 31 test photos is in this test split"):
        photos_subset(data_yaml, split.photos("train"), tmp_path / "none")
    with pytest.raises(NoSubset, match="lists no test photos"):
        photos_subset(data_yaml, [], tmp_path / "empty")
    summary = json.loads((tmp_path / "dataset" / "split.json").read_text())
    # split.json may come from another machine: a name with a path in it is refused, nothing copied out
    hostile = {**summary, "files": {"test": {"../../../etc/passwd": two[0]}}}
    (tmp_path / "dataset" / "split.json").write_text(json.dumps(hostile))
    with pytest.raises(NoSubset, match="not a plain file name"):
        photos_subset(data_yaml, two, tmp_path / "hostile")
    # a dataset written before split.json named each file's photo
    del summary["files"]
    (tmp_path / "dataset" / "split.json").write_text(json.dumps(summary))
    with pytest.raises(NoSubset, match="written before it did"):
        photos_subset(data_yaml, two, tmp_path / "old")
