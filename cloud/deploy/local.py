"""On site: a line's daemon watches its model path; deploying is writing the shipment there.

Card first, then the model, each by rename from a temporary file in the same folder, so a daemon
that sees the new model finds its card and whole weights (as the Greengrass component installs
them). Before that, the line's current model and card are copied aside: rollback renames them
back, so a line returns to exactly what it ran, whichever version that was.

Nothing is written by name alone: for each line, the copies about to be renamed into place are
hashed first, and the model must be the shipment's sha256 and the one its card names (a file in
the shipment folder changed after prepare_shipment is refused, with nothing written for that line).
The card carries the signature, if any (device/signing.py), so it travels, and is backed up and
rolled back, with the card.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from pathlib import Path

from cloud.registry.registry import first_line
from device.model_card import ModelCard, card_path_for
from device.runtimes import file_sha256

from .deployer import DeployError, ShipmentRefused, StageDeployment
from .settings import LocalDeploySettings, Stage
from .shipping import Shipment

log = logging.getLogger(__name__)


def _staged(source: Path, target: Path) -> Path:
    """A copy of `source` beside `target`, to rename into place once checked."""
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    shutil.copyfile(source, tmp)
    return tmp


def install(model: Path, target: Path, sha256: str | None = None, version: str = "?") -> None:
    """`model` and its card into the watched `target` (card first). With `sha256`: the staged
    copies are checked before either is renamed in (the model is `sha256`, its card names it)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    card = card_path_for(model)
    staged: list[tuple[Path, Path]] = []
    try:
        if card.is_file():
            staged.append((_staged(card, card_path_for(target)), card_path_for(target)))
        staged.append((_staged(model, target), target))
        if sha256 is not None:
            _check(staged[-1][0], staged[0][0] if card.is_file() else None, sha256, version)
        if not card.is_file():  # a card left from another model would name another sha256: the daemon refuses that
            card_path_for(target).unlink(missing_ok=True)
        for tmp, final in staged:
            os.replace(tmp, final)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)


def _check(model: Path, card: Path | None, sha256: str, version: str) -> None:
    actual = file_sha256(model)
    if actual != sha256:
        raise ShipmentRefused(f"version {version}: the shipment's model.onnx is now sha256 {actual[:12]}, not the "
                          f"{sha256[:12]} prepared: it changed after prepare_shipment; nothing written")
    if card is None:
        raise ShipmentRefused(f"version {version}: the shipment has no model card: nothing written")
    try:
        named = ModelCard.read(card).model_sha256
    except (ValueError, OSError) as exc:
        raise ShipmentRefused(f"version {version}: the shipment's card is unreadable ({str(exc).splitlines()[0]}): "
                          "nothing written") from None
    if named != sha256:
        raise ShipmentRefused(f"version {version}: the shipment's card names sha256 {named[:12]}, not the model's "
                          f"{sha256[:12]}: nothing written")


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
        # once before any line (a changed shipment then leaves every line as it was), and again
        # on each line's staged copies (what is renamed in is what was checked)
        _check(shipment.model_file, shipment.card_file if shipment.card_file.is_file() else None, shipment.sha256,
               shipment.version)
        previous: dict[str, str] = {}
        written: list[str] = []
        for thing in things:
            try:
                previous[thing] = self._backup(thing, deployment_id)
                install(shipment.model_file, self.lines[thing], shipment.sha256, shipment.version)
            except Exception as exc:
                # a stage is all or nothing: the lines already written go back to what they ran
                partial = StageDeployment(version=shipment.version, stage=stage, things=written,
                                          sha256=shipment.sha256, deployed_at=time.time(),
                                          deployment_id=deployment_id, previous=previous)
                undone = self._undo(partial)
                detail = (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc)
                error = type(exc) if isinstance(exc, DeployError) else DeployError
                raise error(f"cannot write the model for {thing} at {self.lines[thing]}: {detail}; {undone}") \
                    from None
            written.append(thing)
            log.info("deploy: v%s (%s) written for %s at %s", shipment.version, shipment.sha256[:12], thing,
                     self.lines[thing])
        return StageDeployment(version=shipment.version, stage=stage, things=things, sha256=shipment.sha256,
                               deployed_at=time.time(), deployment_id=deployment_id, previous=previous)

    def _undo(self, partial: StageDeployment) -> str:
        """Roll back the lines of a stage written before it failed; says what became of them."""
        if not partial.things:
            return "no line was changed"
        try:
            self.rollback(partial)
        except Exception as exc:
            return f"rolling back {', '.join(partial.things)} failed too: {first_line(exc)}"
        return f"{', '.join(partial.things)} rolled back"

    def rollback(self, deployment: StageDeployment) -> None:
        """Every line back to its backup; one line that cannot be written does not stop the others
        (a DeployError names every line left on the new model)."""
        failed: list[str] = []
        for thing in deployment.things:
            backup = deployment.previous.get(thing)
            if not backup:
                log.warning("deploy: %s had no model before v%s; nothing to roll back to", thing, deployment.version)
                continue
            try:
                install(Path(backup), self.lines[thing])
            except OSError as exc:
                failed.append(f"{thing} ({exc.strerror or exc})")
                continue
            log.info("deploy: %s rolled back from v%s", thing, deployment.version)
        if failed:
            raise DeployError(f"cannot roll back v{deployment.version} on {', '.join(failed)}: those lines still "
                              "run it; put their model back by hand")
