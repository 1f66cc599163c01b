"""The CUDA compression path and fp16, checked on a machine with a GPU (ratios in one run).

`python -m benchmarks.device --json PATH` compresses the digits example twice in the same
minute, once with `compression.device: cuda` and once with `cpu`, and compares what each made
(accuracy, drop, size) and how long each step took; then times a ResNet-18-shaped net in fp32
and fp16 on the GPU (batch 128, alternating) and measures how far fp16's logits stray; then MiniLM (pretrained, from its wheel) through
slimserve's fp16 ONNX under onnxruntime's CUDA provider (and int8 QDQ under TensorRT) where the
image has them, else PyTorch eager, labelled. `--transformer-only` runs just that part:
`python -m benchmarks.device --json benchmarks/results/device-h100.json --transformer-only`.
Without a GPU it says "skipped" and exits 0, writing nothing: it is a check for the GPU machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.resnet import build as build_resnet
from slimserve.api import load_compressed_model
from slimserve.compression.pipeline import run_compression

DIGITS = Path(__file__).resolve().parents[1] / "examples" / "digits" / "compressedmodel.yaml"


def _compress(device: str, out: Path) -> dict[str, Any]:
    model = load_compressed_model(DIGITS)
    spec = model.spec.model_copy(update={"compression": model.spec.compression.model_copy(update={"device": device})})
    model = model.model_copy(update={"spec": spec})
    t0 = time.perf_counter()
    report = run_compression(model, DIGITS.parent, out)
    seconds = time.perf_counter() - t0
    return {
        "device": report.device,
        "seconds": round(seconds, 2),
        "variants": {
            v.name: {
                "quality": v.quality,
                "drop": v.drop,
                "sizeBytes": v.size_bytes,
                "compressSeconds": v.compress_seconds,
            }
            for v in [report.baseline, *report.variants]
        },
    }


def _time_cuda(fn: Any, runs: int) -> float:
    """Median milliseconds of `fn` over `runs`, timed with CUDA events after warm-up."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def _fp16_resnet(batch: int = 128, runs: int = 20, rounds: int = 3) -> dict[str, Any]:
    """fp32 and fp16 timed alternately; the spread of fp32 across rounds is the noise control."""
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    fp32 = build_resnet().eval().cuda().to(memory_format=torch.channels_last)
    fp16 = build_resnet().eval().cuda()
    fp16.load_state_dict(fp32.state_dict())
    fp16 = fp16.half().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 224, 224, device="cuda").to(memory_format=torch.channels_last)
    xh = x.half()
    ms32: list[float] = []
    ms16: list[float] = []
    with torch.inference_mode():
        for _ in range(rounds):
            ms32.append(_time_cuda(lambda: fp32(x), runs))
            ms16.append(_time_cuda(lambda: fp16(xh), runs))
        a, b = fp32(x), fp16(xh).float()
    mid32, mid16 = sorted(ms32)[rounds // 2], sorted(ms16)[rounds // 2]
    return {
        "batch": batch,
        "fp32MsPerRound": [round(m, 3) for m in ms32],
        "fp16MsPerRound": [round(m, 3) for m in ms16],
        "fp16Speedup": round(mid32 / mid16, 2),
        "fp32ControlSpread": round(max(ms32) / min(ms32), 3),
        "fp32ImagesPerSecond": round(batch / mid32 * 1000),
        "fp16ImagesPerSecond": round(batch / mid16 * 1000),
        "top1Agreement": float((a.argmax(1) == b.argmax(1)).float().mean()),
        "maxAbsLogitDiff": float((a - b).abs().max()),
    }


def _ort_session(path: Path, providers: list[Any]) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=providers)


def _time_ort(sess: Any, feed: dict[str, Any], runs: int) -> float:
    for _ in range(5):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t0) * 1000)
    return sorted(times)[len(times) // 2]


def transformer(batch: int = 32, runs: int = 30, rounds: int = 3) -> dict[str, Any]:
    """MiniLM through the artifacts slimserve makes: fp32 and fp16 ONNX under onnxruntime's CUDA EP, and int8
    (QDQ) under TensorRT when those providers exist; otherwise PyTorch eager fp32 vs fp16, labelled as such."""
    import importlib

    import numpy as np
    import onnxruntime as ort

    from slimserve.api.spec import Quantize
    from slimserve.compression.loading import DataSet
    from slimserve.compression.recipes.quantize import calibration_subset, fp16, preprocess, static_int8

    root = Path(__file__).resolve().parents[1] / "examples" / "minilm"
    sys.path.insert(0, str(root))
    try:
        prep = importlib.import_module("prepare")
    finally:
        sys.path.remove(str(root))
    out: dict[str, Any] = {"batch": batch, "sequence": prep.SEQUENCE, "providers": ort.get_available_providers()}
    with tempfile.TemporaryDirectory(prefix="slimserve-device-minilm-") as tmp:
        folder = Path(tmp)
        paths = prep.write_data(folder, {"evaluation": batch, "calibration": 64})
        with np.load(paths["evaluation"]) as npz:
            data = DataSet(paths["evaluation"], {k: npz[k] for k in npz.files}, None)
        with np.load(paths["calibration"]) as npz:
            calib = DataSet(paths["calibration"], {k: npz[k] for k in npz.files}, None)
        base = prep.export_onnx(folder / "minilm.onnx")
        half = folder / "minilm-fp16.onnx"
        fp16(base, half, Quantize(mode="fp16"), data.head(2))
        feed = dict(data.inputs)
        cpu = _ort_session(base, ["CPUExecutionProvider"]).run(None, feed)[0]
        if "CUDAExecutionProvider" in ort.get_available_providers():
            sessions = {
                "fp32": _ort_session(base, ["CUDAExecutionProvider"]),
                "fp16": _ort_session(half, ["CUDAExecutionProvider"]),
            }
            if "TensorrtExecutionProvider" in ort.get_available_providers():
                pre, _ = preprocess(base, folder / "pre.onnx")
                qdq = folder / "minilm-int8-qdq.onnx"
                static_int8(
                    pre,
                    qdq,
                    Quantize(mode="static", format="QDQ", activation_type="int8"),
                    calibration_subset(calib, 64, 0),
                )
                trt = ("TensorrtExecutionProvider", {"trt_int8_enable": True, "trt_fp16_enable": True})
                sessions["int8-qdq-tensorrt"] = _ort_session(qdq, [trt, "CUDAExecutionProvider"])
            ms: dict[str, list[float]] = {k: [] for k in sessions}
            for _ in range(rounds):  # alternate, so drift hits every artifact alike
                for k, sess in sessions.items():
                    ms[k].append(_time_ort(sess, feed, runs))
            mid = {k: sorted(v)[rounds // 2] for k, v in ms.items()}
            for k, sess in sessions.items():
                got = sess.run(None, feed)[0].astype(np.float64)
                cos = (got * cpu).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(cpu, axis=-1) + 1e-12)
                out[k] = {
                    "msPerBatch": mid[k],
                    "msPerRound": ms[k],
                    "speedupVsFp32": round(mid["fp32"] / mid[k], 3),
                    "meanTokenCosineToCpuFp32": round(float(cos[feed["attention_mask"] > 0].mean()), 5),
                }
            out["fp32ControlSpread"] = round(max(ms["fp32"]) / min(ms["fp32"]), 3)
            out["path"] = "onnxruntime CUDA EP on slimserve's ONNX artifacts"
        else:
            model = prep.pretrained().cuda()
            ids = torch.from_numpy(feed["input_ids"]).cuda()
            mask = torch.from_numpy(feed["attention_mask"]).cuda()
            m32: list[float] = []
            m16: list[float] = []
            with torch.inference_mode():
                half_model = prep.pretrained().cuda().half()
                for _ in range(rounds):
                    m32.append(_time_cuda(lambda: model(input_ids=ids, attention_mask=mask), runs))
                    m16.append(_time_cuda(lambda: half_model(input_ids=ids, attention_mask=mask), runs))
                a = model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
                b = half_model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
            cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)[mask > 0].mean()
            out.update(
                {
                    "path": "PyTorch eager (onnxruntime has no CUDA EP in this image): not slimserve's artifact",
                    "fp32MsPerRound": m32,
                    "fp16MsPerRound": m16,
                    "fp16Speedup": round(sorted(m32)[rounds // 2] / sorted(m16)[rounds // 2], 3),
                    "fp32ControlSpread": round(max(m32) / min(m32), 3),
                    "meanTokenCosineFp16ToFp32": round(float(cos), 5),
                }
            )
    return out


def run(json_path: Path) -> dict[str, Any]:
    result: dict[str, Any] = {
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0),
    }
    with tempfile.TemporaryDirectory(prefix="slimserve-device-") as tmp:
        result["cuda"] = _compress("cuda", Path(tmp) / "cuda")
        result["cpu"] = _compress("cpu", Path(tmp) / "cpu")
    result["fp16ResNet18"] = _fp16_resnet()
    result["minilm"] = transformer()
    trained = [n for n, v in result["cuda"]["variants"].items() if n != "baseline"]
    result["stepSpeedupCudaVsCpu"] = {
        n: round(
            result["cpu"]["variants"][n]["compressSeconds"]
            / max(result["cuda"]["variants"][n]["compressSeconds"], 1e-9),
            2,
        )
        for n in trained
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True, help="Where to write the results.")
    parser.add_argument(
        "--transformer-only", action="store_true", help="Only the MiniLM CUDA check (about a minute on an H100)."
    )
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("skipped: no CUDA device is visible (run this on the GPU machine); nothing written", file=sys.stderr)
        return
    if args.transformer_only:
        result = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0), "minilm": transformer()}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    else:
        result = run(args.json)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
