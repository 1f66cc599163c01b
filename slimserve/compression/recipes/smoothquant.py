"""SmoothQuant (Xiao et al., 2023) on an ONNX graph: move activation outliers into the weights.

For every group of MatMul layers with constant weights that read the same activation X,
per input channel j: s_j = max|X_j|^α / max|W_j|^(1-α). The weights' rows are multiplied by s and
X is divided by s through one inserted `Mul` (kept in float), so X·W is unchanged in exact
arithmetic while X's channels get a flatter range to quantize. max|X_j| comes from the
calibration set.

onnxruntime offers this through `extra_options={"SmoothQuant": True}`, but that imports Intel
Neural Compressor 2.x's ONNX adaptor (`neural_compressor.adaptor.ox_utils`), which INC 3.x removed
and INC 2.6 cannot import here (pkg_resources and OpenCV); hence this small implementation.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from slimserve.compression.loading import DataSet

SMOOTH_SUFFIX = "_smoothquant"


def _weight_layers(model: onnx.ModelProto) -> dict[str, list[tuple[onnx.NodeProto, onnx.TensorProto, bool]]]:
    """activation name -> [(node, weight initializer, transposed)] for MatMul/Gemm with 2-D constant weights."""
    inits = {i.name: i for i in model.graph.initializer}
    groups: dict[str, list[tuple[onnx.NodeProto, onnx.TensorProto, bool]]] = defaultdict(list)
    for node in model.graph.node:
        # Gemm is left alone: onnxruntime's static quantizer cannot requantize its bias after smoothing.
        if node.op_type != "MatMul" or len(node.input) < 2:
            continue
        weight = inits.get(node.input[1])
        if weight is None or len(weight.dims) != 2 or node.input[0] in inits:
            continue
        attrs = {a.name: a.i for a in node.attribute}
        if node.op_type == "Gemm" and attrs.get("transA", 0):
            continue
        groups[node.input[0]].append((node, weight, bool(attrs.get("transB", 0))))
    return groups


def _activation_ranges(
    model: onnx.ModelProto, names: list[str], data: DataSet, batch: int = 16
) -> dict[str, np.ndarray]:
    """Per-channel max |x| (last axis) of each named tensor over the calibration set."""
    from slimserve.compression.measure import probe_session

    sess = probe_session(model, names)
    inputs = {i.name for i in sess.get_inputs()}
    ranges: dict[str, np.ndarray] = {}
    for feed in data.batches(batch):
        outs = sess.run(names, {k: v for k, v in feed.items() if k in inputs})
        for name, out in zip(names, outs, strict=True):
            m = np.abs(out.reshape(-1, out.shape[-1])).max(axis=0)
            ranges[name] = np.maximum(ranges[name], m) if name in ranges else m
    return ranges


def smooth(src: Path, dst: Path, data: DataSet, alpha: float) -> tuple[Path, list[str], int]:
    """Write the smoothed graph to `dst`; returns it, the inserted Mul nodes (keep them in float) and the group count."""
    model = onnx.load(str(src))
    groups = _weight_layers(model)
    if not groups:
        return src, [], 0
    ranges = _activation_ranges(model, list(groups), data)
    uses: dict[str, int] = defaultdict(int)
    for node in model.graph.node:
        for name in node.input:
            uses[name] += 1
    inits = {i.name: i for i in model.graph.initializer}
    inserted: list[str] = []
    new_nodes: list[onnx.NodeProto] = []
    for activation, layers in groups.items():
        x_max = ranges[activation].astype(np.float64)
        weights = [numpy_helper.to_array(w).astype(np.float64) for _, w, _ in layers]
        rows = [w.T if transposed else w for w, (_, _, transposed) in zip(weights, layers, strict=True)]  # [in, out]
        if any(r.shape[0] != len(x_max) for r in rows):
            continue
        w_max = np.max([np.abs(r).max(axis=1) for r in rows], axis=0)
        scale = np.where((x_max > 0) & (w_max > 0), x_max**alpha / np.maximum(w_max, 1e-12) ** (1 - alpha), 1.0)
        scale = np.clip(scale, 1e-5, 1e5)
        for (node, weight, transposed), row in zip(layers, rows, strict=True):
            scaled = (row * scale[:, None]).astype(np.float32)
            name = weight.name
            if uses[name] > 1:  # shared with another layer: give this one its own copy
                name = f"{weight.name}{SMOOTH_SUFFIX}_{node.name or len(inits)}"
                node.input[1] = name
            tensor = numpy_helper.from_array(scaled.T if transposed else scaled, name)
            if name in inits:
                inits[name].CopyFrom(tensor)
            else:
                model.graph.initializer.append(tensor)
                inits[name] = model.graph.initializer[-1]
        factor = f"{activation}{SMOOTH_SUFFIX}_divisor"
        smoothed = f"{activation}{SMOOTH_SUFFIX}"
        model.graph.initializer.append(numpy_helper.from_array((1.0 / scale).astype(np.float32), factor))
        mul = onnx.helper.make_node("Mul", [activation, factor], [smoothed], name=f"{activation}{SMOOTH_SUFFIX}_Mul")
        new_nodes.append(mul)
        inserted.append(mul.name)
        for node, _, _ in layers:
            node.input[0] = smoothed
    # Put each Mul right after its producer keeps the graph topologically sorted.
    producers = {o: i for i, n in enumerate(model.graph.node) for o in n.output}
    order = list(model.graph.node)
    for mul in sorted(new_nodes, key=lambda m: -producers.get(m.input[0], -1)):
        order.insert(producers.get(mul.input[0], -1) + 1, mul)
    del model.graph.node[:]
    model.graph.node.extend(order)
    onnx.save(model, str(dst))
    return dst, inserted, len(new_nodes)
