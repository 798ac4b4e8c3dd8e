"""`edge-inspect cloud keys ...`: the Ed25519 key pair that signs shipped model cards
(cloud/deploy/signing.py does the work). Parsing and printing only; the private key is never printed."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_keys(commands: argparse._SubParsersAction) -> None:
    keys = commands.add_parser("keys", help="the key pair that signs shipped model cards (deploy.signing_key)")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    p = keys_commands.add_parser("generate", help="a new Ed25519 key pair: DIR/signing.key (0600, for "
                                                  "deploy.signing_key), DIR/signing.pub and DIR/trusted.pub (for "
                                                  "the daemons' model.public_key)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR")
    p.set_defaults(func=cmd_keys)
    p = keys_commands.add_parser("rotate", help="rotate the signing key in three steps (daemons read model.public_key "
                                                "at start only): stage a new key (trusted.pub lists both), then "
                                                "--promote it, then --finish")
    p.add_argument("--dir", type=Path, required=True, metavar="DIR")
    step = p.add_mutually_exclusive_group()
    step.add_argument("--promote", action="store_true", help="every daemon has the new trusted.pub and was "
                                                             "restarted: the staged key signs from now on")
    step.add_argument("--finish", action="store_true", help="every line serves a model signed by the new key: trust "
                                                            "only it (trusted.pub)")
    p.set_defaults(func=cmd_keys)


def cmd_keys(args: argparse.Namespace) -> int:
    """Prints the public key and what to do next; never the private key."""
    from cloud.deploy.signing import generate_keys, rotate_keys
    from edge_inspect.cli import CliError

    step = "promote" if getattr(args, "promote", False) else "finish" if getattr(args, "finish", False) else "stage"
    try:
        made = generate_keys(args.out) if args.keys_command == "generate" else rotate_keys(args.dir, step)
    except (ValueError, OSError) as exc:
        raise CliError(f"cloud keys {args.keys_command}: {exc}") from None
    restart = "daemons read it at start only: restart each one"
    if args.keys_command == "rotate" and step == "finish":
        print(f"{made.trusted} now lists only key {made.key_id}: give it to every daemon (model.public_key); {restart}")
        return 0
    if args.keys_command == "rotate" and step == "stage":
        print((made.folder / "next.pub").read_text(), end="")
        print(f"key {made.next_id} staged; key {made.key_id} still signs. {made.trusted} lists both: give it to every "
              f"daemon (model.public_key; {restart}), then: edge-inspect cloud keys rotate --dir {made.folder} --promote")
        return 0
    print(made.public.read_text(), end="")
    print(f"key {made.key_id}: private key {made.private} (mode 0600: set deploy.signing_key to it; never copy it "
          f"to a device); daemons: model.public_key: {made.trusted} (keys {', '.join(made.trusted_ids)})")
    if len(made.trusted_ids) > 1:
        print(f"once every line serves a model signed by {made.key_id}: edge-inspect cloud keys rotate --dir "
              f"{made.folder} --finish")
    return 0
