"""Gate calibration: `python -m benchmarks.gate --json PATH`.

A gate is judged by how often it rolls back a candidate that is as good as the stable model (A/A
false rollbacks) and how often it catches one that is worse (detection), with the defaults users
run with (`Gates()` and `Rollout()` as the spec defines them). Measured in one run, on this machine:

1. **Real stack.** The bundled digits CNN served by a real Triton (Python backend), Prometheus and
   Locust, judged by the real code path of `slimserve run` (`slimserve.evaluator.rollout`): served
   quality, warm-up, canary steps, the policy. Candidates:
   - `twin`: the stable model's file under another name (A/A);
   - `slow`: the same answers plus extra compute, sized here so its served p99 is ~2x the control's;
   - `lowcap`: the same answers plus extra compute sized so its capacity (samples per CPU-second of
     the process serving it) is ~0.7x the control's;
   - `wrecked`: weights perturbed until it loses ~3 points of accuracy on the evaluation set.
   One Triton serves every run (each run warms its pair up first); the extra-compute sizes are
   chosen by pilot windows and recorded.
2. **Simulation from measured noise.** The A/A windows of part 1 (their per-request latencies and
   per-interval capacity samples) are a bank of real noise. A simulated rollout draws a measured
   window per window it needs (a step takes more while the gate cannot decide), swaps candidate and
   control at random, applies the degradation (latency x2, capacity x0.7) and runs the result through
   the real gate and policy — many rollouts, so the rates get intervals that a few dozen real runs
   cannot give (each rollout is a new combination of real windows).

Reported per scenario: decisions, the rate of the one that matters (RolledBack) with a 95% Wilson
interval, steps and seconds to a decision. `--strict` exits 1 when a goal is missed: false rollbacks
≤ 5% and detection ≥ 95% (real and simulated).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from slimserve.api.report import StepResult
from slimserve.api.resource import parse_compressed_model
from slimserve.api.spec import CompressedModelSpec
from slimserve.evaluator import gate, policy
from slimserve.evaluator.canary import Capacity, Measurement, ProcessCpuCapacity, Roles, Timing, evidence
from slimserve.evaluator.gate import wilson
from slimserve.evaluator.load import Requests, Target
from slimserve.evaluator.prometheus import SCRAPE_INTERVAL_S, PrometheusServer
from slimserve.evaluator.quality import newcombe_paired
from slimserve.evaluator.rollout import Judge, Outcome, run_rollout

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits"
CONTROL = "stable_control"
STABLE = "baseline"
GOAL_FALSE_ROLLBACK = 0.05
GOAL_DETECTION = 0.95
TARGET_SLOWDOWN = 2.0
TARGET_CAPACITY = 0.7
TARGET_DROP = 3.0
HEAVY_WIDTH = 512


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------


def _accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return float((session.run(None, {"x": x})[0].argmax(1) == y).mean() * 100)


def export_baseline(folder: Path) -> Path:
    """The bundled example's CNN (factory + state dict), exported as `slimserve compress` does."""
    import sys

    import torch

    from slimserve.compression.export import export_onnx
    from slimserve.compression.loading import DataSet

    sys.path.insert(0, str(DIGITS))
    try:
        from model import build  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(DIGITS))
    module = build()
    module.load_state_dict(torch.load(DIGITS / "digits_cnn.pt", weights_only=True))
    data = np.load(DIGITS / "data" / "test.npz")
    path = folder / "baseline.onnx"
    export_onnx(module.eval(), DataSet(folder, {"x": data["x"][:4]}, None), ["x"], path)
    return path


def with_extra_compute(base: Path, out: Path, layers: int, width: int = HEAVY_WIDTH) -> Path:
    """The same answers plus `layers` width x width MatMuls per sample (their sum x 0 added to the logits)."""
    model = onnx.load(str(base))
    graph = model.graph
    rng = np.random.default_rng(layers)
    x, logits = graph.input[0].name, graph.output[0].name
    inits = [
        numpy_helper.from_array(np.array([-1, 64], dtype=np.int64), "heavy_shape"),
        numpy_helper.from_array(np.zeros((1,), dtype=np.float32), "heavy_zero"),
        numpy_helper.from_array((rng.standard_normal((64, width)) * 0.05).astype(np.float32), "heavy_w0"),
    ]
    nodes = [
        helper.make_node("Reshape", [x, "heavy_shape"], ["heavy_flat"]),
        helper.make_node("MatMul", ["heavy_flat", "heavy_w0"], ["heavy_h0"]),
    ]
    for i in range(layers):
        weight = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(weight, f"heavy_w{i + 1}"))
        nodes.append(helper.make_node("MatMul", [f"heavy_h{i}", f"heavy_w{i + 1}"], [f"heavy_h{i + 1}"]))
    nodes += [
        helper.make_node("ReduceSum", [f"heavy_h{layers}"], ["heavy_sum"], keepdims=1, axes=[1])
        if model.opset_import[0].version < 13
        else helper.make_node("ReduceSum", [f"heavy_h{layers}", "heavy_axes"], ["heavy_sum"], keepdims=1),
        helper.make_node("Mul", ["heavy_sum", "heavy_zero"], ["heavy_nothing"]),
    ]
    if model.opset_import[0].version >= 13:
        inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "heavy_axes"))
    for node in graph.node:  # the old output now feeds an Add
        for i, name in enumerate(node.output):
            if name == logits:
                node.output[i] = "heavy_logits"
    nodes.append(helper.make_node("Add", ["heavy_logits", "heavy_nothing"], [logits]))
    graph.node.extend(nodes)
    graph.initializer.extend(inits)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return out


def wrecked(base: Path, out: Path, x: np.ndarray, y: np.ndarray, target: float = TARGET_DROP) -> tuple[Path, float]:
    """Weights perturbed (fixed seed) with a noise scale found by bisection: ~`target` points lost."""
    model = onnx.load(str(base))
    floats = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) > 1]
    originals = {t.name: numpy_helper.to_array(t).copy() for t in floats}
    base_acc = _accuracy(base, x, y)
    low, high, drop = 0.0, 1.0, 0.0
    for _ in range(30):
        scale = (low + high) / 2
        rng = np.random.default_rng(7)
        for t in floats:
            w = originals[t.name]
            t.CopyFrom(
                numpy_helper.from_array((w + rng.standard_normal(w.shape) * w.std() * scale).astype(np.float32), t.name)
            )
        onnx.save(model, str(out))
        drop = base_acc - _accuracy(out, x, y)
        if abs(drop - target) < 0.15:
            break
        low, high = (scale, high) if drop < target else (low, scale)
    return out, drop


# ---------------------------------------------------------------------------------------------
# the real stack
# ---------------------------------------------------------------------------------------------


def default_spec(folder: Path) -> CompressedModelSpec:
    """The bundled example's files with the spec's default quality, rollout and gates."""
    doc = {
        "apiVersion": "slimserve.dev/v1alpha1", "kind": "CompressedModel", "metadata": {"name": "digits-gate"},
        "spec": {
            "source": {"uri": str(folder / "baseline.onnx")},
            "data": {"evaluation": str(DIGITS / "data" / "test.npz")},
            "compression": {"variants": [{"name": "x", "steps": [{"quantize": {"mode": "dynamic"}}]}]},
        },
    }  # fmt: skip
    return parse_compressed_model(doc).spec


@dataclass
class Stack:
    url: str
    capacity: Capacity
    spec: CompressedModelSpec
    data: Path
    work: Path

    def target(self, name: str, role: str) -> Target:
        return Target(self.url, name, 0, role, (("model", name),))

    def judge(self, candidate: str, **spec_changes: Any) -> Judge:
        spec = self.spec.model_copy(update=spec_changes) if spec_changes else self.spec
        roles = Roles(
            stable=self.target(STABLE, "stable"),
            candidate=self.target(candidate, "candidate"),
            control=self.target(CONTROL, "control"),
        )
        return Judge(
            spec=spec,
            roles=roles,
            capacity=self.capacity,
            data=self.data,
            work_dir=self.work / candidate,
            reference=self.target(STABLE, "reference"),
            timing=Timing.of(spec.rollout, SCRAPE_INTERVAL_S),
        )


def pilot(stack: Stack, names: list[str]) -> dict[str, dict[str, float | None]]:
    """One 50% window per model against the control: its p99 and capacity ratios."""
    out = {}
    for name in names:
        judge = stack.judge(name)
        judge.warmup_burst_s = 3.0
        _, m = judge.step(50)
        assert m is not None
        out[name] = {"p99Ratio": m.evidence.p99_ratio.value, "capacityRatio": m.evidence.capacity_ratio.value}
        print(
            f"  pilot {name}: p99 x{out[name]['p99Ratio']:.2f}, capacity x{out[name]['capacityRatio']:.2f}", flush=True
        )
    return out


def _closest(pilots: dict[str, dict[str, float | None]], key: str, target: float) -> str:
    scored = [(abs(np.log((v[key] or np.nan) / target)), n) for n, v in pilots.items() if v[key]]
    return min(scored)[1]


def run_real(stack: Stack, candidate: str, runs: int, bank: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    results = []
    for i in range(runs):
        judge = stack.judge(candidate)
        started = time.monotonic()
        outcome = run_rollout(judge)
        seconds = time.monotonic() - started
        results.append(_run_record(outcome, seconds))
        if bank is not None:
            bank += [_bank_window(m) for m in outcome.measurements]
        print(
            f"  {candidate} run {i + 1}/{runs}: {outcome.decision} after {len(outcome.steps)} step(s), "
            f"{seconds:.0f} s — {outcome.reason}",
            flush=True,
        )
    return results


def _run_record(outcome: Outcome, seconds: float) -> dict[str, Any]:
    return {
        "decision": outcome.decision,
        "reason": outcome.reason,
        "seconds": round(seconds, 1),
        "steps": [{"weight": s.weight, "verdict": s.verdict,
                   "checks": {c.name: [c.verdict, c.value, c.low, c.high] for c in s.checks}} for s in outcome.steps],
    }  # fmt: skip


def _bank_window(m: Measurement) -> dict[str, Any]:
    cand, ctrl = m.requests.select("candidate"), m.requests.select("control")
    return {
        "weight": m.weight,
        "candidate_t": cand.start[~cand.failed], "candidate_ms": cand.latency_ms[~cand.failed],
        "control_t": ctrl.start[~ctrl.failed], "control_ms": ctrl.latency_ms[~ctrl.failed],
        "candidate_capacity": list(m.capacity.get("candidate", [])),
        "control_capacity": list(m.capacity.get("control", [])),
        "generator_bound": m.generator_bound,
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------
# simulation from measured noise
# ---------------------------------------------------------------------------------------------


def resampled_window(
    window: dict[str, Any], rng: np.random.Generator, slowdown: float, capacity: float
) -> dict[str, Any]:
    """A measured window with its roles swapped at random and the degradation applied to the candidate.

    The window itself is not resampled: each measured window is one honest draw of this machine's
    noise (resampling its time blocks to make "new" windows would repeat its rare spikes).
    """
    a, b = ("candidate", "control") if rng.random() < 0.5 else ("control", "candidate")
    return {
        "candidate_t": window[f"{a}_t"], "candidate_ms": window[f"{a}_ms"] * slowdown,
        "control_t": window[f"{b}_t"], "control_ms": window[f"{b}_ms"],
        "candidate_capacity": [(t, n * capacity, s) for t, n, s in window[f"{a}_capacity"]],
        "control_capacity": list(window[f"{b}_capacity"]),
        "generator_bound": window["generator_bound"],
    }  # fmt: skip


def pooled_evidence(weight: int, windows: list[dict[str, Any]]) -> gate.StepEvidence:
    """Windows of one step, one after the other in time, judged together as `measure_step` does."""
    times, ms, caps = (
        {"candidate": [], "control": []},
        {"candidate": [], "control": []},
        {"candidate": [], "control": []},
    )
    offset = 0.0
    for w in windows:
        start = min(w["candidate_t"].min(), w["control_t"].min())
        end = max(w["candidate_t"].max(), w["control_t"].max())
        for role in ("candidate", "control"):
            times[role].append(w[f"{role}_t"] - start + offset)
            ms[role].append(w[f"{role}_ms"])
            caps[role] += [(t + offset + 1e6 * len(caps[role]), n, s) for t, n, s in w[f"{role}_capacity"]]
        offset += end - start + 1.0
    t = {r: np.concatenate(times[r]) for r in times}
    m = {r: np.concatenate(ms[r]) for r in ms}
    requests = Requests(
        np.concatenate([t["candidate"], t["control"]]),
        np.array(["candidate"] * len(t["candidate"]) + ["control"] * len(t["control"])),
        np.concatenate([m["candidate"], m["control"]]),
        np.zeros(sum(map(len, t.values())), dtype=bool),
    )
    return evidence(
        weight,
        requests,
        "candidate",
        "control",
        caps["candidate"],
        caps["control"],
        generator_bound=any(w["generator_bound"] for w in windows),
        windows=len(windows),
    )


def simulate(
    spec: CompressedModelSpec,
    bank: list[dict[str, Any]],
    rollouts: int,
    slowdown: float = 1.0,
    capacity: float = 1.0,
    quality_pairs: tuple[np.ndarray, np.ndarray] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Rollouts through the real gate and policy, each step drawn from the bank of measured A/A windows."""
    rng = np.random.default_rng(seed)
    by_weight: dict[int, list[dict[str, Any]]] = {}
    for w in bank:
        by_weight.setdefault(w["weight"], []).append(w)
    everything = [w for w in bank if w["candidate_capacity"] and w["control_capacity"]]
    decisions: Counter[str] = Counter()
    steps_taken = []
    windows_used: list[int] = []
    rollout = spec.rollout
    timing = Timing.of(rollout, SCRAPE_INTERVAL_S)
    max_windows = int(timing.max_step_s // timing.step_s)
    for _ in range(rollouts):
        steps: list[StepResult] = []
        while True:
            nxt = policy.next_step(steps, rollout.steps, rollout.failure_budget, rollout.inconclusive_limit)
            if nxt.decision is not None:
                decisions[nxt.decision] += 1
                steps_taken.append(len(steps))
                break
            assert nxt.weight is not None
            if nxt.weight == 0:
                steps.append(gate.judge_quality(spec.gates, _simulated_quality(quality_pairs, rng)))
                continue
            pool = [w for w in by_weight.get(nxt.weight, everything) if w["candidate_capacity"]] or everything
            drawn: list[dict[str, Any]] = []
            while True:  # as measure_step: another window while the pooled evidence is not decisive
                drawn.append(resampled_window(pool[rng.integers(0, len(pool))], rng, slowdown, capacity))
                step = gate.judge_step(spec.gates, pooled_evidence(nxt.weight, drawn))
                if step.verdict != "Inconclusive" or len(drawn) >= max_windows:
                    break
            windows_used.append(len(drawn))
            steps.append(step)
    out = _rates(decisions, rollouts, steps_taken)
    out["meanWindowsPerCanaryStep"] = round(float(np.mean(windows_used)), 2) if windows_used else None
    return out


def _simulated_quality(pairs: tuple[np.ndarray, np.ndarray] | None, rng: np.random.Generator) -> gate.QualityEvidence:
    if pairs is None:  # a twin answers exactly like the baseline
        low, high = newcombe_paired(888, 0, 0, 12)  # the digits test set, nobody disagrees
        return gate.QualityEvidence("accuracy", "points", 900, 98.67, 98.67, 0.0, 100 * low, 100 * high)
    base_ok, cand_ok = pairs
    idx = rng.integers(0, len(base_ok), len(base_ok))
    b, c = base_ok[idx], cand_ok[idx]
    low, high = newcombe_paired(int((b & c).sum()), int((b & ~c).sum()), int((~b & c).sum()), int((~b & ~c).sum()))
    drop = 100 * float(b.mean() - c.mean())
    return gate.QualityEvidence(
        "accuracy", "points", len(b), 100 * float(b.mean()), 100 * float(c.mean()), drop, 100 * low, 100 * high
    )


def _rates(decisions: Counter[str], n: int, steps: list[int], seconds: list[float] | None = None) -> dict[str, Any]:
    rolled = decisions.get("RolledBack", 0)
    low, high = wilson(rolled, n)
    out: dict[str, Any] = {
        "runs": n, "decisions": dict(decisions), "rolledBackRate": round(rolled / n, 4) if n else None,
        "rolledBackCI95": [round(low, 4), round(high, 4)], "meanStepsJudged": round(float(np.mean(steps)), 2) if steps else None,
    }  # fmt: skip
    if seconds:
        out["medianSecondsToDecision"] = round(float(np.median(seconds)), 1)
    return out


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    decisions = Counter(r["decision"] for r in runs)
    return _rates(decisions, len(runs), [len(r["steps"]) for r in runs], [r["seconds"] for r in runs])


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True, help="where to write the results")
    parser.add_argument("--aa", type=int, default=20, help="real A/A runs (twin candidate)")
    parser.add_argument("--degraded", type=int, default=8, help="real runs per degraded candidate")
    parser.add_argument("--simulations", type=int, default=1000, help="simulated rollouts per scenario")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    parser.add_argument("--bank", type=Path, help="also save the A/A window bank here (pickle), for --from-bank")
    parser.add_argument("--from-bank", type=Path, help="skip the real stack: simulate from a saved bank")
    parser.add_argument(
        "--gates", default="{}", help='with --from-bank: gate settings to try, e.g. {"p99Tolerance": 0.3}'
    )
    parser.add_argument("--window-noise", type=float, help="with --from-bank: try another WINDOW_NOISE")
    args = parser.parse_args(argv)
    if args.from_bank:
        import pickle

        from slimserve.api.spec import Gates

        saved = pickle.loads(args.from_bank.read_bytes())  # noqa: S301 - our own file
        if args.window_noise is not None:
            from slimserve.evaluator import canary

            canary.WINDOW_NOISE = args.window_noise  # type: ignore[misc]
        spec = default_spec(Path("/nonexistent"))
        spec = spec.model_copy(
            update={"gates": Gates.model_validate({**spec.gates.model_dump(by_alias=True), **json.loads(args.gates)})}
        )
        sims = {
            "twin": simulate(spec, saved["bank"], args.simulations, seed=1),
            "slow": simulate(spec, saved["bank"], args.simulations, slowdown=TARGET_SLOWDOWN, seed=2),
            "lowcap": simulate(spec, saved["bank"], args.simulations, capacity=TARGET_CAPACITY, seed=3),
            "wrecked": simulate(spec, saved["bank"], args.simulations, quality_pairs=saved["pairs"], seed=4),
        }
        print(json.dumps(sims, indent=2))
        return 0

    from slimserve.api.report import CompressionReport, VariantRecord
    from slimserve.triton.repository import build_repository
    from slimserve.triton.server import TritonServer

    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="slimserve-gate-"))
    try:
        data = np.load(DIGITS / "data" / "test.npz")
        x, y = data["x"], data["y"]
        models = work / "models"
        models.mkdir()
        base = export_baseline(models)
        shutil.copyfile(base, models / "twin.onnx")
        _, wrecked_drop = wrecked(base, models / "wrecked.onnx", x, y)
        heavy = {f"heavy-{k}": with_extra_compute(base, models / f"heavy-{k}.onnx", k) for k in (2, 4, 8, 16, 32, 64)}
        names = ["twin", "wrecked", *heavy, CONTROL]

        def record(name: str) -> VariantRecord:
            path = "baseline.onnx" if name == CONTROL else f"{name}.onnx"
            return VariantRecord(
                name=name, recipe=name, path=path, sha256=name, size_bytes=1, compression_ratio=1.0, params=0, macs=0,
                metric="accuracy", quality=0.0, quality_ci=(0.0, 0.0), quality_unit="", drop=0.0, drop_ci=(0.0, 0.0),
                drop_unit="points", latency_ms_p50=1.0, latency_ms_p99=1.0, throughput_rps=1.0, speedup=1.0,
                compress_seconds=0.0,
            )  # fmt: skip

        report = CompressionReport(
            model="gate",
            device="cpu",
            baseline=record("baseline").model_copy(update={"path": "baseline.onnx"}),
            variants=[record(n) for n in names],
        )
        spec = default_spec(models)
        build_repository(report, models, work / "repository", "python", None, spec.serving)
        with (
            TritonServer(work / "repository", work / "triton") as triton,
            PrometheusServer([triton.metrics_target], work / "prometheus") as prom_server,
        ):
            prom_server.wait_for_targets()
            stack = Stack(
                triton.url,
                ProcessCpuCapacity(triton.model_processes),
                spec,
                DIGITS / "data" / "test.npz",
                work / "load",
            )
            print("pilot windows (50%, against the control):", flush=True)
            pilots = pilot(stack, list(heavy))
            slow = _closest(pilots, "p99Ratio", TARGET_SLOWDOWN)
            lowcap = _closest(pilots, "capacityRatio", TARGET_CAPACITY)
            print(f"slow = {slow}, lowcap = {lowcap}, wrecked drops {wrecked_drop:.2f} points offline", flush=True)
            bank: list[dict[str, Any]] = []
            real = {"twin": run_real(stack, "twin", args.aa, bank)}
            for scenario, name in (("slow", slow), ("lowcap", lowcap), ("wrecked", "wrecked")):
                real[scenario] = run_real(stack, name, args.degraded, None)
        # Quality pairs of the wrecked model for the simulation (per-sample right/wrong, offline).
        import onnxruntime as ort

        def answers(path: Path) -> np.ndarray:
            return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0].argmax(1)

        pairs = (answers(base) == y, answers(models / "wrecked.onnx") == y)
        if args.bank:
            import pickle

            args.bank.write_bytes(pickle.dumps({"bank": bank, "pairs": pairs}))
        slowdown = float(np.median([p["p99Ratio"] for n, p in pilots.items() if n == slow]))
        cap = float(np.median([p["capacityRatio"] for n, p in pilots.items() if n == lowcap]))
        simulated = {
            "twin": simulate(spec, bank, args.simulations, seed=1),
            "slow": simulate(spec, bank, args.simulations, slowdown=TARGET_SLOWDOWN, seed=2),
            "lowcap": simulate(spec, bank, args.simulations, capacity=TARGET_CAPACITY, seed=3),
            "wrecked": simulate(spec, bank, args.simulations, quality_pairs=pairs, seed=4),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)

    summary = {name: _summary(runs) for name, runs in real.items()}
    goals = []
    for where, table in (("real", summary), ("simulated", simulated)):
        twin = table["twin"]
        goals.append(
            {
                "goal": f"{where}: A/A false rollbacks <= {GOAL_FALSE_ROLLBACK:.0%}",
                "measured": twin["rolledBackRate"],
                "met": twin["rolledBackRate"] <= GOAL_FALSE_ROLLBACK,
            }
        )
        for scenario in ("slow", "lowcap", "wrecked"):
            rate = table[scenario]["rolledBackRate"]
            goals.append(
                {
                    "goal": f"{where}: {scenario} detected (RolledBack) >= {GOAL_DETECTION:.0%}",
                    "measured": rate,
                    "met": rate >= GOAL_DETECTION,
                }
            )
    result = {
        "benchmark": "gate",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "defaults": {"gates": spec.gates.model_dump(by_alias=True), "rollout": spec.rollout.model_dump(by_alias=True)},
        "candidates": {
            "slow": slow,
            "slowP99Ratio": slowdown,
            "lowcap": lowcap,
            "lowcapCapacityRatio": cap,
            "wreckedOfflineDropPoints": round(wrecked_drop, 2),
            "pilots": pilots,
        },
        "real": summary,
        "simulated": simulated,
        "bankWindows": len(bank),
        "goals": goals,
        "runs": real,
        "seconds": round(time.time() - started, 1),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=float) + "\n")
    for g in goals:
        print(f"{'met   ' if g['met'] else 'MISSED'} {g['goal']}: {g['measured']}")
    print(f"wrote {args.json} ({result['seconds']:.0f} s)")
    return 1 if args.strict and not all(g["met"] for g in goals) else 0


if __name__ == "__main__":
    raise SystemExit(main())
