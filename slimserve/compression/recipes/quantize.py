"""quantize: post-training quantization of the ONNX graph with onnxruntime, or fp16 conversion.

Static int8 calibrates activation ranges on the calibration set (MinMax, Entropy or Percentile).
The spec's defaults — QOperator, uint8 activations, int8 per-channel weights — are the settings
that run ~3x faster than fp32 on x86 CPUs (signed activations in QDQ ran slower than fp32 there).
Dynamic int8 quantizes weights only; fp16 halves the size but onnxruntime's CPU provider has few
fp16 kernels, so expect its speedup on GPUs only.
"""

from __future__ import annotations

import logging
import warnings
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
from slimserve.compression.measure import take
from slimserve.compression.recipes.base import ModelState, RecipeContext
from slimserve.errors import InvalidInput

log = logging.getLogger(__name__)

CALIBRATION_BATCH = 16
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


def _excluded_nodes(model: onnx.ModelProto, params: Quantize) -> list[str]:
    names = {n.name for n in model.graph.node}
    missing = [n for n in params.exclude_nodes if n not in names]
    if missing:
        shown = sorted(n for n in names if n)[:15]
        raise InvalidInput(
            f"quantize.excludeNodes = {missing}: no such node in the graph; node names include {shown}"
        )
    by_type = [n.name for n in model.graph.node if n.op_type in set(params.exclude_op_types)]
    chosen = set(params.exclude_nodes) | set(by_type)
    # onnxruntime rewrites Gemm as MatMul + Add before quantizing, under derived names.
    gemms = {n.name for n in model.graph.node if n.op_type == "Gemm"} & chosen
    return sorted(chosen | {f"{g}_MatMul" for g in gemms})


def preprocess(src: Path, dst: Path) -> Path:
    """Shape inference so every tensor gets a range; node names stay (excludeNodes refers to them)."""
    try:
        quant_pre_process(str(src), str(dst), skip_optimization=True)
        return dst
    except Exception as exc:  # noqa: BLE001 - preprocessing is an optimization, not a requirement
        log.warning("quantization pre-processing skipped: %s", exc)
        return src


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

    `cache` keeps the calibrated ranges in a file, so the search's per-layer sensitivity runs
    (one node quantized at a time) calibrate once.
    """
    extra: dict[str, object] = {}
    if _value(params.calibration) == "percentile":
        extra["CalibPercentile"] = params.percentile
    fixed = next((s.batch for s in onnx_input_specs(src) if s.batch), None)
    reader = None if cache is not None and cache.is_file() else _Reader(calibration, fixed)
    quantize_static(
        str(src), str(out), reader,
        quant_format=_FORMATS[_value(params.format)],
        per_channel=params.per_channel,
        activation_type=_TYPES[_value(params.activation_type)],
        weight_type=_TYPES[_value(params.weight_type)],
        nodes_to_exclude=nodes_to_exclude or [],
        nodes_to_quantize=nodes_to_quantize,
        calibrate_method=_CALIBRATION[_value(params.calibration)],
        extra_options=extra,
        calibration_cache_path=cache,
    )


def apply(state: ModelState, params: Quantize, ctx: RecipeContext) -> ModelState:
    state = ctx.onnx(state)
    assert state.onnx_path is not None
    src = state.onnx_path
    model = onnx.load(str(src), load_external_data=False)
    exclude = _excluded_nodes(model, params)
    out = ctx.work_dir / f"{ctx.variant}.{_value(params.mode)}.onnx"
    if params.mode == "fp16":
        from onnxconverter_common import float16

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one warning per weight clipped to fp16's range
            converted = float16.convert_float_to_float16(
                onnx.load(str(src)),
                keep_io_types=True,
                op_block_list=list(params.exclude_op_types) or None,
                node_block_list=list(params.exclude_nodes) or None,
            )
        onnx.save(converted, str(out))
        ctx.notes.append("quantize: fp16 weights and activations, fp32 inputs/outputs; onnxruntime's CPU "
                         "provider has few fp16 kernels, so the speedup is for GPUs")
    elif params.mode == "dynamic":
        pre = preprocess(src, ctx.work_dir / f"{ctx.variant}.pre.onnx")
        quantize_dynamic(
            str(pre), str(out),
            per_channel=params.per_channel,
            weight_type=_TYPES[_value(params.weight_type)],
            nodes_to_exclude=exclude,
        )
        if any(n.op_type == "Conv" for n in model.graph.node):
            ctx.notes.append("quantize: dynamic int8 turns Conv into ConvInteger, which onnxruntime runs slower "
                             "than fp32 on CPU; use mode: static for convolutional models")
    else:
        if ctx.calibration is None:
            raise InvalidInput("quantize.mode = 'static': spec.data.calibration is missing; add a .npz or use dynamic")
        calib = ctx.calibration.head(params.calibration_samples)
        pre = preprocess(src, ctx.work_dir / f"{ctx.variant}.pre.onnx")
        static_int8(pre, out, params, calib, nodes_to_exclude=exclude)
        per_channel = " per-channel" if params.per_channel else ""
        ctx.notes.append(
            f"quantize: static int8 calibrated on {len(calib)} samples ({_value(params.calibration)}), "
            f"{_value(params.format)}, activations {_value(params.activation_type)}, "
            f"weights {_value(params.weight_type)}{per_channel}"
        )
    kept = sorted(set(params.exclude_nodes) | {n for n in exclude if not n.endswith("_MatMul")})
    if kept:
        ctx.notes.append(f"quantize: kept in float: {', '.join(kept)}")
    return replace(state, module=None, onnx_path=out, float_onnx=state.float_onnx or src)
