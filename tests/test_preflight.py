"""What `--check-config` can check, `run` checks before it starts: each case here used to pass
`--check-config` and then kill `run` with a traceback. Now both fail the same way: exit 2 and
one line that names the key."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, make_onnx

YOLO_META = {"task": "detect", "names": "{0: 'scratch'}", "imgsz": "[64, 64]", "stride": "32"}


def base_config(tmp_path: Path, **extra) -> dict:
    folder = tmp_path / "drop"
    folder.mkdir(exist_ok=True)
    config = {"thing_name": "line-1", "transport": "none", "state_dir": str(tmp_path / "state"),
              "cameras": [{"id": "drop", "source": str(folder)}]}
    config.update(extra)
    return config


def cli(tmp_path: Path, config: dict, *flags: str) -> subprocess.CompletedProcess:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run([sys.executable, "-m", "edge_inspect", "run", "--config", str(path), *flags],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def assert_refused_by_both(tmp_path: Path, config: dict, expected: str) -> None:
    """`--check-config` and `run`: exit 2, one error line naming the problem, no traceback."""
    for flags in (("--check-config",), ()):
        result = cli(tmp_path, config, *flags)
        errors = [line for line in result.stderr.splitlines() if line.startswith("edge-inspect: error:")]
        assert result.returncode == 2, (flags, result.returncode, result.stderr[-1500:])
        assert len(errors) == 1 and expected in errors[0], (flags, result.stderr[-1500:])
        assert "Traceback" not in result.stderr, result.stderr[-1500:]


def test_a_good_config_passes_both(tmp_path):
    result = cli(tmp_path, base_config(tmp_path), "--check-config")
    assert result.returncode == 0 and ": OK (1 camera(s)" in result.stdout, result.stderr


def test_spool_path_that_is_a_file(tmp_path):
    spool = tmp_path / "spool"
    spool.write_text("not a folder")
    config = base_config(tmp_path, active_learning={"enabled": True, "upload": {"enabled": False},
                                                    "spool": {"path": str(spool)}})
    assert_refused_by_both(tmp_path, config, "active_learning.spool.path: ")


@contextlib.contextmanager
def read_only_folder(path: Path):
    """A folder nobody can write in: root ignores permissions, so as root a read-only tmpfs."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_spool_path_on_a_read_only_filesystem(tmp_path):
    with read_only_folder(tmp_path / "ro") as ro:
        config = base_config(tmp_path, active_learning={"enabled": True, "upload": {"enabled": False},
                                                        "spool": {"path": str(ro / "spool")}})
        assert_refused_by_both(tmp_path, config, "active_learning.spool.path: cannot write in")


def test_state_dir_on_a_read_only_filesystem(tmp_path):
    with read_only_folder(tmp_path / "ro") as ro:
        assert_refused_by_both(tmp_path, base_config(tmp_path, state_dir=str(ro)), "state_dir: cannot write in")


def test_file_sink_path_that_is_a_folder(tmp_path):
    (tmp_path / "sinkdir").mkdir()
    assert_refused_by_both(tmp_path, base_config(tmp_path, file_sink={"path": str(tmp_path / "sinkdir")}),
                           "file_sink.path: ")


def test_prometheus_port_taken(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert_refused_by_both(tmp_path, base_config(tmp_path, stats={"prometheus_port": port}),
                               f"stats.prometheus_port: cannot listen on 127.0.0.1:{port} (already in use)")


def test_model_whose_metadata_disagrees_with_its_graph(tmp_path):
    model = make_onnx(tmp_path / "liar.onnx", output_shape=(1, 5, 100),
                      metadata={**YOLO_META, "imgsz": "[32, 32]"})  # the graph takes 64x64
    assert_refused_by_both(tmp_path, base_config(tmp_path, model={"path": str(model)}),
                           "metadata says input 32x32 but the graph takes 64x64")


def test_model_whose_scores_are_all_nan(tmp_path):
    model = make_onnx(tmp_path / "nan.onnx", output_shape=(1, 5, 100), metadata=YOLO_META, scale=float("nan"))
    assert_refused_by_both(tmp_path, base_config(tmp_path, model={"path": str(model)}), "non-finite output")


@pytest.mark.parametrize("key,value,expected", [
    ("stats", {"interval_s": 1e10}, "stats.interval_s: Input should be less than or equal to 86400"),
    ("stats", {"interval_s": 1e-6}, "stats.interval_s: Input should be greater than or equal to 0.1"),
    ("model", {"watch_interval_s": 1e10}, "model.watch_interval_s: Input should be less than or equal to 3600"),
    ("model", {"watch_interval_s": 1e-6}, "model.watch_interval_s: Input should be greater than or equal to 0.1"),
    ("events", {"end_after_s": 1e12}, "events.end_after_s: Input should be less than or equal to 86400"),
    ("mqtt", {"reconnect_min_s": 5, "reconnect_max_s": 1}, "reconnect_min_s (5.0) must not exceed reconnect_max_s"),
])
def test_numeric_settings_out_of_range(tmp_path, key, value, expected):
    assert_refused_by_both(tmp_path, base_config(tmp_path, **{key: value}), expected)


def test_upload_prefix_cannot_climb_out(tmp_path):
    config = base_config(tmp_path, active_learning={"enabled": True, "upload": {"bucket": "frames",
                                                                               "prefix": "../../x"}})
    assert_refused_by_both(tmp_path, config, "active_learning.upload.prefix: ")


def test_a_second_daemon_on_the_same_state_dir_is_refused(tmp_path):
    """Two daemons on one outbox would send every event twice; `--check-config` beside a
    running daemon is fine."""
    import signal

    from daemon_helpers import wait_until

    config = base_config(tmp_path)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    first = subprocess.Popen([sys.executable, "-m", "edge_inspect", "run", "--config", str(path)], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        lock = tmp_path / "state" / "daemon.lock"
        assert wait_until(lambda: lock.exists() and lock.read_text().strip() == str(first.pid), 60)
        assert cli(tmp_path, config, "--check-config").returncode == 0
        second = cli(tmp_path, config)
        assert second.returncode == 2, second.stderr[-1500:]
        assert f"is in use by another edge-inspect daemon (pid {first.pid})" in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(10) == 0
