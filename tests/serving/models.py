"""Tiny real models for the serving tests: an MLP trained on scikit-learn's digits in under a second.

`make_compression_output` writes what `slimserve compress` would (compression-report.json, baseline.onnx, one
ONNX per variant), so the serving stack is tested on its own, without the compression engine.
Variants: `int8` (onnxruntime dynamic quantization, same accuracy), `noisy` (weights corrupted:
accuracy drops), `slow` (same answers, plus heavy extra compute: latency and throughput suffer),
`twin` (the baseline's own file under another name: an A/A candidate).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from slimserve.api.report import CompressionReport, VariantRecord


class MLP(nn.Module):
    def __init__(self, extra_work: int = 0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        self.extra_work = extra_work
        self.register_buffer("burn", torch.eye(256) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if self.extra_work:
            h = self.burn.expand(x.shape[0], 256, 256)
            for _ in range(self.extra_work):
                h = torch.bmm(h, self.burn.expand(x.shape[0], 256, 256)) * 2.0
            out = out + h[:, 0, :10] * 0.0
        return out


def digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    return x[:897], y[:897], x[897:], y[897:]  # 900 test samples: above the default minSamples


def train_mlp(x: np.ndarray, y: np.ndarray, epochs: int = 150) -> MLP:
    torch.manual_seed(0)
    model = MLP()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    return model.eval()


def export(model: nn.Module, path: Path) -> None:
    import warnings

    with warnings.catch_warnings():  # the legacy exporter is deprecated, but fast and dependency-free
        warnings.simplefilter("ignore")
        _export(model, path)


def _export(model: nn.Module, path: Path) -> None:
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, 8, 8),),
        str(path),
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
        opset_version=17,
    )


def _accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    pred = session.run(None, {"x": x})[0].argmax(1)
    return float((pred == y).mean() * 100)


def _record(name: str, path: Path, base_size: int, base_acc: float, acc: float) -> VariantRecord:
    data = path.read_bytes()
    return VariantRecord(
        name=name,
        recipe=name,
        path=path.name,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        compression_ratio=base_size / len(data),
        params=0,
        macs=0,
        metric="accuracy",
        quality=acc,
        quality_ci=(acc - 1.5, acc + 1.5),
        quality_unit="% correct",
        drop=base_acc - acc,
        drop_ci=(base_acc - acc - 0.5, base_acc - acc + 0.5),
        drop_unit="points",
        latency_ms_p50=0.1,
        latency_ms_p99=0.2,
        throughput_rps=1000.0,
        speedup=1.0,
        compress_seconds=0.1,
    )


def make_compression_output(
    out_dir: Path, variants: tuple[str, ...] = ("int8", "noisy", "slow", "twin")
) -> CompressionReport:
    """compression-report.json, baseline.onnx, <variant>.onnx and data/test.npz under `out_dir`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out_dir.mkdir(parents=True, exist_ok=True)
    xtr, ytr, xte, yte = digits_split()
    (out_dir / "data").mkdir(exist_ok=True)
    np.savez(out_dir / "data" / "test.npz", x=xte, y=yte)
    np.savez(out_dir / "data" / "calibration.npz", x=xtr[:64])
    model = train_mlp(xtr, ytr)
    baseline = out_dir / "baseline.onnx"
    export(model, baseline)
    base_acc = _accuracy(baseline, xte, yte)
    records = []
    for name in variants:
        path = out_dir / f"{name}.onnx"
        if name == "int8":
            quantize_dynamic(str(baseline), str(path), weight_type=QuantType.QInt8)
        elif name == "noisy":
            noisy = train_mlp(xtr, ytr)
            with torch.no_grad():
                gen = torch.Generator().manual_seed(1)
                for p in noisy.parameters():
                    p.add_(torch.randn(p.shape, generator=gen) * p.std() * 1.5)
            export(noisy, path)
        elif name == "slow":
            slow = MLP(extra_work=12)
            slow.net.load_state_dict(model.net.state_dict())
            export(slow.eval(), path)
        elif name == "twin":
            path.write_bytes(baseline.read_bytes())
        else:
            raise ValueError(name)
        records.append(_record(name, path, baseline.stat().st_size, base_acc, _accuracy(path, xte, yte)))
    report = CompressionReport(
        model="digits-mlp",
        device="cpu",
        baseline=_record("baseline", baseline, baseline.stat().st_size, base_acc, base_acc),
        variants=records,
    )
    import json

    (out_dir / "compression-report.json").write_text(json.dumps(report.to_json_dict(), indent=2))
    return report
