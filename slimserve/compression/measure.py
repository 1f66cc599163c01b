"""Measure a variant the same way as the baseline: counts from the graph, accuracy, and speed.

Speed is measured in-process with onnxruntime, every variant interleaved with the others in
blocks (order rotated per block), so drift and neighbours on a shared machine hit all variants
alike. Sessions set `session.intra_op.allow_spinning=0`: spinning intra-op threads would keep
stealing a core from whichever variant runs next on a 2-core machine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from slimserve.compression.loading import DataSet, InputSpec
from slimserve.errors import InvalidInput

_INTEGER_WEIGHT_INDEX = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}
_MATMUL_B_INDEX = {"MatMul": 1, "Gemm": 1, "MatMulInteger": 1, "QLinearMatMul": 3}


@dataclass(frozen=True)
class Counts:
    params: int
    macs: int


@dataclass(frozen=True)
class Speed:
    latency_ms_p50: float
    latency_ms_p99: float
    throughput_rps: float
    block_p50_ms: tuple[float, ...] = ()  # batch-1 median of each interleaved block
    block_throughput: tuple[float, ...] = ()  # samples/s of each block

    def speedup_range(self, baseline: Speed) -> tuple[float, float] | None:
        """Lowest and highest batch-1 speedup over the blocks (each against the baseline's same block)."""
        pairs = [b / v for b, v in zip(baseline.block_p50_ms, self.block_p50_ms, strict=False) if v > 0]
        return (round(min(pairs), 3), round(max(pairs), 3)) if pairs else None


def cpu_flags() -> set[str]:
    """The CPU's instruction-set flags (Linux /proc/cpuinfo); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith(("flags", "Features"))), "")
    return set(line.partition(":")[2].split())


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    line = next((ln for ln in text.splitlines() if ln.startswith("model name")), "")
    return line.partition(":")[2].strip()


SIMD_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "sve",
)


def instruction_sets() -> str:
    """The SIMD extensions that decide int8 and fp16 speed (VNNI: fast u8 x s8 dot products)."""
    flags = cpu_flags()
    return " ".join(f for f in SIMD_FLAGS if f in flags) or "unknown"


def _fixed_shapes(model: onnx.ModelProto, specs: list[InputSpec]) -> onnx.ModelProto:
    """A copy with batch 1 and the data's per-sample shape on every input, for shape inference."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    by_name = {s.name: s for s in specs}
    for inp in model.graph.input:
        spec = by_name.get(inp.name)
        if spec is None:
            continue
        dims = inp.type.tensor_type.shape.dim
        for i, d in enumerate(dims):
            value = 1 if i == 0 else spec.shape[i - 1]
            if value is not None:
                d.ClearField("dim_param")
                d.dim_value = int(value)
    for out in model.graph.output:  # stale symbolic output shapes would block inference
        out.type.tensor_type.ClearField("shape")
    del model.graph.value_info[:]
    return model


def probe_session(model: onnx.ModelProto, names: list[str]) -> ort.InferenceSession:
    """A CPU session of an unoptimised copy of `model` that also outputs the named intermediate tensors
    (optimisations off, so every named tensor still exists)."""
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    known = {o.name for o in probe.graph.output}
    for name in names:
        if name not in known:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _run_shapes(model: onnx.ModelProto, names: list[str], sample: DataSet) -> tuple[dict[str, list[int]], int]:
    """Shapes of the named tensors in one real run on `sample` (its fixed batch, or 1), and that batch."""
    sess = probe_session(model, names)
    batch = fixed_batch(sess) or 1
    outs = sess.run(names, feed(sess, take(sample, 0, batch)))
    return {n: list(o.shape) for n, o in zip(names, outs, strict=True)}, batch


def count(path: Path, specs: list[InputSpec], sample: DataSet | None = None) -> Counts:
    """Parameters (elements of floating-point initializers) and MACs per sample.

    MACs count Conv, Gemm and MatMul (and their integer/QLinear forms) from inferred shapes at
    batch 1 with the data's per-sample shapes. Where ONNX shape inference cannot resolve a
    dimension (a sequence or batch computed inside the graph), the shapes come from one real run
    on `sample`. The pipeline counts a quantized variant on its float graph before quantization:
    quantization changes the width of each multiply-accumulate, not how many there are.
    """
    model = onnx.load(str(path), load_external_data=True)
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type in floats)
    shapes: dict[str, list[int]] = {t.name: list(t.dims) for t in model.graph.initializer}
    try:
        inferred = onnx.shape_inference.infer_shapes(_fixed_shapes(model, specs), data_prop=True)
    except Exception:  # noqa: BLE001 - custom ops: fall back to what the graph declares
        inferred = model
    for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = [d.dim_value for d in dims]
    counted = [n for n in model.graph.node if n.output and n.op_type in {**_INTEGER_WEIGHT_INDEX, **_MATMUL_B_INDEX}]
    needed = sorted({t for n in counted for t in (n.output[0], n.input[0]) if t and t not in shapes})
    batch = 1
    if needed and sample is not None:
        run, batch = _run_shapes(model, needed, sample)
        shapes.update(run)
    macs = 0
    for node in counted:
        out = shapes.get(node.output[0])
        if out is None:
            continue
        if node.op_type in _INTEGER_WEIGHT_INDEX:
            w = shapes.get(node.input[_INTEGER_WEIGHT_INDEX[node.op_type]])
            if w:
                macs += int(np.prod(out)) * int(np.prod(w[1:]))
        elif node.op_type in _MATMUL_B_INDEX:
            a = shapes.get(node.input[0])
            if a:
                trans_a = any(x.name == "transA" and x.i for x in node.attribute)
                k = a[0] if trans_a and len(a) == 2 else a[-1]
                macs += int(np.prod(out)) * int(k)
    return Counts(params=params, macs=macs // batch)


def session(path: Path, threads: int = 0) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def feed(sess: ort.InferenceSession, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Map data arrays onto the session's inputs (a single input takes the only array)."""
    names = [i.name for i in sess.get_inputs()]
    if len(names) == 1 and len(batch) == 1:
        return {names[0]: next(iter(batch.values()))}
    return {n: batch[n] for n in names}


def fixed_batch(sess: ort.InferenceSession) -> int | None:
    """The batch size a graph was exported with when dim 0 is not dynamic."""
    for inp in sess.get_inputs():
        dim = inp.shape[0] if inp.shape else None
        if isinstance(dim, int) and dim > 0:
            return dim
    return None


def take(data: DataSet, start: int, n: int) -> dict[str, np.ndarray]:
    """`n` samples from `start`, wrapping around: fills fixed-batch graphs and throughput batches."""
    idx = (start + np.arange(n)) % len(data)
    return {k: np.ascontiguousarray(v[idx]) for k, v in data.inputs.items()}


def first_output_name(path: Path) -> str:
    """The name of a graph's first output (what is read when spec.quality.output is unset)."""
    model = onnx.load(str(path), load_external_data=False)
    return str(model.graph.output[0].name)


def output_name(sess: ort.InferenceSession, wanted: str | None) -> str:
    names = [o.name for o in sess.get_outputs()]
    if wanted is None:
        return names[0]
    if wanted not in names:
        raise InvalidInput(f"spec.quality.output = {wanted!r}: the model's outputs are {names}; use one of them")
    return wanted


def predict(path: Path, data: DataSet, batch_size: int = 64, threads: int = 0, output: str | None = None) -> np.ndarray:
    """One output (`output`, default the first) over the whole data set, as float32."""
    sess = session(path, threads)
    size = fixed_batch(sess) or batch_size
    name = output_name(sess, output)
    outs = []
    for start in range(0, len(data), size):
        n = min(size, len(data) - start)
        batch = take(data, start, size if fixed_batch(sess) else n)
        outs.append(sess.run([name], feed(sess, batch))[0][:n])
    return np.concatenate(outs).astype(np.float32)


def measure_speed(
    paths: dict[str, Path],
    data: DataSet,
    runs: int,
    throughput_batch: int,
    threads: int = 0,
    blocks: int = 10,
    on_block: Callable[[], None] | None = None,
) -> dict[str, Speed]:
    """p50/p99 latency at batch 1 and samples/s at `throughput_batch`, variants interleaved.

    A graph with a fixed batch dimension runs at that batch for both.

    Each of `blocks` rounds runs every variant in turn (order rotated), `runs / blocks` batch-1
    calls then a few calls at the throughput batch; warm-up calls are discarded.
    """
    sessions = {name: session(p, threads) for name, p in paths.items()}
    fixed = {n: fixed_batch(s) for n, s in sessions.items()}  # a fixed-batch graph runs at its batch
    sizes = {n: (fixed[n] or 1, fixed[n] or throughput_batch) for n in sessions}
    feeds = {n: (feed(s, take(data, 0, sizes[n][0])), feed(s, take(data, 0, sizes[n][1]))) for n, s in sessions.items()}
    out_names = {n: [s.get_outputs()[0].name] for n, s in sessions.items()}
    for name, sess in sessions.items():  # warm-up: allocations, kernel choice
        for _ in range(3):
            sess.run(out_names[name], feeds[name][0])
        sess.run(out_names[name], feeds[name][1])
    per_block = max(1, math.ceil(runs / blocks))
    big_per_block = max(1, math.ceil(per_block / 10))
    lat: dict[str, list[float]] = {n: [] for n in sessions}
    tput: dict[str, list[float]] = {n: [] for n in sessions}
    names = list(sessions)
    for block in range(blocks):
        order = names[block % len(names) :] + names[: block % len(names)]
        for name in order:
            sess, (f1, fb), outs = sessions[name], feeds[name], out_names[name]
            for _ in range(per_block):
                t0 = time.perf_counter()
                sess.run(outs, f1)
                lat[name].append(time.perf_counter() - t0)
            for _ in range(big_per_block):
                t0 = time.perf_counter()
                sess.run(outs, fb)
                tput[name].append(time.perf_counter() - t0)
        if on_block:
            on_block()

    def blockwise(values: list[float], per: int) -> list[list[float]]:
        return [values[i : i + per] for i in range(0, len(values), per)]

    return {
        n: Speed(
            latency_ms_p50=round(float(np.percentile(lat[n], 50)) * 1000, 4),
            latency_ms_p99=round(float(np.percentile(lat[n], 99)) * 1000, 4),
            throughput_rps=round(sizes[n][1] / float(np.median(tput[n])), 2),
            block_p50_ms=tuple(round(float(np.median(b)) * 1000, 4) for b in blockwise(lat[n], per_block)),
            block_throughput=tuple(
                round(sizes[n][1] / float(np.median(b)), 2) for b in blockwise(tput[n], big_per_block)
            ),
        )
        for n in names
    }
