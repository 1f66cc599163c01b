"""quantize: post-training quantization of the ONNX graph with onnxruntime, or fp16 conversion.

Static int8 calibrates activation ranges on a seeded random draw of the calibration set (MinMax,
Entropy or Percentile). The spec's defaults — QOperator, uint8 activations, int8 per-channel
weights — run ~3x faster than fp32 on x86 CPUs; QDQ (`format: QDQ`) is the portable form other
execution providers (TensorRT, OpenVINO) consume. On a transformer graph (Softmax and
LayerNormalization present) only MatMul/Gemm layers with constant weights are quantized unless
`opTypes` says otherwise: LayerNorm, Softmax, GELU, residual Adds, embedding Gathers and
activation x activation MatMuls stay in float, where quantizing them costs the most. With
`weightRounding: gptq` the Conv/Gemm weights are first rounded by GPTQ on the calibration set
(recipes/rounding.py) and bias correction then measures their shift against the float weights.
With `qat` the float model (a PyTorch source) is first fine-tuned through fake quantization of
these same settings (recipes/qat.py), and bias correction defaults to off.

Dynamic int8 quantizes weights ahead and activations per call (per-channel by default). fp16 uses
onnxruntime's converter (it keeps Cast, Gather and shape arithmetic consistent, where
onnxconverter-common's breaks BERT-family graphs), keeps the inputs and outputs in their types,
keeps ops without fp16 kernels in fp32, and is checked by loading and running it: a node that still
fails to load is kept in fp32 and the run retried.
"""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from slimserve.api.spec import Quantize
from slimserve.compression.loading import DataSet, onnx_input_specs
from slimserve.compression.measure import cpu_flags, take
from slimserve.compression.recipes import qat
from slimserve.compression.recipes.base import ModelState, RecipeContext
from slimserve.compression.recipes.biascorrection import correct
from slimserve.compression.recipes.rounding import round_weights
from slimserve.compression.recipes.smoothquant import smooth
from slimserve.errors import InvalidInput

log = logging.getLogger(__name__)

CALIBRATION_BATCH = 16
FP16_RETRIES = 32
TRANSFORMER_OPS = ("MatMul", "Gemm")
_CALIBRATION = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
_FORMATS = {"QOperator": QuantFormat.QOperator, "QDQ": QuantFormat.QDQ}


class _Reader(CalibrationDataReader):  # type: ignore[misc]
    """Feeds the calibration set in small batches (arrays are already named after the graph inputs)."""

    def __init__(self, data: DataSet, fixed_batch: int | None = None) -> None:
        size = fixed_batch or CALIBRATION_BATCH
        starts = range(0, len(data), size) if not fixed_batch else range(0, max(1, len(data) // size * size), size)
        self._batches = iter([take(data, s, min(size, len(data) - s) if not fixed_batch else size) for s in starts])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def _value(option: object) -> str:
    """Spec defaults are enum members, set values are strings: print both the same way."""
    return str(getattr(option, "value", option))


def is_transformer(model: onnx.ModelProto) -> bool:
    """Attention and layer norms in the graph: the ops that int8 hurts most stay in float."""
    ops = {n.op_type for n in model.graph.node}
    return "Softmax" in ops and bool(ops & {"LayerNormalization", "SkipLayerNormalization", "ReduceMean"})


def op_types(params: Quantize, model: onnx.ModelProto) -> list[str] | None:
    """What gets quantized: the spec's opTypes, the transformer preset (static), or onnxruntime's default."""
    if params.op_types:
        return list(params.op_types)
    if _value(params.mode) == "static" and is_transformer(model):
        return list(TRANSFORMER_OPS)
    return None


def reduce_range(params: Quantize) -> tuple[bool, str]:
    """7-bit weights where u8 x s8 products saturate (x86 without VNNI); the spec's value when set."""
    if params.reduce_range is not None:
        return params.reduce_range, "set in the spec"
    flags = cpu_flags()
    vnni = bool({"avx512_vnni", "avx_vnni", "amx_int8"} & flags)
    if vnni or not ({"avx2", "avx512bw"} & flags):
        return False, "this CPU has VNNI (or is not x86)" if vnni else "not an x86 CPU with AVX2"
    return True, "this x86 CPU lacks VNNI: u8 x s8 products could saturate"


def bias_correction(params: Quantize, model: onnx.ModelProto) -> bool:
    """The spec's choice, else on for convolutional graphs (static int8) unless qat trained the weights."""
    if params.bias_correction is not None:
        return params.bias_correction
    if params.qat is not None:
        return False  # it would fit the int8 weights back to the float ones qat moved on purpose
    return any(n.op_type == "Conv" for n in model.graph.node)


def _excluded_nodes(model: onnx.ModelProto, params: Quantize) -> list[str]:
    names = {n.name for n in model.graph.node}
    missing = [n for n in params.exclude_nodes if n not in names]
    if missing:
        shown = sorted(n for n in names if n)[:15]
        raise InvalidInput(f"quantize.excludeNodes = {missing}: no such node in the graph; node names include {shown}")
    by_type = [n.name for n in model.graph.node if n.op_type in set(params.exclude_op_types)]
    chosen = set(params.exclude_nodes) | set(by_type)
    # onnxruntime rewrites Gemm as MatMul + Add before dynamic quantization, under derived names.
    gemms = {n.name for n in model.graph.node if n.op_type == "Gemm"} & chosen
    return sorted(chosen | {f"{g}_MatMul" for g in gemms})


def name_nodes(model: onnx.ModelProto) -> int:
    """Give every unnamed node a unique name (`<OpType>_<index>`), so it can be excluded on its own."""
    taken = {n.name for n in model.graph.node if n.name}
    named = 0
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
            named += 1
    return named


def preprocess(src: Path, dst: Path) -> tuple[Path, str | None]:
    """Shape inference so every tensor gets a range, unnamed nodes named; node names stay.

    On a convolutional graph onnxruntime's basic (hardware-independent) optimizations run first:
    they fold shape arithmetic into constants — e.g. TF-style "same" padding computed at run time,
    whose float Pad between two int8 convolutions would otherwise cost a dequantize/quantize pair
    each — and keep the names of the nodes that remain. Symbolic shape inference fails on some
    dynamic-sequence graphs; then ONNX's own inference is used, and the returned note says so.
    """
    notes = []
    src, dst = src.resolve(), dst.resolve()
    optimize = any(n.op_type == "Conv" for n in onnx.load(str(src), load_external_data=False).graph.node)
    if optimize:
        notes.append("constant subgraphs folded by onnxruntime's basic optimizations")
    # onnxruntime's symbolic pass saves its partial model (plus external data) into the working folder when
    # it fails: keep that in the variant's work folder, not wherever the user ran slimserve.
    with contextlib.chdir(dst.parent):
        try:
            quant_pre_process(str(src), str(dst), skip_optimization=not optimize)
        except Exception as exc:  # noqa: BLE001 - retry without the symbolic pass
            try:
                quant_pre_process(str(src), str(dst), skip_optimization=not optimize, skip_symbolic_shape=True)
                notes.append(
                    f"symbolic shape inference failed ({str(exc).splitlines()[0][:120]}); used ONNX shape inference"
                )
            except Exception as exc2:  # noqa: BLE001 - preprocessing is an optimization, not a requirement
                notes = [f"pre-processing skipped ({str(exc2).splitlines()[0][:160]})"]
                onnx.save(onnx.load(str(src)), str(dst))
    model = onnx.load(str(dst))
    if name_nodes(model):
        onnx.save(model, str(dst))
    return dst, "; ".join(notes) or None


def calibration_subset(data: DataSet, n: int, seed: int) -> DataSet:
    """A seeded random draw (a set sorted by class would otherwise calibrate on a few classes)."""
    if n >= len(data):
        return data
    idx = np.sort(np.random.default_rng(seed).choice(len(data), n, replace=False))
    labels = None if data.labels is None else data.labels[idx]
    return DataSet(data.path, {k: v[idx] for k, v in data.inputs.items()}, labels)


def shield_float_nodes(path: Path, kept: list[str]) -> int:
    """Keep the float Conv/Gemm layers float when onnxruntime loads the graph; returns how many were shielded.

    onnxruntime's `WeightBiasQuantization` optimizer (on at the basic level) finds a Conv, ConvTranspose
    or Gemm with float initializer weights whose input comes from a per-tensor DequantizeLinear, and
    quantizes its weights to *per-tensor* int8 at load time. A layer kept in float between int8
    layers is exactly that pattern, so "kept in float" silently became per-tensor int8 — far worse
    than the per-channel int8 it replaced (EfficientNet-Lite0: keeping one depthwise conv in float
    cost 35 points of agreement). Feeding such a layer through Cast, Sub and Mul (the same arithmetic
    as DequantizeLinear) keeps the optimizer off it.
    """
    model = onnx.load(str(path))
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: i for i in model.graph.initializer}
    wanted = set(kept)
    nodes: list[onnx.NodeProto] = []
    shielded = 0
    for node in model.graph.node:
        dq = producers.get(node.input[0]) if node.input else None
        if (
            node.name in wanted
            and node.op_type in ("Conv", "ConvTranspose", "Gemm")
            and dq is not None
            and dq.op_type == "DequantizeLinear"
            and len(node.input) >= 2
            and node.input[1] in inits
            and inits[node.input[1]].data_type == onnx.TensorProto.FLOAT
        ):
            # The new nodes read what the DequantizeLinear reads, so placing them just before the layer keeps the order.
            base = f"{node.name}_float_input"
            cast = onnx.helper.make_node
            nodes.append(cast("Cast", [dq.input[0]], [f"{base}_cast"], name=f"{base}_Cast", to=onnx.TensorProto.FLOAT))
            value = f"{base}_cast"
            if len(dq.input) > 2 and dq.input[2]:
                nodes.append(
                    cast("Cast", [dq.input[2]], [f"{base}_zp"], name=f"{base}_CastZp", to=onnx.TensorProto.FLOAT)
                )
                nodes.append(cast("Sub", [value, f"{base}_zp"], [f"{base}_sub"], name=f"{base}_Sub"))
                value = f"{base}_sub"
            nodes.append(cast("Mul", [value, dq.input[1]], [base], name=f"{base}_Mul"))
            node.input[0] = base
            shielded += 1
        nodes.append(node)
    if not shielded:
        return 0
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(path))
    return shielded


def static_int8(
    src: Path,
    out: Path,
    params: Quantize,
    calibration: DataSet,
    nodes_to_exclude: list[str] | None = None,
    nodes_to_quantize: list[str] | None = None,
    cache: Path | None = None,
) -> None:
    """onnxruntime static quantization with the spec's settings.

    `cache` keeps the calibrated ranges in a file, so the search's sensitivity ranking (one
    variant per reverted node) calibrates once.
    """
    model = onnx.load(str(src), load_external_data=False)
    extra: dict[str, object] = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    if _value(params.calibration) == "percentile":
        extra["CalibPercentile"] = params.percentile
    if is_transformer(model):
        extra["MatMulConstBOnly"] = True
    fixed = next((s.batch for s in onnx_input_specs(src) if s.batch), None)
    reader = None if cache is not None and cache.is_file() else _Reader(calibration, fixed)
    kwargs: dict[str, object] = {"calibration_cache_path": cache} if cache is not None else {}
    quantize_static(
        str(src),
        str(out),
        reader,
        quant_format=_FORMATS[_value(params.format)],
        op_types_to_quantize=op_types(params, model),
        per_channel=params.per_channel,
        reduce_range=reduce_range(params)[0],
        activation_type=_TYPES[_value(params.activation_type)],
        weight_type=_TYPES[_value(params.weight_type)],
        nodes_to_exclude=nodes_to_exclude or [],
        nodes_to_quantize=nodes_to_quantize,
        calibrate_method=_CALIBRATION[_value(params.calibration)],
        extra_options=extra,
        **kwargs,
    )
    if nodes_to_exclude:
        shield_float_nodes(out, nodes_to_exclude)


def dynamic_int8(src: Path, out: Path, params: Quantize, nodes_to_exclude: list[str] | None = None) -> None:
    model = onnx.load(str(src), load_external_data=False)
    quantize_dynamic(
        str(src),
        str(out),
        op_types_to_quantize=op_types(params, model),
        per_channel=params.per_channel,
        reduce_range=reduce_range(params)[0],
        weight_type=_TYPES[_value(params.weight_type)],
        nodes_to_exclude=nodes_to_exclude or [],
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True},
    )


def _runs(path: Path, sample: DataSet) -> str | None:
    """None when onnxruntime loads and runs the graph on `sample`, else its error message."""
    from slimserve.compression.measure import predict

    try:
        predict(path, sample)
    except Exception as exc:  # noqa: BLE001 - the loader's message names the node
        return str(exc)
    return None


def fp16(src: Path, out: Path, params: Quantize, sample: DataSet) -> list[str]:
    """fp16 weights and activations; returns the nodes that had to stay in fp32 to load."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    blocked_ops = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(params.exclude_op_types))
    blocked_nodes = list(params.exclude_nodes)
    kept: list[str] = []
    for _ in range(FP16_RETRIES):
        model = onnx.load(str(src))
        converted = convert_float_to_float16(
            model,
            keep_io_types=True,
            op_block_list=blocked_ops,
            node_block_list=blocked_nodes or None,
        )
        onnx.save(converted, str(out))
        error = _runs(out, sample)
        if error is None:
            return kept
        found = re.search(r"node \(([^)]*)\)", error)
        if not found or found.group(1) in blocked_nodes:
            raise RuntimeError(f"fp16 graph does not load in onnxruntime: {error.splitlines()[0][:300]}")
        blocked_nodes.append(found.group(1))
        kept.append(found.group(1))
    raise RuntimeError(f"fp16 graph still fails to load after keeping {len(kept)} nodes in fp32")


def apply(state: ModelState, params: Quantize, ctx: RecipeContext) -> ModelState:
    if params.qat is not None:
        if ctx.calibration is None:
            raise InvalidInput("quantize.qat: spec.data.calibration is missing; it sets the activation ranges")
        module = state.require_module("quantize.qat")
        calib = calibration_subset(ctx.calibration, params.calibration_samples, ctx.seed)
        state = replace(state, module=qat.fine_tune(module, params.qat, ctx, calib), onnx_path=None, float_onnx=None)
    state = ctx.onnx(state)
    assert state.onnx_path is not None
    src = state.onnx_path
    mode = _value(params.mode)
    out = ctx.work_dir / f"{ctx.variant}.{mode}.onnx"
    if mode == "fp16":
        model = onnx.load(str(src), load_external_data=False)
        _excluded_nodes(model, params)
        kept = fp16(src, out, params, ctx.evaluation.head(2))
        ctx.notes.append(
            "quantize: fp16 weights and activations, inputs/outputs in their own types, ops without "
            "fp16 kernels in fp32; onnxruntime's CPU provider has few fp16 kernels, so the speedup is "
            "for GPUs"
        )
        if kept:
            ctx.notes.append(f"quantize: kept in fp32 so that the graph loads: {', '.join(kept)}")
        return replace(state, module=None, onnx_path=out, float_onnx=state.float_onnx or src)
    pre, note = preprocess(src, ctx.work_dir / f"{ctx.variant}.pre.onnx")
    if note:
        ctx.notes.append(f"quantize: {note}")
    model = onnx.load(str(pre), load_external_data=False)
    exclude = _excluded_nodes(model, params)
    kinds = op_types(params, model)
    rr, why = reduce_range(params)
    what = f"ops {', '.join(kinds)}" if kinds else "every op type onnxruntime quantizes"
    if kinds and not params.op_types:
        what += " (transformer graph: LayerNorm, Softmax, GELU, Adds and Gathers stay in float)"
    if mode == "dynamic":
        dynamic_int8(pre, out, params, exclude)
        per_channel = "per-channel" if params.per_channel else "per-tensor"
        ctx.notes.append(
            f"quantize: dynamic int8, {per_channel} weights {_value(params.weight_type)}, {what}; "
            f"reduce_range {rr} ({why})"
        )
        if any(n.op_type == "Conv" for n in model.graph.node) and (kinds is None or "Conv" in kinds):
            ctx.notes.append(
                "quantize: dynamic int8 turns Conv into ConvInteger, which onnxruntime runs slower "
                "than fp32 on CPU; use mode: static for convolutional models"
            )
    else:
        if ctx.calibration is None:
            raise InvalidInput("quantize.mode = 'static': spec.data.calibration is missing; add a .npz or use dynamic")
        calib = calibration_subset(ctx.calibration, params.calibration_samples, ctx.seed)
        if params.smooth_quant is not None:
            pre, inserted, groups = smooth(pre, ctx.work_dir / f"{ctx.variant}.smooth.onnx", calib, params.smooth_quant)
            exclude = sorted(set(exclude) | set(inserted))
            ctx.notes.append(
                f"quantize: SmoothQuant alpha {params.smooth_quant:g} on {groups} activation(s) "
                "feeding MatMul/Gemm weights"
            )
        unrounded = None
        if _value(params.weight_rounding) == "gptq":
            unrounded = pre
            pre, rounded = round_weights(
                pre, ctx.work_dir / f"{ctx.variant}.gptq.onnx", calib, params.per_channel, rr, skip=exclude
            )
            ctx.notes.append(
                f"quantize: GPTQ weight rounding on {rounded} Conv/Gemm layers (calibration set, "
                "errors compensated column by column; weights written on onnxruntime's int8 grid)"
            )
        if bias_correction(params, model):
            pre, changed = correct(
                pre,
                ctx.work_dir / f"{ctx.variant}.bc.onnx",
                calib,
                params.per_channel,
                rr,
                skip=exclude,
                reference=unrounded,
            )
            ctx.notes.append(f"quantize: bias correction of int8 weight rounding on {changed} Conv/Gemm layers")
        static_int8(pre, out, params, calib, nodes_to_exclude=exclude)
        per_channel = " per-channel" if params.per_channel else ""
        ctx.notes.append(
            f"quantize: static int8 calibrated on {len(calib)} samples ({_value(params.calibration)}), "
            f"{_value(params.format)}, activations {_value(params.activation_type)}, "
            f"weights {_value(params.weight_type)}{per_channel}, {what}; reduce_range {rr} ({why})"
        )
    kept = sorted(set(params.exclude_nodes) | {n for n in exclude if not n.endswith(("_MatMul", "_smoothquant_Mul"))})
    if kept:
        ctx.notes.append(f"quantize: kept in float: {', '.join(kept)}")
    return replace(state, module=None, onnx_path=out, float_onnx=state.float_onnx or src)
