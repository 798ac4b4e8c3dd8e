"""Coverage: who listened to the lines, and when (cloud/deploy/watcher.py, fleet_store.py). A real
FleetWatcher on a real mosquitto records its listening from the broker's SUBACK, keeps it alive
by heartbeat, ends it when the broker goes away and starts another when it is back; a rollout
(cloud/deploy/rollout.py) measures a baseline only over what nobody heard."""

from __future__ import annotations

import time

import pytest
from daemon_helpers import wait_until
from mosquitto import Broker

from cloud.deploy.fleet_store import SqliteFleetStore
from cloud.deploy.rollout import Rollout, RolloutLog
from cloud.deploy.settings import DeploySettings, LocalDeploySettings, LocalLine, PromotionRule
from cloud.deploy.watcher import FleetWatcher
from cloud.ingest.announcements import BrokerSettings


def test_a_watcher_s_listening_follows_its_connection(tmp_path):
    broker = Broker(tmp_path).start()
    store = SqliteFleetStore(tmp_path / "fleet.sqlite")
    watcher = FleetWatcher(BrokerSettings(host="127.0.0.1", port=broker.port, client_id="cov-test"), store,
                           "cov-test-rollout", persistent=False).start()
    try:
        assert watcher.subscribed.wait(20)
        start = time.time()
        assert store.listened_since(start) is not None
        assert wait_until(lambda: store.covered(start, time.time()) and time.time() - start > 2.5, 10), \
            "the heartbeat keeps a live watcher's listening current"
        broker.stop()  # the lines' messages are not heard from here on
        stopped = time.time()
        assert wait_until(lambda: store.listened_since(time.time()) is None, 15)
        assert not store.covered(start, time.time())
        broker = Broker(tmp_path, port=broker.port).start()
        assert wait_until(lambda: store.listened_since(time.time()) is not None, 30), "a new interval after reconnect"
        assert store.listened_since(time.time()) > stopped, "the gap stays a gap"
    finally:
        watcher.stop()
        broker.stop()
    assert wait_until(lambda: store.listened_since(time.time()) is None, 5), "a stopped watcher listens no more"
    store.close()


class Clock:
    """The rollout's clock and sleep, advanced by its own sleeps; a watcher's heartbeat follows it."""

    def __init__(self, store: SqliteFleetStore, start: float) -> None:
        self.now, self.store, self.slept = start, store, 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds
        self.store.heartbeat("this-rollout", self.now)


@pytest.fixture
def settings(tmp_path) -> DeploySettings:
    return DeploySettings(state_path=tmp_path / "deploy.sqlite", work_dir=tmp_path / "ship", canary=["line-1"],
                          quantize=False, promotion=PromotionRule(window_minutes=10, poll_seconds=15),
                          local=LocalDeploySettings(lines=[LocalLine(thing=t, model_path=tmp_path / f"{t}.onnx")
                                                           for t in ("line-1", "line-2")]))


def baseline(settings: DeploySettings, store: SqliteFleetStore, clock: Clock) -> list[str]:
    said: list[str] = []
    rollout = Rollout(registry=None, deployer=None, fleet=store, settings=settings,  # type: ignore[arg-type]
                      log=RolloutLog(settings.state_path), say=said.append, clock=clock, sleep=clock.sleep)
    rollout._baseline("7", ["line-1"])
    return said


def test_a_rollout_measures_a_baseline_only_when_nobody_listened(settings):
    store = SqliteFleetStore(settings.state_path)
    t0 = 1_800_000_000.0
    store.listening("serve", t0 - 3600)  # `cloud serve` listened all along
    store.heartbeat("serve", t0)
    store.listening("this-rollout", t0)
    clock = Clock(store, t0)
    said = baseline(settings, store, clock)
    assert clock.slept == 0 and "baseline: heard" in said[-1], said

    store.stopped("serve", t0 - 300)  # serve stopped five minutes ago: the last window has a gap
    clock = Clock(store, t0)
    said = baseline(settings, store, clock)
    assert "nobody listened to line-1 through the last 600 s" in said[0] and "baseline: measured" in said[-1]
    assert 600 <= clock.slept <= 600 + 15, "one window of its own listening, polled"
    store.close()
