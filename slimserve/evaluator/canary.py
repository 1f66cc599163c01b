"""One canary step: Locust traffic split by weight, then the evidence the gate judges.

Shared by the local runtime (`slimserve run`, every step against the local Triton) and the
evaluator Job (`slimserve evaluate`, one step against the cluster's services).

A step sends `weight`% of its requests to the candidate and the same share to the control (a fresh
copy of the stable model); the rest, if any, goes to the stable model. The candidate is judged
against the control only, over the same seconds:
- latency from the window's own requests (Locust's per-request file), warm-up and spawn ramp
  excluded, p99 with a time-block bootstrap interval of the candidate/control ratio;
- throughput as capacity: samples per second of work, per interval of the same seconds — CPU
  seconds of the processes serving each model where they can be read (the local Triton), else
  compute seconds from Triton's counters scraped by Prometheus (the cluster) — with a bootstrap over
  the intervals;
- errors from the client's view (timeouts, refused connections and non-2xx answers all count).
A step whose evidence is not decisive after `stepDuration` (too few requests, or an interval across a
threshold) keeps sending load, in more windows of the same length, until the gate can decide or
`maxStepDuration` is spent; every interval carries the between-window noise measured on this machine.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

import numpy as np

from slimserve.api.spec import Gates, Rollout
from slimserve.errors import InvalidInput
from slimserve.evaluator.gate import CONFIDENCE, Estimate, StepEvidence, Z, judge_step
from slimserve.evaluator.load import LoadResult, Requests, Target, run_locust
from slimserve.evaluator.prometheus import PromClient, wait_for_scrape

_DURATION = re.compile(r"^([0-9]+)(ms|s|m)$")
MIN_SCRAPES: Final = 4  # rate-like evidence needs several scrapes inside the judged window
P99: Final = 0.99
RESAMPLES: Final = 1000
BLOCKS: Final = 30  # time blocks per window for the latency bootstrap
# Between-window noise (log scale) that no within-window resampling sees: on a shared machine a whole
# window can run with one side sharing a core with a busy neighbour. Twin (A/A) windows measured with
# `python -m benchmarks.gate` vary by about this much beyond their own intervals (p99 and capacity
# ratios alike), so every latency and capacity interval is widened by it, divided by sqrt(windows):
# more windows in a step average it out.
WINDOW_NOISE: Final = 0.08


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
        longest = (
            parse_duration(rollout.max_step_duration, "spec.rollout.maxStepDuration")
            if (rollout.max_step_duration)
            else 4 * step
        )
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


class Capacity(Protocol):
    """Where a step's capacity samples come from: (time, samples, seconds of work) per interval."""

    def start(self, targets: list[Target]) -> None: ...

    def stop(self) -> None: ...

    def intervals(
        self, target: Target, start: float, end: float, requests: Requests
    ) -> list[tuple[float, float, float]]: ...


@dataclass
class PrometheusCapacity:
    """Triton's own counters: samples (`nv_inference_count`) per second of compute
    (`nv_inference_compute_infer_duration_us`), per scrape interval — what the cluster's pods report."""

    prom: PromClient
    scrape_interval_s: float = 1.0

    def start(self, targets: list[Target]) -> None:
        pass

    def stop(self) -> None:
        pass

    def intervals(
        self, target: Target, start: float, end: float, requests: Requests
    ) -> list[tuple[float, float, float]]:
        return self.prom.capacity(target.labels, start, end, self.scrape_interval_s)


@dataclass
class ProcessCpuCapacity:
    """Samples per CPU-second of the processes that run each model (the local Triton's backend stubs).

    Wall-clock compute time counts the seconds a process waited for a core; on a shared machine
    that is noise about the neighbours, not the model. CPU time (`/proc/<pid>/task/*/schedstat`,
    nanoseconds) is what the model really costs. Samples are the target's successful requests
    (batch 1) that started in each interval.
    """

    processes: Callable[[str], list[int]]
    period_s: float = 0.5
    _samples: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    _pids: dict[str, list[int]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self, targets: list[Target]) -> None:
        self._pids = {t.key: self.processes(t.model) for t in targets}
        self._samples = []
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self._samples.append((time.time(), {key: _cpu_seconds(pids) for key, pids in self._pids.items()}))
            if self._stop.wait(self.period_s):
                self._samples.append((time.time(), {key: _cpu_seconds(pids) for key, pids in self._pids.items()}))
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def intervals(
        self, target: Target, start: float, end: float, requests: Requests
    ) -> list[tuple[float, float, float]]:
        mine = requests.select(target.key)
        ok = mine.start[~mine.failed]
        out = []
        for (t0, c0), (t1, c1) in zip(self._samples, self._samples[1:], strict=False):
            if t0 < start or t1 > end or target.key not in c0:
                continue
            busy = c1[target.key] - c0[target.key]
            count = float(((ok >= t0) & (ok < t1)).sum())
            if busy > 0 and count > 0:
                out.append((t1, count, busy))
        return out


def _cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return total / 1e9


@dataclass(frozen=True)
class Measurement:
    """What one step produced: Locust's runs, the judged seconds and the evidence."""

    weight: int
    loads: list[LoadResult]
    windows: list[tuple[float, float]]
    evidence: StepEvidence
    summary: dict[str, dict[str, float | int | None]] = field(default_factory=dict)
    requests: Requests = field(default_factory=Requests.empty, repr=False)  # judged candidate + control requests
    capacity: dict[str, list[tuple[float, float, float]]] = field(default_factory=dict, repr=False)

    @property
    def generator_bound(self) -> bool:
        return any(load.generator_bound for load in self.loads)


def _blocks(times: np.ndarray, start: float, length: float) -> np.ndarray:
    return np.floor((times - start) / length).astype(np.int64)


def _weighted_quantiles(values: np.ndarray, blocks: np.ndarray, counts: np.ndarray, q: float) -> np.ndarray:
    """The q-quantile of `values` under each row of block multiplicities `counts` [resamples, blocks]."""
    order = np.argsort(values)
    values, blocks = values[order], blocks[order]
    out = np.empty(len(counts))
    for start in range(0, len(counts), 100):  # chunks keep memory flat for long windows
        weights = counts[start : start + 100][:, blocks]
        cumulative = np.cumsum(weights, axis=1)
        target = q * cumulative[:, -1:]
        index = np.minimum((cumulative < target).sum(axis=1), len(values) - 1)
        out[start : start + 100] = np.where(cumulative[:, -1] > 0, values[index], np.nan)
    return out


def latency_intervals(
    cand_t: np.ndarray, cand_ms: np.ndarray, ctrl_t: np.ndarray, ctrl_ms: np.ndarray, seed: int = 0
) -> tuple[Estimate, Estimate, Estimate]:
    """p99 of candidate and control, and their ratio, with time-block bootstrap intervals.

    Latencies are not independent from request to request: a burst of contention slows both models
    for a while. Requests are therefore resampled in blocks of time (about 1/BLOCKS of the window),
    candidate and control together, so the interval carries the window's real noise and the ratio
    keeps the pairing of the two sides.
    """
    if len(cand_ms) < 2 or len(ctrl_ms) < 2:
        return Estimate(), Estimate(), Estimate()
    t0 = float(min(cand_t.min(), ctrl_t.min()))
    length = max((float(max(cand_t.max(), ctrl_t.max())) - t0) / BLOCKS, 1e-3)
    cb, kb = _blocks(cand_t, t0, length), _blocks(ctrl_t, t0, length)
    ids, inverse = np.unique(np.concatenate([cb, kb]), return_inverse=True)
    cb, kb = inverse[: len(cb)], inverse[len(cb) :]
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(ids), np.full(len(ids), 1 / len(ids)), size=RESAMPLES).astype(np.float64)
    stats = np.column_stack(
        [_weighted_quantiles(cand_ms, cb, counts, P99), _weighted_quantiles(ctrl_ms, kb, counts, P99)]
    )
    stats = stats[np.isfinite(stats).all(axis=1)]
    lo, hi = 100 * (1 - CONFIDENCE) / 2, 100 * (1 + CONFIDENCE) / 2
    point_c, point_k = float(np.quantile(cand_ms, P99)), float(np.quantile(ctrl_ms, P99))

    def interval(values: np.ndarray, point: float) -> Estimate:
        low, high = np.percentile(values, [lo, hi])
        return Estimate(point, float(low), float(high))

    return (
        interval(stats[:, 0], point_c),
        interval(stats[:, 1], point_k),
        interval(stats[:, 0] / stats[:, 1], point_c / point_k),
    )


def block_indices(n: int, rows: int, rng: np.random.Generator) -> np.ndarray:
    """Circular moving-block bootstrap indices [rows, n]: blocks of about n^(1/3) consecutive intervals.

    Neighbouring intervals share their noise (a busy neighbour slows several seconds in a row), so
    resampling single intervals would make the interval too narrow.
    """
    length = max(1, round(n ** (1 / 3)))
    starts = rng.integers(0, n, (rows, -(-n // length)))
    return ((starts[:, :, None] + np.arange(length)) % n).reshape(rows, -1)[:, :n]


def capacity_intervals(
    candidate: list[tuple[float, float, float]], control: list[tuple[float, float, float]], seed: int = 0
) -> tuple[Estimate, Estimate, Estimate]:
    """Samples per second of work for both, and their ratio, with a block bootstrap over intervals.

    Each entry is (end time, samples, seconds of work). Intervals measured at the same instants (the
    local sampler, or one Prometheus target) are resampled together; otherwise each side on its own.
    """
    if len(candidate) < MIN_SCRAPES or len(control) < MIN_SCRAPES:
        return Estimate(), Estimate(), Estimate()
    c = np.asarray(sorted(candidate), dtype=np.float64)
    k = np.asarray(sorted(control), dtype=np.float64)
    rng = np.random.default_rng(seed)
    paired = len(c) == len(k) and np.allclose(c[:, 0], k[:, 0])
    ci = block_indices(len(c), RESAMPLES, rng)
    ki = ci if paired else block_indices(len(k), RESAMPLES, rng)
    cap_c = c[ci, 1].sum(axis=1) / np.maximum(c[ci, 2].sum(axis=1), 1e-12)
    cap_k = k[ki, 1].sum(axis=1) / np.maximum(k[ki, 2].sum(axis=1), 1e-12)
    lo, hi = 100 * (1 - CONFIDENCE) / 2, 100 * (1 + CONFIDENCE) / 2
    point_c, point_k = c[:, 1].sum() / c[:, 2].sum(), k[:, 1].sum() / k[:, 2].sum()

    def interval(values: np.ndarray, point: float) -> Estimate:
        values = values[np.isfinite(values)]
        low, high = np.percentile(values, [lo, hi])
        return Estimate(float(point), float(low), float(high))

    return interval(cap_c, point_c), interval(cap_k, point_k), interval(cap_c / cap_k, point_c / point_k)


def widen(estimate: Estimate, windows: int) -> Estimate:
    """`estimate` with the between-window noise added to its interval (log scale, positive values)."""
    if not estimate.known:
        return estimate
    value, low, high = float(estimate.value), float(estimate.low), float(estimate.high)  # type: ignore[arg-type]
    if min(value, low, high) <= 0:
        return estimate
    floor = (Z * WINDOW_NOISE) ** 2 / max(windows, 1)
    down = math.sqrt(math.log(value / low) ** 2 + floor)
    up = math.sqrt(math.log(high / value) ** 2 + floor)
    return Estimate(value, value * math.exp(-down), value * math.exp(up))


def evidence(
    weight: int,
    requests: Requests,
    candidate: str,
    control: str,
    candidate_capacity: list[tuple[float, float, float]],
    control_capacity: list[tuple[float, float, float]],
    generator_bound: bool = False,
    seconds: float = 0.0,
    windows: int = 1,
) -> StepEvidence:
    """The judged requests and intervals of a step (`windows` pooled), as estimates with intervals."""
    cand, ctrl = requests.select(candidate), requests.select(control)
    cand_ok, ctrl_ok = ~cand.failed, ~ctrl.failed
    cand_p99, ctrl_p99, ratio = latency_intervals(
        cand.start[cand_ok], cand.latency_ms[cand_ok], ctrl.start[ctrl_ok], ctrl.latency_ms[ctrl_ok]
    )
    cand_cap, ctrl_cap, cap_ratio = capacity_intervals(candidate_capacity, control_capacity)
    return StepEvidence(
        weight=weight,
        candidate_requests=len(cand),
        control_requests=len(ctrl),
        candidate_errors=int(cand.failed.sum()),
        control_errors=int(ctrl.failed.sum()),
        candidate_p99_ms=widen(cand_p99, windows),
        control_p99_ms=widen(ctrl_p99, windows),
        p99_ratio=widen(ratio, windows),
        candidate_capacity_rps=widen(cand_cap, windows),
        control_capacity_rps=widen(ctrl_cap, windows),
        capacity_ratio=widen(cap_ratio, windows),
        generator_bound=generator_bound,
        seconds=seconds,
        windows=windows,
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
    capacity_source: Capacity,
    roles: Roles,
    weight: int,
    data: Path,
    rollout: Rollout,
    gates: Gates,
    work_dir: Path,
    timing: Timing | None = None,
) -> Measurement:
    """Send the step's load, one window of `stepDuration` at a time, until the gate can decide.

    After each window the step's evidence (every window so far, pooled) is judged; while that is
    Inconclusive — too few samples, or an interval that straddles a threshold — another window is
    sent, up to `maxStepDuration`. Looks are few (4 by default), and the between-window noise in
    every interval keeps a verdict from being a lucky window. The first window skips the spawn ramp
    and `warmup`; later windows skip the ramp and a second (the models are warm by then).
    """
    timing = timing or Timing.of(rollout)
    loads: list[LoadResult] = []
    windows: list[tuple[float, float]] = []
    judged: list[Requests] = []
    capacity: dict[str, list[tuple[float, float, float]]] = {roles.candidate.key: [], roles.control.key: []}
    spent = 0.0
    while True:
        capacity_source.start([roles.candidate, roles.control])
        try:
            load = run_locust(
                roles.targets(weight), data, users=rollout.users, spawn_rate=rollout.spawn_rate,
                duration_s=timing.step_s, work_dir=work_dir, name=f"step-{weight:03d}-{len(loads)}",
            )  # fmt: skip
            wait_for_scrape(timing.scrape_interval_s)
        finally:
            capacity_source.stop()
        loads.append(load)
        spent += timing.step_s
        skip = timing.ramp_s + (timing.warmup_s if len(loads) == 1 else min(timing.warmup_s, 1.0))
        start, end = load.start + skip, load.end
        if end - start < MIN_SCRAPES * timing.scrape_interval_s:
            start = max(load.start, end - MIN_SCRAPES * timing.scrape_interval_s)
        windows.append((start, end))
        judged.append(
            Requests.concat([load.requests.select(t.key, start, end) for t in (roles.candidate, roles.control)])
        )
        for target in (roles.candidate, roles.control):
            capacity[target.key] += capacity_source.intervals(target, start, end, load.requests)
        pooled = Requests.concat(judged)
        step_evidence = evidence(
            weight, pooled, roles.candidate.key, roles.control.key, capacity[roles.candidate.key],
            capacity[roles.control.key], generator_bound=any(x.generator_bound for x in loads),
            seconds=sum(e - s for s, e in windows), windows=len(windows),
        )  # fmt: skip
        decided = judge_step(gates, step_evidence).verdict != "Inconclusive"
        if decided or spent + timing.step_s > timing.max_step_s + 1e-9:
            break
    summary = {t.key: _summary(pooled, t, step_evidence.seconds) for t in (roles.candidate, roles.control)}
    return Measurement(weight, loads, windows, step_evidence, summary, pooled, capacity)


def warm_up(roles: Roles, data: Path, rollout: Rollout, work_dir: Path, seconds: float) -> LoadResult | None:
    """An even split between candidate and control before the first step, judged by nobody."""
    if seconds <= 0:
        return None
    targets = [roles.candidate.with_weight(50), roles.control.with_weight(50)]
    return run_locust(
        targets,
        data,
        users=rollout.users,
        spawn_rate=rollout.spawn_rate,
        duration_s=seconds,
        work_dir=work_dir,
        name="warmup",
    )
