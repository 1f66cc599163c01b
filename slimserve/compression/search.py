"""Accuracy-aware search: try recipes from strongest to mildest until the quality drop holds.

Families of recipes are tried breadth-first — every family's strongest setting first, then the
fallbacks of those that missed `maxAccuracyDrop` — until `maxTrials` is used up:

- int8 (dynamic, and static when there is a calibration set): the fallback is accuracy-aware in the
  way of NNCF's accuracy control. Starting from the fully quantized graph, every quantized node
  (MatMul and Gather included) is ranked by how much of the drop *on the chosen metric* comes back
  when that node alone is reverted to float (ties broken by the output error it removes). Then the
  top-k nodes are reverted with k = 1, 2, 4, ... until the drop holds, and bisected down to the
  fewest that hold.
- prune (then int8), prune, low-rank: factory sources only; a lower ratio or more energy kept.
- fp16: when the objective is size (it is not faster on CPU).

A trial that fails to build is recorded with its step and reason, and its family is dropped.
The chosen variant is the best passing trial that also beats the baseline on the objective; when
none does, the search says so. The evaluation set both ranks and scores trials, so the chosen
variant's quality is slightly optimistic; the record says so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from slimserve.api.report import SearchReport, SearchTrial, VariantFailure, pareto_front
from slimserve.api.spec import FineTune, LowRank, Prune, Quantize, QuantizeMode, Search, Step
from slimserve.compression import measure
from slimserve.compression.export import copy_onnx, size_bytes
from slimserve.compression.recipes.base import progress_task
from slimserve.compression.recipes.biascorrection import correct, restore
from slimserve.compression.recipes.quantize import (
    bias_correction,
    calibration_subset,
    dynamic_int8,
    is_transformer,
    preprocess,
    reduce_range,
    static_int8,
)
from slimserve.evaluator import quality

if TYPE_CHECKING:
    from slimserve.compression.workbench import Measured, Workbench

log = logging.getLogger(__name__)

PRUNE_RATIOS = (0.5, 0.3, 0.15)
ENERGIES = (0.9, 0.95, 0.99)
FINE_TUNE_EPOCHS = 5
FINE_TUNE_LR = 1e-3
FINE_TUNE_LR_PRETRAINED_TRANSFORMER = 5e-5
SENSITIVITY_SAMPLES = 64
SENSITIVITY_REPORTED = 20
SPEED_TIE = 0.05  # speedups this close to the best are ties on a shared machine; the smaller trial wins


@dataclass
class Family:
    """A recipe and its fallbacks: `propose(last_passed)` gives the next steps to try, or None when done."""

    name: str
    propose: Callable[[bool | None], list[Step] | None]
    fallback: str
    done: bool = False


@dataclass
class _Revert:
    """Bisection over how many of the most sensitive nodes to keep in float."""

    ranked: list[str] = field(default_factory=list)
    ranked_ready: bool = False
    failing: int = 0  # most reverted nodes known to miss the budget
    passing: int | None = None  # fewest reverted nodes known to hold it
    current: int = 0

    def next_count(self, last_passed: bool | None) -> int | None:
        if last_passed is True:
            self.passing = self.current
        elif last_passed is False:
            self.failing = max(self.failing, self.current)
        n = len(self.ranked)
        if self.passing is None:
            nxt = 1 if self.failing == 0 else self.failing * 2
            if self.failing >= n:
                return None
            self.current = min(nxt, n)
        elif self.passing - self.failing > 1:
            self.current = (self.failing + self.passing) // 2
        else:
            return None
        return self.current


def quantized_nodes(float_graph: onnx.ModelProto, quantized: onnx.ModelProto) -> list[str]:
    """Nodes of the float graph that quantization replaced (QOperator, dynamic) or fed through DequantizeLinear (QDQ)."""
    q_nodes = {n.name: n for n in quantized.graph.node}
    dq_outputs = {o for n in quantized.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    out = []
    for node in float_graph.graph.node:
        q = q_nodes.get(node.name)
        replaced = q is None or q.op_type != node.op_type or any(i in dq_outputs for i in q.input)
        if replaced and node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            out.append(node.name)
    return out


def sensitivity(bench: Workbench, params: Quantize) -> list[tuple[str, float, float]]:
    """Quantized nodes, most sensitive first: (node, metric drop recovered by reverting it, error removed).

    Starts from the fully quantized graph and reverts one node at a time, scoring each on the first
    64 evaluation samples with the run's metric; static calibration runs once (ranges cached).
    """
    mode = str(getattr(params.mode, "value", params.mode))
    work = bench.work / f"sensitivity-{mode}"
    work.mkdir(exist_ok=True)
    pre, _ = preprocess(bench.baseline_path, work / "pre.onnx")
    subset = bench.evaluation.head(SENSITIVITY_SAMPLES)
    output = bench.model.spec.quality.output
    ref = measure.predict(bench.baseline_path, subset, output=output)
    mask = subset.inputs.get("attention_mask")
    assert bench.metric is not None
    metric = bench.metric
    cache = work / "ranges.json"
    calib = None
    uncorrected: Path | None = None
    if mode == "static":
        assert bench.calibration is not None
        calib = calibration_subset(bench.calibration, params.calibration_samples, bench.seed)
        if bias_correction(params, onnx.load(str(pre), load_external_data=False)):  # as the trials will be built
            uncorrected = pre
            pre, _ = correct(pre, work / "bc.onnx", calib, params.per_channel, reduce_range(params)[0])

    def build(out: Path, exclude: list[str]) -> None:
        if calib is not None:
            src = pre
            if exclude and uncorrected is not None:  # a reverted layer keeps its own bias, as the trial will
                src = restore(pre, uncorrected, exclude, work / "bc-revert.onnx")
            static_int8(src, out, params, calib, nodes_to_exclude=exclude, cache=cache)
        else:
            dynamic_int8(pre, out, params, exclude)

    def score(path: Path) -> tuple[float, float]:
        got = measure.predict(path, subset, output=output)
        evidence, _, _ = quality.compare(metric, ref, got, subset.labels, mask, bench.custom_metric, seed=bench.seed)
        error = float(np.mean((got - ref) ** 2) / max(float(np.mean(ref**2)), 1e-12))
        return evidence.drop, error

    full = work / "full.onnx"
    build(full, [])
    base_drop, base_error = score(full)
    float_graph = onnx.load(str(pre), load_external_data=False)
    nodes = quantized_nodes(float_graph, onnx.load(str(full), load_external_data=False))
    ranked: list[tuple[str, float, float]] = []
    with progress_task(bench.progress, f"search: {mode} int8 sensitivity ({len(nodes)} nodes)", len(nodes)) as advance:
        for i, node in enumerate(nodes):
            path = work / f"revert{i}.onnx"
            build(path, [node])
            drop, error = score(path)
            ranked.append((node, base_drop - drop, base_error - error))
            path.unlink()
            advance()
    ranked.sort(key=lambda r: (-r[1], -r[2]))
    log.info("%s int8 sensitivity (node, drop recovered, error removed): %s", mode, ranked[:SENSITIVITY_REPORTED])
    return ranked


def families(bench: Workbench, objective: str, ranking: dict[str, list[tuple[str, float, float]]]) -> list[Family]:
    graph = onnx.load(str(bench.baseline_path), load_external_data=False)
    transformer = is_transformer(graph)
    convolutional = any(n.op_type == "Conv" for n in graph.graph.node)
    factory = bench.source.factory is not None and bench.source.module is not None
    static = bench.calibration is not None
    lr = FINE_TUNE_LR_PRETRAINED_TRANSFORMER if transformer else FINE_TUNE_LR
    tune = [Step(fine_tune=FineTune(epochs=FINE_TUNE_EPOCHS, lr=lr))] if bench.train is not None else []
    default_quant = Quantize(mode=QuantizeMode.static) if static else Quantize(mode=QuantizeMode.dynamic)

    def int8(mode: QuantizeMode) -> Family:
        params = Quantize(mode=mode)
        state = _Revert()
        key = str(mode.value)

        def propose(last: bool | None) -> list[Step] | None:
            if last is None:
                return [Step(quantize=params)]
            if not state.ranked_ready:
                if last:
                    return None
                ranking[key] = sensitivity(bench, params)
                state.ranked = [n for n, _, _ in ranking[key]]
                state.ranked_ready = True
                last = None
            count = state.next_count(last)
            if count is None:
                return None
            return [Step(quantize=params.model_copy(update={"exclude_nodes": state.ranked[:count]}))]

        return Family(f"int8-{key}", propose, "keep the most sensitive quantized nodes in float")

    def ladder(name: str, rungs: list[list[Step]], fallback: str) -> Family:
        it = iter(rungs)

        def propose(last: bool | None) -> list[Step] | None:
            if last:
                return None
            return next(it, None)

        return Family(name, propose, fallback)

    out: list[Family] = []
    quant_families = []
    if static:
        quant_families.append(int8(QuantizeMode.static))
    if not convolutional or not static:  # dynamic int8 runs Conv as slow ConvInteger
        quant_families.append(int8(QuantizeMode.dynamic))
    if transformer:
        quant_families.reverse()  # dynamic int8 keeps transformer accuracy better
    if factory:
        out.append(
            ladder(
                "prune-int8",
                [[Step(prune=Prune(ratio=r, round_to=4)), *tune, Step(quantize=default_quant)] for r in PRUNE_RATIOS],
                "lower the pruning ratio",
            )
        )
    out += quant_families
    if factory:
        out.append(
            ladder(
                "pruned",
                [[Step(prune=Prune(ratio=r, round_to=4)), *tune] for r in PRUNE_RATIOS],
                "lower the pruning ratio",
            )
        )
        out.append(
            ladder(
                "low-rank",
                [[Step(low_rank=LowRank(energy=e)), *tune] for e in ENERGIES],
                "keep more energy (a higher rank)",
            )
        )
    if objective == "size":  # fp16 halves the size but runs no faster on a CPU
        out.append(ladder("fp16", [[Step(quantize=Quantize(mode=QuantizeMode.fp16))]], "none left"))
    return out


def _cost(trial: SearchTrial, objective: str) -> float:
    if objective == "size":
        return float(trial.size_bytes)
    if objective == "latency":
        return trial.latency_ms_p50
    return -trial.throughput_rps


def _gain(speeds: dict[str, measure.Speed], base: str, base_size: int, trial: SearchTrial, objective: str) -> float:
    """How many times better than the baseline on the objective (> 1 beats it).

    Speeds are the median of per-block ratios, each block pairing the trial with the baseline timed
    right next to it: a load that comes and goes on a shared machine hits both sides of a ratio.
    """
    if objective == "size":
        return base_size / trial.size_bytes
    b, t = speeds[base], speeds[trial.name]
    if objective == "latency":
        pairs = [x / y for x, y in zip(b.block_p50_ms, t.block_p50_ms, strict=False) if y > 0]
    else:
        pairs = [y / x for x, y in zip(b.block_throughput, t.block_throughput, strict=False) if x > 0]
    return float(np.median(pairs)) if pairs else 0.0


def pareto(trials: list[SearchTrial], objective: str) -> list[str]:
    """Trials no other trial beats on both quality drop and the objective."""
    return pareto_front([(t.name, t.drop, _cost(t, objective)) for t in trials])


def run_search(
    bench: Workbench, baseline: Measured, search: Search
) -> tuple[SearchReport, Measured | None, list[VariantFailure]]:
    """Run the trials, measure them against the baseline, and choose the best passing one that beats it."""
    objective = str(getattr(search.objective, "value", search.objective))
    limit = search.max_accuracy_drop
    ranking: dict[str, list[tuple[str, float, float]]] = {}
    fams = families(bench, objective, ranking)
    unit = bench.metric.unit if bench.metric else "points"
    last: dict[str, bool | None] = {f.name: None for f in fams}
    results: list[tuple[Measured, str]] = []
    failures: list[VariantFailure] = []
    taken = {v.name for v in bench.model.spec.compression.variants}
    tried = 0
    with progress_task(bench.progress, f"search ({objective}, drop ≤ {limit})", search.max_trials) as advance:
        while tried < search.max_trials and not all(f.done for f in fams):
            for fam in fams:
                if fam.done or tried >= search.max_trials:
                    continue
                steps = fam.propose(last[fam.name])
                if steps is None:
                    fam.done = True
                    continue
                tried += 1
                name = f"search-{tried}-{fam.name}"
                while name in taken:
                    name += "-x"
                got = bench.attempt(name, steps, f"spec.compression.search (trial {name})", stage="search", keep=False)
                advance()
                if isinstance(got, VariantFailure):
                    failures.append(got)
                    fam.done = True
                    continue
                passed = got.within(limit)
                last[fam.name] = passed
                low, high = got.drop_ci
                shown = f"drop {got.drop:.3g} (90% CI [{low:.3g}, {high:.3g}]) {unit}"
                if passed:
                    reason = f"{shown}: within {limit}"
                else:
                    reason = f"{shown}: the interval reaches past {limit}; fall back: {fam.fallback}"
                results.append((got, reason))
    speeds = (
        bench.speed(
            [baseline.built, *(m.built for m, _ in results)], runs=bench.model.spec.compression.measure.latency_runs
        )
        if results
        else {}
    )
    trials = [
        SearchTrial(
            name=m.built.name,
            recipe=m.built.recipe,
            drop=round(m.drop, 4),
            drop_ci=(round(m.drop_ci[0], 4), round(m.drop_ci[1], 4)),
            size_bytes=size_bytes(m.built.path),
            latency_ms_p50=speeds[m.built.name].latency_ms_p50,
            throughput_rps=speeds[m.built.name].throughput_rps,
            passed=m.within(limit),
            reason=reason,
        )
        for m, reason in results
    ]
    base_trial = SearchTrial(
        name="baseline",
        recipe="",
        drop=0.0,
        drop_ci=(0.0, 0.0),
        size_bytes=size_bytes(baseline.built.path),
        latency_ms_p50=speeds[baseline.built.name].latency_ms_p50 if speeds else 0.0,
        throughput_rps=speeds[baseline.built.name].throughput_rps if speeds else 0.0,
        passed=True,
        reason="",
    )
    passing = [t for t in trials if t.passed]
    gain = {t.name: _gain(speeds, baseline.built.name, base_trial.size_bytes, t, objective) for t in passing}
    better = [t for t in passing if gain[t.name] > 1.0]
    best = None
    if better:
        top = max(gain[t.name] for t in better)
        # Speeds within SPEED_TIE of the best are not told apart on a shared machine: the smaller one wins.
        tied = [t for t in better if gain[t.name] >= top * (1 - SPEED_TIE)]
        best = min(tied, key=lambda t: (t.size_bytes, -gain[t.name]))
    measure_of = "size ratio" if objective == "size" else f"{objective} gain (median of paired per-block ratios)"
    if best is not None:
        why = (
            f"{best.name}: {measure_of} {gain[best.name]:.3g}x over the baseline, the best of the {len(passing)} "
            f"trial(s) within the budget (speeds within {SPEED_TIE:.0%} of the best count as ties, the smaller wins)"
        )
    elif passing:
        why = (
            f"nothing beat the baseline on {objective}: {len(passing)} trial(s) held the quality budget but none "
            f"was better than the baseline (best {measure_of} {max(gain.values()):.3g}x)"
        )
    else:
        why = f"no trial held the quality budget ({limit} {unit}) in {len(trials)} measured trial(s)"
    if failures:
        why += f"; {len(failures)} trial(s) failed to build (see failures)"
    report = SearchReport(
        objective=objective,
        metric=bench.metric.name if bench.metric else "",
        max_accuracy_drop=limit,
        trials=trials,
        pareto=pareto(trials, objective),
        chosen=best.name if best else None,
        why=why,
        sensitivity={
            k: [(n, round(d, 4), round(e, 6)) for n, d, e in v[:SENSITIVITY_REPORTED]] for k, v in ranking.items()
        },
    )
    if best is None:
        log.warning("search: %s", why)
        return report, None, failures
    chosen = next(m for m, _ in results if m.built.name == best.name)
    final = bench.out / f"{best.name}.onnx"
    copy_onnx(chosen.built.path, final)
    chosen.built.path = final
    chosen.built.notes.append(
        f"chosen by the search (objective {objective}, drop ≤ {limit} {unit}) from {len(trials)} trials; "
        "the evaluation set also ranked and selected it, so its quality is slightly optimistic"
    )
    return report, chosen, failures
