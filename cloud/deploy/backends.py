"""Which deployer and fleet store the configuration chooses, wired together."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from cloud.settings import CloudConfig

from .deployer import DeployError
from .fleet_store import SqliteFleetStore, ThingView
from .local import LocalDeployer
from .rollout import Rollout, RolloutLog, rollout_lock
from .settings import DeploySettings
from .watcher import FleetWatcher

SUBSCRIBE_TIMEOUT_S = 30


def deploy_settings(config: CloudConfig) -> DeploySettings:
    if config.deploy is None:
        raise DeployError("the cloud configuration has no `deploy` section: nowhere to deploy to")
    return config.deploy


def _registry(config: CloudConfig):
    from cloud.pipeline.backends import pipeline_settings
    from cloud.registry.backends import open_registry

    settings = pipeline_settings(config)
    return open_registry(settings.registry, settings.params.model_group, config.region)


@contextmanager
def onsite_rollout(config: CloudConfig, say: Callable[[str], None] = print) -> Iterator[Rollout]:
    """A Rollout with the local deployer, fed by an MQTT watcher for as long as it runs."""
    settings = deploy_settings(config)
    if settings.backend != "local" or settings.local is None or config.broker is None:
        raise DeployError("deploy.backend is greengrass: an approval starts the deployment state machine on AWS "
                          "(EventBridge), not a local rollout")
    with rollout_lock(settings.state_path):  # a second rollout is refused at once, before it listens
        yield from _onsite_rollout(config, settings, say)


def _onsite_rollout(config: CloudConfig, settings: DeploySettings, say: Callable[[str], None]) -> Iterator[Rollout]:
    assert config.broker is not None and settings.local is not None
    store = SqliteFleetStore(settings.state_path)
    watcher = FleetWatcher(config.broker, store, f"{config.broker.client_id}-deploy-{os.getpid()}",
                           persistent=False).start()
    try:
        if not watcher.subscribed.wait(SUBSCRIBE_TIMEOUT_S):
            raise DeployError(f"cannot subscribe to the lines' messages on {config.broker.host}:{config.broker.port} "
                              f"within {SUBSCRIBE_TIMEOUT_S} s: without them no stage can be judged")
        deployer = LocalDeployer(settings.local, settings.canary, settings.work_dir / "backups")
        # the rollout judges on what this watcher (and any other that listened) heard: it measures a
        # baseline itself when the store has not heard the canary for a whole window
        yield Rollout(_registry(config), deployer, store, settings, RolloutLog(settings.state_path), say=say)
    finally:
        watcher.stop()
        store.close()


def fleet_watcher(config: CloudConfig) -> FleetWatcher | None:
    """`cloud serve` keeps the on-site fleet store current (and the canary's alert history long
    enough to judge a rollout by) when cloud.yaml deploys on site."""
    if config.deploy is None or config.deploy.backend != "local" or config.broker is None:
        return None
    return FleetWatcher(config.broker, SqliteFleetStore(config.deploy.state_path))


def fleet_view(config: CloudConfig) -> list[ThingView]:
    settings = deploy_settings(config)
    window = settings.promotion.window_minutes * 60
    if settings.backend == "local":
        store = SqliteFleetStore(settings.state_path)
        try:
            return store.view(window)
        finally:
            store.close()
    from .greengrass import open_greengrass

    deployer, store = open_greengrass(config)
    return store.view(window, deployer.things("canary") + deployer.things("fleet"))
