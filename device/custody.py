"""What the daemon checks before it serves any model (at start and at every hot swap): that the
model file is the one its card names, and, when `model.public_key` is set, that the card is signed
by a trusted key. A refused model is never loaded into a runtime.

- A card that names `model_sha256` must name this file's (an IR: its .xml's and .bin's, as
  `runtimes.model_sha256` computes it). A card and a model from two shipments, or a file changed
  after it was shipped, are refused.
- With `model.public_key`: no card, an unsigned card, a card signed by another key, or a card
  changed after signing, are refused. Without it, a model with no card is served as before (the
  model name and the sha256 are all the device knows of it).

The card is read once, here, and the parsed card returned (`Custody.card`): whatever the daemon
later takes from it (version, self-test frames, drift reference) is what was checked, never a
second read of a file that may have changed since.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from device.model_card import ModelCard, card_path_for
from device.runtimes import ModelError, ModelNotFoundError, model_files, model_sha256
from device.signing import SignatureError, TrustedKeys, parse_card

MAX_CARD_BYTES = 8 * 1024 * 1024  # self-test frames are at most 512 KiB each: a card is far smaller


class ModelRefused(ModelError):
    """A model whose custody does not hold: not the file its card names, or not signed as required."""


@dataclass(frozen=True)
class Custody:
    """What was checked: the model's sha256, its card as read and checked (None: no card), and the
    key that signed the card (if one was required)."""

    sha256: str
    signed_by: str | None = None
    card: ModelCard | None = None


def _read_card(card_file: Path) -> dict:
    try:
        if card_file.stat().st_size > MAX_CARD_BYTES:
            raise ModelRefused(f"{card_file.name} is larger than {MAX_CARD_BYTES} bytes: not a model card")
        return parse_card(card_file.read_bytes())
    except OSError as exc:
        raise ModelRefused(f"{card_file.name} cannot be read ({exc.strerror or exc})") from None
    except SignatureError as exc:
        raise ModelRefused(f"{card_file.name}: {exc}") from None


def check_custody(path: Path, trusted: TrustedKeys | None = None) -> Custody:
    """Raise ModelRefused unless the model at `path` is the one its card names (signed by a
    trusted key when `trusted` is given). Reads the files only: nothing is loaded."""
    path = Path(path)
    card_file = card_path_for(path)
    for file in model_files(path):  # as the runtime's own check: hashing a FIFO or /dev/zero would never end
        if not file.is_file():
            raise ModelNotFoundError(f"model file {file} does not exist or is not a regular file")
    try:
        actual = model_sha256(path)
    except OSError as exc:
        raise ModelError(f"{path} cannot be read ({exc.strerror or exc})") from None
    if not card_file.is_file():
        if trusted is not None:
            raise ModelRefused(f"{path.name} has no model card ({card_file.name}): model.public_key is set, so only "
                               "a model with a signed card is served")
        return Custody(actual)
    card = _read_card(card_file)
    signed_by = None
    if trusted is not None:
        try:
            signed_by = trusted.verify(card)
        except SignatureError as exc:
            raise ModelRefused(f"{path.name}: {exc}") from None
    expected = card.get("model_sha256")
    if expected is None and trusted is not None:
        raise ModelRefused(f"{path.name}: its signed card names no model_sha256, so it vouches for no file")
    if expected is not None and expected != actual:
        raise ModelRefused(f"{path.name} has sha256 {actual[:12]}, but its card {card_file.name} names "
                           f"{str(expected)[:12]}: the model and its card are not from the same shipment, or the "
                           "model changed after it was shipped")
    try:
        parsed = ModelCard.model_validate(card)
    except ValueError as exc:
        raise ModelRefused(f"{card_file.name} is not a readable model card: {str(exc).splitlines()[0]}") from None
    return Custody(actual, signed_by, parsed)
