"""On site: a line's daemon watches its model path; deploying is writing the shipment there.

Card first, then the model, each by rename from a temporary file in the same folder, so a daemon
that sees the new model finds its card and whole weights (as the Greengrass component installs
them). Before that, the line's current model and card are copied aside: rollback renames them
back, so a line returns to exactly what it ran, whichever version that was.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from pathlib import Path

from device.model_card import card_path_for

from .deployer import DeployError, StageDeployment
from .settings import LocalDeploySettings, Stage
from .shipping import Shipment

log = logging.getLogger(__name__)


def _place(source: Path, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def install(model: Path, target: Path) -> None:
    """`model` and its card into the watched `target` (card first)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    card = card_path_for(model)
    if card.is_file():
        _place(card, card_path_for(target))
    _place(model, target)


class LocalDeployer:
    def __init__(self, settings: LocalDeploySettings, canary: list[str], backups: Path) -> None:
        self.lines = {line.thing: line.model_path for line in settings.lines}
        self.canary, self.backups = list(canary), backups
        for thing, path in self.lines.items():
            if path.suffix != ".onnx":
                raise DeployError(f"deploy.local.lines: {thing}'s model_path {path} is not an .onnx file: "
                                  "the shipment is an ONNX model")

    def things(self, stage: Stage) -> list[str]:
        return self.canary if stage == "canary" else [t for t in self.lines if t not in self.canary]

    def _backup(self, thing: str, deployment_id: str) -> str:
        current = self.lines[thing]
        folder = self.backups / thing / deployment_id
        if not current.is_file():
            return ""  # nothing there before: rollback leaves the new model (there is nothing to return to)
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(current, folder / current.name)
        if card_path_for(current).is_file():
            shutil.copyfile(card_path_for(current), card_path_for(folder / current.name))
        return str(folder / current.name)

    def deploy(self, shipment: Shipment, stage: Stage) -> StageDeployment:
        deployment_id = f"{stage}-v{shipment.version}-{uuid.uuid4().hex[:8]}"
        things = self.things(stage)
        previous = {}
        for thing in things:
            try:
                previous[thing] = self._backup(thing, deployment_id)
                install(shipment.model_file, self.lines[thing])
            except OSError as exc:
                raise DeployError(f"cannot write the model for {thing} at {self.lines[thing]}: {exc.strerror or exc}") \
                    from None
            log.info("deploy: v%s (%s) written for %s at %s", shipment.version, shipment.sha256[:12], thing,
                     self.lines[thing])
        return StageDeployment(version=shipment.version, stage=stage, things=things, sha256=shipment.sha256,
                               deployed_at=time.time(), deployment_id=deployment_id, previous=previous)

    def rollback(self, deployment: StageDeployment) -> None:
        for thing in deployment.things:
            backup = deployment.previous.get(thing)
            if not backup:
                log.warning("deploy: %s had no model before v%s; nothing to roll back to", thing, deployment.version)
                continue
            install(Path(backup), self.lines[thing])
            log.info("deploy: %s rolled back from v%s", thing, deployment.version)
