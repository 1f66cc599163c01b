"""Canary traffic for slimserve: KServe v2 inference requests built from real evaluation samples.

Run headless as its own process (never imported into pytest, the CLI or the operator: importing
locust monkey-patches the standard library through gevent). `slimserve.evaluator.load` starts it as

    locust -f loadtests/locustfile.py --headless -u 8 -r 8 -t 10s -H http://127.0.0.1:8000 \
        --slimserve-targets '[{"url": "http://127.0.0.1:8000", "model": "baseline", "weight": 90},
                              {"url": "http://127.0.0.1:8000", "model": "int8", "weight": 10}]' \
        --slimserve-data eval.npz

(both options also read env vars SLIMSERVE_TARGETS and SLIMSERVE_DATA). Each request goes to one
target drawn by weight, so a 10% canary step sends ~10% of the requests to the candidate; requests
are named after the model, so Locust's statistics come out per model.
"""

from __future__ import annotations

import json
import random
from typing import Any

import numpy as np
from locust import FastHttpUser, events, task

V2_DATATYPES = {
    "float32": "FP32",
    "float16": "FP16",
    "float64": "FP64",
    "int64": "INT64",
    "int32": "INT32",
    "int16": "INT16",
    "int8": "INT8",
    "uint8": "UINT8",
    "bool": "BOOL",
}


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument(
        "--slimserve-targets", env_var="SLIMSERVE_TARGETS", default="",
        help='JSON list of {"url", "model", "weight"}',
    )  # fmt: skip
    parser.add_argument("--slimserve-data", env_var="SLIMSERVE_DATA", default="", help=".npz evaluation set")
    parser.add_argument(
        "--slimserve-max-samples", env_var="SLIMSERVE_MAX_SAMPLES", type=int, default=512,
        help="distinct request bodies to prepare",
    )  # fmt: skip


def build_bodies(path: str, max_samples: int) -> list[tuple[bytes, int]]:
    """One request per sample (batch 1) from every array of the .npz except the labels `y`.

    Bodies use KServe v2's binary tensor extension (a JSON header, then the raw tensor bytes), as
    tritonclient does: parsing thousands of floats as JSON text would be the bottleneck, not the model.
    Returns (body, JSON header length) pairs.
    """
    data = np.load(path)
    names = [k for k in data.files if k != "y"]
    if not names:
        raise SystemExit(f"{path}: no input arrays (only 'y')")
    count = min(len(data[names[0]]), max_samples)
    bodies = []
    for i in range(count):
        inputs, blobs = [], []
        for name in names:
            sample = np.ascontiguousarray(data[name][i : i + 1])
            datatype = V2_DATATYPES.get(str(sample.dtype))
            if datatype is None:
                raise SystemExit(f"{path}: array '{name}' has dtype {sample.dtype}, not a KServe v2 type")
            blob = sample.tobytes()
            inputs.append(
                {
                    "name": name,
                    "shape": list(sample.shape),
                    "datatype": datatype,
                    "parameters": {"binary_data_size": len(blob)},
                }
            )
            blobs.append(blob)
        header = json.dumps({"inputs": inputs}).encode()
        bodies.append((header + b"".join(blobs), len(header)))
    return bodies


class CanaryUser(FastHttpUser):
    """Sends requests back to back (closed loop): the rate is what the server sustains."""

    targets: list[dict[str, Any]] = []
    weights: list[float] = []
    bodies: list[tuple[bytes, int]] = []

    def on_start(self) -> None:
        cls = type(self)
        if not cls.targets:
            options = self.environment.parsed_options
            targets = [t for t in json.loads(options.slimserve_targets or "[]") if float(t.get("weight", 0)) > 0]
            if not targets:
                raise SystemExit("--slimserve-targets: no target with a positive weight")
            cls.bodies = build_bodies(options.slimserve_data, options.slimserve_max_samples)
            cls.weights = [float(t["weight"]) for t in targets]
            cls.targets = targets

    @task
    def infer(self) -> None:
        target = random.choices(self.targets, self.weights)[0]
        url = f"{target['url'].rstrip('/')}/v2/models/{target['model']}/infer"
        body, header_length = random.choice(self.bodies)
        self.client.post(
            url,
            data=body,
            headers={"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(header_length)},
            name=target["model"],
        )
