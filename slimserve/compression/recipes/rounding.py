"""GPTQ weight rounding (Frantar et al., 2023; OBQ, Frantar & Alistarh, 2022) for onnxruntime's int8 grid.

Rounding each weight to the nearest int8 step ignores how the errors add up in a layer's output.
GPTQ rounds one input column at a time and moves each column's rounding error onto the columns
not yet rounded, weighted by the inverse Hessian H = X·Xᵀ of the layer's input on the calibration
set, so the layer's output on that data stays close to float. It is layer-wise and closed-form
(no training): a Cholesky factor per layer, or per channel for depthwise convolutions, whose input
patches are collected with `unfold`.

The new weights are written on onnxruntime's grid — symmetric int8, scale = max|w| / 127 per
output channel (or per tensor; 64 with reduce_range) — and the weight that sets each scale is
kept at ±127 steps, so onnxruntime's quantizer recomputes the same scale and reproduces these
integers exactly: the int8 model holds the GPTQ rounding, nothing more.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from slimserve.compression.loading import DataSet

BATCH = 8
DAMP = 0.01  # GPTQ's damping: 1% of the mean Hessian diagonal


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def layers(model: onnx.ModelProto, skip: Iterable[str] = ()) -> list[onnx.NodeProto]:
    """Conv (2-D) and Gemm (transB) layers with constant float weights and a computed input, minus `skip`."""
    inits = {i.name: i for i in model.graph.initializer}
    skipped = set(skip)
    out = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm") or node.name in skipped or len(node.input) < 2:
            continue
        weight = inits.get(node.input[1])
        if weight is None or node.input[0] in inits or weight.data_type != onnx.TensorProto.FLOAT:
            continue
        attrs = _attrs(node)
        if node.op_type == "Gemm" and (attrs.get("transA", 0) or not attrs.get("transB", 0)):
            continue
        if node.op_type == "Conv" and len(weight.dims) != 4:
            continue
        out.append(node)
    return out


def _columns(x: torch.Tensor, node: onnx.NodeProto, kernel: tuple[int, ...]) -> torch.Tensor:
    """A layer's input as the columns its weights multiply: [batch, groups, inputs per group, positions]."""
    if node.op_type == "Gemm":
        return x.reshape(x.shape[0], 1, -1, 1)
    attrs = _attrs(node)
    groups = int(attrs.get("group", 1))  # type: ignore[call-overload]
    strides = list(attrs.get("strides", [1, 1]))  # type: ignore[call-overload]
    pads = list(attrs.get("pads", [0, 0, 0, 0]))  # type: ignore[call-overload]
    dilations = list(attrs.get("dilations", [1, 1]))  # type: ignore[call-overload]
    if kernel == (1, 1) and strides == [1, 1] and not any(pads):
        return x.reshape(x.shape[0], groups, x.shape[1] // groups, -1)
    x = torch.nn.functional.pad(x, (pads[1], pads[3], pads[0], pads[2]))
    cols = torch.nn.functional.unfold(x, kernel, dilation=tuple(dilations), stride=tuple(strides))
    return cols.reshape(cols.shape[0], groups, -1, cols.shape[2])


def hessians(model: onnx.ModelProto, nodes: list[onnx.NodeProto], data: DataSet) -> dict[str, torch.Tensor]:
    """X·Xᵀ of each layer's input columns over `data`, per group: {node: [groups, n, n]} (float64)."""
    from slimserve.compression.measure import feed, probe_session

    inits = {i.name: i for i in model.graph.initializer}
    names = sorted({n.input[0] for n in nodes})
    sess = probe_session(model, names)
    out: dict[str, torch.Tensor] = {}
    for batch in data.batches(BATCH):
        values = dict(zip(names, sess.run(names, feed(sess, batch)), strict=True))
        for node in nodes:
            kernel = tuple(int(d) for d in inits[node.input[1]].dims[2:])
            cols = _columns(torch.from_numpy(values[node.input[0]]), node, kernel).double()
            h = torch.einsum("bgkl,bgjl->gkj", cols, cols)
            out[node.name] = out[node.name] + h if node.name in out else h
    return out


def gptq(w: torch.Tensor, h: torch.Tensor, qmax: int, per_channel: bool, damp: float = DAMP) -> torch.Tensor:
    """Integer steps [groups, rows, n] for weights `w` [groups, rows, n] given input Hessians `h` [groups, n, n].

    Columns are rounded in order of decreasing Hessian diagonal (GPTQ's act-order); the scale is
    onnxruntime's (max|w| / qmax per row, or per tensor), and the weight that sets it stays at ±qmax.
    """
    groups, rows, n = w.shape
    top = w.abs().amax(dim=2, keepdim=True) if per_channel else w.abs().amax().expand(groups, rows, 1)
    scale = top / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    h = h.clone()
    diag = torch.diagonal(h, dim1=1, dim2=2)
    diag[diag == 0] = 1.0  # an input that is always zero: its weights are rounded as they are
    order = torch.argsort(diag, dim=1, descending=True)
    back = torch.argsort(order, dim=1)
    work = torch.gather(w.clone(), 2, order.unsqueeze(1).expand(groups, rows, n))
    h = torch.gather(h, 1, order.unsqueeze(2).expand(groups, n, n))
    h = torch.gather(h, 2, order.unsqueeze(1).expand(groups, n, n))
    diag = torch.diagonal(h, dim1=1, dim2=2)
    diag += damp * diag.mean(dim=1, keepdim=True)
    upper = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    steps = torch.zeros_like(work)
    for i in range(n):
        col = work[:, :, i]
        q = torch.clamp(torch.round(col / scale[:, :, 0]), -qmax, qmax)
        steps[:, :, i] = q
        err = (col - q * scale[:, :, 0]) / upper[:, i, i].unsqueeze(1)
        work[:, :, i:] -= err.unsqueeze(2) * upper[:, i, i:].unsqueeze(1)
    steps = torch.gather(steps, 2, back.unsqueeze(1).expand(groups, rows, n))
    # onnxruntime derives the scale from max|w| again: the weight that set it keeps its ±qmax step.
    if per_channel:
        at = w.abs().argmax(dim=2, keepdim=True)
        short = steps.abs().amax(dim=2, keepdim=True) < qmax
        pinned = torch.sign(torch.gather(w, 2, at)) * qmax
        steps.scatter_(2, at, torch.where(short, pinned, torch.gather(steps, 2, at)))
    elif steps.abs().max() < qmax:
        flat = steps.reshape(-1)
        peak = int(w.abs().argmax())
        flat[peak] = torch.sign(w.reshape(-1)[peak]) * qmax
    return steps * scale


def round_weights(
    src: Path, dst: Path, data: DataSet, per_channel: bool, reduce_range: bool, skip: Iterable[str] = ()
) -> tuple[Path, int]:
    """Write `src` with GPTQ-rounded Conv/Gemm weights (on onnxruntime's int8 grid) to `dst`; returns it
    and how many layers were rounded. Layers in `skip` stay in float and keep their weights."""
    model = onnx.load(str(src))
    nodes = layers(model, skip)
    if not nodes:
        return src, 0
    qmax = 64 if reduce_range else 127  # as biascorrection: onnxruntime's symmetric int8 range
    inits = {i.name: i for i in model.graph.initializer}
    h = hessians(model, nodes, data)
    done: set[str] = set()
    for node in nodes:
        name = node.input[1]
        if name in done:  # a weight shared by two layers is rounded once, for the first
            continue
        w = numpy_helper.to_array(inits[name]).astype(np.float64)
        groups = int(_attrs(node).get("group", 1)) if node.op_type == "Conv" else 1  # type: ignore[call-overload]
        grouped = torch.from_numpy(w.reshape(groups, w.shape[0] // groups, -1))
        rounded = gptq(grouped, h[node.name], qmax, per_channel).numpy().reshape(w.shape)
        inits[name].CopyFrom(numpy_helper.from_array(rounded.astype(np.float32), name))
        done.add(name)
    onnx.save(model, str(dst))
    return dst, len(done)
