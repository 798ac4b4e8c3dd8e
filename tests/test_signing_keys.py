"""Signed model cards (device/signing.py, cloud/deploy/signing.py) and the key commands
(`edge-inspect cloud keys generate|rotate`): real Ed25519 keys from `cryptography`, real cards of
the bundled model, the CLI as an operator runs it."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from cloud.deploy.signing import generate_keys, key_folder, load_signing_key, rotate_keys, sign_card
from device.config import ConfigError, ModelConfig
from device.custody import ModelRefused, check_custody
from device.model_card import ModelCard, card_path_for
from device.signing import KeyFileError, SignatureError, TrustedKeys, parse_card

FP32 = REPO / "device" / "models" / "metal-tags-yolov8n.onnx"


def keys_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_inspect", "cloud", "keys", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def model_copy(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / "model.onnx"
    shutil.copyfile(FP32, model)
    shutil.copyfile(card_path_for(FP32), card_path_for(model))
    return model


def test_keys_generate_writes_a_private_key_only_its_owner_reads_and_prints_only_the_public_key(tmp_path):
    done = keys_cli("generate", "--out", str(tmp_path / "keys"))
    assert done.returncode == 0, done.stderr
    private, public, trusted = (tmp_path / "keys" / n for n in ("signing.key", "signing.pub", "trusted.pub"))
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert "PRIVATE KEY" in private.read_text() and "PRIVATE" not in done.stdout + done.stderr
    body = "".join(private.read_text().splitlines()[1:-1])
    assert body not in done.stdout + done.stderr, "the private key is never printed"
    assert public.read_text() in done.stdout and trusted.read_text() == public.read_text()
    [key] = TrustedKeys.load([trusted]).ids()
    assert f"key {key}" in done.stdout and "deploy.signing_key" in done.stdout and "model.public_key" in done.stdout
    again = keys_cli("generate", "--out", str(tmp_path / "keys"))
    assert again.returncode == 2 and "already exists" in again.stderr and "keys rotate" in again.stderr
    assert body not in again.stderr


def test_rotation_stages_promotes_and_finishes_and_a_daemon_not_yet_restarted_accepts_every_signed_model(tmp_path):
    """Daemons read model.public_key at start only: the key that signs must be one they already
    trust. So `rotate` stages the new key (trusted.pub lists both, the old key still signs),
    `--promote` lets it sign once daemons were restarted, `--finish` drops the old one."""
    folder = tmp_path / "keys"
    old = generate_keys(folder)
    running_daemon = TrustedKeys.load([old.trusted])  # started before the rotation, never restarted
    signed_old = model_copy(tmp_path / "old")
    sign_card(card_path_for(signed_old), load_signing_key(old.private))
    old_private = old.private.read_text()
    done = keys_cli("rotate", "--dir", str(folder))
    assert done.returncode == 0, done.stderr
    assert old.private.read_text() == old_private, "staging does not change the signing key"
    [new_id] = TrustedKeys.load([folder / "next.pub"]).ids()
    trusted = TrustedKeys.load([folder / "trusted.pub"])
    assert set(trusted.ids()) == {old.key_id, new_id} and "--promote" in done.stdout and "restart" in done.stdout
    shipped_now = model_copy(tmp_path / "now")  # the deployer signs with deploy.signing_key meanwhile
    sign_card(card_path_for(shipped_now), load_signing_key(folder / "signing.key"))
    assert check_custody(shipped_now, running_daemon).signed_by == old.key_id, "a daemon not yet restarted accepts it"
    again = keys_cli("rotate", "--dir", str(folder))
    assert again.returncode == 2 and f"a rotation is in progress in {folder}: key {new_id} is staged" in again.stderr
    assert {new_id, old.key_id} == set(TrustedKeys.load([folder / "trusted.pub"]).ids()), "the staged key is kept"
    promoted = keys_cli("rotate", "--dir", str(folder), "--promote")
    assert promoted.returncode == 0, promoted.stderr
    assert old.private.read_text() != old_private, "the old private key signs nothing again"
    assert not (folder / "next.key").exists() and TrustedKeys.load([folder / "signing.pub"]).ids() == [new_id]
    signed_new = model_copy(tmp_path / "new")
    sign_card(card_path_for(signed_new), load_signing_key(folder / "signing.key"))
    # a daemon restarted with trusted.pub accepts both (a rollback to the old model too)
    assert check_custody(signed_old, trusted).signed_by == old.key_id
    assert check_custody(signed_new, trusted).signed_by == new_id
    early = keys_cli("rotate", "--dir", str(folder))
    assert early.returncode == 2 and f"still lists the previous key(s) {old.key_id}" in early.stderr
    finished = keys_cli("rotate", "--dir", str(folder), "--finish")
    assert finished.returncode == 0, finished.stderr
    after = TrustedKeys.load([folder / "trusted.pub"])
    assert after.ids() == [new_id]
    with pytest.raises(ModelRefused, match=f"signed by key {old.key_id}, which is not among the trusted keys"):
        check_custody(signed_old, after)
    assert keys_cli("rotate", "--dir", str(folder)).returncode == 0, "the next rotation may start"


def test_rotation_steps_out_of_order_are_refused_and_an_interrupted_step_can_be_run_again(tmp_path):
    folder = tmp_path / "keys"
    keys = generate_keys(folder)
    with pytest.raises(KeyFileError, match="no key is staged .* stages one first"):
        rotate_keys(folder, "promote")
    staged = rotate_keys(folder)
    with pytest.raises(KeyFileError, match=f"key {staged.next_id} is staged but does not sign yet: .* --promote` first"):
        rotate_keys(folder, "finish")
    # a crash during staging, after next.pub and trusted.pub, before next.key: staging again works
    (folder / "next.key").unlink()
    again = rotate_keys(folder)
    assert again.next_id != staged.next_id and set(again.trusted_ids) == {keys.key_id, again.next_id}
    # a crash during the promotion, after signing.pub, before signing.key: the pair disagrees, and says how to recover
    (folder / "signing.pub").write_text((folder / "next.pub").read_text())
    with pytest.raises(KeyFileError, match=r"is not the public key of .*signing.key .* --promote` again"):
        rotate_keys(folder, "finish")
    assert rotate_keys(folder, "promote").key_id == again.next_id
    assert key_folder(folder).key_id == again.next_id


def test_a_signing_pub_holding_two_keys_is_a_clear_error(tmp_path):
    folder = tmp_path / "keys"
    generate_keys(folder)
    other = generate_keys(tmp_path / "other")
    (folder / "signing.pub").write_text((folder / "signing.pub").read_text() + other.public.read_text())
    done = keys_cli("rotate", "--dir", str(folder))
    assert done.returncode == 2
    assert f"{folder / 'signing.pub'} holds 2 public keys; it must hold exactly one" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_empty_public_key_list_is_refused_rather_than_turning_signatures_off(tmp_path):
    with pytest.raises(ValueError, match="an empty list trusts no key: name the public key file"):
        ModelConfig(public_key=[])


def test_the_daemons_public_key_setting_takes_one_path_or_several(tmp_path):
    a, b = generate_keys(tmp_path / "a"), generate_keys(tmp_path / "b")
    assert ModelConfig(public_key=str(a.public)).trusted_keys().ids() == [a.key_id]
    assert set(ModelConfig(public_key=[str(a.public), str(b.public)]).trusted_keys().ids()) == {a.key_id, b.key_id}
    assert ModelConfig().trusted_keys() is None


def test_a_bad_public_key_file_is_named_never_quoted(tmp_path):
    keys = generate_keys(tmp_path / "keys")
    private_body = "".join(keys.private.read_text().splitlines()[1:-1])
    with pytest.raises(ConfigError, match="holds a private key: give the device the public key only") as raised:
        ModelConfig(public_key=str(keys.private)).trusted_keys()
    assert private_body not in str(raised.value)
    junk = tmp_path / "junk.pub"
    junk.write_text("-----BEGIN PUBLIC KEY-----\nbm90LWEta2V5LWF0LWFsbA==\n-----END PUBLIC KEY-----\n")
    with pytest.raises(ConfigError, match="junk.pub holds a PEM block that is not a readable public key") as raised:
        ModelConfig(public_key=str(junk)).trusted_keys()
    assert "bm90LWEta2V5" not in str(raised.value)
    with pytest.raises(ConfigError, match="cannot be read"):
        ModelConfig(public_key=str(tmp_path / "missing.pub")).trusted_keys()


def test_a_private_key_that_is_not_ed25519_or_not_a_key_is_refused_by_name(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    other = tmp_path / "ec.key"
    other.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(KeyFileError, match="is not an Ed25519 key"):
        load_signing_key(other)
    with pytest.raises(KeyFileError, match="cannot be read"):
        load_signing_key(tmp_path / "missing.key")


def test_a_signed_card_verifies_and_any_edit_breaks_it(tmp_path):
    keys = generate_keys(tmp_path / "keys")
    model = model_copy(tmp_path / "m")
    card_file = card_path_for(model)
    sign_card(card_file, load_signing_key(keys.private))
    trusted = TrustedKeys.load([keys.trusted])
    assert trusted.verify(parse_card(card_file.read_text())) == keys.key_id
    # re-indenting the file changes nothing signed; a pydantic round trip keeps every field
    card_file.write_text(json.dumps(json.loads(card_file.read_text())))
    ModelCard.read(card_file).write(card_file)
    assert check_custody(model, trusted).signed_by == keys.key_id
    edited = json.loads(card_file.read_text())
    edited["metrics"] = {"test": {"map50": 0.99}}
    card_file.write_text(json.dumps(edited))
    with pytest.raises(SignatureError, match="changed after it was signed"):
        trusted.verify(parse_card(card_file.read_text()))


def test_a_card_with_a_key_twice_is_refused():
    with pytest.raises(SignatureError, match="names model_sha256 more than once"):
        parse_card('{"model_sha256": "a", "name": "m", "model_sha256": "b"}')


def test_a_model_without_a_card_is_served_as_before_unless_signatures_are_required(tmp_path):
    model = model_copy(tmp_path / "m")
    card_path_for(model).unlink()
    assert check_custody(model).signed_by is None
    keys = generate_keys(tmp_path / "keys")
    with pytest.raises(ModelRefused, match="has no model card .*model.public_key is set"):
        check_custody(model, TrustedKeys.load([keys.trusted]))
