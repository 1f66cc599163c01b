"""Operator scale: `python -m benchmarks.operator --json PATH --models 100,300,1000 [--strict]`.

Three processes per N, as in a cluster: kmock's emulator (`benchmarks.emulator`, the API server
double, counting requests and watch events), the operator exactly as in the image (`kopf run -m
slimserve.operator`), and this one, which creates N CompressedModels at once and reads both sides'
counters. A model's clock runs from its create to its compression Job's create, both timed by the
emulator. Counters are read `--window` seconds after the first create (or once the last Job exists,
if later), so every N is measured over the same lifetime per model and per-model counts compare.

Goals: every model has its Job within 60 s at the largest N; reconciles per model at the largest N
at most 1.2x those at the smallest; operator peak RSS (VmHWM) at most 200 MB. `--strict` exits 1 on
a miss.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

NS = "bench"
CR_URL = f"/apis/slimserve.dev/v1alpha1/namespaces/{NS}/compressedmodels"
GOAL_SECONDS = 60.0
GOAL_RECONCILE_RATIO = 1.2
GOAL_PEAK_MB = 200.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _model(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "slimserve.dev/v1alpha1", "kind": "CompressedModel",
        "metadata": {"name": f"model-{i:04d}", "namespace": NS},
        "spec": {
            "source": {"uri": f"s3://models/model-{i}.onnx"},
            "data": {"calibration": "s3://data/cal.npz", "evaluation": "s3://data/test.npz"},
            "compression": {"variants": [{"name": "int8", "steps": [{"quantize": {"mode": "static"}}]}]},
        },
    }  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _peak_rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1)) / 1024  # type: ignore[union-attr]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def _counters(metrics: str, name: str) -> dict[str, float]:
    """{label values joined by ',' (or ''): value} for one counter."""
    out: dict[str, float] = {}
    for labels, value in re.findall(rf"^{name}(?:\{{([^}}]*)\}})? ([0-9.e+]+)$", metrics, re.M):
        key = ",".join(re.findall(r'="([^"]*)"', labels or ""))
        out[key] = out.get(key, 0.0) + float(value)
    return out


def _load_avg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


class Processes:
    """The emulator and the operator replicas, stopped in reverse order on exit."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[tuple[str, subprocess.Popen[bytes], Any]] = []

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        proc = subprocess.Popen([sys.executable, *args], env=env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append((name, proc, log))
        return proc

    def check(self) -> None:
        for name, proc, _ in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited: " + (self.workdir / f"{name}.log").read_text()[-3000:])

    def stop(self) -> None:
        for _, proc, log in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            log.close()


async def _get_json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as resp:
        resp.raise_for_status()
        return await resp.json()


async def _wait_up(http: aiohttp.ClientSession, url: str, procs: Processes, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs.check()
        try:
            async with http.get(url) as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


async def run_one(
    models: int, workdir: Path, window: float, timeout: float, replicas: int = 1, plain_emulator: bool = False
) -> dict[str, Any]:
    """N CompressedModels against one emulator and `replicas` operators; counters of both sides."""
    procs = Processes(workdir)
    api_port = _free_port()
    api = f"http://127.0.0.1:{api_port}"
    kubeconfig = workdir / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": api}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}],
        "users": [{"name": "kmock", "user": {"token": "bench"}}],
    }))  # fmt: skip
    try:
        plain = ["--plain"] if plain_emulator else []
        emulator = procs.start("emulator", ["-m", "benchmarks.emulator", "--port", str(api_port), *plain],
                               dict(os.environ))  # fmt: skip
        metrics_ports = [_free_port() for _ in range(replicas)]
        operators = [
            procs.start(
                f"operator-{i}",
                ["-m", "kopf", "run", "--standalone", f"--namespace={NS}", "-m", "slimserve.operator"],
                {
                    **os.environ,
                    "KUBECONFIG": str(kubeconfig),
                    "SLIMSERVE_METRICS_PORT": str(port),
                    "SLIMSERVE_SCANNING": "false",
                },
            )  # fmt: skip
            for i, port in enumerate(metrics_ports)
        ]
        async with aiohttp.ClientSession(base_url=api) as http, aiohttp.ClientSession() as plain:
            await _wait_up(http, "/_bench/stats?times=0", procs)
            for port in metrics_ports:
                await _wait_up(plain, f"http://127.0.0.1:{port}/metrics", procs)
            idle_rss = max(_peak_rss_mb(p.pid) for p in operators)
            cpu_before = {
                "operator": sum(_cpu_seconds(p.pid) for p in operators),
                "emulator": _cpu_seconds(emulator.pid),
            }
            await asyncio.sleep(1.0)  # kopf's watch streams are open
            started = time.monotonic()
            load_before = _load_avg()

            async def create(i: int) -> None:
                async with http.post(CR_URL, json=_model(i)) as resp:
                    assert resp.status < 300, await resp.text()

            for first in range(0, models, 50):  # 50 at a time: as fast as a `kubectl apply` of many files
                await asyncio.gather(*(create(i) for i in range(first, min(first + 50, models))))
            create_seconds = time.monotonic() - started
            print(f"N={models}: created in {create_seconds:.1f} s", file=sys.stderr, flush=True)
            jobs_done_at = None
            while True:
                procs.check()
                stats = await _get_json(http, "/_bench/stats?times=0")
                elapsed = time.monotonic() - started
                if jobs_done_at is None and stats["counts"]["jobs"] >= models:
                    jobs_done_at = elapsed
                    print(f"N={models}: {models} Jobs after {elapsed:.1f} s", file=sys.stderr, flush=True)
                if (jobs_done_at is not None and elapsed >= window) or elapsed >= timeout:
                    break
                await asyncio.sleep(0.5)
            stats = await _get_json(http, "/_bench/stats")
            metrics = ""
            for port in metrics_ports:
                async with plain.get(f"http://127.0.0.1:{port}/metrics") as resp:
                    metrics += await resp.text()
            measured = time.monotonic() - started
            peak = max(_peak_rss_mb(p.pid) for p in operators)
            cpu = {"operator": sum(_cpu_seconds(p.pid) for p in operators) - cpu_before["operator"],
                   "emulator": _cpu_seconds(emulator.pid) - cpu_before["emulator"]}  # fmt: skip
            load_after = _load_avg()
    finally:
        procs.stop()
    created, jobs = stats["created"]["compressedmodels"], stats["created"]["jobs"]
    latencies = sorted(jobs[f"{key}-compress-g1"] - t for key, t in created.items() if f"{key}-compress-g1" in jobs)
    reconciles = _counters(metrics, "slimserve_operator_reconciles_total")
    wakeups = _counters(metrics, "slimserve_operator_wakeups_total")
    requests = stats["requests"].get("operator", {})
    per_model = lambda n: round(n / models, 2)  # noqa: E731
    total_requests = sum(requests.values())
    return {
        "models": models,
        "operator_replicas": replicas,
        "emulator": "kmock as it comes" if plain_emulator else "kmock, request log cut, objects by key",
        "with_compression_job": len(latencies),
        "create_seconds": round(create_seconds, 1),
        "window_seconds": round(measured, 1),
        "first_job_seconds": {
            "p50": round(statistics.median(latencies), 2) if latencies else None,
            "p95": round(latencies[int(0.95 * (len(latencies) - 1))], 2) if latencies else None,
            "max": round(latencies[-1], 2) if len(latencies) == models else None,
        },
        "reconciles": int(sum(reconciles.values())),
        "reconciles_per_model": per_model(sum(reconciles.values())),
        "reconciles_by_result": {k: int(v) for k, v in sorted(reconciles.items())},
        "wakeups_per_model": {k: per_model(v) for k, v in sorted(wakeups.items())},
        "api_requests": total_requests,
        "api_requests_per_model": per_model(total_requests),
        "api_requests_by_verb": dict(sorted(requests.items(), key=lambda kv: -kv[1])),
        "watch_events_per_model": {k: per_model(v) for k, v in sorted(stats["watch_events"].items())},
        "operator_peak_rss_mb": round(peak, 1),
        "operator_idle_rss_mb": round(idle_rss, 1),
        "cpu_seconds": {k: round(v, 1) for k, v in cpu.items()},
        "load_average_1m": [load_before, load_after],
    }


def goals(runs: list[dict[str, Any]]) -> dict[str, Any]:
    small, large = min(runs, key=lambda r: r["models"]), max(runs, key=lambda r: r["models"])
    slowest = large["first_job_seconds"]["max"]
    ratio = large["reconciles_per_model"] / small["reconciles_per_model"] if small["reconciles_per_model"] else None
    peak = max(r["operator_peak_rss_mb"] for r in runs)
    return {
        f"every_model_has_its_job_within_{GOAL_SECONDS:g}s_at_n{large['models']}": {
            "value": slowest, "threshold": GOAL_SECONDS, "met": slowest is not None and slowest <= GOAL_SECONDS},
        f"reconciles_per_model_n{large['models']}_over_n{small['models']}": {
            "value": round(ratio, 2) if ratio else None, "threshold": GOAL_RECONCILE_RATIO,
            "met": ratio is not None and ratio <= GOAL_RECONCILE_RATIO},
        "operator_peak_rss_mb": {"value": peak, "threshold": GOAL_PEAK_MB, "met": peak <= GOAL_PEAK_MB},
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--models", default="100,300,1000", help="comma-separated N, one run each")
    parser.add_argument("--window", type=float, default=60.0, help="seconds from the first create to the counters")
    parser.add_argument("--timeout", type=float, default=240.0, help="give up on an N after this many seconds")
    parser.add_argument("--plain-emulator", action="store_true", help="kmock's whole request log and scans")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args(argv)
    runs = []
    for n in (int(x) for x in args.models.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(asyncio.run(run_one(n, Path(tmp), args.window, args.timeout,
                                            plain_emulator=args.plain_emulator)))  # fmt: skip
        print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    result = {
        "runs": runs,
        "goals": goals(runs),
        "machine": f"{os.cpu_count()} CPUs, shared with other jobs (load averages per run); counts matter more "
        "than times",
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    met = all(g["met"] for g in result["goals"].values())
    return 1 if args.strict and not met else 0


if __name__ == "__main__":
    sys.exit(main())
