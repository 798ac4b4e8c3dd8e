"""Times reach no query unparsed (issue 21): an operator's `--as-of` (`cloud labels export`, `cloud
train`) is refused with the fix, in one line and exit 2, when it is `nan`, `inf`, `1e400`, before
1970, in the future or not a time, before any store is opened; and the stores themselves refuse a
non-finite or out-of-range as-of time before any query (DuckDB on site, Athena under botocore's
Stubber)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_label_feature_store import aws  # noqa: F401 (the fixture)

from cloud.labels.local import LocalLabelStore
from cloud.labels.store import LabelStoreError
from cloud.labels.table_io import parse_time

EDGE_INSPECT = Path(sys.executable).parent / "edge-inspect"
NOW = 1795000000.0
HOSTILE = ["nan", "inf", "-inf", "1e400", "-5", "last tuesday", "2999-01-01T00:00:00Z", "1e12", "99999-01-01"]


def cli(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(EDGE_INSPECT), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("text", HOSTILE)
def test_parse_time_refuses_what_is_not_a_past_time_naming_the_fix(text):
    with pytest.raises(ValueError) as error:
        parse_time(text, now=NOW)
    assert "use now" in str(error.value)


def test_parse_time_takes_now_seconds_and_iso_8601_up_to_now():
    assert parse_time("now", now=NOW) == NOW
    assert parse_time(" 1795000000 ", now=NOW) == NOW
    assert parse_time("2026-11-18T10:00:00Z", now=NOW) == parse_time("2026-11-18T10:00:00", now=NOW) == 1794996000.0
    with pytest.raises(ValueError, match=r"\(2026-11-18T10:00:00\+00:00\) is in the future"):
        parse_time("2026-11-18T10:00:00Z", now=1794995999.0)


@pytest.mark.parametrize("as_of", [float("nan"), float("inf"), -1.0, 1e300])
def test_the_stores_refuse_a_bad_as_of_before_any_query(tmp_path, aws, as_of):  # noqa: F811 (the fixture)
    with pytest.raises(LabelStoreError, match="is not a time between 1970 and 9999"):
        LocalLabelStore(tmp_path).as_of(as_of)  # an empty store used to answer [] to anything
    with pytest.raises(LabelStoreError, match="is not a time between 1970 and 9999"):
        aws.store().as_of(as_of)  # nothing queued: a describe or a query would fail the stub


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("times")
    path = folder / "cloud.yaml"
    path.write_text(f"label_store:\n  backend: local\n  local: {{path: {folder / 'store'}}}\n"
                    f"pipeline:\n  state_path: {folder / 'runs.sqlite'}\n  work_dir: {folder / 'work'}\n"
                    f"  registry: {{backend: mlflow, mlflow: {{path: {folder / 'registry'}}}}}\n")
    return path


AN_HOUR_AHEAD = str(int(time.time()) + 3600)
CASES = [("export", t) for t in HOSTILE + [AN_HOUR_AHEAD]] + [("train", t) for t in ("nan", "1e400", AN_HOUR_AHEAD)]


@pytest.mark.parametrize("command,text", CASES)
def test_the_cli_refuses_a_bad_as_of_in_one_line_before_opening_anything(config, tmp_path, command, text):
    out = tmp_path / "labels.csv"
    # `--as-of=TEXT`: argparse would take a bare `-inf` for an option
    args = ["labels", "export", f"--as-of={text}", "--out", out] if command == "export" else ["train", f"--as-of={text}"]
    result = cli("cloud", "--config", config, *args, cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("edge-inspect: error: --as-of: ") and "use now" in line, line
    assert not out.exists()
    for opened in ("store", "registry", "work", "runs.sqlite"):  # no store, registry or run was opened
        assert not (config.parent / opened).exists(), opened


@pytest.mark.parametrize("value", ["Infinity", "1e400", "nan", "1e300", "99999999999"])
def test_a_pipeline_as_of_from_param_or_config_is_bounded_like_the_option(value):
    # `cloud train --param as_of=...` and cloud.yaml bypass `--as-of`'s parser: the parameters check it too
    from cloud.pipeline.backends import PipelineConfigError, with_overrides
    from cloud.pipeline.params import PipelineParams

    with pytest.raises((ValueError, PipelineConfigError)):
        with_overrides(PipelineParams(), [f"as_of={value}"])
    assert with_overrides(PipelineParams(), ["as_of=1700000000"]).as_of == 1700000000
