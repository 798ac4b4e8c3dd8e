"""`edge-inspect cloud ...`: the cloud side's commands. Parsing and printing only; the work is in
`cloud/`. Every command reads the cloud configuration (`--config cloud.yaml`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_cloud(sub: argparse._SubParsersAction) -> None:
    cloud = sub.add_parser("cloud", help="the cloud side: labeling and the label store (retraining and deployment to come)")
    cloud.add_argument("--config", type=Path, default=Path("cloud.yaml"), help="cloud configuration (cloud.yaml)")
    commands = cloud.add_subparsers(dest="cloud_command", required=True)
    p = commands.add_parser("check-config", help="validate the cloud configuration and exit")
    p.set_defaults(func=cmd_check_config)
    p = commands.add_parser("serve", help="sampled frames -> pre-labelled batches -> labelers -> label store, until stopped")
    p.set_defaults(func=cmd_serve)
    p = commands.add_parser("label", help="one labeling round by hand: list the bucket, make a batch now, submit it, "
                                          "collect the answers so far")
    p.add_argument("--batch", type=int, metavar="N", default=None,
                   help="at most N frames per batch (default: labeling.batch_size)")
    p.set_defaults(func=cmd_label)
    p = commands.add_parser("state-machine", help="print the Ground Truth labeling state machine (Amazon States Language)")
    p.add_argument("--adjustment-manifest-function", required=True, metavar="LAMBDA_ARN")
    p.add_argument("--verification-manifest-function", required=True, metavar="LAMBDA_ARN")
    p.add_argument("--labels-function", required=True, metavar="LAMBDA_ARN")
    p.set_defaults(func=cmd_state_machine)
    labels = commands.add_parser("labels", help="the label store").add_subparsers(dest="labels_command", required=True)
    p = labels.add_parser("import", help="append every row of a label table (CSV) as a label version")
    p.add_argument("csv", type=Path)
    p.set_defaults(func=cmd_labels_import)
    p = labels.add_parser("export", help="the dataset as of a time, as a label table that `train` reads")
    p.add_argument("--as-of", default="now", help="now, seconds since the epoch, or ISO 8601 (UTC by default)")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_labels_export)
    p = labels.add_parser("status", help="frames by state, batches by state, the open batches")
    p.set_defaults(func=cmd_labels_status)
    p = labels.add_parser("history", help="every version of one image's labels, oldest first")
    p.add_argument("source_ref")
    p.set_defaults(func=cmd_labels_history)


def _store(args: argparse.Namespace):
    from cloud.labels.store import open_label_store
    from cloud.settings import load_cloud_config

    config = load_cloud_config(args.config)
    return open_label_store(config.label_store, config.region)


def _labeling_config(args: argparse.Namespace):
    from cloud.settings import load_cloud_config
    from edge_inspect.cli import CliError

    config = load_cloud_config(args.config)
    if config.labeling is None:
        raise CliError(f"{args.config} has no `labeling` section: nothing to label with")
    return config


def cmd_check_config(args: argparse.Namespace) -> int:
    from cloud.settings import load_cloud_config

    config = load_cloud_config(args.config)
    parts = [f"label store: {config.label_store.backend}"]
    if config.labeling is not None:
        parts.append(f"labeling: {config.labeling.backend}, batches of {config.labeling.batch_size}")
    if config.storage is not None:
        parts.append(f"bucket: {config.storage.bucket}/{config.storage.prefix}")
    print(f"{args.config}: OK ({'; '.join(parts)})")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from cloud.ingest.announcements import SamplesSubscriber
    from cloud.labeling.backends import open_labeling_loop
    from cloud.labeling.serve import Timers, serve

    config = _labeling_config(args)
    loop = open_labeling_loop(config)
    subscriber = SamplesSubscriber(config.broker, config.storage.bucket) if config.broker else None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    settings = config.labeling
    serve(loop, subscriber, Timers(catch_up_s=settings.catch_up_minutes * 60, poll_s=settings.poll_interval_s), stop)
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    from cloud.labeling.backends import open_labeling_loop

    loop = open_labeling_loop(_labeling_config(args))
    loop.recover()
    offered = loop.catch_up()
    made = loop.cut(force=True, limit=args.batch)
    loop.submit_created()
    collected = loop.collect_submitted()
    print(json.dumps({"new_frames": offered.new, "set_aside": offered.set_aside,
                      "batches": [{"batch_id": b.batch_id, "line": b.line, "frames": len(b.tasks),
                                   "prelabels": sum(len(t.prelabels) for t in b.tasks)} for b in made],
                      "answers_written": sum(c.written for c in collected),
                      "batches_finished": sum(c.finished for c in collected)}))
    return 0


def cmd_state_machine(args: argparse.Namespace) -> int:
    from cloud.labeling.step_functions import StateMachineSettings, labeling_state_machine_json
    from device.config import validate_mapping

    print(labeling_state_machine_json(validate_mapping(StateMachineSettings, {
        "write_adjustment_manifest_function": args.adjustment_manifest_function,
        "write_verification_manifest_function": args.verification_manifest_function,
        "write_labels_function": args.labels_function}, "state-machine")))
    return 0


def cmd_labels_status(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from cloud.ingest.state import LabelingState

    config = _labeling_config(args)
    print(json.dumps(asdict(LabelingState(config.labeling.state_path).status()), indent=2))
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
