"""Canary load with Locust, run headless as its own process, and its statistics.

Locust is never imported here (it monkey-patches the standard library through gevent): this
module starts `locust -f slimserve/evaluator/locustfile.py --headless ...` and reads the JSON file it
writes at the end, plus the per-request file (start time, target, milliseconds, failed) that lets the
gate judge exactly the seconds it chooses. Requests are named after their target, so the statistics
come out per target. The run also records how much CPU the generator used: a single Locust process
that keeps a core busy is the bottleneck, and then latencies carry its own scheduling delays.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Final

import numpy as np

from slimserve.errors import ServingError
from slimserve.processes import ManagedProcess

LOCUSTFILE: Final = Path(__file__).resolve().with_name("locustfile.py")
# Locust is one gevent process: it can use one core at most, and well before that its own scheduling
# delays show up as latency. At 80% of a core the measured rate says more about Locust than Triton.
GENERATOR_BOUND_CPU: Final = 0.8


@dataclass(frozen=True)
class Target:
    """Where one model is served and the share of requests it gets (weights need not sum to 100).

    `name` is the target's role in the window (stable, candidate, control; default: the model name) —
    in a cluster all three may serve the same client-facing model name at different URLs.
    `labels` are the Prometheus label matchers of the target's series, e.g. `{"model": "int8"}`.
    """

    url: str
    model: str
    weight: float
    name: str = ""
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> str:
        return self.name or self.model

    def with_weight(self, weight: float) -> Target:
        return Target(self.url, self.model, weight, self.name, self.labels)


@dataclass(frozen=True)
class Requests:
    """Every request of a Locust run: start (epoch s), target, latency (ms), failed — as numpy arrays."""

    start: np.ndarray
    target: np.ndarray
    latency_ms: np.ndarray
    failed: np.ndarray

    @classmethod
    def read(cls, path: Path) -> Requests:
        if not path.is_file() or path.stat().st_size == 0:
            return cls.empty()
        table = np.loadtxt(path, delimiter=",", dtype=str, ndmin=2)
        return cls(table[:, 0].astype(float), table[:, 1], table[:, 2].astype(float), table[:, 3] == "1")

    @classmethod
    def empty(cls) -> Requests:
        return cls(np.zeros(0), np.zeros(0, dtype=str), np.zeros(0), np.zeros(0, dtype=bool))

    def __len__(self) -> int:
        return len(self.start)

    def select(self, target: str, start: float = -math.inf, end: float = math.inf) -> Requests:
        keep = (self.target == target) & (self.start >= start) & (self.start <= end)
        return Requests(self.start[keep], self.target[keep], self.latency_ms[keep], self.failed[keep])

    @staticmethod
    def concat(parts: list[Requests]) -> Requests:
        if not parts:
            return Requests.empty()
        return Requests(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in ("start", "target", "latency_ms", "failed"))
        )


@dataclass(frozen=True)
class ModelLoad:
    """Client-side statistics of one model (or of all requests, named 'Aggregated')."""

    name: str
    requests: int
    failures: int
    rps: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    avg_ms: float | None

    @property
    def failure_rate(self) -> float:
        return self.failures / self.requests if self.requests else math.nan


@dataclass(frozen=True)
class LoadResult:
    per_model: dict[str, ModelLoad]  # by target key
    total: ModelLoad
    start: float = field(metadata={"doc": "epoch seconds of the first request"})
    end: float = field(metadata={"doc": "epoch seconds of the last request"})
    generator_cpu: float = field(metadata={"doc": "Locust CPU seconds per wall second (1.0 = one core)"})
    generator_bound: bool
    exit_code: int
    log_path: str
    requests: Requests = field(default_factory=Requests.empty, repr=False)

    @property
    def duration_s(self) -> float:
        return max(self.end - self.start, 0.0)

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out.pop("requests", None)
        out["duration_s"] = self.duration_s
        return out


def percentile(histogram: dict[float, int], q: float) -> float | None:
    """The `q` quantile (0-1) of Locust's response-time histogram (ms → count)."""
    total = sum(histogram.values())
    if not total:
        return None
    rank = math.ceil(q * total)
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= rank:
            return float(value)
    return float(max(histogram))


def _model_load(
    name: str, requests: int, failures: int, span: float, histogram: dict[float, int], spent_ms: float
) -> ModelLoad:
    return ModelLoad(
        name=name,
        requests=requests,
        failures=failures,
        rps=requests / span if span > 0 else math.nan,
        p50_ms=percentile(histogram, 0.50),
        p95_ms=percentile(histogram, 0.95),
        p99_ms=percentile(histogram, 0.99),
        avg_ms=spent_ms / requests if requests else None,
    )


def parse_stats(entries: list[dict[str, object]]) -> tuple[dict[str, ModelLoad], ModelLoad, float, float]:
    """Locust's `--json-file` entries → per-model loads, the aggregate, first and last request time."""
    per_model: dict[str, ModelLoad] = {}
    merged: dict[float, int] = {}
    starts, ends = [], []
    total_requests = total_failures = 0
    total_time = 0.0
    for entry in entries:
        histogram = {float(k): int(v) for k, v in dict(entry.get("response_times") or {}).items()}  # type: ignore[call-overload]
        for k, v in histogram.items():
            merged[k] = merged.get(k, 0) + v
        requests = int(entry.get("num_requests", 0))  # type: ignore[call-overload]
        failures = int(entry.get("num_failures", 0))  # type: ignore[call-overload]
        start = float(entry.get("start_time") or 0)  # type: ignore[arg-type]
        end = float(entry.get("last_request_timestamp") or start)  # type: ignore[arg-type]
        starts.append(start)
        ends.append(end)
        span = end - start
        name = str(entry.get("name"))
        spent = float(entry.get("total_response_time", 0.0))  # type: ignore[arg-type]
        per_model[name] = _model_load(name, requests, failures, span, histogram, spent)
        total_requests += requests
        total_failures += failures
        total_time += spent
    start, end = (min(starts), max(ends)) if starts else (math.nan, math.nan)
    span = end - start
    total = _model_load("Aggregated", total_requests, total_failures, span, merged, total_time)
    return per_model, total, start, end


def locust_binary() -> str:
    found = shutil.which("locust", path=str(Path(sys.executable).parent)) or shutil.which("locust")
    if not found:
        raise ServingError("Locust is missing: install the serving extra (pip install 'locust==2.47.0')")
    return found


def run_locust(
    targets: list[Target],
    data: Path,
    *,
    users: int,
    spawn_rate: int,
    duration_s: float,
    work_dir: Path,
    name: str = "load",
    locustfile: Path = LOCUSTFILE,
    max_samples: int = 512,
) -> LoadResult:
    """Run one headless Locust window against `targets`; raise ServingError if Locust fails.

    Failed requests do not make this raise (they are evidence for the gate); Locust crashing or
    writing no statistics does.
    """
    if not any(t.weight > 0 for t in targets):
        raise ValueError("at least one target needs a positive weight")
    work_dir.mkdir(parents=True, exist_ok=True)
    stats_prefix = work_dir / f"{name}-stats"
    stats_file = Path(f"{stats_prefix}.json")
    stats_file.unlink(missing_ok=True)
    requests_file = work_dir / f"{name}-requests.csv"
    requests_file.unlink(missing_ok=True)
    argv = [
        locust_binary(),
        "-f", str(locustfile),
        "--headless",
        "--only-summary",
        "-u", str(users),
        "-r", str(spawn_rate),
        "-t", f"{max(int(round(duration_s)), 1)}s",
        "-H", targets[0].url,
        "--stop-timeout", "2",
        "--json-file", str(stats_prefix),
        "--loglevel", "WARNING",
        "--slimserve-targets", json.dumps([{"url": t.url, "model": t.model, "weight": t.weight, "name": t.key}
                                           for t in targets]),
        "--slimserve-requests", str(requests_file),
        "--slimserve-data", str(data),
        "--slimserve-max-samples", str(max_samples),
    ]  # fmt: skip
    process = ManagedProcess(f"locust-{name}", argv, work_dir / f"{name}-locust.log")
    samples: list[tuple[float, float]] = []  # (epoch, CPU seconds of Locust so far)
    deadline = time.monotonic() + duration_s + 60
    while process.alive() and time.monotonic() < deadline:
        cpu = _cpu_seconds(process.pid)
        if cpu is not None:
            samples.append((time.time(), cpu))
        time.sleep(0.25)
    if process.alive():
        process.stop()
        raise ServingError(f"Locust did not finish its {duration_s:.0f} s window; log {process.log_path}")
    code = process.wait()
    process.stop()
    if not stats_file.is_file():
        raise ServingError(f"Locust exited with code {code} and wrote no statistics:\n{process.log_tail(20)}")
    per_model, total, start, end = parse_stats(json.loads(stats_file.read_text()))
    if total.requests == 0:
        raise ServingError(f"Locust sent no requests (exit code {code}):\n{process.log_tail(20)}")
    generator_cpu = _busy_fraction(samples, start, end)
    log_text = process.log_path.read_text(errors="replace")
    bound = generator_cpu >= GENERATOR_BOUND_CPU or "CPU usage above" in log_text
    return LoadResult(
        per_model=per_model,
        total=total,
        start=start,
        end=end,
        generator_cpu=generator_cpu,
        generator_bound=bound,
        exit_code=code,
        log_path=str(process.log_path),
        requests=Requests.read(requests_file),
    )


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of `pid` from /proc (None once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _busy_fraction(samples: list[tuple[float, float]], start: float, end: float) -> float:
    """Locust's CPU seconds per wall second while requests flowed (start-up imports excluded)."""
    inside = [(t, c) for t, c in samples if start <= t <= end]
    if len(inside) < 2:
        inside = samples[-2:]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return math.nan
    return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])
