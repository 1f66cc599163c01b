"""One canary step: Locust traffic split by weight, then the evidence the gate judges.

Shared by the local runtime (`slimserve run`, every step against the local Triton) and the
evaluator Job (`slimserve evaluate`, one step against the cluster's services).

A step sends `weight`% of its requests to the candidate and the same share to the control (a fresh
copy of the stable model); the rest, if any, goes to the stable model. The candidate is judged
against the control only, over the same seconds:
- latency from the window's own requests (Locust's per-request file), warm-up and spawn ramp
  excluded, p99 with a bootstrap interval of the candidate/control ratio;
- throughput as capacity: samples per second of compute, from Triton's counters scraped by
  Prometheus in the same seconds, with a block bootstrap over scrape intervals;
- errors from the client's view (timeouts, refused connections and non-2xx answers all count).
A step that has too few requests after `stepDuration` keeps sending load, in more windows of the same
length, until it has `minSamples` on both sides or `maxStepDuration` is spent.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np

from slimserve.api.spec import Gates, Rollout
from slimserve.errors import InvalidInput
from slimserve.evaluator.gate import Estimate, StepEvidence
from slimserve.evaluator.load import LoadResult, Requests, Target, run_locust
from slimserve.evaluator.prometheus import PromClient, wait_for_scrape
from slimserve.evaluator.quality import bootstrap

_DURATION = re.compile(r"^([0-9]+)(ms|s|m)$")
MIN_SCRAPES: Final = 4  # rate-like evidence needs several scrapes inside the judged window
P99: Final = 0.99
RESAMPLES: Final = 1000


def parse_duration(text: str, field: str = "spec.rollout.stepDuration") -> float:
    """'15s' → 15.0, '500ms' → 0.5, '2m' → 120.0 (seconds)."""
    match = _DURATION.match(text)
    if not match:
        raise InvalidInput(f"{field} = {text!r}: use a number with ms, s or m, e.g. 15s")
    value, unit = int(match.group(1)), match.group(2)
    return value * {"ms": 0.001, "s": 1.0, "m": 60.0}[unit]


@dataclass(frozen=True)
class Timing:
    """How long a step's windows last and which seconds are judged."""

    step_s: float
    max_step_s: float
    warmup_s: float
    ramp_s: float
    scrape_interval_s: float

    @classmethod
    def of(cls, rollout: Rollout, scrape_interval_s: float = 1.0) -> Timing:
        step = parse_duration(rollout.step_duration)
        longest = parse_duration(rollout.max_step_duration, "spec.rollout.maxStepDuration") if (
            rollout.max_step_duration) else 4 * step
        warmup = parse_duration(rollout.warmup, "spec.rollout.warmup")
        ramp = rollout.users / max(rollout.spawn_rate, 1)
        timing = cls(step, max(longest, step), warmup, ramp, scrape_interval_s)
        judged = step - warmup - ramp
        if judged < MIN_SCRAPES * scrape_interval_s:
            raise InvalidInput(
                f"spec.rollout.stepDuration = {rollout.step_duration!r}: after the warm-up ({warmup:g} s) and the "
                f"spawn ramp ({ramp:g} s) {judged:g} s are judged, fewer than {MIN_SCRAPES} scrapes of "
                f"{scrape_interval_s:g} s; use at least "
                f"{math.ceil(warmup + ramp + MIN_SCRAPES * scrape_interval_s)}s"
            )
        return timing


@dataclass(frozen=True)
class Roles:
    """The three targets of a step; `weights(w)` is the deterministic split at weight w."""

    stable: Target
    candidate: Target
    control: Target

    def targets(self, weight: int) -> list[Target]:
        shares = [(self.candidate, weight), (self.control, weight), (self.stable, max(0, 100 - 2 * weight))]
        return [t.with_weight(w) for t, w in shares if w > 0]


@dataclass(frozen=True)
class Measurement:
    """What one step produced: Locust's runs, the judged seconds and the evidence."""

    weight: int
    loads: list[LoadResult]
    windows: list[tuple[float, float]]
    evidence: StepEvidence
    summary: dict[str, dict[str, float | int | None]] = field(default_factory=dict)

    @property
    def generator_bound(self) -> bool:
        return any(load.generator_bound for load in self.loads)


def p99_interval(latencies: np.ndarray, seed: int = 0) -> Estimate:
    if len(latencies) < 2:
        return Estimate()
    low, high = bootstrap(lambda idx: np.quantile(latencies[idx], P99, axis=1), len(latencies), seed, RESAMPLES)
    return Estimate(float(np.quantile(latencies, P99)), low, high)


def p99_ratio(candidate: np.ndarray, control: np.ndarray, seed: int = 0) -> Estimate:
    """Bootstrap interval of p99(candidate)/p99(control), the two groups resampled independently."""
    if len(candidate) < 2 or len(control) < 2:
        return Estimate()
    rng = np.random.default_rng(seed)

    def p99(values: np.ndarray, rows: int) -> np.ndarray:
        return np.quantile(values[rng.integers(0, len(values), (rows, len(values)))], P99, axis=1)

    values = np.concatenate([p99(candidate, 250) / p99(control, 250) for _ in range(RESAMPLES // 250)])
    point = float(np.quantile(candidate, P99) / np.quantile(control, P99))
    low, high = np.percentile(values[np.isfinite(values)], [2.5, 97.5])
    return Estimate(point, float(low), float(high))


def capacity_interval(intervals: list[tuple[float, float]], seed: int = 0) -> tuple[Estimate, np.ndarray]:
    """Samples per second of compute over scrape intervals, with a block-bootstrap interval."""
    if len(intervals) < MIN_SCRAPES:
        return Estimate(), np.zeros((0, 2))
    pairs = np.asarray(intervals, dtype=np.float64)
    low, high = bootstrap(
        lambda idx: pairs[idx, 0].sum(axis=1) / np.maximum(pairs[idx, 1].sum(axis=1), 1e-12), len(pairs), seed, RESAMPLES
    )
    return Estimate(float(pairs[:, 0].sum() / pairs[:, 1].sum()), low, high), pairs


def capacity_ratio(candidate: np.ndarray, control: np.ndarray, seed: int = 0) -> Estimate:
    if len(candidate) < MIN_SCRAPES or len(control) < MIN_SCRAPES:
        return Estimate()
    rng = np.random.default_rng(seed)

    def capacity(pairs: np.ndarray, rows: int) -> np.ndarray:
        idx = rng.integers(0, len(pairs), (rows, len(pairs)))
        return pairs[idx, 0].sum(axis=1) / np.maximum(pairs[idx, 1].sum(axis=1), 1e-12)

    values = np.concatenate([capacity(candidate, 250) / capacity(control, 250) for _ in range(RESAMPLES // 250)])
    point = (candidate[:, 0].sum() / candidate[:, 1].sum()) / (control[:, 0].sum() / control[:, 1].sum())
    low, high = np.percentile(values[np.isfinite(values)], [2.5, 97.5])
    return Estimate(float(point), float(low), float(high))


def evidence(
    weight: int,
    requests: Requests,
    candidate: str,
    control: str,
    candidate_capacity: list[tuple[float, float]],
    control_capacity: list[tuple[float, float]],
    generator_bound: bool = False,
    seconds: float = 0.0,
) -> StepEvidence:
    """The judged requests and scrape intervals of a step, turned into estimates with intervals."""
    cand, ctrl = requests.select(candidate), requests.select(control)
    cand_ok, ctrl_ok = cand.latency_ms[~cand.failed], ctrl.latency_ms[~ctrl.failed]
    cand_cap, cand_pairs = capacity_interval(candidate_capacity)
    ctrl_cap, ctrl_pairs = capacity_interval(control_capacity)
    return StepEvidence(
        weight=weight,
        candidate_requests=len(cand),
        control_requests=len(ctrl),
        candidate_errors=int(cand.failed.sum()),
        control_errors=int(ctrl.failed.sum()),
        candidate_p99_ms=p99_interval(cand_ok),
        control_p99_ms=p99_interval(ctrl_ok),
        p99_ratio=p99_ratio(cand_ok, ctrl_ok),
        candidate_capacity_rps=cand_cap,
        control_capacity_rps=ctrl_cap,
        capacity_ratio=capacity_ratio(cand_pairs, ctrl_pairs),
        generator_bound=generator_bound,
        seconds=seconds,
    )


def _summary(requests: Requests, target: Target, seconds: float) -> dict[str, float | int | None]:
    mine = requests.select(target.key)
    ok = mine.latency_ms[~mine.failed]
    return {
        "requests": len(mine),
        "failures": int(mine.failed.sum()),
        "rps": round(len(mine) / seconds, 2) if seconds > 0 else None,
        "p50Ms": round(float(np.quantile(ok, 0.5)), 3) if len(ok) else None,
        "p99Ms": round(float(np.quantile(ok, P99)), 3) if len(ok) else None,
    }


def measure_step(
    prom: PromClient,
    roles: Roles,
    weight: int,
    data: Path,
    rollout: Rollout,
    gates: Gates,
    work_dir: Path,
    timing: Timing | None = None,
) -> Measurement:
    """Send the step's load until both sides have `minSamples` judged requests (or time is up).

    The first window of a step skips the spawn ramp and `warmup`; a longer step's later windows skip
    the ramp and a second (the models are warm by then).
    """
    timing = timing or Timing.of(rollout)
    loads: list[LoadResult] = []
    windows: list[tuple[float, float]] = []
    judged: list[Requests] = []
    capacity: dict[str, list[tuple[float, float]]] = {roles.candidate.key: [], roles.control.key: []}
    spent = 0.0
    while True:
        load = run_locust(
            roles.targets(weight), data, users=rollout.users, spawn_rate=rollout.spawn_rate, duration_s=timing.step_s,
            work_dir=work_dir, name=f"step-{weight:03d}-{len(loads)}",
        )  # fmt: skip
        loads.append(load)
        spent += timing.step_s
        skip = timing.ramp_s + (timing.warmup_s if len(loads) == 1 else min(timing.warmup_s, 1.0))
        start, end = load.start + skip, load.end
        if end - start < MIN_SCRAPES * timing.scrape_interval_s:
            start = max(load.start, end - MIN_SCRAPES * timing.scrape_interval_s)
        windows.append((start, end))
        judged.append(Requests.concat([load.requests.select(t.key, start, end) for t in (roles.candidate, roles.control)]))
        wait_for_scrape(timing.scrape_interval_s)
        for target in (roles.candidate, roles.control):
            capacity[target.key] += prom.capacity(target.labels, start, end, timing.scrape_interval_s)
        pooled = Requests.concat(judged)
        fewest = min(len(pooled.select(roles.candidate.key)), len(pooled.select(roles.control.key)))
        if fewest >= gates.min_samples or spent + timing.step_s > timing.max_step_s + 1e-9:
            break
    pooled = Requests.concat(judged)
    seconds = sum(e - s for s, e in windows)
    step_evidence = evidence(
        weight, pooled, roles.candidate.key, roles.control.key, capacity[roles.candidate.key],
        capacity[roles.control.key], generator_bound=any(x.generator_bound for x in loads), seconds=seconds,
    )  # fmt: skip
    summary = {t.key: _summary(pooled, t, seconds) for t in (roles.candidate, roles.control)}
    return Measurement(weight, loads, windows, step_evidence, summary)


def warm_up(roles: Roles, data: Path, rollout: Rollout, work_dir: Path, seconds: float) -> LoadResult | None:
    """An even split between candidate and control before the first step, judged by nobody."""
    if seconds <= 0:
        return None
    targets = [roles.candidate.with_weight(50), roles.control.with_weight(50)]
    return run_locust(targets, data, users=rollout.users, spawn_rate=rollout.spawn_rate, duration_s=seconds,
                      work_dir=work_dir, name="warmup")
