"""Canary traffic for slimserve: KServe v2 inference requests built from real evaluation samples.

Run headless as its own process — never imported into pytest, the CLI or the operator (importing
locust monkey-patches the standard library through gevent). `slimserve.evaluator.load` starts it as

    locust -f <this file> --headless -u 8 -r 8 -t 10s -H http://127.0.0.1:8000 \
        --slimserve-targets '[{"url": "http://127.0.0.1:8000", "model": "stable", "weight": 80},
                              {"url": "http://127.0.0.1:8000", "model": "int8", "weight": 10},
                              {"url": "http://127.0.0.1:8000", "model": "stable_control", "weight": 10}]' \
        --slimserve-data eval.npz --slimserve-requests requests.csv

(the options also read SLIMSERVE_TARGETS, SLIMSERVE_DATA and SLIMSERVE_REQUESTS). The split is
deterministic: a smooth weighted round-robin shared by every user of the process, so a 10% target
gets exactly 10 of every 100 requests. Requests are named after their target (`name`, else the
model), so Locust's statistics come out per target, and every request is also written to the
requests file (start time, target, milliseconds, failed) so the gate can judge any window exactly.
Connection errors, timeouts and non-2xx answers are failures.
"""

from __future__ import annotations

import json
import random
from typing import Any, TextIO

import numpy as np
from locust import FastHttpUser, events, task
from tritonclient.utils import np_to_triton_dtype

_requests_file: dict[str, TextIO] = {}


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument(
        "--slimserve-targets", env_var="SLIMSERVE_TARGETS", default="",
        help='JSON list of {"url", "model", "weight"[, "name"]}',
    )  # fmt: skip
    parser.add_argument("--slimserve-data", env_var="SLIMSERVE_DATA", default="", help=".npz evaluation set")
    parser.add_argument(
        "--slimserve-max-samples", env_var="SLIMSERVE_MAX_SAMPLES", type=int, default=512,
        help="distinct request bodies to prepare",
    )  # fmt: skip
    parser.add_argument(
        "--slimserve-requests", env_var="SLIMSERVE_REQUESTS", default="",
        help="CSV file receiving one line per request: start epoch seconds, target, ms, failed (0/1)",
    )  # fmt: skip


@events.request.add_listener
def _record(name: str, response_time: float, exception: Any = None, start_time: float | None = None, **_: Any) -> None:
    out = _requests_file.get("file")
    if out is not None and start_time is not None:
        out.write(f"{start_time:.6f},{name},{response_time:.4f},{0 if exception is None else 1}\n")


@events.test_start.add_listener
def _open_requests_file(environment: Any, **_: Any) -> None:
    path = getattr(environment.parsed_options, "slimserve_requests", "") if environment.parsed_options else ""
    if path and "file" not in _requests_file:
        _requests_file["file"] = open(path, "w", buffering=1 << 16)  # noqa: SIM115 - closed on quitting


@events.quitting.add_listener
def _close_requests_file(**_: Any) -> None:
    out = _requests_file.pop("file", None)
    if out is not None:
        out.close()


def build_bodies(path: str, max_samples: int) -> list[tuple[bytes, int]]:
    """One request per sample (batch 1) from every array of the .npz except the labels `y`.

    Bodies use KServe v2's binary tensor extension (a JSON header, then the raw tensor bytes), as
    tritonclient does: parsing thousands of floats as JSON text would be the bottleneck, not the model.
    Returns (body, JSON header length) pairs.
    """
    data = np.load(path, allow_pickle=False)
    names = [k for k in data.files if k != "y"]
    if not names:
        raise SystemExit(f"{path}: no input arrays (only 'y')")
    count = min(len(data[names[0]]), max_samples)
    bodies = []
    for i in range(count):
        inputs, blobs = [], []
        for name in names:
            sample = np.ascontiguousarray(data[name][i : i + 1])
            datatype = np_to_triton_dtype(sample.dtype)
            if datatype in (None, "BYTES"):  # strings would need BYTES' length-prefixed encoding, not tobytes()
                raise SystemExit(f"{path}: array '{name}' has dtype {sample.dtype}, not a numeric KServe v2 type")
            blob = sample.tobytes()
            inputs.append(
                {"name": name, "shape": list(sample.shape), "datatype": datatype,
                 "parameters": {"binary_data_size": len(blob)}}
            )  # fmt: skip
            blobs.append(blob)
        header = json.dumps({"inputs": inputs}).encode()
        bodies.append((header + b"".join(blobs), len(header)))
    return bodies


class Split:
    """Smooth weighted round-robin (as nginx balances upstreams): exact shares, evenly interleaved."""

    def __init__(self, weights: list[float]) -> None:
        self.weights = weights
        self.total = sum(weights)
        self.current = [0.0] * len(weights)

    def next(self) -> int:
        for i, w in enumerate(self.weights):
            self.current[i] += w
        best = max(range(len(self.weights)), key=self.current.__getitem__)
        self.current[best] -= self.total
        return best


class CanaryUser(FastHttpUser):
    """Sends requests back to back (closed loop): the rate is what the server sustains."""

    targets: list[dict[str, Any]] = []
    split: Split | None = None
    bodies: list[tuple[bytes, int]] = []

    def on_start(self) -> None:
        cls = type(self)
        if not cls.targets:
            options = self.environment.parsed_options
            targets = [t for t in json.loads(options.slimserve_targets or "[]") if float(t.get("weight", 0)) > 0]
            if not targets:
                raise SystemExit("--slimserve-targets: no target with a positive weight")
            cls.bodies = build_bodies(options.slimserve_data, options.slimserve_max_samples)
            cls.split = Split([float(t["weight"]) for t in targets])
            cls.targets = targets

    @task
    def infer(self) -> None:
        assert self.split is not None
        target = self.targets[self.split.next()]
        url = f"{target['url'].rstrip('/')}/v2/models/{target['model']}/infer"
        body, header_length = random.choice(self.bodies)
        self.client.post(
            url,
            data=body,  # type: ignore[arg-type]  # FastHttpSession sends bytes as they are
            headers={"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(header_length)},
            name=target.get("name") or target["model"],
        )
