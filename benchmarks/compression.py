"""Compression goals, measured as ratios in one run: `python -m benchmarks.compression --json PATH`.

Two models:
- the bundled digits example (`examples/digits/compressedmodel.yaml`, as `make demo` runs it):
  sizes, MACs and accuracy drops with real labels;
- a ResNet-18-shaped CNN at 224x224 with random weights, for speed: int8 static, 50% structured
  pruning, and prune → int8. Its metric is fidelity (top-1 agreement with fp32).

Both go through `run_compression`, so the JSON holds the same records as compression-report.json. The
ResNet's speed is then measured again interleaved with a fp32-vs-fp32 control (the baseline
file timed twice under two names): the control's ratio shows how much of a speedup is noise.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from slimserve.api import CompressionReport, load_compressed_model, parse_compressed_model
from slimserve.compression import measure, run_compression
from slimserve.compression.loading import DataSet

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "examples" / "digits" / "compressedmodel.yaml"
RESNET_SAMPLES = 32
CONTROL_RUNS = 60


def _resnet_spec(folder: Path) -> Path:
    """Random-weight ResNet-18 as a factory source, with random images as data (no labels)."""
    shutil.copy(Path(__file__).with_name("resnet.py"), folder / "resnet.py")
    sys.path.insert(0, str(folder))
    from resnet import build  # type: ignore[import-not-found]

    sys.path.remove(str(folder))
    torch.manual_seed(0)
    model = build().eval()
    with torch.no_grad():  # BatchNorm statistics of a trained net's order of magnitude
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    torch.save(model.state_dict(), folder / "resnet18.pt")
    rng = np.random.default_rng(0)
    for name in ("calibration", "evaluation"):
        x = rng.standard_normal((RESNET_SAMPLES, 3, 224, 224)).astype(np.float32)
        np.savez(folder / f"{name}.npz", x=x)
    spec = {
        "apiVersion": "slimserve.dev/v1alpha1",
        "kind": "CompressedModel",
        "metadata": {"name": "resnet18-random"},
        "spec": {
            "source": {"uri": "resnet18.pt", "format": "factory", "factory": "resnet:build"},
            "data": {"calibration": "calibration.npz", "evaluation": "evaluation.npz"},
            "compression": {
                "measure": {"latencyRuns": 10, "throughputBatch": 8},
                "variants": [
                    {"name": "int8-static", "steps": [{"quantize": {"mode": "static"}}]},
                    {"name": "pruned-50", "steps": [{"prune": {"ratio": 0.5, "roundTo": 8}}]},
                    {
                        "name": "pruned-int8",
                        "steps": [{"prune": {"ratio": 0.5, "roundTo": 8}}, {"quantize": {"mode": "static"}}],
                    },
                ],
            },
        },
    }
    path = folder / "compressedmodel.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _records(report: CompressionReport) -> dict[str, dict[str, Any]]:
    return {r.name: r.to_json_dict() for r in [report.baseline, *report.variants]}


def _controlled_speed(out: Path, report: CompressionReport, data_path: Path) -> dict[str, dict[str, float]]:
    """Batch-1 latency and batch-32 throughput, all variants and a second fp32 copy interleaved."""
    with np.load(data_path) as npz:
        data = DataSet(data_path, {"x": npz["x"]}, None)
    paths = {"baseline": out / report.baseline.path, "control-fp32": out / report.baseline.path}
    paths.update({r.name: out / r.path for r in report.variants})
    speeds = measure.measure_speed(paths, data, runs=CONTROL_RUNS, throughput_batch=32, blocks=10)
    base = speeds["baseline"]
    return {
        name: {
            "latencyMsP50": s.latency_ms_p50,
            "latencyMsP99": s.latency_ms_p99,
            "throughputRps": s.throughput_rps,
            "speedup": round(base.latency_ms_p50 / s.latency_ms_p50, 3),
            "throughputRatio": round(s.throughput_rps / base.throughput_rps, 3),
        }
        for name, s in speeds.items()
    }


def _goal(name: str, value: float, op: str, threshold: float, detail: str = "") -> dict[str, Any]:
    met = value >= threshold if op == ">=" else value <= threshold
    return {"goal": name, "value": round(value, 3), "op": op, "threshold": threshold, "met": met, "detail": detail}


def run(json_path: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="slimserve-bench-") as tmp:
        tmpdir = Path(tmp)
        digits = run_compression(load_compressed_model(DIGITS), DIGITS.parent, tmpdir / "digits")
        spec_path = _resnet_spec(tmpdir)
        resnet_model = parse_compressed_model(yaml.safe_load(spec_path.read_text()))
        resnet = run_compression(resnet_model, tmpdir, tmpdir / "resnet")
        speed = _controlled_speed(tmpdir / "resnet", resnet, tmpdir / "evaluation.npz")
    d, r = _records(digits), _records(resnet)
    control = speed["control-fp32"]["speedup"]
    noise = f"fp32-vs-fp32 control speedup {control:.3f}"

    def macs_ratio(recs: dict[str, dict[str, Any]], name: str) -> float:
        return recs["baseline"]["macs"] / recs[name]["macs"]

    goals = [
        _goal("int8 static: size ratio (digits)", d["int8-static"]["compressionRatio"], ">=", 3.5),
        _goal("int8 static: accuracy drop, points (digits)", d["int8-static"]["drop"], "<=", 0.5),
        _goal("int8 static: batch-1 speedup (ResNet-18)", speed["int8-static"]["speedup"], ">=", 2.8, noise),
        _goal("pruned 50% + fine-tune: MACs ratio (digits)", macs_ratio(d, "pruned-50"), ">=", 3.0),
        _goal("pruned 50%: MACs ratio (ResNet-18)", macs_ratio(r, "pruned-50"), ">=", 3.0),
        _goal("pruned 50%: batch-1 speedup (ResNet-18)", speed["pruned-50"]["speedup"], ">=", 1.8, noise),
        _goal("pruned 50% + fine-tune: accuracy drop, points (digits)", d["pruned-50"]["drop"], "<=", 1.0),
        _goal("prune → int8: size ratio (digits)", d["pruned-int8"]["compressionRatio"], ">=", 8.0),
        _goal("prune → int8: accuracy drop, points (digits)", d["pruned-int8"]["drop"], "<=", 1.0),
        _goal("prune → int8: batch-1 speedup (ResNet-18)", speed["pruned-int8"]["speedup"], ">=", 5.0, noise),
    ]
    result = {
        "environment": digits.environment,
        "seconds": round(time.perf_counter() - t0, 1),
        "digits": {"report": digits.to_json_dict()},
        "resnet18": {"report": resnet.to_json_dict(), "controlledSpeed": speed},
        "goals": goals,
        "met": sum(g["met"] for g in goals),
        "missed": [g["goal"] for g in goals if not g["met"]],
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True, help="Where to write the results.")
    parser.add_argument("--strict", action="store_true", help="Exit 1 when a goal is missed.")
    args = parser.parse_args()
    result = run(args.json)
    width = max(len(g["goal"]) for g in result["goals"])
    for g in result["goals"]:
        mark = "met   " if g["met"] else "MISSED"
        print(f"{mark} {g['goal']:<{width}}  {g['value']:>8} {g['op']} {g['threshold']}  {g['detail']}")
    print(f"{result['met']}/{len(result['goals'])} goals met in {result['seconds']} s; wrote {args.json}")
    if args.strict and result["missed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
