"""`edge-inspect cloud serve` as an operator runs it (a subprocess), on the bad days of issue 21:
its state file emptied (refused; `--rebuild-state` rebuilds it from the label store without
relabelling), a second serve on the same state (refused at once, naming the first), S3 that
accepts connections and never answers (SIGTERM still stops serve within 10 s), and Label Studio
down when serve starts with a Personal Access Token (serve waits; the batch goes once it is up).
Real peers: moto's S3 server, the replay labeler, a real Label Studio behind a TCP relay that is
switched on during the test."""

from __future__ import annotations

import hashlib
import signal
import socket
import sqlite3
import threading
import time
import uuid

import pytest
from cloud_helpers import CloudServe, cloud, write_cloud_config
from conftest import METAL_TAGS
from daemon_helpers import wait_until
from frames import PREFIX, upload_frame
from label_studio_api import LabelStudioPerson
from moto_s3 import set_credentials
from test_cloud_serve import scratched_photos

from cloud.ingest.state_lock import lock_path
from cloud.labels.local import LocalLabelStore
from edge_inspect.loopback import free_port

TOKEN_ENV = "EDGE_INSPECT_TEST_SERVE_LS_TOKEN"
REPLAY = {"backend": "replay", "replay": {"table": str(METAL_TAGS / "labels.csv"), "images": str(METAL_TAGS)}}




def config_for(tmp_path, endpoint: str, bucket: str, labeling: dict, batch_size: int = 1):
    return write_cloud_config(
        tmp_path / "cloud.yaml",
        storage={"bucket": bucket, "prefix": PREFIX, "endpoint_url": endpoint, "region": "us-east-1"},
        labeling={"batch_size": batch_size, "max_wait_minutes": 60, "poll_interval_s": 0.5, "catch_up_minutes": 60,
                  "state_path": str(tmp_path / "labeling.sqlite"), **labeling},
        label_store={"backend": "local", "local": {"path": str(tmp_path / "labels")}})


def frame_states(state_path) -> dict[str, int]:
    """Frames by state, as another process sees the file ({} while there is no usable one)."""
    try:
        with sqlite3.connect(f"file:{state_path}?mode=ro", uri=True) as db:
            return dict(db.execute("SELECT state, COUNT(*) FROM frames GROUP BY state").fetchall())
    except sqlite3.DatabaseError:
        return {}


@pytest.fixture
def bucket(moto, request):
    set_credentials()
    name = f"frames-{hashlib.sha256(request.node.name.encode()).hexdigest()[:10]}"
    moto.client().create_bucket(Bucket=name)
    return name


def test_an_emptied_state_is_refused_and_rebuilt_from_the_label_store_without_relabelling(tmp_path, moto, bucket):
    photos = scratched_photos(4)
    keys = [upload_frame(moto.client(), bucket, p) for p in photos[:3]]
    config = config_for(tmp_path, moto.url, bucket, REPLAY)
    state = tmp_path / "labeling.sqlite"
    serve = CloudServe(config)
    try:
        assert wait_until(lambda: frame_states(state).get("labelled", 0) == 3, 120), serve.log_text()[-3000:]
    finally:
        assert serve.stop() == 0
    state.write_bytes(b"")  # the file emptied (a bad restore, a full disk at the wrong moment)
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"labeling.sqlite{suffix}").unlink(missing_ok=True)

    refused = cloud(config, "serve", timeout=60)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "is empty (0 bytes)" in refused.stderr and "--rebuild-state" in refused.stderr
    assert state.read_bytes() == b""

    keys.append(upload_frame(moto.client(), bucket, photos[3]))  # a new frame while serve was down
    serve = CloudServe(config, "--rebuild-state")
    try:
        assert wait_until(lambda: frame_states(state).get("labelled", 0) == 4, 120), serve.log_text()[-3000:]
    finally:
        assert serve.stop() == 0
    assert "labeling state rebuilt from the label store: 3 frames labelled" in serve.log_text()
    store = LocalLabelStore(tmp_path / "labels")
    assert [len(store.history(k)) for k in keys] == [1, 1, 1, 1]  # labelled once each: nothing sent again
    assert [p.name for p in tmp_path.iterdir() if ".damaged-" in p.name]  # the emptied file is kept aside


def test_a_lost_state_file_is_refused_when_the_label_store_holds_the_buckets_frames(tmp_path, moto, bucket):
    """The state's volume not mounted at boot, a changed state_path: not a first start."""
    keys = [upload_frame(moto.client(), bucket, p) for p in scratched_photos(2)]
    config = config_for(tmp_path, moto.url, bucket, REPLAY)
    serve = CloudServe(config)
    state = tmp_path / "labeling.sqlite"
    try:
        assert wait_until(lambda: frame_states(state).get("labelled", 0) == 2, 120), serve.log_text()[-3000:]
    finally:
        assert serve.stop() == 0
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"labeling.sqlite{suffix}").unlink(missing_ok=True)  # the folder is not there at the next boot

    for command in (["serve"], ["label"]):
        refused = cloud(config, *command, timeout=60)
        assert refused.returncode == 2, refused.stderr[-2000:]
        assert "label store already holds label rows for 2 frames" in refused.stderr
        assert "fix `labeling.state_path`" in refused.stderr and "--rebuild-state" in refused.stderr
        assert "Traceback" not in refused.stderr and not state.exists()  # nothing made
    serve = CloudServe(config, "--rebuild-state")
    try:
        assert wait_until(lambda: "labeling state rebuilt from the label store: 2 frames labelled" in serve.log_text(),
                          60), serve.log_text()[-3000:]
        assert frame_states(state) == {"labelled": 2}
    finally:
        assert serve.stop() == 0
    store = LocalLabelStore(tmp_path / "labels")
    assert [len(store.history(k)) for k in keys] == [1, 1]  # labelled once each: nothing sent again


def test_a_damaged_fleet_store_never_stops_labelling(tmp_path, moto, bucket, broker):
    fleet = tmp_path / "deploy.sqlite"
    fleet.write_bytes(b"not a database " * 100)  # the deploy side's file, damaged
    upload_frame(moto.client(), bucket, scratched_photos(1)[0])
    config = config_for(tmp_path, moto.url, bucket, REPLAY)
    write_cloud_config(config, **{
        **__import__("yaml").safe_load(config.read_text()),
        "broker": {"host": "127.0.0.1", "port": broker.port, "client_id": "serve-under-test"},
        "pipeline": {"state_path": str(tmp_path / "runs.sqlite"), "work_dir": str(tmp_path / "runs"),
                     "registry": {"backend": "mlflow", "mlflow": {"path": str(tmp_path / "registry")}},
                     "seed_bundled": False},
        "deploy": {"backend": "local", "state_path": str(fleet), "work_dir": str(tmp_path / "ship"),
                   "quantize": False, "local": {"lines": [{"thing": "line-1", "model_path": str(tmp_path / "m.onnx")}]}}})
    serve = CloudServe(config)
    try:
        assert wait_until(lambda: frame_states(tmp_path / "labeling.sqlite").get("labelled", 0) == 1, 120), \
            serve.log_text()[-3000:]
        assert serve.proc.poll() is None
    finally:
        assert serve.stop() == 0
    log = serve.log_text()
    assert log.count(f"serve: no fleet watcher: the fleet store {fleet} cannot be used") == 1, log[-3000:]
    assert "rollouts measure the lines on their own" in log and "Traceback" not in log


def test_a_second_serve_on_one_state_file_is_refused_at_once_naming_the_first(tmp_path, moto, bucket):
    config = config_for(tmp_path, moto.url, bucket, REPLAY)
    first = CloudServe(config)
    lock = lock_path(tmp_path / "labeling.sqlite")
    try:
        assert wait_until(lambda: lock.exists() and lock.read_text().startswith(f"{first.proc.pid} "), 60), \
            first.log_text()[-3000:]
        for command in (["serve"], ["label"]):
            second = cloud(config, *command, timeout=60)
            assert second.returncode == 2, second.stderr[-2000:]
            assert f"in use by another labeling loop (pid {first.proc.pid}" in second.stderr
            assert "one `cloud serve` per state file" in second.stderr
        assert first.proc.poll() is None  # the first goes on
    finally:
        assert first.stop() == 0
    again = CloudServe(config)  # the lock went with the first
    try:
        assert wait_until(lambda: lock.read_text().startswith(f"{again.proc.pid} "), 60), again.log_text()[-3000:]
    finally:
        assert again.stop() == 0


class Silent:
    """An S3 endpoint that accepts connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


def test_serve_stops_within_10_s_of_sigterm_while_s3_hangs(tmp_path):
    set_credentials()
    silent = Silent()
    config = config_for(tmp_path, f"http://127.0.0.1:{silent.port}", "plant-frames", REPLAY)
    serve = CloudServe(config)
    try:
        assert wait_until(lambda: silent.accepted, 60), serve.log_text()[-3000:]  # listing the bucket: no answer
        started = time.monotonic()
        serve.proc.send_signal(signal.SIGTERM)
        code = serve.proc.wait(30)
        took = time.monotonic() - started
    finally:
        serve.stop()
        silent.close()
    assert took < 10 and code == 0, (took, code, serve.log_text()[-3000:])
    assert "cut short" in serve.log_text()


class Relay:
    """A TCP relay to Label Studio, switched on and off by the test: "Label Studio is down" is
    nothing listening on the address serve knows."""

    def __init__(self, port: int, target: int) -> None:
        self.port, self.target = port, target
        self.sock: socket.socket | None = None

    def start(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        if self.sock is not None:
            self.sock.close()


def test_label_studio_down_at_start_is_waited_for_and_the_batch_goes_once_it_is_up(tmp_path, moto, bucket,
                                                                                   label_studio):
    admin = LabelStudioPerson(label_studio.url, label_studio.token)
    pat = admin.create_personal_access_token()  # exchanged for an access token at the first call
    prefix = f"rs{uuid.uuid4().hex[:8]}"
    for photo in scratched_photos(2):
        upload_frame(moto.client(), bucket, photo)
    relay = Relay(free_port(), int(label_studio.url.rsplit(":", 1)[1]))
    config = config_for(tmp_path, moto.url, bucket, {"backend": "label_studio", "label_studio": {
        "url": f"http://127.0.0.1:{relay.port}", "token_env": TOKEN_ENV, "project_prefix": prefix, "timeout_s": 10}},
        batch_size=2)
    serve = CloudServe(config, env={TOKEN_ENV: pat})
    state = tmp_path / "labeling.sqlite"
    try:
        assert wait_until(lambda: serve.proc.poll() is not None or (
            frame_states(state).get("batched", 0) == 2 and "cannot connect" in serve.log_text()), 90), \
            serve.log_text()[-3000:]
        assert serve.proc.poll() is None, serve.log_text()[-3000:]  # waiting, not gone
        relay.start()  # Label Studio is up

        def tasks() -> list:
            projects = [p for p in admin.projects() if p["title"] == f"{prefix}-line-1"]
            return admin.tasks(projects[0]["id"]) if projects else []

        assert wait_until(lambda: len(tasks()) == 2, 90, interval=0.5), serve.log_text()[-3000:]
        assert wait_until(lambda: "submitted to label_studio" in serve.log_text(), 30), serve.log_text()[-3000:]
    finally:
        code = serve.stop()
        relay.stop()
    assert code == 0
    assert pat not in serve.log_text()
