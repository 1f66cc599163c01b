"""Bias correction for int8 weights (Nagel et al., 2019, "empirical" form, weight error only).

Rounding a layer's weights to int8 shifts the mean of its outputs by ΔW·E[x]: small for wide dense
layers, but depthwise convolutions (EfficientNet, MobileNet) sum only 9 terms per channel, so the
shift does not average out and accumulates through the network. Before quantizing, each Conv and
Gemm bias is lowered by that shift, with E[x] (per input channel) measured on the calibration set
and the weights rounded the way onnxruntime's quantizer will round them (symmetric int8, per
channel or per tensor, 7-bit with reduce_range).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from slimserve.compression.loading import DataSet


def _rounded(w: np.ndarray, per_channel: bool, qmax: int) -> np.ndarray:
    flat = np.abs(w.reshape(len(w), -1))
    scale = (flat.max(axis=1) if per_channel else np.full(len(w), flat.max())) / qmax
    scale = np.where(scale > 0, scale, 1.0).reshape(-1, *([1] * (w.ndim - 1)))
    return np.clip(np.round(w / scale), -qmax, qmax) * scale


def _input_means(model: onnx.ModelProto, names: list[str], data: DataSet) -> dict[str, np.ndarray]:
    from slimserve.compression.measure import probe_session

    sess = probe_session(model, names)
    inputs = {i.name for i in sess.get_inputs()}
    sums: dict[str, np.ndarray] = {}
    count = 0
    for feed in data.batches(16):
        outs = sess.run(names, {k: v for k, v in feed.items() if k in inputs})
        for name, out in zip(names, outs, strict=True):
            axes = tuple(a for a in range(out.ndim) if a != 1) if out.ndim > 2 else (0,)
            total = out.astype(np.float64).mean(axis=axes) * len(out)
            sums[name] = sums[name] + total if name in sums else total
        count += len(next(iter(feed.values())))
    return {k: v / max(count, 1) for k, v in sums.items()}


def correct(
    src: Path,
    dst: Path,
    data: DataSet,
    per_channel: bool,
    reduce_range: bool,
    skip: Iterable[str] = (),
    reference: Path | None = None,
) -> tuple[Path, int]:
    """Write the graph with corrected biases to `dst`; returns it and how many layers changed.

    Nodes named in `skip` stay in float after quantization, so their weights are not rounded and
    their biases are left alone (a corrected bias on a float layer is an error, not a correction).
    `reference`: the float graph `src`'s weights were already rounded from (GPTQ writes them on the
    int8 grid): the shift is then measured against its weights, matched by initializer name.
    """
    model = onnx.load(str(src))
    original = {i.name: i for i in onnx.load(str(reference)).graph.initializer} if reference is not None else None
    inits = {i.name: i for i in model.graph.initializer}
    skipped = set(skip)
    layers = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or node.input[1] not in inits:
            continue
        if node.name in skipped:
            continue
        if node.input[2] not in inits or node.input[0] in inits:
            continue
        attrs = {a.name: a.i for a in node.attribute}
        if node.op_type == "Gemm" and (attrs.get("transA", 0) or not attrs.get("transB", 0)):
            continue
        layers.append(node)
    if not layers:
        return src, 0
    means = _input_means(model, sorted({n.input[0] for n in layers}), data)
    qmax = 64 if reduce_range else 127  # onnxruntime: symmetric int8 in [-127, 127], reduced [-64, 64]
    changed = 0
    for node in layers:
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        bias = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64)
        ex = means[node.input[0]]
        first = w if original is None else numpy_helper.to_array(original[node.input[1]]).astype(np.float64)
        dw = _rounded(w, per_channel, qmax) - first
        dw = dw.reshape(dw.shape[0], dw.shape[1], -1).sum(axis=2)  # [out, in / groups]
        groups = next((a.i for a in node.attribute if a.name == "group"), 1) if node.op_type == "Conv" else 1
        per_group_out, per_group_in = dw.shape[0] // groups, dw.shape[1]
        if len(ex) != per_group_in * groups:
            continue
        x = ex.reshape(groups, per_group_in)[np.arange(dw.shape[0]) // per_group_out]  # [out, in / groups]
        shift = (dw * x).sum(axis=1)
        inits[node.input[2]].CopyFrom(numpy_helper.from_array((bias - shift).astype(np.float32), node.input[2]))
        changed += 1
    onnx.save(model, str(dst))
    return dst, changed


def restore(corrected: Path, original: Path, nodes: Iterable[str], dst: Path) -> Path:
    """`corrected` with the original biases of `nodes` (layers kept in float) put back, written to `dst`."""
    wanted = set(nodes)
    model = onnx.load(str(corrected))
    inits = {i.name: i for i in model.graph.initializer}
    first = {i.name: i for i in onnx.load(str(original)).graph.initializer}
    for node in model.graph.node:
        bias = node.input[2] if node.op_type in ("Conv", "Gemm") and len(node.input) >= 3 else ""
        if node.name in wanted and bias in inits and bias in first:
            inits[bias].CopyFrom(first[bias])
    onnx.save(model, str(dst))
    return dst
