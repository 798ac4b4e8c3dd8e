"""The benchmark's decision: the fastest setup that is right on this machine, and how every
figure compares with its target. Pure functions over the measured results (dicts, as written to
bench.json), so the decision can be re-read and tested without measuring anything."""

from __future__ import annotations

# a setup is right here when it passes its self-test and its held-out mAP is this close to the
# FP32 reference's, measured on the same photos in the same run
MAX_MAP50_DROP = 0.01
MAX_MAP50_95_DROP = 0.02
# the daemon's peak memory on an edge box with 1-2 GB beside everything else it runs
MEMORY_BUDGET_MB = 200.0


def reference(setups: list[dict]) -> dict | None:
    """The FP32 model every other setup answers to: on ONNX Runtime at the training (square) shape
    when measured, else any FP32 setup; None when no FP32 model was measured."""
    fp32 = [s for s in setups if s["precision"] == "fp32"]
    fp32.sort(key=lambda s: (s["runtime"] != "onnxruntime", s["input"].split("x")[0] != s["input"].split("x")[1]))
    return fp32[0] if fp32 else None


def why_not(setup: dict, ref: dict | None, memory_budget_mb: float = MEMORY_BUDGET_MB) -> list[str]:
    """Reasons a setup may not be recommended; empty when it may."""
    reasons = []
    if setup["self_test"] not in ("passed", "none"):
        return [f"self-test {setup['self_test']}"]  # not run end to end: the daemon would refuse it
    if setup["daemon"]["peak_rss_mb"] > memory_budget_mb:
        reasons.append(f"daemon peak memory {setup['daemon']['peak_rss_mb']} MB is over the {memory_budget_mb:g} MB "
                       "budget")
    if setup.get("map50") is None or ref is None or ref.get("map50") is None:
        if setup["precision"] != "fp32":
            reasons.append("accuracy not measured here (needs the train extra and labelled photos)")
        return reasons
    if ref["map50"] - setup["map50"] > MAX_MAP50_DROP:
        reasons.append(f"mAP50 {setup['map50']} is more than {MAX_MAP50_DROP} below FP32's {ref['map50']}")
    if ref["map50_95"] - setup["map50_95"] > MAX_MAP50_95_DROP:
        reasons.append(f"mAP50-95 {setup['map50_95']} is more than {MAX_MAP50_95_DROP} below FP32's {ref['map50_95']}")
    return reasons


def recommend(setups: list[dict], memory_budget_mb: float = MEMORY_BUDGET_MB) -> dict | None:
    """The eligible setup with the highest end-to-end daemon fps (bare p50 breaks ties)."""
    ref = reference(setups)
    eligible = [s for s in setups if not why_not(s, ref, memory_budget_mb)]
    if not eligible:
        return None
    return max(eligible, key=lambda s: (s["daemon"]["fps"], -s["session"]["p50"]))


def targets(results: dict) -> list[dict]:
    setups, peers = results["setups"], results.get("peers") or {}
    best, ref = results.get("recommended"), reference(setups)
    rows = []

    def add(name: str, value: float | None, limit: float, met: bool | None, note: str = "") -> None:
        rows.append({"target": name, "value": value, "limit": limit, "met": met, "note": note})

    if best and ref and best.get("map50") is not None and ref.get("map50") is not None:
        drop = round(ref["map50"] - best["map50"], 4)
        add("recommended: mAP50 within 1 point of FP32 (held-out photos)", drop, 0.01, drop <= 0.01, best["name"])
    if best:
        for key, label, limit in (("openvino_int8", "Ultralytics' OpenVINO INT8 export", 1.15),
                                  ("torch", "the Ultralytics torch path", 3.0)):
            peer = peers.get(key)
            if peer and peer.get("fps"):
                ratio = round(best["daemon"]["fps"] / peer["fps"], 2)
                add(f"recommended end-to-end fps / {label} >= {limit}", ratio, limit, ratio >= limit,
                    f"{best['daemon']['fps']} vs {peer['fps']} fps")
        add("recommended: daemon peak memory <= 200 MB", best["daemon"]["peak_rss_mb"], 200,
            best["daemon"]["peak_rss_mb"] <= 200)
    # the recommended setup's own ratio where it has this precision, else the fastest such setup's;
    # the bound uses ONNX Runtime's GEMM peaks for every runtime (one ceiling for the machine)
    for precision, limit in (("int8", 1.35), ("fp32", 1.25)):
        candidates = [s for s in setups if s["precision"] == precision]
        if not candidates:
            continue
        judged = best if best and best["precision"] == precision else min(candidates, key=lambda s: s["session"]["p50"])
        add(f"bare {precision.upper()} p50 / its roofline bound <= {limit}", judged["roofline_ratio"], limit,
            judged["roofline_ratio"] <= limit, judged["name"])
    return rows
