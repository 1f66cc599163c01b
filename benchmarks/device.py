"""The CUDA compression path and fp16, checked on a machine with a GPU (ratios in one run).

`python -m benchmarks.device --json PATH` compresses the digits example twice in the same
minute, once with `compression.device: cuda` and once with `cpu`, and compares what each made
(accuracy, drop, size) and how long each step took; then times a ResNet-18-shaped net in fp32
and fp16 on the GPU (batch 128, alternating) and measures how far fp16's logits stray. Without a GPU it says
so and exits 2: it is a check for the GPU machine, not part of the CPU suite.
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
                "accuracy": v.accuracy,
                "accuracyDrop": v.accuracy_drop,
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


def run(json_path: Path) -> dict[str, Any]:
    result: dict[str, Any] = {
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0),
    }
    with tempfile.TemporaryDirectory(prefix="slimserve-device-") as tmp:
        result["cuda"] = _compress("cuda", Path(tmp) / "cuda")
        result["cpu"] = _compress("cpu", Path(tmp) / "cpu")
    result["fp16ResNet18"] = _fp16_resnet()
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
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device is visible: run this on the GPU machine", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(run(args.json), indent=2))


if __name__ == "__main__":
    main()
