"""Serving goals, measured as ratios in one run: `python -m benchmarks.serving --json PATH`.

Everything goes through the real stack (Triton from the pytriton wheel with the Python backend
running onnxruntime, Prometheus, Locust as its own process) on this machine:

1. int8 vs fp32 served throughput at the same p99 budget, on a ResNet-18-shaped net (224x224,
   random weights; int8 = onnxruntime static QOperator, uint8 activations, int8 per-channel
   weights). Each model is swept over Locust user counts; its throughput at the budget is the best
   rate whose client-side p99 stays within it. The budget is 1.5x fp32's p99 with one user.
2. Triton-served vs in-process onnxruntime throughput at the same batch size: in-process runs batch
   8 (right before and right after the served window, averaged); Triton gets batch-1 requests from
   16 Locust users and forms batches with its dynamic batcher (preferred size 8; the JSON records
   the average batch it formed). Same model file,
   same thread count; the served rate is Triton's own (Prometheus) over the steady part of the window.
3. Locust generator capacity vs server throughput: Locust's CPU use during each window; a window
   where Locust held ~a whole core was limited by the generator, not the server (a tiny MLP is
   served too, to show that case).

The machine may be shared: numbers are for this run, and the JSON records the CPU count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slimserve.api.report import CompressionReport, VariantRecord
from slimserve.api.spec import DynamicBatching, Serving
from slimserve.evaluator.load import LoadResult, Target, run_locust
from slimserve.evaluator.prometheus import PromClient, PrometheusServer, wait_for_scrape
from slimserve.triton.repository import build_repository
from slimserve.triton.server import TritonServer

THREADS = 2
BATCH = 8
SAMPLES = 16  # distinct request bodies (each ResNet body is 600 KB)
WINDOW_S = 8
USERS_SWEEP = (1, 2, 4)


def _export_resnet(folder: Path) -> tuple[Path, Path, Path]:
    """fp32 and int8 ResNet-18-shaped ONNX files plus an evaluation .npz of random images."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from benchmarks.resnet import build
    from slimserve.compression.export import export_onnx
    from slimserve.compression.loading import DataSet
    from slimserve.compression.recipes.quantize import preprocess

    torch.manual_seed(0)
    model = build().eval()
    with torch.no_grad():  # distinct folded conv biases (identical zero biases get deduplicated on export,
        for bn in model.modules():  # and onnxruntime's quantizer cannot quantize a shared bias twice)
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.running_mean.normal_(0, 0.1)
                bn.running_var.uniform_(0.5, 1.5)
                bn.bias.normal_(0, 0.1)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((64, 3, 224, 224), dtype=np.float32)
    data = folder / "images.npz"
    np.savez(data, x=images[:SAMPLES])
    fp32 = export_onnx(model, DataSet(data, {"x": images[:2]}, None), ["x"], folder / "fp32.onnx")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter({"x": images[i : i + 1]} for i in range(16, 48))

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    prepared = preprocess(fp32, folder / "fp32-prepared.onnx")
    int8 = folder / "int8.onnx"
    quantize_static(
        str(prepared), str(int8), Reader(), quant_format=QuantFormat.QOperator, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
    )  # fmt: skip
    return fp32, int8, data


def _export_mlp(folder: Path) -> tuple[Path, Path]:
    """A tiny MLP (microseconds per request): the server outruns one Locust process."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)).eval()
    path = folder / "mlp.onnx"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.zeros(1, 64),), str(path), input_names=["x"], output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False, opset_version=17,
        )  # fmt: skip
    data = folder / "mlp.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((256, 64), dtype=np.float32))
    return path, data


def _record(name: str, path: Path) -> VariantRecord:
    return VariantRecord(
        name=name, recipe=name, path=path.name, sha256="-", size_bytes=path.stat().st_size, compression_ratio=1.0,
        params=0, macs=0, metric="agreement", quality=100.0, quality_ci=(100.0, 100.0), quality_unit="%",
        drop=0.0, drop_ci=(0.0, 0.0), drop_unit="points",
        latency_ms_p50=0.0, latency_ms_p99=0.0, throughput_rps=0.0, speedup=1.0, compress_seconds=0.0,
    )  # fmt: skip


def in_process_throughput(path: Path, batch: int, seconds: float = 6.0) -> dict[str, float]:
    """Samples/s of onnxruntime in this process at `batch`, same threads and no spinning as Triton's."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    shape = [batch, *[int(d) for d in session.get_inputs()[0].shape[1:]]]
    x = np.random.default_rng(1).standard_normal(shape, dtype=np.float32)
    for _ in range(2):
        session.run(None, {name: x})
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, {name: x})
        runs += 1
    elapsed = time.perf_counter() - start
    return {"samplesPerS": runs * batch / elapsed, "batchLatencyMs": 1000 * elapsed / runs, "batch": batch}


def _window(prom: PromClient, url: str, model: str, data: Path, users: int, work: Path, tag: str) -> dict[str, Any]:
    load: LoadResult = run_locust(
        [Target(url, model, 100)], data, users=users, spawn_rate=users, duration_s=WINDOW_S, work_dir=work,
        name=f"{tag}-{model}-u{users}", max_samples=SAMPLES,
    )  # fmt: skip
    wait_for_scrape()
    ramp = 1.0
    server = _server_window(prom, model, max(load.duration_s - ramp, 1.0), load.end)
    m = load.per_model[model]
    capacity = load.total.rps / load.generator_cpu if load.generator_cpu and load.generator_cpu > 0 else None
    return {
        "model": model,
        "users": users,
        "clientRps": m.rps,
        "clientP50Ms": m.p50_ms,
        "clientP99Ms": m.p99_ms,
        "failures": m.failures,
        "serverRps": server["rps"],
        "avgBatch": server["avgBatch"],
        "queueMs": server["queueMs"],
        "generatorCpu": load.generator_cpu,
        "generatorCapacityRps": capacity,
        "generatorBound": load.generator_bound,
    }


def _server_window(prom: PromClient, model: str, seconds: float, end: float) -> dict[str, float | None]:
    """Triton's own rate, average batch and queue time for `model` over the window (Prometheus)."""
    w, sel = f"{max(int(round(seconds)), 2)}s", f'model="{model}"'

    def total(metric: str, fn: str = "increase") -> float | None:
        return prom.scalar(f"sum({fn}({metric}{{{sel}}}[{w}]))", end)

    ok, count, execs, queue = (
        total("nv_inference_request_success"),
        total("nv_inference_count"),
        total("nv_inference_exec_count"),
        total("nv_inference_queue_duration_us"),
    )
    return {
        "rps": total("nv_inference_request_success", "rate"),
        "avgBatch": count / execs if count is not None and execs else None,
        "queueMs": queue / 1000.0 / ok if queue is not None and ok else None,
    }


def _best_within(points: list[dict[str, Any]], budget_ms: float) -> dict[str, Any] | None:
    ok = [p for p in points if p["clientP99Ms"] is not None and p["clientP99Ms"] <= budget_ms and not p["failures"]]
    return max(ok, key=lambda p: p["clientRps"]) if ok else None


def run(json_path: Path) -> dict[str, Any]:
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="slimserve-bench-") as tmp:
        folder = Path(tmp)
        fp32, int8, images = _export_resnet(folder)
        mlp, mlp_data = _export_mlp(folder)
        report = CompressionReport(
            model="bench", device="cpu", baseline=_record("baseline", fp32),
            variants=[_record("int8", int8), _record("mlp", mlp)],
        )  # fmt: skip
        repo = folder / "repo"
        batching = Serving(
            max_batch_size=BATCH,
            dynamic_batching=DynamicBatching(preferred_batch_sizes=[BATCH], max_queue_delay_microseconds=2000),
        )
        build_repository(report, folder, repo, "python", serving=batching, intra_op_threads=THREADS)
        offline_b1 = {"fp32": in_process_throughput(fp32, 1, 4.0), "int8": in_process_throughput(int8, 1, 4.0)}
        work = folder / "work"
        with (
            TritonServer(repo, work / "triton") as triton,
            PrometheusServer([triton.metrics_target], work / "prom") as ps,
        ):
            ps.wait_for_targets()
            prom = PromClient(ps.url)
            sweep: dict[str, list[dict[str, Any]]] = {"baseline": [], "int8": []}
            for users in USERS_SWEEP:  # interleaved, so drift on a shared machine hits both alike
                for model in ("baseline", "int8"):
                    sweep[model].append(_window(prom, triton.url, model, images, users, work / "load", "sweep"))
            # In-process runs right before and after each served window: a shared machine's load drifts.
            batched, offline = {}, {}
            for name, model, path in (("fp32", "baseline", fp32), ("int8", "int8", int8)):
                before = in_process_throughput(path, BATCH, 5.0)
                # 2 x BATCH users: while one batch of 8 runs, the next 8 requests queue, so batches are full.
                batched[model] = _window(prom, triton.url, model, images, 2 * BATCH, work / "load", "batched")
                after = in_process_throughput(path, BATCH, 5.0)
                offline[name] = {
                    "before": before,
                    "after": after,
                    "samplesPerS": (before["samplesPerS"] + after["samplesPerS"]) / 2,
                }
            generator = _window(prom, triton.url, "mlp", mlp_data, 16, work / "load", "generator")
    budget = 1.5 * float(sweep["baseline"][0]["clientP99Ms"])
    best = {m: _best_within(points, budget) for m, points in sweep.items()}
    ratio = (best["int8"]["clientRps"] / best["baseline"]["clientRps"]) if best["int8"] and best["baseline"] else None
    overhead = {  # server-side rate over the steady part of the window (Locust's own rate counts the ramp)
        name: batched[model]["serverRps"] / offline[name]["samplesPerS"]
        for name, model in (("fp32", "baseline"), ("int8", "int8"))
    }
    windows = [*sweep["baseline"], *sweep["int8"], *batched.values(), generator]
    result: dict[str, Any] = {
        "environment": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": THREADS,
            "windowS": WINDOW_S,
            "secondsTotal": round(time.time() - started, 1),
        },  # fmt: skip
        "int8VsFp32AtP99Budget": {
            "budgetMs": budget,
            "fp32": best["baseline"],
            "int8": best["int8"],
            "ratio": ratio,
            "goal": ">= 1.8",
            "met": ratio is not None and ratio >= 1.8,
            "inProcessBatch1SpeedupInt8": offline_b1["fp32"]["batchLatencyMs"] / offline_b1["int8"]["batchLatencyMs"],
            "sweep": sweep,
        },
        "tritonVsInProcess": {
            "batch": BATCH,
            "inProcess": offline,
            "served": batched,
            "ratio": overhead,
            "goal": ">= 0.7",
            "met": all(v >= 0.7 for v in overhead.values()),
        },
        "generator": {
            "windows": [
                {
                    k: w[k]
                    for k in (
                        "model",
                        "users",
                        "clientRps",
                        "serverRps",
                        "generatorCpu",
                        "generatorCapacityRps",
                        "generatorBound",
                    )
                }
                for w in windows
            ],
            "boundWindows": [f"{w['model']}@{w['users']}u" for w in windows if w["generatorBound"]],
            "note": "generatorCpu is Locust's CPU seconds per second (1.0 = one core); generatorCapacityRps = "
            "rate / generatorCpu, the rate one Locust core could drive. A window near 1.0 measured Locust, not Triton.",
        },
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path(".bench/serving.json"))
    args = parser.parse_args()
    result = run(args.json)
    a, b, g = result["int8VsFp32AtP99Budget"], result["tritonVsInProcess"], result["generator"]
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    print(f"int8 vs fp32 served throughput at p99 <= {a['budgetMs']:.1f} ms: {fmt(a['ratio'])}x (goal {a['goal']})")
    print(
        f"Triton / in-process onnxruntime at batch {b['batch']}: fp32 {fmt(b['ratio']['fp32'])}, "
        f"int8 {fmt(b['ratio']['int8'])} (goal {b['goal']})"
    )
    print(f"generator-bound windows: {', '.join(g['boundWindows']) or 'none'}")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
