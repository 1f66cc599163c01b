"""Accuracy-aware search: try recipes from strongest to mildest until the accuracy drop holds.

Each family of recipes has a ladder of settings, strongest first; a family that misses
`maxAccuracyDrop` falls back one rung (a lower pruning ratio, a higher kept energy, the most
sensitive layers kept in float). Families are tried breadth-first — every family's strongest
setting, then the fallbacks of those that failed — until `maxTrials` ends. Every trial is
reported; the chosen variant is the best *passing* trial for the objective, or none: a trial
that misses the constraint is never returned as if it passed.

The evaluation set both selects and scores the chosen variant, so its accuracy is optimistic
by a little; the record says so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from slimserve.api.report import SearchReport, SearchTrial, pareto_front
from slimserve.api.spec import FineTune, LowRank, Prune, Quantize, QuantizeMode, Search, Step
from slimserve.compression import measure
from slimserve.compression.export import copy_onnx, size_bytes
from slimserve.compression.recipes.base import progress_task
from slimserve.compression.recipes.quantize import preprocess, static_int8

if TYPE_CHECKING:
    from slimserve.compression.pipeline import Measured, Workbench

log = logging.getLogger(__name__)

PRUNE_RATIOS = (0.5, 0.3, 0.15)
ENERGIES = (0.9, 0.95, 0.99)
EXCLUDE_COUNTS = (0, 1, 2, 4, 8)
FINE_TUNE_EPOCHS = 5
SENSITIVITY_SAMPLES = 256
QUANTIZABLE = ("Conv", "Gemm", "MatMul")


@dataclass
class Family:
    """A recipe with settings from strongest to mildest; `ladder(i)` builds rung i or None."""

    name: str
    rungs: int
    ladder: Callable[[int], list[Step] | None]
    fallback: str


def sensitivity(bench: Workbench, float_onnx: Path, params: Quantize) -> list[str]:
    """Quantizable nodes, most sensitive first: quantize one node at a time, compare the outputs.

    The score is the relative squared error of the first output against the float model on up
    to 256 evaluation samples; calibration runs once (its ranges are cached).
    """
    assert bench.calibration is not None
    work = bench.work / "sensitivity"
    work.mkdir(exist_ok=True)
    pre = preprocess(float_onnx, work / "pre.onnx")
    nodes = [n.name for n in onnx.load(str(pre), load_external_data=False).graph.node if n.op_type in QUANTIZABLE]
    subset = bench.evaluation.head(SENSITIVITY_SAMPLES)
    ref = measure.predict(pre, subset)
    calib = bench.calibration.head(params.calibration_samples)
    cache = work / "ranges.json"
    scores: dict[str, float] = {}
    with progress_task(bench.progress, "search: per-layer quantization sensitivity", len(nodes)) as advance:
        for i, node in enumerate(nodes):
            out = work / f"node{i}.onnx"
            static_int8(pre, out, params, calib, nodes_to_quantize=[node], cache=cache)
            got = measure.predict(out, subset)
            scores[node] = float(np.mean((got - ref) ** 2) / max(float(np.mean(ref**2)), 1e-12))
            advance()
    ranked = sorted(nodes, key=lambda n: -scores[n])
    log.info("quantization sensitivity: %s", [(n, round(scores[n], 6)) for n in ranked])
    return ranked


def families(bench: Workbench, objective: str) -> list[Family]:
    torch_source = bench.source.module is not None
    has_train = bench.train is not None
    static = bench.calibration is not None
    tune = [Step(fine_tune=FineTune(epochs=FINE_TUNE_EPOCHS))] if has_train else []
    quant = Quantize(mode=QuantizeMode.static) if static else Quantize(mode=QuantizeMode.dynamic)
    sensitive: list[str] = []

    def quantized(i: int) -> list[Step] | None:
        count = EXCLUDE_COUNTS[i]
        if count == 0:
            return [Step(quantize=quant)]
        if not static:
            return None
        if not sensitive:
            float_onnx = bench.baseline_path
            sensitive.extend(sensitivity(bench, float_onnx, quant))
        if count >= len(sensitive):
            return None
        return [Step(quantize=quant.model_copy(update={"exclude_nodes": sensitive[:count]}))]

    def pruned(i: int, then_quantize: bool) -> list[Step]:
        steps = [Step(prune=Prune(ratio=PRUNE_RATIOS[i], round_to=4)), *tune]
        return [*steps, Step(quantize=quant)] if then_quantize else steps

    def low_rank(i: int) -> list[Step]:
        return [Step(low_rank=LowRank(energy=ENERGIES[i])), *tune]

    out: list[Family] = []
    if torch_source:
        out.append(Family("prune-int8", len(PRUNE_RATIOS), lambda i: pruned(i, True), "lower the pruning ratio"))
    out.append(Family("int8", len(EXCLUDE_COUNTS), quantized, "keep the most sensitive layers in float"))
    if torch_source:
        out.append(Family("pruned", len(PRUNE_RATIOS), lambda i: pruned(i, False), "lower the pruning ratio"))
        out.append(Family("low-rank", len(ENERGIES), low_rank, "keep more energy (a higher rank)"))
    out.append(Family("fp16", 1, lambda i: [Step(quantize=Quantize(mode=QuantizeMode.fp16))], "none left"))
    if objective != "size":  # fp16 runs no faster on CPU; try the speed recipes first
        out.sort(key=lambda f: f.name == "fp16")
    return out


def _schedule(fams: list[Family], failed: Callable[[str], bool]) -> Iterator[tuple[Family, int]]:
    """Breadth-first: rung 0 of every family, then rung 1 of the families that failed, ..."""
    for rung in range(max(f.rungs for f in fams)):
        for fam in fams:
            if rung < fam.rungs and (rung == 0 or failed(fam.name)):
                yield fam, rung


def _cost(trial: SearchTrial, objective: str) -> float:
    if objective == "size":
        return float(trial.size_bytes)
    if objective == "latency":
        return trial.latency_ms_p50
    return -trial.throughput_rps


def pareto(trials: list[SearchTrial], objective: str) -> list[str]:
    """Trials no other trial beats on both accuracy drop and the objective."""
    return pareto_front([(t.name, t.drop, _cost(t, objective)) for t in trials])


def run_search(bench: Workbench, baseline: Measured, search: Search) -> tuple[SearchReport, Measured | None]:
    """Run the trials, measure them against the baseline, and choose the best passing one."""
    objective = str(getattr(search.objective, "value", search.objective))
    limit = search.max_accuracy_drop
    fams = families(bench, objective)
    unit = bench.metric.unit if bench.metric else "points"
    last_passed: dict[str, bool] = {}
    results: list[tuple[Measured, str, str]] = []
    taken = {v.name for v in bench.model.spec.compression.variants}
    with progress_task(bench.progress, f"search ({objective}, drop ≤ {limit})", search.max_trials) as advance:
        for fam, rung in _schedule(fams, lambda name: not last_passed.get(name, False)):
            if len(results) >= search.max_trials:
                break
            steps = fam.ladder(rung)
            if steps is None:
                continue
            name = f"search-{len(results) + 1}-{fam.name}"
            while name in taken:
                name += "-x"
            built = bench.build(name, steps, f"spec.compression.search (trial {name})", keep=False)
            m = bench.measure_quality(built)
            passed = m.within(limit)
            last_passed[fam.name] = passed
            low, high = m.drop_ci
            shown = f"drop {m.drop:.3g} (90% CI [{low:.3g}, {high:.3g}]) {unit}"
            if passed:
                reason = f"{shown}: within {limit}"
            else:
                more = rung + 1 < fam.rungs
                then = f"fall back: {fam.fallback}" if more else "no fallback left"
                reason = f"{shown}: the interval reaches past {limit}; {then}"
            results.append((m, fam.name, reason))
            advance()
    speeds = bench.speed([baseline.built, *(m.built for m, _, _ in results)],
                         runs=max(20, bench.model.spec.compression.measure.latency_runs // 4)) if results else {}
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
        for m, _, reason in results
    ]
    passing = [t for t in trials if t.passed]
    best = min(passing, key=lambda t: _cost(t, objective)) if passing else None
    report = SearchReport(
        objective=objective,
        metric=bench.metric.name if bench.metric else "",
        max_accuracy_drop=limit,
        trials=trials,
        pareto=pareto(trials, objective),
        chosen=best.name if best else None,
    )
    if best is None:
        log.warning("search: no trial met maxAccuracyDrop %s in %d trials", limit, len(trials))
        return report, None
    chosen = next(m for m, _, _ in results if m.built.name == best.name)
    final = bench.out / f"{best.name}.onnx"
    copy_onnx(chosen.built.path, final)
    chosen.built.path = final
    chosen.built.notes.append(
        f"chosen by the search (objective {objective}, drop ≤ {limit} points) from {len(trials)} trials; "
        "the evaluation set also selected it, so its accuracy is slightly optimistic"
    )
    return report, chosen
