"""The `edge-inspect` command. Each subcommand imports what it needs when it runs, so the device
commands work on an install without the `train`/`cloud` extras."""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from pathlib import Path

from device.bundled import bundled_model_path
from device.redact import redact
from edge_inspect.cloud_cli import add_cloud


class CliError(Exception):
    """An error to print as one line and exit 2, without a traceback."""


def _add_runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runtime", choices=["onnxruntime", "openvino", "auto"], default="auto",
                   help="inference runtime (default auto: openvino for an .xml IR, onnxruntime for an .onnx)")


def _add_detect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("detect", help="detect defects in images or folders of images")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    p.add_argument("--model", type=Path, default=None,
                   help="ONNX model or OpenVINO IR .xml (default: the bundled model)")
    _add_runtime(p)
    p.add_argument("--conf", type=float, default=0.25, help="minimum confidence (default 0.25)")
    p.add_argument("--iou", type=float, default=0.7, help="NMS IoU threshold (default 0.7)")
    p.add_argument("--save", type=Path, default=None, metavar="DIR", help="write annotated copies here")
    p.add_argument("--json", action="store_true", help="print one JSON object per image and line")
    p.set_defaults(func=cmd_detect)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="mAP of an ONNX model on a YOLO dataset, through the device detector")
    p.add_argument("--model", type=Path, default=None, help="ONNX model (default: the bundled model)")
    p.add_argument("--data", type=Path, required=True, help="data.yaml, or a folder images/ with labels/ beside")
    p.add_argument("--split", default="test", help="split of data.yaml to score (default: test)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=cmd_eval)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a detector from the label table (needs the 'train' extra)")
    p.add_argument("--labels", type=Path, required=True, help="label table (CSV, Feature Store shape)")
    p.add_argument("--images-root", type=Path, default=None, help="folder source_ref is relative to")
    p.add_argument("--out", type=Path, required=True, help="run folder; run again to resume")
    p.add_argument("--name", default="metal-tags-yolov8n", help="model name (file name of the ONNX)")
    p.add_argument("--model-yaml", default="yolov8n.yaml")
    p.add_argument("--imgsz", type=int, default=448)
    p.add_argument("--epochs", type=int, default=120)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--split", default="0.70,0.15,0.15", help="train,val,test fractions by photo")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--aug", action="append", default=[], metavar="KEY=VALUE",
                   help="Ultralytics augmentation override, e.g. --aug flipud=0.5 (repeatable)")
    p.add_argument("--mlflow", action="store_true", help="let Ultralytics log to MLflow")
    p.add_argument("--fresh", action="store_true", help="discard a previous run in --out")
    p.set_defaults(func=cmd_train)


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="the edge daemon: cameras -> detector -> defect alerts")
    p.add_argument("--config", type=Path, default=None,
                   help="YAML config (under Greengrass the component configuration is merged over it)")
    p.add_argument("--check-config", action="store_true", help="validate the config and the model, then exit")
    p.set_defaults(func=cmd_run)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the daemon on a demo line, alerts arriving over a private MQTT broker")
    p.add_argument("--model", type=Path, default=None, help="ONNX model (default: the bundled model)")
    p.set_defaults(func=cmd_demo)


def _add_quantize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="INT8 for ONNX Runtime or OpenVINO, behind an accuracy and fidelity gate "
                                        "(needs the 'train' extra; OpenVINO also the 'bench' extra)")
    p.add_argument("model", type=Path, help="FP32 ONNX model (its model card names its training photos)")
    p.add_argument("--out", type=Path, required=True,
                   help="INT8 model to write, only if the gate passes (.onnx for onnxruntime, .xml for openvino)")
    p.add_argument("--runtime", choices=["onnxruntime", "openvino"], default="onnxruntime")
    p.add_argument("--labels", type=Path, default=None,
                   help="label table (labels.csv): calibrate on the model's training photos, gate on all the others")
    p.add_argument("--images-root", type=Path, default=None, help="folder the table's paths are relative to "
                                                                    "(default: the table's folder)")
    p.add_argument("--calib", type=Path, default=None, help="calibrate on this folder of frames instead (the spool)")
    p.add_argument("--data", type=Path, default=None, help="gate on this data.yaml's --split instead")
    p.add_argument("--split", default="test")
    p.add_argument("--max-drop", type=float, default=0.01, help="largest mAP50 loss allowed (default 0.01)")
    p.add_argument("--max-drop-map50-95", type=float, default=0.02, help="largest mAP50-95 loss (default 0.02)")
    p.add_argument("--alert-threshold", type=float, default=0.5, help="the line's alert confidence (default 0.5)")
    p.add_argument("--min-fidelity", type=float, default=0.98,
                   help="share of the FP32 model's alerts the INT8 model must raise too (default 0.98)")
    p.add_argument("--match-iou", type=float, default=0.5,
                   help="an INT8 box raises an FP32 alert when it overlaps it this much (default 0.5; deploy: 0.9)")
    p.add_argument("--max-mean-score-diff", type=float, default=None,
                   help="largest mean |INT8 - FP32| score over FP32's alerts (default: not gated; deploy: 0.05)")
    p.add_argument("--candidates", default=None, help="comma-separated candidate names to try (default: all)")
    p.add_argument("--calib-method", default="minmax", choices=["minmax", "entropy", "percentile"])
    p.add_argument("--calib-limit", type=int, default=200, help="calibration frames at most")
    p.set_defaults(func=cmd_quantize)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure every model x runtime here, and recommend the fastest that is right "
                                     "on this machine (JSON, Markdown, PNG, recommended.yaml)")
    p.add_argument("--model", type=Path, action="append", default=None,
                   help="model to measure (.onnx or OpenVINO .xml; repeatable; default: every bundled model)")
    p.add_argument("--runtime", action="append", choices=["onnxruntime", "openvino"], default=None,
                   help="runtime to measure (repeatable; default: every one installed)")
    p.add_argument("--out", type=Path, default=Path("bench-output"), help="folder for the outputs")
    p.add_argument("--labels", type=Path, default=None, help="label table: accuracy on the photos outside the "
                                                              "model's training split (default: the repo's)")
    p.add_argument("--data", type=Path, default=None, help="score accuracy on this data.yaml's --split instead")
    p.add_argument("--split", default="test")
    p.add_argument("--runs", type=int, default=200, help="timed inference calls per setup")
    p.add_argument("--threads", type=int, default=None, help="inference threads (default: the runtime's)")
    p.add_argument("--video-seconds", type=float, default=30.0, help="length of the daemon's test video")
    p.add_argument("--no-peers", action="store_true", help="skip the Ultralytics comparisons")
    p.add_argument("--memory-budget-mb", type=float, default=200.0,
                   help="recommend only setups whose daemon peak memory fits (default 200)")
    p.set_defaults(func=cmd_bench)


def _add_self_test(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("self-test", help="run a model's self-test on this machine, or write it into its card")
    p.add_argument("model", type=Path, help="ONNX model or OpenVINO IR .xml, with a model card beside it")
    _add_runtime(p)
    p.add_argument("--write", action="store_true", help="(re)write the card's self-test instead of running it")
    p.add_argument("--reference", type=Path, default=None,
                   help="with --write: the FP32 model whose detections are the reference (default: MODEL), "
                        "run on its own file's runtime (.xml: openvino, .onnx: onnxruntime); MODEL then runs "
                        "on --runtime and must pass the new self-test")
    p.add_argument("--frames", type=Path, nargs="+", default=[], help="with --write: the reference frames (JPEG)")
    p.set_defaults(func=cmd_self_test)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="re-export a model at the camera's letterboxed shape, with a model card "
                                      "(needs the 'train' extra)")
    p.add_argument("model", type=Path, help="Ultralytics YOLO detection ONNX with its model card beside it")
    p.add_argument("--out", type=Path, required=True, help="ONNX model to write (its card is written beside it)")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--frame-size", metavar="WxH",
                      help="the camera's frame size, e.g. 450x300: the model's long side stays, the short side "
                           "fits the letterboxed frame (rounded up to the stride)")
    size.add_argument("--imgsz", type=int, nargs=2, metavar=("H", "W"), help="input height and width instead")
    p.add_argument("--labels", type=Path, default=None,
                   help="label table for the held-out figures (default: data/metal-tags/labels.csv)")
    p.add_argument("--images-root", type=Path, default=None, help="folder the table's paths are relative to")
    p.add_argument("--model-yaml", default=None, help="architecture YAML (default: the card's training.model_yaml)")
    p.set_defaults(func=cmd_export)


def _add_drift(sub: argparse._SubParsersAction) -> None:
    from device.rehearsal import DRIFTS

    p = sub.add_parser("drift-reference", help="measure a model's drift reference (its training images and its "
                                               "detections on held-out photos) and write it into its card")
    p.add_argument("model", type=Path, help="ONNX model with its model card beside it (the card names its training photos)")
    p.add_argument("--labels", type=Path, default=None, help="label table (default: data/metal-tags/labels.csv)")
    p.add_argument("--images-root", type=Path, default=None, help="folder the table's paths are relative to")
    p.add_argument("--alert-threshold", type=float, default=0.5, help="detections are counted at this score")
    p.set_defaults(func=cmd_drift_reference)
    p = sub.add_parser("drift-check", help="replay images through the drift monitor, as a camera showing them would, "
                                           "and print the verdict and the measures")
    p.add_argument("model", type=Path, help="ONNX model whose card has a drift reference")
    p.add_argument("images", type=Path, nargs="+", help="images or folders, shown in this order")
    p.add_argument("--drift", choices=sorted(DRIFTS), default=None, help="change every image as a drifted line would")
    p.add_argument("--repeat", type=int, default=1, help="show the images this many times (shuffled each time)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_drift_check)


def _add_loop(sub: argparse._SubParsersAction) -> None:
    from device.rehearsal import DRIFTS

    p = sub.add_parser("loop", help="the closed loop rehearsed on this machine: the line drifts, the device notices, "
                                    "the loop labels, retrains, gates, deploys (needs the 'loop' extra)")
    p.add_argument("--drift", choices=sorted(DRIFTS), required=True, help="what changes on the line")
    p.add_argument("--out", type=Path, required=True, help="the rehearsal's folder (report.json, .md, .png)")
    p.add_argument("--auto-approve", action="store_true",
                   help="approve each registered version (the demo only; otherwise run `cloud models approve`)")
    p.add_argument("--labels", type=Path, default=None, help="label table (default: data/metal-tags/labels.csv)")
    p.add_argument("--model", type=Path, default=None, help="production model at the start (default: the bundled one)")
    p.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs per turn (default 6)")
    p.add_argument("--trigger-labels", type=int, default=None, help="new labels that start a run (default 100)")
    p.add_argument("--max-turns", type=int, default=None, help="turns before giving up on the drift (default 2)")
    p.add_argument("--baseline-s", type=float, default=None, help="undrifted line before the change (default 30)")
    p.add_argument("--after-s", type=float, default=None,
                   help="the line runs on after the new model is in, for the report's alerts (default 60)")
    p.add_argument("--time-limit-minutes", type=float, default=None, help="the whole rehearsal (default 20)")
    p.add_argument("--imgsz", type=int, default=None, help="training image size (default 448)")
    p.add_argument("--fps", type=float, default=None, help="the line video's frame rate (default 5)")
    p.add_argument("--hold-frames", type=int, default=None, help="frames each tag stays in view (default 5)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a pipeline parameter, as for `cloud train` (e.g. gate.tolerance=0.05)")
    p.set_defaults(func=cmd_loop)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-inspect", description="Visual quality inspection at the edge.")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_detect(sub)
    _add_eval(sub)
    _add_train(sub)
    _add_run(sub)
    _add_demo(sub)
    _add_quantize(sub)
    _add_bench(sub)
    _add_self_test(sub)
    _add_export(sub)
    _add_drift(sub)
    _add_loop(sub)
    add_cloud(sub)
    return parser


def cmd_detect(args: argparse.Namespace) -> int:
    from device.config import resolve_runtime
    from device.detect_files import detect_files

    model_path = args.model or bundled_model_path()
    summary = detect_files(
        args.paths,
        model_path=model_path,
        runtime=resolve_runtime(args.runtime, model_path),
        conf=args.conf,
        iou=args.iou,
        save_dir=args.save,
        emit=(lambda obj: print(json.dumps(obj), flush=True)) if args.json else None,
    )
    print(summary.line(), file=sys.stderr if args.json else sys.stdout)
    return 0 if not summary.failed else 1


def cmd_run(args: argparse.Namespace) -> int:
    from device.bundled import bundled_model_path
    from device.config import load_config
    from device.daemon import build_daemon, install_signal_handlers
    from device.logs import setup_json_logging
    from device.preflight import preflight

    if args.check_config:
        if args.config is None:
            raise CliError("--check-config needs --config FILE")
        config = load_config(args.config)
        choice = preflight(config, config.model.path or bundled_model_path())  # what `run` checks first
        fallback = f"; model.path refused, the fallback would serve: {choice.refused}" if choice.refused else ""
        print(f"{args.config}: OK ({len(config.cameras)} camera(s), model {choice.detector.info.name}, "
              f"thing {config.thing_name}){fallback}")
        return 0
    setup_json_logging()
    daemon = build_daemon(args.config)
    logging.getLogger().setLevel(daemon.config.log_level)
    install_signal_handlers(daemon)
    # Leave without interpreter finalization: a camera thread stuck in FFmpeg would abort it
    # (SIGABRT). The daemon's own shutdown has flushed everything by then; see device.lifecycle.
    from device.lifecycle import run_then_exit

    run_then_exit(daemon.run)


def cmd_demo(args: argparse.Namespace) -> int:
    from edge_inspect.demo import run_demo

    logging.getLogger().setLevel(logging.WARNING)
    return run_demo(args.model)


def cmd_quantize(args: argparse.Namespace) -> int:
    from cloud.quantize import GateSettings, quantize_model

    settings = GateSettings(max_drop=args.max_drop, max_drop_map50_95=args.max_drop_map50_95,
                            alert_threshold=args.alert_threshold, min_fidelity=args.min_fidelity,
                            match_iou=args.match_iou, max_mean_score_diff=args.max_mean_score_diff)
    report = quantize_model(args.model, args.out, runtime=args.runtime, labels=args.labels,
                            images_root=args.images_root, calib=args.calib, data=args.data, split=args.split,
                            settings=settings, method=args.calib_method, calib_limit=args.calib_limit,
                            only=args.candidates.split(",") if args.candidates else None)
    fp32, int8 = report["fp32"], report["int8"]
    print(f"wrote {args.out} ({report['chosen']}, {len(report['float_nodes'])} nodes in float): "
          f"latency {int8['latency_ms']:.1f} ms vs FP32 {fp32['latency_ms']:.1f} ms; mAP50 {int8['map50']:.4f} vs "
          f"FP32 {fp32['map50']:.4f}, mAP50-95 {int8['map50_95']:.4f} vs {fp32['map50_95']:.4f}; raises "
          f"{int8['fidelity']['found']} of FP32's {int8['fidelity']['fp32_alerts']} alerts (IoU >= {settings.match_iou}, "
          f"mean score difference {int8['fidelity']['mean_score_diff']}) on {report['gate']['photos']}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from benchmarks.bench import default_models, markdown, run_benchmark

    models = args.model or default_models()
    if not models:
        raise CliError("no model to measure: pass --model")
    results = run_benchmark(models, args.out, runs=args.runs, threads=args.threads, video_seconds=args.video_seconds,
                            labels=args.labels, data=args.data, split=args.split, runtimes=args.runtime,
                            with_peers=not args.no_peers, memory_budget_mb=args.memory_budget_mb)
    print(markdown(results))
    return 0


def cmd_self_test(args: argparse.Namespace) -> int:
    from device import cpu
    from device.config import resolve_runtime
    from device.detector import Detector
    from device.model_card import write_self_test
    from device.model_manager import self_test

    if args.write:
        if not args.frames:
            raise CliError("--write needs --frames IMAGE...")
        # the reference runs on its own file's runtime; the model on --runtime, and must pass
        card = write_self_test(args.model, args.reference or args.model, args.frames, args.runtime)
        boxes = sum(len(f.detections) for f in card.self_test.frames)
        print(f"wrote the self-test of {args.model.name}: {len(card.self_test.frames)} frames, {boxes} reference boxes")
        return 0
    runtime = resolve_runtime(args.runtime, args.model)
    result = self_test(Detector(args.model, runtime=runtime))
    if result is None:
        raise CliError(f"{args.model.name} has no self-test in its card")
    print(f"{args.model.name}: self-test passed on this CPU ({cpu.describe()}) with {runtime}: {result.summary()}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from cloud.export import export_for_camera, parse_frame_size
    from cloud.training import command_line
    from edge_inspect.paths import METAL_TAGS_DIR

    result = export_for_camera(
        args.model, args.out, args.labels or METAL_TAGS_DIR / "labels.csv",
        frame_size=parse_frame_size(args.frame_size) if args.frame_size is not None else None,
        imgsz=tuple(args.imgsz) if args.imgsz else None, images_root=args.images_root,
        model_yaml=args.model_yaml, command=command_line())
    print(result.line())
    return 0


def cmd_drift_reference(args: argparse.Namespace) -> int:
    from cloud.drift_profile import from_labels, write_reference
    from edge_inspect.paths import METAL_TAGS_DIR

    reference = from_labels(args.model, args.labels or METAL_TAGS_DIR / "labels.csv", args.images_root,
                            args.alert_threshold)
    write_reference(args.model, reference)
    print(f"wrote the drift reference of {args.model.name}: {reference.made_from}")
    return 0


def cmd_drift_check(args: argparse.Namespace) -> int:
    from device import cpu
    from device.detector import Detector
    from device.drift import DriftMonitor, DriftSettings
    from device.images import list_images, read_image
    from device.model_manager import drift_reference_of
    from device.rehearsal import apply_drift
    from device.runtimes import resolve_runtime

    detector = Detector(args.model, runtime=resolve_runtime("auto", args.model))
    reference = drift_reference_of(detector)
    if reference is None:
        raise CliError(f"{args.model.name}'s card has no drift reference (edge-inspect drift-reference writes one)")
    monitor = DriftMonitor(DriftSettings())
    monitor.use(reference, detector.info.sha256)
    paths, rng = list_images(args.images), random.Random(args.seed)
    highest, raised = 0.0, []
    for turn in range(args.repeat):
        order = paths if turn == 0 else rng.sample(paths, len(paths))
        for path in order:
            image = apply_drift(args.drift, read_image(path))
            verdict = monitor.observe("check", image, [d.confidence for d in detector.detect(image)])
            if verdict and verdict.state != "unknown":
                highest = max(highest, verdict.score)
                if verdict.changed and verdict.state == "drifting":
                    raised.append(f"{path.name} ({verdict.worst} {verdict.score:.1f})")
    final = monitor.verdicts()
    if not final:
        raise CliError(f"fewer than {monitor.settings.min_frames} distinct images: no verdict")
    v = final[0]
    print(f"{len(paths) * args.repeat} frames ({v.frames} distinct in the window), drift {args.drift or 'none'}: "
          f"{v.state}; highest score {highest:.2f} (raise at {monitor.settings.raise_at}); CPU {cpu.describe()}")
    print("measures: " + ", ".join(f"{k} {x:.2f}" for k, x in v.measures.items()))
    if raised:
        print(f"alarm raised {len(raised)} time(s), first at {raised[0]}")
    return 0


def cmd_loop(args: argparse.Namespace) -> int:
    from cloud.rehearsal.settings import LoopSettings
    from cloud.training import command_line
    from edge_inspect.loop import LoopError, run_loop
    from edge_inspect.paths import METAL_TAGS_DIR

    given = {"epochs": args.epochs, "trigger_labels": args.trigger_labels, "max_turns": args.max_turns,
             "baseline_s": args.baseline_s, "time_limit_minutes": args.time_limit_minutes, "imgsz": args.imgsz,
             "fps": args.fps, "hold_frames": args.hold_frames, "after_s": args.after_s}
    settings = LoopSettings(drift=args.drift, out=args.out, auto_approve=args.auto_approve, params=args.param,
                            **{k: v for k, v in given.items() if v is not None})
    try:
        return run_loop(settings, args.labels or METAL_TAGS_DIR / "labels.csv", args.model or bundled_model_path(),
                        command_line())
    except LoopError as exc:
        raise CliError(f"loop: {exc}") from None


def cmd_eval(args: argparse.Namespace) -> int:
    from cloud.evaluation import evaluate

    result = evaluate(args.model or bundled_model_path(), args.data, args.split)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(
            f"{args.split}: mAP50 {result.map50:.4f}  mAP50-95 {result.map50_95:.4f}  "
            f"precision {result.precision:.4f}  recall {result.recall:.4f}  "
            f"({result.images} images, {result.instances} instances)"
        )
    return 0


def _parse_aug(pairs: list[str]) -> dict[str, float]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not key.strip():
            raise CliError(f"--aug {pair!r}: expected KEY=NUMBER, e.g. flipud=0.5")
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from cloud.training import TrainSettings, run_training

    try:
        fractions = [float(x) for x in args.split.split(",")]
        train_f, val_f, test_f = fractions
    except ValueError:
        raise CliError(f"--split {args.split!r}: expected three fractions, e.g. 0.7,0.15,0.15") from None
    settings = TrainSettings(
        labels=args.labels, images_root=args.images_root, name=args.name, model_yaml=args.model_yaml,
        imgsz=args.imgsz, epochs=args.epochs, batch=args.batch, seed=args.seed, split_seed=args.split_seed,
        train_fraction=train_f, val_fraction=val_f, test_fraction=test_f, workers=args.workers,
        augment=_parse_aug(args.aug), mlflow=args.mlflow,
    )
    card = run_training(settings, args.out, fresh=args.fresh)
    print(json.dumps({"model": str(Path(args.out) / card.model_file), "metrics": card.metrics}))
    return 0


def main(argv: list[str] | None = None) -> int:
    from device.logs import setup_plain_logging

    args = build_parser().parse_args(argv)
    setup_plain_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return args.func(args)
    except _user_errors() as exc:
        if args.verbose:
            logging.exception("failed")
        print(f"edge-inspect: error: {redact(exc)}", file=sys.stderr)
        return 2


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input, not a bug: printed as one line, no traceback."""
    from pydantic import ValidationError

    from cloud.checkpoint import CheckpointError
    from cloud.deploy.deployer import DeployError
    from cloud.evaluation import EvaluationError
    from cloud.export import ExportError
    from cloud.heldout import HeldoutError
    from cloud.ingest.state import StateError
    from cloud.label_table import LabelTableError
    from cloud.labeling.service import LabelingError
    from cloud.labels.store import LabelStoreError
    from cloud.pipeline.backends import PipelineConfigError
    from cloud.pipeline.runs import RunBusy
    from cloud.pipeline.sagemaker_pipeline import PipelineAwsError, PipelineBusy
    from cloud.quantize import QuantizationError
    from cloud.registry.registry import RegistryError
    from cloud.storage import StorageError
    from cloud.training import TrainingError
    from device.config import ConfigError
    from device.detector import FrameError, ModelError
    from device.images import ImageInputError
    from edge_inspect.demo import DemoError

    return (CliError, ConfigError, DemoError, QuantizationError, ModelError, FrameError, ImageInputError, LabelTableError, TrainingError,
            EvaluationError, HeldoutError, CheckpointError, ExportError, LabelStoreError, LabelingError, StateError,
            StorageError, PipelineConfigError, RunBusy, RegistryError, PipelineAwsError,
            PipelineBusy, DeployError, ValidationError, argparse.ArgumentTypeError)


if __name__ == "__main__":
    sys.exit(main())
