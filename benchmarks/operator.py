"""Operator scale: `python -m benchmarks.operator --json PATH [--models 100]`.

kmock's KubernetesEmulator serves the API in this process; the operator runs as its own process
(`kopf run -m slimserve.operator`, exactly as in the image), so its peak memory (VmHWM) is its
own. 100 CompressedModels are created at once; the clock runs from each create to the moment its
compression Job exists. Requests per reconcile come from the operator's own counters
(`slimserve_operator_api_requests_total` / `slimserve_operator_reconciles_total`).
Goals: every model has its compression Job within 30 s; peak memory ≤ 150 MB.
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
import kmock
import yaml

from tests.kube.emulator import ClusterEmulator


class BenchEmulator(ClusterEmulator):
    request_history = 50

NS = "bench"
CR = "slimserve.dev/v1alpha1/compressedmodels"
GOAL_SECONDS = 30.0
GOAL_PEAK_MB = 150.0


def _model(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "slimserve.dev/v1alpha1", "kind": "CompressedModel",
        "metadata": {"name": f"model-{i:03d}", "namespace": NS, "uid": f"uid-{i}", "generation": 1,
                     "resourceVersion": "1"},
        "spec": {
            "source": {"uri": f"s3://models/model-{i}.onnx"},
            "data": {"calibration": "s3://data/cal.npz", "evaluation": "s3://data/test.npz"},
            "compression": {"variants": [{"name": "int8", "steps": [{"quantize": {"mode": "static"}}]}]},
        },
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _peak_rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1)) / 1024  # type: ignore[union-attr]


def _counter(metrics: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}(?:\{{[^}}]*\}})? ([0-9.e+]+)$", metrics, re.M))


async def run(models: int, workdir: Path) -> dict[str, Any]:
    async with BenchEmulator() as emulator, kmock.Server(emulator):
        emulator.resources.load_bundled()
        emulator.resources[CR] = {"kind": "CompressedModel", "singular": "compressedmodel", "namespaced": True,
                                  "verbs": ["list", "watch", "get", "create", "patch"], "subresources": ["status"]}
        kubeconfig = workdir / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
            "clusters": [{"name": "kmock", "cluster": {"server": str(emulator.url).rstrip("/")}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}],
            "users": [{"name": "kmock", "user": {"token": "bench"}}],
        }))
        metrics_port = _free_port()
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "SLIMSERVE_METRICS_PORT": str(metrics_port),
               "SLIMSERVE_RECONCILE_INTERVAL_SECONDS": "5", "SLIMSERVE_SCANNING": "false"}
        log = open(workdir / "operator.log", "w")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [sys.executable, "-m", "kopf", "run", "--standalone", f"--namespace={NS}", "-m", "slimserve.operator"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            async with aiohttp.ClientSession() as http:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:  # the operator is up when its metrics answer
                    if proc.poll() is not None:
                        raise RuntimeError("the operator exited: " + (workdir / "operator.log").read_text()[-3000:])
                    try:
                        async with http.get(f"http://127.0.0.1:{metrics_port}/metrics") as resp:
                            if resp.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.2)
                idle_rss = _peak_rss_mb(proc.pid)
                await asyncio.sleep(1.0)  # let kopf's watch stream settle
                created: dict[str, float] = {}
                for i in range(models):
                    body = _model(i)
                    created[body["metadata"]["name"]] = time.monotonic()
                    url = f"/apis/slimserve.dev/v1alpha1/namespaces/{NS}/compressedmodels"
                    async with emulator.post(url, json=body) as resp:
                        assert resp.status < 300, await resp.text()
                print(f"created {models} models", file=sys.stderr, flush=True)
                first_child: dict[str, float] = {}
                deadline = time.monotonic() + 120
                wanted = {f"{name}-compress-g1": name for name in created}
                while len(first_child) < models and time.monotonic() < deadline:
                    # One cheap pass over the emulator's keys: this loop shares the emulator's event loop.
                    now = time.monotonic()
                    for _, _, job in list(emulator.objects.keys()):
                        name = wanted.get(job)
                        if name is not None and name not in first_child:
                            first_child[name] = now - created[name]
                    await asyncio.sleep(0.1)
                print(f"{len(first_child)} compression Jobs seen", file=sys.stderr, flush=True)
                await asyncio.sleep(2.0)  # a few observation passes after the first child
                async with http.get(f"http://127.0.0.1:{metrics_port}/metrics") as resp:
                    metrics = await resp.text()
                peak = _peak_rss_mb(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
        if proc.returncode not in (0, -signal.SIGTERM):
            sys.stderr.write((workdir / "operator.log").read_text()[-3000:])
    latencies = sorted(first_child.values())
    reconciles = _counter(metrics, "slimserve_operator_reconciles_total")
    requests = _counter(metrics, "slimserve_operator_api_requests_total")
    jobs_within = sum(1 for v in latencies if v <= GOAL_SECONDS)
    return {
        "models": models,
        "with_compression_job": len(latencies),
        "first_child_seconds": {
            "p50": round(statistics.median(latencies), 3) if latencies else None,
            "p95": round(latencies[int(0.95 * (len(latencies) - 1))], 3) if latencies else None,
            "max": round(latencies[-1], 3) if latencies else None,
        },
        "operator_peak_rss_mb": round(peak, 1),
        "operator_idle_rss_mb": round(idle_rss, 1),
        "reconciles": int(reconciles),
        "api_requests": int(requests),
        "requests_per_reconcile": round(requests / reconciles, 2) if reconciles else None,
        "goals": {
            "all_jobs_within_30s": {"value": jobs_within, "threshold": models, "met": jobs_within == models},
            "peak_memory_mb": {"value": round(peak, 1), "threshold": GOAL_PEAK_MB, "met": peak <= GOAL_PEAK_MB},
        },
        "note": "operator and emulator on the same 2-core machine; kopf's own watch/patch requests not counted",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--models", type=int, default=100)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(run(args.models, Path(tmp)))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0 if all(g["met"] for g in result["goals"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
