"""A real Prometheus scraping Triton, and the PromQL the gate reads.

Locally slimserve starts Debian's `prometheus` binary with a one-job config that scrapes Triton's
metrics port every second; in a cluster the evaluator Job talks to the cluster's Prometheus with the
same `PromClient`. Every per-model number comes from one `[window]` ending at one instant, so the
baseline and the candidate are read over exactly the same seconds.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Final

from slimserve.errors import InvalidInput
from slimserve.evaluator.gate import Window
from slimserve.triton.process import ManagedProcess, ServingError, free_port, port_in_use, wait_until

ENV_BINARY: Final = "SLIMSERVE_PROMETHEUS"
SCRAPE_INTERVAL_S: Final = 1


def find_prometheus() -> str:
    binary = os.environ.get(ENV_BINARY) or shutil.which("prometheus") or "/usr/bin/prometheus"
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        raise ServingError(
            f"Prometheus is missing (looked for {binary}): install it with 'sudo apt-get install -y prometheus' "
            "(or `make system-deps`), or set SLIMSERVE_PROMETHEUS"
        )
    return binary


def scrape_config(targets: list[str], job: str = "triton") -> str:
    """prometheus.yml scraping `targets` every second (plain YAML; JSON is valid YAML)."""
    config = {
        "global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s", "evaluation_interval": f"{SCRAPE_INTERVAL_S}s"},
        "scrape_configs": [
            {"job_name": job, "scrape_interval": f"{SCRAPE_INTERVAL_S}s", "static_configs": [{"targets": targets}]}
        ],
    }
    return json.dumps(config, indent=2)


class PrometheusServer:
    """A throw-away Prometheus on 127.0.0.1 with its TSDB in `work_dir`."""

    def __init__(
        self, targets: list[str], work_dir: Path, port: int | None = None, startup_timeout: float = 30
    ) -> None:
        if port is not None and port_in_use(port):
            raise InvalidInput(f"Prometheus port = {port}: already in use on 127.0.0.1; pick another")
        self.targets = targets
        self.work_dir = work_dir
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> PrometheusServer:
        binary = find_prometheus()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        config = self.work_dir / "prometheus.yml"
        config.write_text(scrape_config(self.targets))
        tsdb = self.work_dir / "tsdb"
        shutil.rmtree(tsdb, ignore_errors=True)
        argv = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tsdb}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=1d",
            "--log.level=warn",
        ]
        self.process = ManagedProcess("prometheus", argv, self.work_dir / "prometheus.log")
        client = PromClient(self.url)
        ready = wait_until(lambda: client.ready() or not self.process.alive(), self.startup_timeout)  # type: ignore[union-attr]
        if not (ready and self.process.alive()):
            tail = self.process.log_tail(15)
            self.process.stop()
            raise ServingError(f"Prometheus did not start on port {self.port}:\n{tail}")
        return self

    def wait_for_targets(self, timeout: float = 20) -> None:
        """Block until every target has been scraped up at least once."""
        client = PromClient(self.url)

        def up() -> bool:
            values = client.vector('up{job="triton"}')
            return len(values) == len(self.targets) and all(v == 1 for v in values.values())

        if not wait_until(up, timeout, interval=0.5):
            raise ServingError(f"Prometheus could not scrape {', '.join(self.targets)} within {timeout:.0f} s")

    def check_alive(self) -> None:
        if self.process is None or not self.process.alive():
            tail = self.process.log_tail(10) if self.process else ""
            raise ServingError(f"Prometheus is no longer running:\n{tail}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=10)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class PromClient:
    """The Prometheus HTTP API (`/api/v1/query`), returning floats (NaN kept, empty → None)."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as response:  # noqa: S310
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _query(self, expr: str, at: float | None) -> list[dict[str, object]]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:  # noqa: S310
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise ServingError(f"Prometheus rejected {expr!r}: {exc.read()[:300]!r}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise ServingError(f"Prometheus at {self.url} did not answer: {exc}") from None
        if body.get("status") != "success":
            raise ServingError(f"Prometheus query {expr!r} failed: {body.get('error')}")
        return body["data"]["result"]  # type: ignore[no-any-return]

    def vector(self, expr: str, at: float | None = None, label: str = "instance") -> dict[str, float]:
        """`label` value → sample value for an instant vector."""
        out = {}
        for item in self._query(expr, at):
            metric = item["metric"]
            key = str(metric.get(label, "")) if isinstance(metric, dict) else ""
            out[key] = float(item["value"][1])  # type: ignore[index]
        return out

    def scalar(self, expr: str, at: float | None = None) -> float | None:
        """The single value of `expr` (summed when several series answer); None when empty."""
        values = self.vector(expr, at)
        if not values:
            return None
        return math.fsum(values.values())

    def model_window(self, model: str, window_s: float, end: float) -> Window:
        """Throughput, error rate, latency quantiles, queue time and batch size of `model` over
        `[end - window_s, end]`.

        p50/p99 come from Triton's latency summaries (`--metrics-config summary_latencies=true`),
        taken as the worst value seen in the window. Triton's summaries slide over about a minute,
        so with short steps a window's quantiles also cover the previous step's requests; Locust's
        per-model client-side quantiles (exact window) are kept next to them in the run's report.
        """
        w = f"{max(int(round(window_s)), 2)}s"
        sel = f'model="{model}"'
        ok = self.scalar(f"sum(increase(nv_inference_request_success{{{sel}}}[{w}]))", end)
        failed = self.scalar(f"sum(increase(nv_inference_request_failure{{{sel}}}[{w}]))", end)
        rate = self.scalar(f"sum(rate(nv_inference_request_success{{{sel}}}[{w}]))", end)
        queue_us = self.scalar(f"sum(increase(nv_inference_queue_duration_us{{{sel}}}[{w}]))", end)
        inferences = self.scalar(f"sum(increase(nv_inference_count{{{sel}}}[{w}]))", end)
        executions = self.scalar(f"sum(increase(nv_inference_exec_count{{{sel}}}[{w}]))", end)

        def quantile(q: str) -> float | None:
            us = self.scalar(f'max(max_over_time(nv_inference_request_summary_us{{{sel},quantile="{q}"}}[{w}]))', end)
            return None if us is None else us / 1000.0

        total = None if ok is None or failed is None else ok + failed
        return Window(
            requests=total,
            throughput_rps=rate,
            error_rate=_ratio(failed, total),
            p50_ms=quantile("0.5"),
            p99_ms=quantile("0.99"),
            queue_ms=None if queue_us is None else _ratio(queue_us / 1000.0, ok),
            avg_batch=_ratio(inferences, executions),
        )


def _ratio(num: float | None, den: float | None) -> float | None:
    """num/den; NaN for 0/0 (the gate treats it as no evidence), None when a side is missing."""
    if num is None or den is None:
        return None
    return num / den if den else math.nan


def wait_for_scrape(seconds: float = SCRAPE_INTERVAL_S * 1.5) -> None:
    """Let at least two scrapes land after a load window, so its end is in the TSDB."""
    time.sleep(seconds)
