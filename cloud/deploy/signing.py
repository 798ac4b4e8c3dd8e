"""Model signing, the cloud's half: the plant's Ed25519 key pair, its rotation, and signing a
shipped card (what is signed, and how a daemon checks it: device/signing.py).

A key folder (`edge-inspect cloud keys generate --out DIR`) holds:

    signing.key   the private key (PKCS#8 PEM, mode 0600): `deploy.signing_key` names it
    signing.pub   its public key
    trusted.pub   the public keys the daemons should accept (`model.public_key`)
    next.key/.pub during a rotation, the staged key that does not sign yet

A daemon reads its trusted keys at start only, so a rotation is three explicit steps, each
refused out of order, and a model is never signed by a key the daemons do not know yet:

1. `cloud keys rotate --dir DIR` stages a new pair as next.key/next.pub and lists the current and
   the new public key in trusted.pub. The current key still signs.
2. Once every daemon has that trusted.pub and was restarted: `cloud keys rotate --dir DIR
   --promote` makes the staged key the signing key (the old private key is gone: it signs nothing
   again). Models signed by either key are served, rollbacks included.
3. Once every line serves a model signed by the new key: `cloud keys rotate --dir DIR --finish`
   leaves only the new key in trusted.pub (give it to the daemons, restart them).

A public key is always written before its private key, so a crash leaves at worst a public key
with no private key (the step is run again), never a private key whose public key nobody trusts.
The private key is never printed, logged or quoted in an error: errors name the file only.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from device.signing import (
    SIGNATURE_FIELD,
    CardSignature,
    KeyFileError,
    SignatureError,
    TrustedKeys,
    canonical_card_bytes,
    key_id,
    parse_card,
    read_public_keys,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

log = logging.getLogger(__name__)

PRIVATE, PUBLIC, TRUSTED = "signing.key", "signing.pub", "trusted.pub"
NEXT_PRIVATE, NEXT_PUBLIC = "next.key", "next.pub"
RotationStep = Literal["stage", "promote", "finish"]
MAX_KEY_FILE_BYTES = 16 * 1024


@dataclass(frozen=True)
class KeyFolder:
    """What a key command left in a folder."""

    folder: Path
    key_id: str  # the signing key's
    trusted_ids: list[str]  # the keys trusted.pub lists, the signing key first
    next_id: str | None = None  # the staged key's, during a rotation (step 1 done, not promoted)

    @property
    def private(self) -> Path:
        return self.folder / PRIVATE

    @property
    def public(self) -> Path:
        return self.folder / PUBLIC

    @property
    def trusted(self) -> Path:
        return self.folder / TRUSTED


def _public_pem(key: Ed25519PublicKey) -> str:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _write(path: Path, text: str, mode: int) -> None:
    """Whole or not at all, with `mode` from the start (never briefly readable by others)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _private_pem(key: Ed25519PrivateKey) -> str:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _one_key(path: Path) -> Ed25519PublicKey:
    keys = read_public_keys(path)
    if len(keys) != 1:
        raise KeyFileError(f"{path} holds {len(keys)} public keys; it must hold exactly one, the public key of "
                           f"{path.with_suffix('.key').name} (trusted.pub is the file that lists several)")
    return keys[0]


def _trusted_pem(keys: list[Ed25519PublicKey]) -> str:
    return "".join(_public_pem(k) for k in keys)


def generate_keys(folder: Path) -> KeyFolder:
    """A new key pair in `folder`; refuses to replace one (that is `rotate_keys`)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    folder = Path(folder)
    if (folder / PRIVATE).exists():
        raise KeyFileError(f"{folder / PRIVATE} already exists: `edge-inspect cloud keys rotate --dir {folder}` "
                           "replaces a key pair")
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    _write(folder / PUBLIC, _public_pem(public), 0o644)  # public first: see the module's docstring
    _write(folder / TRUSTED, _public_pem(public), 0o644)
    _write(folder / PRIVATE, _private_pem(key), 0o600)
    return KeyFolder(folder, key_id(public), [key_id(public)])


def key_folder(folder: Path) -> KeyFolder:
    """What a key folder holds now; a KeyFileError when it holds no usable signing pair."""
    folder = Path(folder)
    if not (folder / PRIVATE).is_file() or not (folder / PUBLIC).is_file():
        raise KeyFileError(f"{folder} has no {PRIVATE} and {PUBLIC}: `edge-inspect cloud keys generate --out "
                           f"{folder}` makes the first pair")
    current = _one_key(folder / PUBLIC)
    if key_id(load_signing_key(folder / PRIVATE).public_key()) != key_id(current):
        raise KeyFileError(f"{folder / PUBLIC} is not the public key of {folder / PRIVATE} (a promotion was "
                           f"interrupted?): run `edge-inspect cloud keys rotate --dir {folder} --promote` again")
    trusted = read_public_keys(folder / TRUSTED) if (folder / TRUSTED).is_file() else [current]
    ids = [key_id(current), *(i for i in map(key_id, trusted) if i != key_id(current))]
    staged = _one_key(folder / NEXT_PUBLIC) if (folder / NEXT_PRIVATE).is_file() else None
    return KeyFolder(folder, key_id(current), ids, key_id(staged) if staged is not None else None)


def _stage(folder: Path) -> KeyFolder:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    now = key_folder(folder)
    if now.next_id is not None:
        raise KeyFileError(f"a rotation is in progress in {folder}: key {now.next_id} is staged; once every daemon "
                           f"has {TRUSTED} and was restarted, `edge-inspect cloud keys rotate --dir {folder} --promote`")
    interrupted = (_one_key(folder / NEXT_PUBLIC) if (folder / NEXT_PUBLIC).is_file() else None)  # no next.key
    previous = [i for i in now.trusted_ids[1:] if interrupted is None or i != key_id(interrupted)]
    if previous:
        raise KeyFileError(f"a rotation is in progress in {folder}: {TRUSTED} still lists the previous key(s) "
                           f"{', '.join(previous)}; once every line serves a model signed by {now.key_id}, "
                           f"`edge-inspect cloud keys rotate --dir {folder} --finish` first")
    current = _one_key(folder / PUBLIC)
    key = Ed25519PrivateKey.generate()
    staged = key.public_key()
    _write(folder / NEXT_PUBLIC, _public_pem(staged), 0o644)
    _write(folder / TRUSTED, _trusted_pem([current, staged]), 0o644)
    _write(folder / NEXT_PRIVATE, _private_pem(key), 0o600)  # last: its presence marks the step as done
    return KeyFolder(folder, key_id(current), [key_id(current), key_id(staged)], key_id(staged))


def _promote(folder: Path) -> KeyFolder:
    if not (folder / NEXT_PRIVATE).is_file():
        raise KeyFileError(f"no key is staged in {folder}: `edge-inspect cloud keys rotate --dir {folder}` stages one "
                           "first")
    staged_private = load_signing_key(folder / NEXT_PRIVATE)
    staged = _one_key(folder / NEXT_PUBLIC)
    if key_id(staged_private.public_key()) != key_id(staged):
        raise KeyFileError(f"{folder / NEXT_PUBLIC} is not the public key of {folder / NEXT_PRIVATE}: run "
                           f"`edge-inspect cloud keys rotate --dir {folder}` again after removing both")
    trusted = read_public_keys(folder / TRUSTED)
    if key_id(staged) not in {key_id(k) for k in trusted}:
        raise KeyFileError(f"{folder / TRUSTED} does not list the staged key {key_id(staged)}: daemons would refuse "
                           "every model it signs")
    _write(folder / PUBLIC, _public_pem(staged), 0o644)  # public first, then the private key in one rename
    os.replace(folder / NEXT_PRIVATE, folder / PRIVATE)
    (folder / NEXT_PUBLIC).unlink(missing_ok=True)
    ids = [key_id(staged), *(key_id(k) for k in trusted if key_id(k) != key_id(staged))]
    return KeyFolder(folder, key_id(staged), ids)


def _finish(folder: Path) -> KeyFolder:
    now = key_folder(folder)
    if now.next_id is not None:
        raise KeyFileError(f"key {now.next_id} is staged but does not sign yet: `edge-inspect cloud keys rotate --dir "
                           f"{folder} --promote` first (finishing now would drop it from {TRUSTED})")
    current = _one_key(folder / PUBLIC)
    _write(folder / TRUSTED, _public_pem(current), 0o644)
    return KeyFolder(folder, key_id(current), [key_id(current)])


def rotate_keys(folder: Path, step: RotationStep = "stage") -> KeyFolder:
    """One step of a key rotation (see the module's docstring): "stage", "promote" or "finish"."""
    steps = {"stage": _stage, "promote": _promote, "finish": _finish}
    if step not in steps:
        raise ValueError(f"a rotation step is one of {', '.join(steps)}, not {step!r}")
    folder = Path(folder)
    if not (folder / PRIVATE).is_file():
        raise KeyFileError(f"{folder} has no {PRIVATE} to rotate: `edge-inspect cloud keys generate --out {folder}` "
                           "makes the first pair")
    return steps[step](folder)


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """The private key of `deploy.signing_key`; a KeyFileError names the file, never its content."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    path = Path(path)
    try:
        info = path.stat()
        if info.st_size > MAX_KEY_FILE_BYTES:
            raise KeyFileError(f"deploy.signing_key: {path} is larger than {MAX_KEY_FILE_BYTES} bytes: not a key file")
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"deploy.signing_key: {path} cannot be read ({exc.strerror or type(exc).__name__})") from None
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError):  # their text is not shown: it may describe the key's bytes
        raise KeyFileError(f"deploy.signing_key: {path} is not an unencrypted PEM private key (write one with "
                           "`edge-inspect cloud keys generate`)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"deploy.signing_key: {path} is not an Ed25519 key (model cards are signed with Ed25519)")
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("deploy.signing_key: %s is readable by other users (mode %o): chmod 600 it", path,
                    stat.S_IMODE(info.st_mode))
    return key


def sign_card(card_file: Path, key: Ed25519PrivateKey) -> str:
    """Sign the card at `card_file` in place (its `signature` field); returns the key id. The
    signature is checked against the public key before the card is written."""
    card = parse_card(card_file.read_bytes())
    signature = CardSignature(key_id=key_id(key.public_key()),
                              value=base64.b64encode(key.sign(canonical_card_bytes(card))).decode())
    card[SIGNATURE_FIELD] = signature.model_dump()
    try:
        TrustedKeys([key.public_key()]).verify(card)
    except SignatureError as exc:  # cannot happen unless the canonical form is broken: never ship it
        raise SignatureError(f"{card_file.name}: a fresh signature does not verify ({exc})") from None
    _write(card_file, json.dumps(card, indent=2) + "\n", 0o644)
    return signature.key_id
