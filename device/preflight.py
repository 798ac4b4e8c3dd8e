"""Start-up checks: everything that can be known before the daemon starts is checked before it
starts, by `run` and by `--check-config` alike, so that a configuration that `--check-config`
calls OK does not die a minute later with a traceback. Each failure is one line that names the
key and the problem (`run` exits 2 with it).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from device.config import ConfigError, DaemonConfig, ModelConfig
from device.detector import Detector, ModelError
from device.model_manager import MODEL_SNAPSHOTS, SelfTestFailed, load_checked
from device.runtimes import RuntimeSettings, RuntimeUnavailableError, session_options


class PreflightError(ConfigError):
    """The configuration is valid, but this machine cannot run it as it is."""


def check_writable_dir(path: Path, key: str) -> None:
    """The folder exists (or can be made) and a file can be written in it."""
    if path.exists() and not path.is_dir():
        raise PreflightError(f"{key}: {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".preflight-"):
            pass
    except OSError as exc:
        raise PreflightError(f"{key}: cannot write in {path} ({exc.strerror or exc})") from None


def check_appendable_file(path: Path, key: str) -> None:
    if path.is_dir():
        raise PreflightError(f"{key}: {path} is a folder; give a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise PreflightError(f"{key}: cannot append to {path} ({exc.strerror or exc})") from None


def check_port_free(host: str, port: int, key: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            reason = "already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
            raise PreflightError(f"{key}: cannot listen on {host}:{port} ({reason})") from None


@dataclass(frozen=True)
class ModelChoice:
    """The model the daemon starts with, and why the configured one was refused, if it was."""

    detector: Detector
    refused: str | None = None


def model_runtime(model: ModelConfig, model_path: Path) -> RuntimeSettings:
    """The runtime settings of `model:` for the file at `model_path` (`auto` is decided per file).
    Made per load: an ONNX Runtime SessionOptions is single-use."""
    if model.runtime_for(model_path) == "openvino":
        return RuntimeSettings("openvino", threads=model.threads)
    return RuntimeSettings("onnxruntime", tuple(model.providers), session_options(
        model.threads, model.graph_optimization, model.execution_mode, model.spinning))


def check_model(config: DaemonConfig, model_path: Path) -> ModelChoice:
    """The model loads with the configured runtime and its settings, is a YOLOv8 detector whose metadata
    agrees with its graph, gives finite output on a frame, and passes its self-test on this CPU;
    if only the self-test fails and `model.fallback_path` is set, the fallback serves instead."""
    model = config.model
    trusted = model.trusted_keys()  # model.public_key: then every model served must be signed

    def load(path: Path) -> Detector:
        return load_checked(path, model_runtime(model, path), trusted, config.state_dir / MODEL_SNAPSHOTS)

    try:
        return ModelChoice(load(model_path))
    except SelfTestFailed as exc:
        if model.fallback_path is None:
            raise PreflightError(f"model.path: {exc}") from None
        refused = str(exc)
    except RuntimeUnavailableError as exc:  # the machine's fault, not the model file's: says which key
        raise PreflightError(str(exc)) from None
    except ModelError as exc:
        raise PreflightError(f"model.path: {exc}") from None
    try:
        return ModelChoice(load(model.fallback_path), refused)
    except ModelError as exc:
        raise PreflightError(f"model.path: {refused}; and model.fallback_path: {exc}") from None


def check_paths(config: DaemonConfig) -> None:
    check_writable_dir(config.state_dir, "state_dir")
    if config.file_sink.path:
        check_appendable_file(config.file_sink.path, "file_sink.path")
    al = config.active_learning
    if al.enabled:
        check_writable_dir(al.spool.path, "active_learning.spool.path")
    for key in ("ca_certs", "certfile", "keyfile"):
        path = getattr(config.mqtt.tls, key)
        if config.mqtt.tls.enabled and path is not None and not os.access(path, os.R_OK):
            raise PreflightError(f"mqtt.tls.{key}: {path} is not readable")


STATE_LOCK = "daemon.lock"


def lock_state_dir(state_dir: Path) -> int:
    """Take `state_dir` for this process alone, for as long as it lives (the kernel lets go at
    exit, `kill -9` included): two daemons on one outbox would send every event twice. Returns
    the lock's file descriptor, to keep open. Not for `--check-config`, which may run beside
    the daemon it checks."""
    path = state_dir / STATE_LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise PreflightError(f"state_dir: {state_dir} is in use by another edge-inspect daemon (pid {holder}); "
                             "give each daemon its own state_dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def preflight(config: DaemonConfig, model_path: Path) -> ModelChoice:
    """Every check; returns the loaded, checked model to start with."""
    check_paths(config)
    if config.stats.prometheus_port:
        check_port_free(config.stats.prometheus_host, config.stats.prometheus_port, "stats.prometheus_port")
    return check_model(config, model_path)
