"""Model card signatures, the device's half: what exactly is signed, key ids, reading the public
keys a daemon trusts (`model.public_key`), and checking a card's signature.

The cloud signs each shipped card (cloud/deploy/signing.py) with Ed25519. The signature lives in
the card itself, as its `signature` field, and covers every other field of the card, among them
`model_sha256`: so a signed card vouches for one model file, and the daemon then checks that the
file is that one (device/custody.py). Inside the card rather than in a file beside it, because the
card already travels everywhere the model does (the local deployer, its backups and rollbacks, the
Greengrass component's artifacts and install script): a second file would be one more thing to
lose on the way, and a model could arrive with a stale signature file.

What is signed: a fixed prefix, then the card's JSON object without `signature`, written with
sorted keys, no whitespace and UTF-8 (`canonical_card_bytes`). Both ends parse the card with
Python's json, so the same card gives the same bytes however its file is indented. A card with a
key twice is refused outright: two JSON parsers could each keep a different one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

SIGNATURE_FIELD = "signature"
DOMAIN = b"edge-inspect model card v1\n"  # a signature made for anything else never verifies here
MAX_KEY_FILE_BYTES = 64 * 1024  # a few PEM public keys; anything larger is not a key file
KEY_ID_PATTERN = r"^[0-9a-f]{16}$"


class SignatureError(ValueError):
    """A card that is not signed, or not by a trusted key, or changed since it was signed."""


class KeyFileError(ValueError):
    """A key file that cannot be used. The message names the file, never its content."""


class CardSignature(BaseModel):
    """The `signature` field of a signed model card."""

    model_config = ConfigDict(extra="forbid")

    algorithm: Literal["ed25519"] = "ed25519"
    key_id: str = Field(pattern=KEY_ID_PATTERN, description="the signing key's id (see key_id)")
    value: str = Field(max_length=128, description="base64 of the 64-byte Ed25519 signature")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        twice = sorted({k for k in keys if keys.count(k) > 1})
        raise SignatureError(f"the card names {', '.join(twice)} more than once")
    return dict(pairs)


def parse_card(text: str | bytes) -> dict[str, Any]:
    """A card's JSON object, refused when a key appears twice."""
    try:
        # strictly UTF-8, as the cloud writes it: json.loads would also guess UTF-16/32 from bytes
        card = json.loads(text.decode("utf-8") if isinstance(text, bytes) else text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise SignatureError(f"the card is not JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise SignatureError("the card is not UTF-8 text") from None
    except RecursionError:  # a few KB of nested brackets
        raise SignatureError("the card is nested too deeply to be a model card") from None
    if not isinstance(card, dict):
        raise SignatureError("the card is not a JSON object")
    return card


def canonical_card_bytes(card: dict[str, Any]) -> bytes:
    """The bytes a card's signature covers: everything but the signature itself."""
    unsigned = {k: v for k, v in card.items() if k != SIGNATURE_FIELD}
    return DOMAIN + json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                               allow_nan=True).encode("utf-8")


def key_id(public_key: Ed25519PublicKey) -> str:
    """A public key's short name: the first 16 hex digits of the sha256 of its 32 raw bytes."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _pem_blocks(text: str) -> list[str]:
    blocks, current = [], None
    for line in text.splitlines():
        if line.startswith("-----BEGIN "):
            current = [line]
        elif current is not None:
            current.append(line)
            if line.startswith("-----END "):
                blocks.append("\n".join(current) + "\n")
                current = None
    return blocks


def read_public_keys(path: Path) -> list[Ed25519PublicKey]:
    """Every Ed25519 public key of a PEM file (one, or several during a rotation)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        if path.stat().st_size > MAX_KEY_FILE_BYTES:
            raise KeyFileError(f"{path} is larger than {MAX_KEY_FILE_BYTES} bytes: not a public key file")
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a text file"
        raise KeyFileError(f"{path} cannot be read ({reason})") from None
    if "PRIVATE KEY" in text:
        raise KeyFileError(f"{path} holds a private key: give the device the public key only (the .pub file "
                           "`edge-inspect cloud keys generate` writes); the private key stays with the cloud side")
    keys = []
    for block in _pem_blocks(text):
        try:
            key = load_pem_public_key(block.encode("ascii"))
        except (ValueError, TypeError):
            raise KeyFileError(f"{path} holds a PEM block that is not a readable public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError(f"{path} holds a {type(key).__name__.lstrip('_')} key, not an Ed25519 one")
        keys.append(key)
    if not keys:
        raise KeyFileError(f"{path} holds no PEM public key (-----BEGIN PUBLIC KEY----- ...)")
    return keys


class TrustedKeys:
    """The public keys whose signatures a daemon accepts, by key id."""

    def __init__(self, keys: Iterable[Ed25519PublicKey]) -> None:
        self.keys = {key_id(k): k for k in keys}
        if not self.keys:
            raise KeyFileError("no public key to trust")

    @classmethod
    def load(cls, paths: Iterable[Path]) -> TrustedKeys:
        return cls(k for path in paths for k in read_public_keys(Path(path)))

    def ids(self) -> list[str]:
        return sorted(self.keys)

    def verify(self, card: dict[str, Any]) -> str:
        """The id of the trusted key that signed `card`; raises SignatureError."""
        from cryptography.exceptions import InvalidSignature

        raw = card.get(SIGNATURE_FIELD)
        if raw is None:
            raise SignatureError("the card is not signed, and model.public_key requires signed models")
        try:
            signature = CardSignature.model_validate(raw)
            value = base64.b64decode(signature.value, validate=True)
        except (ValueError, binascii.Error):
            raise SignatureError("the card's signature field is malformed") from None
        key = self.keys.get(signature.key_id)
        if key is None:
            raise SignatureError(f"the card is signed by key {signature.key_id}, which is not among the trusted keys "
                                 f"({', '.join(self.ids())}) of model.public_key")
        try:
            key.verify(value, canonical_card_bytes(card))
        except UnicodeEncodeError:  # a lone surrogate (\ud800) is valid JSON but has no UTF-8 bytes to verify
            raise SignatureError("the card holds text that is not valid Unicode: it cannot have been signed") from None
        except InvalidSignature:
            raise SignatureError(f"the card's signature by key {signature.key_id} does not verify: the card was "
                                 "changed after it was signed") from None
        return signature.key_id
