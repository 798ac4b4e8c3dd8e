"""`edge-inspect cloud ...`: the cloud side's commands. Parsing and printing only; the work is in
`cloud/`. Every command reads the cloud configuration (`--config cloud.yaml`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_cloud(sub: argparse._SubParsersAction) -> None:
    cloud = sub.add_parser("cloud", help="the cloud side: label store (labeling, retraining and deployment to come)")
    cloud.add_argument("--config", type=Path, default=Path("cloud.yaml"), help="cloud configuration (cloud.yaml)")
    commands = cloud.add_subparsers(dest="cloud_command", required=True)
    p = commands.add_parser("check-config", help="validate the cloud configuration and exit")
    p.set_defaults(func=cmd_check_config)
    labels = commands.add_parser("labels", help="the label store").add_subparsers(dest="labels_command", required=True)
    p = labels.add_parser("import", help="append every row of a label table (CSV) as a label version")
    p.add_argument("csv", type=Path)
    p.set_defaults(func=cmd_labels_import)
    p = labels.add_parser("export", help="the dataset as of a time, as a label table that `train` reads")
    p.add_argument("--as-of", default="now", help="now, seconds since the epoch, or ISO 8601 (UTC by default)")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_labels_export)
    p = labels.add_parser("history", help="every version of one image's labels, oldest first")
    p.add_argument("source_ref")
    p.set_defaults(func=cmd_labels_history)


def _store(args: argparse.Namespace):
    from cloud.labels.store import open_label_store
    from cloud.settings import load_cloud_config

    config = load_cloud_config(args.config)
    return open_label_store(config.label_store, config.region)


def cmd_check_config(args: argparse.Namespace) -> int:
    from cloud.settings import load_cloud_config

    config = load_cloud_config(args.config)
    print(f"{args.config}: OK (label store: {config.label_store.backend})")
    return 0


def cmd_labels_import(args: argparse.Namespace) -> int:
    from cloud.labels.table_io import import_csv

    print(f"imported {import_csv(_store(args), args.csv)} label versions from {args.csv}")
    return 0


def cmd_labels_export(args: argparse.Namespace) -> int:
    from cloud.labels.table_io import export_as_of, parse_time

    try:
        as_of = parse_time(args.as_of)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--as-of: {exc}") from None
    result = export_as_of(_store(args), as_of, args.out)
    print(json.dumps({"out": str(args.out), "rows": result.rows, "as_of": result.as_of,
                      "table_sha256": result.fingerprint}))
    return 0


def cmd_labels_history(args: argparse.Namespace) -> int:
    for version in _store(args).history(args.source_ref):
        print(json.dumps({**version.columns(), "deleted": version.deleted}))
    return 0
