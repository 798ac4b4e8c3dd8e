"""The benchmark's three outputs: bench.json (everything), bench.md (the tables) and bench.png."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import yaml


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _v(value) -> str:
    return "n/a" if value is None else str(value)


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [f"Machine: {m.get('model')} ({m.get('physical_cores')} cores, {m['logical_cores']} threads); "
             f"instruction sets: {' '.join(m.get('isa', []))} (in use: {m.get('isa_in_use')}); peaks (ONNX Runtime "
             f"GEMM): FP32 {results['peak_gflops']} GFLOP/s, INT8 u8s8 {results['peak_int8_gops']} GOP/s; threads: "
             f"{results['threads']}; " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()),
             f"Accuracy: {results.get('accuracy_photos') or 'not measured'}", "",
             "| setup | precision | input | bare p50 / p90 / p99 ms | pre / infer / post ms (p50) | daemon fps "
             "| peak MB | GOPs (int8+float) | bound ms | p50 / bound | self-test | mAP50 | mAP50-95 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in results["setups"]:
        b, st, d = s["session"], s["stages"], s["daemon"] or {"fps": "not run", "peak_rss_mb": "-"}
        lines.append(
            f"| {s['name']} | {s['precision']} | {s['input']} | {b['p50']} / {b['p90']} / {b['p99']} "
            f"| {st['preprocess']['p50']} / {st['inference']['p50']} / {st['postprocess']['p50']} | {d['fps']} "
            f"| {d['peak_rss_mb']} | {s['gops_int8']}+{s['gops_float']} | {s['roofline_ms']} | {s['roofline_ratio']} "
            f"| {s['self_test']} | {_v(s.get('map50'))} | {_v(s.get('map50_95'))} |")
    peers = results.get("peers") or {}
    if peers:
        lines += ["", "| peer (Ultralytics) | input | predict fps | mAP50 | mAP50-95 |", "|---|---|---|---|---|"]
        lines += [f"| {p['label']} | {p['input']} | {_v(p.get('fps'))} | {_v(p.get('map50'))} | {_v(p.get('map50_95'))} |"
                  for p in peers.values()]
    rows = [(s["name"], r) for s in results["setups"] for r in s.get("session_options", [])]
    if rows:
        lines += ["", "| setup | threads | graph optimization | execution mode | spinning | bare p50 ms |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {n} | {r['threads']} | {r['graph_optimization']} | {r['execution_mode']} | {r['spinning']} "
                  f"| {r['p50_ms']} |" for n, r in rows]
    lines += ["", "| target | measured | limit | met | |", "|---|---|---|---|---|"]
    lines += [f"| {t['target']} | {t['value']} | {t['limit']} | {'yes' if t['met'] else 'NO'} | {t['note']} |"
              for t in results["targets"]]
    refused = [(s["name"], "; ".join(s["not_recommended_because"])) for s in results["setups"]
               if s.get("not_recommended_because")]
    if refused:
        lines += ["", "Not recommended here:", *[f"- {name}: {why}" for name, why in refused]]
    lines += ["", recommendation_text(results)]
    return "\n".join(lines) + "\n"


def recommendation_text(results: dict) -> str:
    best = results.get("recommended")
    if not best:
        return "No setup is both fast and right here: keep the FP32 model on onnxruntime."
    config = yaml.safe_dump({"model": best["config"]}, sort_keys=False).rstrip()
    return (f"Recommended for this machine: {best['name']} ({best['daemon']['fps']} fps end to end, "
            f"mAP50 {_v(best.get('map50'))}, self-test {best['self_test']}):\n\n```yaml\n{config}\n```")


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    setups = results["setups"]
    names = [s["name"].replace(" @ ", "\n") for s in setups]
    x = np.arange(len(setups))
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(11, 2.2 * len(setups)), 4.5))
    left.bar(x - 0.2, [s["session"]["p50"] for s in setups], 0.4, label="bare p50")
    left.bar(x + 0.2, [s["roofline_ms"] for s in setups], 0.4, label="roofline bound")
    left.set_xticks(x, names, fontsize=7)
    left.set_ylabel("ms per frame")
    left.legend()
    right.bar(x - 0.2, [s["session"]["fps"] for s in setups], 0.4, label="bare inference")
    right.bar(x + 0.2, [(s["daemon"] or {}).get("fps", 0) for s in setups], 0.4, label="daemon end to end")
    for key, peer in (results.get("peers") or {}).items():
        if peer.get("fps"):
            right.axhline(peer["fps"], linestyle="--", linewidth=1, color="grey" if key == "torch" else "black",
                          label=f"Ultralytics {peer['label']}")
    right.set_xticks(x, names, fontsize=7)
    right.set_ylabel("frames per second")
    right.legend(fontsize=7)
    fig.suptitle(f"edge-inspect on {results['machine'].get('model')} ({results['machine'].get('isa_in_use')})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(results: dict, out_dir: Path) -> None:
    (out_dir / "bench.json").write_text(json.dumps(results, indent=2, default=str))
    (out_dir / "bench.md").write_text(markdown(results))
    chart(results, out_dir / "bench.png")
    if results.get("recommended"):
        (out_dir / "recommended.yaml").write_text(
            "# edge-inspect bench: the fastest setup that passed its self-test and the accuracy gate here\n"
            + yaml.safe_dump({"model": results["recommended"]["config"]}, sort_keys=False))
    progress(f"wrote {', '.join(str(out_dir / n) for n in ('bench.json', 'bench.md', 'bench.png'))}"
             + (f" and {out_dir / 'recommended.yaml'}" if results.get("recommended") else ""))
