"""The operator image has no torch: importing the operator must not pull in the heavy stack."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = (
    "torch",
    "onnxruntime",
    "tritonclient",
    "locust",
    "slimserve.compression",
    "slimserve.local",
    "gevent",
    "numpy",
    "fsspec",
    "s3fs",
    "gcsfs",
    "huggingface_hub",
    "httpx",  # the evaluator's Prometheus client
    "grafana_foundation_sdk",  # build-time only: slimserve.chart
    "helm_python",
)


def test_importing_the_operator_pulls_in_no_heavy_module() -> None:
    code = (
        "import sys, json, slimserve.operator, slimserve.operator.builders, slimserve.operator.reconcile;"
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = json.loads(out)
    assert "kopf" in loaded and "slimserve.operator.handlers" in loaded  # the test can see imports at all
    heavy = [m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]
    assert heavy == []
