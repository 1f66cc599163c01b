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
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import httpx

from slimserve.errors import InvalidInput, ServingError
from slimserve.processes import ManagedProcess, free_port, port_in_use, wait_until

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

    def config(self) -> str:
        """The prometheus.yml it runs with: one job scraping `targets`."""
        return scrape_config(self.targets)

    def start(self) -> PrometheusServer:
        binary = find_prometheus()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        config = self.work_dir / "prometheus.yml"
        config.write_text(self.config())
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
        with PromClient(self.url) as client:
            ready = wait_until(lambda: client.ready() or not self.process.alive(), self.startup_timeout)  # type: ignore[union-attr]
        if not (ready and self.process.alive()):
            tail = self.process.log_tail(15)
            self.process.stop()
            raise ServingError(f"Prometheus did not start on port {self.port}:\n{tail}")
        return self

    def wait_for_targets(self, timeout: float = 20) -> None:
        """Block until every target has been scraped up at least once."""
        with PromClient(self.url) as client:

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
    """The Prometheus HTTP API (`/api/v1/query`) over httpx, returning floats (NaN kept, empty → None).

    One connection pool per client; `close()` it, or use it as a context manager.
    """

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._http = httpx.Client(base_url=self.url, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PromClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ready(self) -> bool:
        try:
            return self._http.get("/-/ready", timeout=2).status_code == httpx.codes.OK
        except httpx.TransportError:
            return False

    def _query(self, expr: str, at: float | None) -> list[dict[str, object]]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        try:
            response = self._http.get("/api/v1/query", params=params)
        except httpx.TimeoutException:
            raise ServingError(f"Prometheus at {self.url} did not answer {expr!r} within {self.timeout:g} s") from None
        except httpx.TransportError as exc:
            raise ServingError(f"Prometheus at {self.url} did not answer: {exc}") from None
        if response.is_error:
            raise ServingError(f"Prometheus rejected {expr!r} (HTTP {response.status_code}): {response.text[:300]}")
        try:
            body = response.json()
        except ValueError:
            raise ServingError(
                f"Prometheus at {self.url} answered {expr!r} with something other than JSON: {response.text[:300]!r}"
            ) from None
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

    def series(self, expr: str, at: float) -> list[tuple[dict[str, str], list[tuple[float, float]]]]:
        """A range-vector query (`metric{...}[Ns]`) at `at`: each series' labels and raw samples."""
        out = []
        for item in self._query(expr, at):
            metric: dict[str, object] = item.get("metric") or {}  # type: ignore[assignment]
            labels = {str(k): str(v) for k, v in metric.items() if k != "__name__"}
            samples: list[list[object]] = item.get("values") or []  # type: ignore[assignment]
            out.append((labels, [(float(t), float(v)) for t, v in samples]))  # type: ignore[arg-type]
        return out

    def increments(
        self, metric: str, labels: Sequence[tuple[str, str]], start: float, end: float, scrape_interval_s: float
    ) -> dict[tuple[tuple[str, str], ...], list[tuple[float, float]]]:
        """Per series, the counter's increase between consecutive scrapes inside [start, end].

        Keyed by the series' labels; each increment is (timestamp of the later scrape, increase).
        Counter resets (a restarted pod) drop that one interval.
        """
        span = max(int(math.ceil(end - start + 2 * scrape_interval_s)), 1)
        sel = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
        out = {}
        for series_labels, values in self.series(f"{metric}{{{sel}}}[{span}s]", end):
            inside = [(t, v) for t, v in values if start - 1e-6 <= t <= end + 1e-6]
            steps = [(t1, v1 - v0) for (_, v0), (t1, v1) in zip(inside, inside[1:], strict=False) if v1 >= v0]
            out[tuple(sorted(series_labels.items()))] = steps
        return out

    def capacity(
        self, labels: Sequence[tuple[str, str]], start: float, end: float, scrape_interval_s: float
    ) -> list[tuple[float, float, float]]:
        """(scrape time, samples inferred, seconds of compute) per scrape interval in [start, end].

        `nv_inference_count` over `nv_inference_compute_infer_duration_us` is what one model instance
        can sustain: it does not depend on how the load was split between models, so a candidate and
        its control can be compared in the same window whatever share each one got.
        """
        counts = self.increments("nv_inference_count", labels, start, end, scrape_interval_s)
        compute = self.increments("nv_inference_compute_infer_duration_us", labels, start, end, scrape_interval_s)
        pairs = []
        for key, steps in counts.items():
            busy = dict(compute.get(key, []))
            pairs += [(t, n, busy[t] / 1e6) for t, n in steps if t in busy and busy[t] > 0]
        return pairs


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def wait_for_scrape(scrape_interval_s: float = SCRAPE_INTERVAL_S) -> None:
    """Let the scrapes after a load window land (1.5 intervals), so its end is in the TSDB."""
    time.sleep(1.5 * scrape_interval_s)
