"""`edge-inspect cloud ...`: the cloud side's commands. Parsing and printing only; the work is in
`cloud/`. Every command reads the cloud configuration (`--config cloud.yaml`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edge_inspect.keys_cli import add_keys


def add_cloud(sub: argparse._SubParsersAction) -> None:
    cloud = sub.add_parser("cloud", help="the cloud side: labeling, the label store, retraining and the model registry")
    cloud.add_argument("--config", type=Path, default=Path("cloud.yaml"), help="cloud configuration (cloud.yaml)")
    commands = cloud.add_subparsers(dest="cloud_command", required=True)
    p = commands.add_parser("check-config", help="validate the cloud configuration and exit")
    p.set_defaults(func=cmd_check_config)
    p = commands.add_parser("serve", help="sampled frames -> pre-labelled batches -> labelers -> label store, until stopped")
    p.add_argument("--rebuild-state", action="store_true",
                   help="when labeling.state_path is missing, empty or damaged: keep it aside and rebuild it from "
                        "the label store (frames with label rows are not sent to labelers again) instead of refusing "
                        "to start; on a sound state, mark labelled what the label store holds as approved")
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
    _add_pipeline(commands)
    add_keys(commands)
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


def _add_pipeline(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("train", help="run the retraining pipeline now on site (or resume the interrupted run): "
                                          "preprocess, train, evaluate, gate, register (needs the 'train' extra)")
    p.add_argument("--as-of", default=None, help="labels as of: now (default), seconds since the epoch, or ISO 8601")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="override a pipeline parameter for this run, e.g. train.epochs=5 (repeatable)")
    p.set_defaults(func=cmd_train)
    sm = commands.add_parser("pipeline", help="the same pipeline on SageMaker Pipelines (pipeline.sagemaker in cloud.yaml)")
    sm_commands = sm.add_subparsers(dest="pipeline_command", required=True)
    p = sm_commands.add_parser("definition", help="print the pipeline definition (JSON); builds offline but for S3 "
                                                  "bucket checks the SDK makes")
    p.set_defaults(func=cmd_pipeline_definition)
    p = sm_commands.add_parser("upsert", help="create or update the pipeline in SageMaker (needs AWS credentials)")
    p.set_defaults(func=cmd_pipeline_upsert)
    p = sm_commands.add_parser("start", help="start an execution with the configured parameters (needs AWS credentials)")
    p.add_argument("--as-of", default=None, help="labels as of: now (default), seconds since the epoch, or ISO 8601")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_pipeline_start)
    runs = commands.add_parser("runs", help="pipeline runs").add_subparsers(dest="runs_command", required=True)
    p = runs.add_parser("list", help="every run: when, state, step, outcome")
    p.set_defaults(func=cmd_runs_list)
    p = runs.add_parser("abandon", help="mark an interrupted run failed instead of resuming it")
    p.add_argument("run_id")
    p.add_argument("--reason", required=True)
    p.set_defaults(func=cmd_runs_abandon)
    models = commands.add_parser("models", help="the model registry").add_subparsers(dest="models_command", required=True)
    p = models.add_parser("list", help="every version: state, test mAP, parent")
    p.set_defaults(func=cmd_models_list)
    p = models.add_parser("show", help="one version's card (JSON)")
    p.add_argument("version")
    p.set_defaults(func=cmd_models_show)
    for name, verb in (("approve", "approve a version for the lines"), ("reject", "reject a version")):
        p = models.add_parser(name, help=verb)
        p.add_argument("version")
        p.add_argument("--by", default=None, help="who decides (default: the login name)")
        p.add_argument("--reason", required=name == "reject", default=None)
        p.set_defaults(func=cmd_models_decide, decision=name)
        if name == "approve":
            p.add_argument("--no-deploy", action="store_true", help="only mark it Approved (on site, approving "
                                                                     "deploys it when cloud.yaml has `deploy`)")
    p = models.add_parser("mark-deployed", help="record that the lines run an Approved version (deployed by other "
                                                "means, or before deployments were recorded): it becomes production")
    p.add_argument("version")
    p.add_argument("--by", default=None, help="who says so (default: the login name)")
    p.add_argument("--reason", required=True, help="how the lines got it, for the record")
    p.set_defaults(func=cmd_models_mark_deployed)
    deploy = commands.add_parser("deploy", help="approved versions to the lines: canary first, then the fleet")
    deploy_commands = deploy.add_subparsers(dest="deploy_command", required=True)
    p = deploy_commands.add_parser("run", help="on site: deploy an Approved version now (what approve does)")
    p.add_argument("version")
    p.set_defaults(func=cmd_deploy_run)
    p = deploy_commands.add_parser("log", help="every step of every rollout (or of one version)")
    p.add_argument("version", nargs="?")
    p.set_defaults(func=cmd_deploy_log)
    p = deploy_commands.add_parser("state-machine", help="print the deployment state machine (Amazon States Language)")
    for name in ("prepare", "deploy", "judge", "rollback"):
        p.add_argument(f"--{name}-function", required=True, help=f"Lambda ARN running handlers.lambda_{name}")
    p.add_argument("--poll-seconds", type=int, default=60)
    p.set_defaults(func=cmd_deploy_state_machine)
    p = commands.add_parser("fleet", help="which model every line serves, since when, and its alert rate")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_fleet)
    p = commands.add_parser("infra", help="write the CloudFormation template of every AWS resource, its parameters "
                                          "filled from the cloud configuration")
    p.add_argument("--out", type=Path, required=True, help="folder to write the template into")
    p.set_defaults(func=cmd_infra)


def _config(args: argparse.Namespace):
    from cloud.settings import load_cloud_config

    return load_cloud_config(args.config)


def _registry(args: argparse.Namespace):
    from cloud.pipeline.backends import pipeline_settings
    from cloud.registry.backends import open_registry

    config = _config(args)
    settings = pipeline_settings(config)
    return open_registry(settings.registry, settings.params.model_group, config.region)


def cmd_train(args: argparse.Namespace) -> int:
    from cloud.pipeline.backends import open_onsite
    from cloud.pipeline.onsite import start_or_resume
    from cloud.training import command_line

    config = _config(args)
    params = _run_params(args, config)  # --as-of checked before anything is opened
    record = start_or_resume(open_onsite(config), params, command_line())
    print(record.line())
    return 0 if record.state in ("registered", "refused") else 1


def _run_params(args: argparse.Namespace, config):
    from cloud.labels.table_io import parse_time
    from cloud.pipeline.backends import pipeline_settings, with_overrides

    params = with_overrides(pipeline_settings(config).params, args.param)
    if args.as_of is not None:
        try:
            params = params.model_copy(update={"as_of": parse_time(args.as_of)})
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"--as-of: {exc}") from None
    return params


def _sagemaker_pipeline(args: argparse.Namespace):
    from cloud.pipeline.backends import PipelineConfigError, pipeline_settings
    from cloud.pipeline.sagemaker_pipeline import build_pipeline

    config = _config(args)
    settings = pipeline_settings(config)
    if settings.sagemaker is None or config.region is None:
        raise PipelineConfigError("`pipeline.sagemaker` and `region` are needed for SageMaker Pipelines")
    return config, settings.sagemaker, build_pipeline(settings.sagemaker, settings.params, config.region)


def cmd_pipeline_definition(args: argparse.Namespace) -> int:
    _, _, pipeline = _sagemaker_pipeline(args)
    print(json.dumps(json.loads(pipeline.definition()), indent=2))
    return 0


def cmd_pipeline_upsert(args: argparse.Namespace) -> int:
    _, settings, pipeline = _sagemaker_pipeline(args)
    print(json.dumps({"PipelineArn": pipeline.upsert(role_arn=settings.role_arn)["PipelineArn"]}))
    return 0


def cmd_pipeline_start(args: argparse.Namespace) -> int:
    import boto3

    from cloud.pipeline.onsite import new_run_id
    from cloud.pipeline.sagemaker_pipeline import start_execution

    config, settings, _ = _sagemaker_pipeline(args)
    client = boto3.Session(region_name=config.region).client("sagemaker")
    print(json.dumps({"PipelineExecutionArn": start_execution(client, settings, _run_params(args, config), new_run_id())}))
    return 0


def cmd_runs_list(args: argparse.Namespace) -> int:
    from cloud.pipeline.backends import pipeline_settings
    from cloud.pipeline.runs import RunStore

    for record in RunStore(pipeline_settings(_config(args)).state_path).runs():
        print(record.line())
    return 0


def cmd_runs_abandon(args: argparse.Namespace) -> int:
    from cloud.pipeline.backends import open_onsite
    from cloud.pipeline.onsite import abandon

    print(abandon(open_onsite(_config(args)), args.run_id, args.reason).line())
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    """Every version; one whose card cannot be read is shown as unreadable, the others still listed."""
    from cloud.registry.registry import UnreadableVersion, production

    registry = _registry(args)
    entries = registry.entries()
    current = production(registry)
    for v in entries:
        if isinstance(v, UnreadableVersion):
            print(f"{v.group} v{v.version}  unreadable: {v.reason}")
            continue
        test = v.card.evaluation.candidate
        deployment = v.deployment.status.value if v.deployment else "-"
        mark = "  (production)" if current is not None and v.version == current.version else ""
        print(f"{v.group} v{v.version}  {v.status.value:<21} {deployment:<11} test mAP50 {test.map50:.3f} mAP50-95 "
              f"{test.map50_95:.3f}  parent {v.card.parent_version or '-'}  {v.created}"
              + (f"  {v.decided_by} {v.decided_at}" if v.decided_by else "") + mark)
    return 0


def cmd_models_show(args: argparse.Namespace) -> int:
    print(_registry(args).get(args.version).model_dump_json(indent=2))
    return 0


def cmd_models_mark_deployed(args: argparse.Namespace) -> int:
    import getpass

    from cloud.registry.registry import Approval, DeploymentStatus, RegistryError, production

    registry = _registry(args)
    if registry.get(args.version).status is not Approval.APPROVED:
        raise RegistryError(f"version {args.version} is not Approved: only an Approved version can be production")
    version = registry.record_deployment(args.version, DeploymentStatus.DEPLOYED,
                                         f"marked by {args.by or getpass.getuser()}: {args.reason}")
    current = production(registry)
    print(f"{version.group} v{version.version}: deployed ({args.reason}); production is "
          f"{f'v{current.version}' if current else 'none'}")
    return 0


def cmd_models_decide(args: argparse.Namespace) -> int:
    import getpass

    from cloud.registry.registry import Approval

    status = Approval.APPROVED if args.decision == "approve" else Approval.REJECTED
    registry = _registry(args)
    version = registry.decide(args.version, status, args.by or getpass.getuser(), args.reason)
    print(f"{version.group} v{version.version}: {version.status.value} by {version.decided_by} at {version.decided_at}")
    config = _config(args)
    if status is not Approval.APPROVED or args.no_deploy or config.deploy is None:
        from cloud.registry.registry import production

        if status is Approval.APPROVED:  # production is what the fleet runs, not what was approved
            current = production(registry)
            print(f"not deployed: production (what retraining starts from) stays "
                  f"{f'v{current.version}' if current else 'none'} until a rollout of this version finishes (or, for "
                  f"lines updated by other means, `cloud models mark-deployed {version.version}`)")
        return 0
    if config.deploy.backend != "local":
        print("the deployment state machine starts on AWS on this approval (EventBridge)")
        return 0
    return cmd_deploy_run(args)


def cmd_deploy_run(args: argparse.Namespace) -> int:
    """Exit 0 when canary and fleet serve the version, 4 when it was rolled back."""
    from cloud.deploy.backends import onsite_rollout

    # a version that fails to ship raises DeployError (exit 2, one line) after it is marked ship-failed
    with onsite_rollout(_config(args), say=lambda line: print(line, flush=True)) as rollout:
        result = rollout.run(args.version)
    print(f"v{result.version}: {result.outcome}" + (f" on the {result.stage}: {result.reason}" if result.stage else ""))
    return 0 if result.outcome == "deployed" else 4


def cmd_deploy_log(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from cloud.deploy.backends import deploy_settings
    from cloud.deploy.rollout import RolloutLog

    for when, version, stage, step, detail in RolloutLog(deploy_settings(_config(args)).state_path).steps(args.version):
        stamp = datetime.fromtimestamp(when, timezone.utc).isoformat(timespec="seconds")
        print(f"{stamp}  v{version}  {stage or '-':<6}  {step}: {detail}")
    return 0


def cmd_deploy_state_machine(args: argparse.Namespace) -> int:
    from cloud.deploy.step_functions import DeployMachineSettings, deployment_state_machine_json

    print(deployment_state_machine_json(DeployMachineSettings(
        prepare_function=args.prepare_function, deploy_function=args.deploy_function,
        judge_function=args.judge_function, rollback_function=args.rollback_function, poll_seconds=args.poll_seconds)))
    return 0


def cmd_infra(args: argparse.Namespace) -> int:
    from cloud.infra.template import write_template
    from edge_inspect.cli import CliError

    try:
        paths = write_template(_config(args), args.out)
    except ValueError as exc:
        raise CliError(f"cloud infra: {exc}") from exc
    for path in paths:
        print(path)
    return 0


def cmd_fleet(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from cloud.deploy.backends import fleet_view

    rows = fleet_view(_config(args))
    if args.json:
        print(json.dumps([row.model_dump() for row in rows], indent=2))
        return 0

    def when(epoch: float | None) -> str:
        return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds") if epoch else "-"

    print(f"{'thing':<20} {'online':<7} {'version':<10} {'sha256':<13} {'since':<26} {'alerts/min':>10}  last refusal")
    for r in rows:
        online = "-" if r.online is None else ("yes" if r.online else "no")
        rate = "-" if r.alerts_per_minute is None else f"{r.alerts_per_minute:.2f}"
        print(f"{r.thing:<20} {online:<7} {r.version or '-':<10} {(r.sha256 or '-')[:12]:<13} {when(r.since):<26} "
              f"{rate:>10}  {r.last_rejection or '-'}")
    return 0


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
    if config.deploy is not None:
        parts.append(f"deploy: {config.deploy.backend}, canary {', '.join(config.deploy.canary) or 'by thing group'}, "
                     f"{'INT8 when it passes the gate' if config.deploy.quantize else 'FP32'}")
    print(f"{args.config}: OK ({'; '.join(parts)})")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from cloud.ingest.announcements import SamplesSubscriber
    from cloud.labeling.backends import open_labeling_loop
    from cloud.labeling.serve import StopNow, Stopper, Timers, open_waiting, serve

    stopper = Stopper().install()  # before the slow start: a stop during it is a stop too
    config = _labeling_config(args)
    try:
        with stopper.round():  # a start blocked on a peer is cut short by a stop, like a round
            # a full state disk at start waits (and a stop ends the wait), as in the loop
            loop = open_waiting(lambda: open_labeling_loop(config, rebuild=args.rebuild_state), stopper.event)
            if loop is None:
                raise StopNow()
            if loop.state.rebuilding or args.rebuild_state:  # a sound state is reconciled
                rebuilt = loop.rebuild_from_labels()
                logging.getLogger("cloud.labeling").warning(
                    "labeling state rebuilt from the label store: %d frames labelled, %d with only unapproved rows "
                    "set aside, %d still pending or batched here marked labelled; frames with no label row are "
                    "taken in again from the bucket", rebuilt.labelled, rebuilt.set_aside, rebuilt.marked)
    except StopNow:
        print("stopped while starting", file=sys.stderr)
        return 0
    subscriber = SamplesSubscriber(config.broker, config.storage.bucket) if config.broker else None
    settings = config.labeling
    retrain, retrain_s, triggers = None, 600.0, []
    if config.pipeline is not None:
        def retrain() -> object:
            # made at its first use, inside serve's guard: a registry that fails here (a lost
            # version card) is logged and tried again; labeling goes on meanwhile
            if not triggers:
                from cloud.pipeline.trigger import RetrainTrigger
                from cloud.training import command_line

                triggers.append(RetrainTrigger(config, command_line()))
            return triggers[0].check()

        retrain_s = config.pipeline.check_minutes * 60
    timers = Timers(catch_up_s=settings.catch_up_minutes * 60, poll_s=settings.poll_interval_s, retrain_s=retrain_s)
    from cloud.deploy.backends import fleet_watcher

    try:  # the fleet store is the deploy side's: a damaged one never stops labelling
        watcher = fleet_watcher(config)
        if watcher is not None:
            watcher.start()
    except Exception as exc:
        watcher = None
        print(f"serve: no fleet watcher: the fleet store {config.deploy.state_path} cannot be used "
              f"({type(exc).__name__}: {exc}); labelling goes on, and rollouts measure the lines on their own",
              file=sys.stderr)
    try:
        serve(loop, subscriber, timers, stopper.event, retrain, stopper)
    finally:
        if watcher is not None:
            watcher.stop()
        if triggers and triggers[0].running():
            print("stopping the pipeline run in progress; it resumes at the next start", file=sys.stderr)
            triggers[0].stop()
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    from cloud.labeling.backends import open_labeling_loop

    loop = open_labeling_loop(_labeling_config(args), who="cloud label")
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

    from cloud.ingest.state import BATCH_STATES, FRAME_STATES, LabelingState, Status

    config = _labeling_config(args)
    path = config.labeling.state_path
    if not path.exists():  # a status never makes a state file
        print(f"no labeling state at {path} yet (`cloud serve` makes it)", file=sys.stderr)
        status = Status({s: 0 for s in FRAME_STATES}, {s: 0 for s in BATCH_STATES}, [], 0)
    else:
        status = LabelingState(path).status()
    print(json.dumps(asdict(status), indent=2))
    return 0


def cmd_labels_import(args: argparse.Namespace) -> int:
    from cloud.labels.store import open_label_store
    from cloud.labels.table_io import import_csv

    config = _config(args)
    # class ids are checked against the model's classes when the configuration names them
    classes = len(config.pipeline.params.class_names) if config.pipeline is not None else None
    written = import_csv(open_label_store(config.label_store, config.region), args.csv, classes)
    print(f"imported {written} label versions from {args.csv}")
    return 0


def cmd_labels_export(args: argparse.Namespace) -> int:
    from cloud.labels.table_io import export_as_of, parse_time

    try:
        as_of = parse_time(args.as_of)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--as-of: {exc}") from None
    result = export_as_of(_store(args), as_of, args.out)
    print(json.dumps({"out": str(args.out), "rows": result.rows, "as_of": result.as_of,
                      "table_sha256": result.fingerprint, "set_aside": len(result.set_aside)}))
    return 0


def cmd_labels_history(args: argparse.Namespace) -> int:
    store = _store(args)
    for version in store.history(args.source_ref):
        print(json.dumps({**version.columns(), "deleted": version.deleted}))
    for aside in store.set_aside:  # stored rows that fail the label rules: logged, and shown here with why
        print(json.dumps({"source_ref": aside.source_ref, "event_time": aside.event_time, "set_aside": aside.reason}))
    return 0
