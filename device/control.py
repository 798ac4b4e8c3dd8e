"""Live control: the configuration's two layers, and updates while the daemon runs.

The configuration is the config file with the Greengrass component configuration merged over it.
An update (SIGHUP re-reads the file; Greengrass sends a new component configuration) is
validated whole: an invalid one is refused, logged and reported on `errors`, and the daemon goes
on with the last good configuration. A valid one takes effect key by key: the live keys now,
the others at the next start, and the `config_applied` notice says which is which, so nobody is
told a change is in effect when it is not.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device.config import ConfigError, DaemonConfig, load_config_file, merge_config, parse_config
from device.redact import remember_secrets, secrets_in

log = logging.getLogger(__name__)

GREENGRASS_ONLY_KEYS = ("accessControl",)  # merged into the component configuration by the nucleus

# Keys that take effect without a restart; a change to any other key waits for the next start.
LIVE_KEYS = ("events", "stats.interval_s", "stats.prometheus_port", "stats.prometheus_host", "log_level",
             "model.watch_interval_s", "active_learning.strategies", "active_learning.limits",
             "active_learning.dedup", "drift")


@dataclass(frozen=True)
class Applied:
    """What an accepted update did."""

    live: list[str]  # changed keys in effect now
    pending_restart: list[str]  # changed keys that wait for the next start


def strip_greengrass_keys(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in GREENGRASS_ONLY_KEYS}


def changed_keys(old: DaemonConfig, new: DaemonConfig) -> list[str]:
    """The keys that differ, at the depth LIVE_KEYS speaks of: top level, and one level down in
    sections where some keys are live and some are not."""
    split = {key.split(".")[0] for key in LIVE_KEYS if "." in key}
    changed = []
    for key in DaemonConfig.model_fields:
        before, after = getattr(old, key), getattr(new, key)
        if before == after:
            continue
        if key in split:
            changed += [f"{key}.{sub}" for sub in type(before).model_fields if getattr(before, sub) != getattr(after, sub)]
        else:
            changed.append(key)
    return changed


def parse_layers(file_config: dict[str, Any], component_config: dict[str, Any], origin: str) -> DaemonConfig:
    """Validate the merged layers; the secrets they hold are registered for redaction first, so
    even the error of an invalid configuration cannot show them."""
    remember_secrets(secrets_in(file_config) + secrets_in(component_config))
    return parse_config(merge_config(file_config, component_config), origin)


class LiveControl:
    """Holds the configuration in force and applies updates through `apply_live`, a callback
    that puts the live keys into effect (and may refuse, e.g. a Prometheus port already taken)."""

    def __init__(self, file_config: dict[str, Any], component_config: dict[str, Any], origin: str,
                 config_file: Path | None, apply_live: Callable[[DaemonConfig, DaemonConfig, list[str]], None],
                 on_refused: Callable[[str], None], on_applied: Callable[[Applied], None]) -> None:
        self.file_config, self.component_config = file_config, strip_greengrass_keys(component_config)
        self.origin, self.config_file = origin, config_file
        self.config = parse_layers(self.file_config, self.component_config, origin)
        self._apply_live, self._on_refused, self._on_applied = apply_live, on_refused, on_applied
        self._lock = threading.Lock()  # SIGHUP and Greengrass updates arrive on their own threads

    def apply_update(self, component_config: dict[str, Any], origin: str) -> bool:
        """A new component configuration (Greengrass), over the config file."""
        return self._apply(origin, component_config=strip_greengrass_keys(component_config))

    def reload_file(self) -> bool:
        """SIGHUP: read the config file again."""
        if self.config_file is None:
            log.warning("SIGHUP: no config file to reload (configuration comes from Greengrass)")
            return False
        try:
            raw = load_config_file(self.config_file)
        except ConfigError as exc:
            return self._refuse(str(exc))
        return self._apply(str(self.config_file), file_config=raw)

    def _refuse(self, reason: str) -> bool:
        log.error("configuration update refused, keeping the last good one: %s", reason)
        self._on_refused(reason)
        return False

    def _apply(self, origin: str, file_config: dict[str, Any] | None = None,
               component_config: dict[str, Any] | None = None) -> bool:
        """One layer changed; the other is read under the lock, so a SIGHUP and a Greengrass
        update arriving together cannot undo each other."""
        with self._lock:
            file_config = self.file_config if file_config is None else file_config
            component_config = self.component_config if component_config is None else component_config
            try:
                new = parse_layers(file_config, component_config, origin)
            except ConfigError as exc:
                return self._refuse(str(exc))
            changed = changed_keys(self.config, new)
            live = [k for k in changed if k in LIVE_KEYS]
            try:
                self._apply_live(self.config, new, live)
            except (OSError, ValueError) as exc:  # e.g. the new Prometheus port is taken
                return self._refuse(f"{origin}: {exc}")
            self.config, self.file_config, self.component_config = new, file_config, component_config
        applied = Applied(live, [k for k in changed if k not in LIVE_KEYS])
        if applied.pending_restart:
            log.warning("configuration keys %s change at the next restart", ", ".join(applied.pending_restart))
        log.info("configuration applied from %s (in effect: %s; at the next restart: %s)", origin,
                 ", ".join(applied.live) or "nothing", ", ".join(applied.pending_restart) or "nothing")
        self._on_applied(applied)
        return True
