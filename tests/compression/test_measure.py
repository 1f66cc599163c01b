"""Measurements users compare variants by: counts, sizes with external data, intervals, fidelity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from torch import nn

from slimserve.compression import measure
from slimserve.compression.export import export_onnx, sha256, size_bytes
from slimserve.compression.loading import DataSet, InputSpec


def _data(shape: tuple[int, ...], n: int = 4) -> DataSet:
    return DataSet(Path("mem"), {"x": np.random.default_rng(0).random((n, *shape), dtype=np.float32)}, None)


def test_macs_and_params_of_a_known_net(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 10 * 10, 5))
    path = export_onnx(net, _data((3, 10, 10)), ["x"], tmp_path / "m.onnx")
    counts = measure.count(path, [InputSpec("x", np.dtype(np.float32), (3, 10, 10))])
    conv = 8 * 10 * 10 * 3 * 3 * 3
    linear = 800 * 5
    assert counts.macs == conv + linear
    assert counts.params == sum(p.numel() for p in net.parameters())


def test_grouped_conv_macs(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False))
    path = export_onnx(net, _data((8, 6, 6)), ["x"], tmp_path / "m.onnx")
    assert measure.count(path, [InputSpec("x", np.dtype(np.float32), (8, 6, 6))]).macs == 8 * 6 * 6 * 9


def test_size_and_digest_include_external_data(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 256))
    inline = export_onnx(net, _data((1, 8, 8)), ["x"], tmp_path / "inline.onnx")
    model = onnx.load(str(inline))
    external = tmp_path / "ext.onnx"
    onnx.save(model, str(external), save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    data_file = tmp_path / "ext.onnx.data"
    assert data_file.stat().st_size > 60_000
    assert size_bytes(external) == external.stat().st_size + data_file.stat().st_size
    assert size_bytes(external) > 60_000
    before = sha256(external)
    raw = bytearray(data_file.read_bytes())
    raw[0] ^= 0xFF
    data_file.write_bytes(bytes(raw))
    assert sha256(external) != before  # the digest covers the weights, not just the graph


def test_speed_is_measured_for_every_variant(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32))
    path = export_onnx(net, _data((1, 8, 8)), ["x"], tmp_path / "m.onnx")
    blocks: list[int] = []
    speeds = measure.measure_speed(
        {"a": path, "b": path},
        _data((1, 8, 8)),
        runs=20,
        throughput_batch=8,
        blocks=4,
        on_block=lambda: blocks.append(1),
    )
    assert set(speeds) == {"a", "b"} and len(blocks) == 4
    for s in speeds.values():
        assert 0 < s.latency_ms_p50 <= s.latency_ms_p99 and s.throughput_rps > 0
