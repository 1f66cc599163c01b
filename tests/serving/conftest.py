"""Fixtures for the serving tests: tiny real models, spec folders, and an orphan-process check.

The specs use the default gates (`Gates()`), as a user who writes none gets them.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.serving.models import make_compression_output


@pytest.fixture(scope="session")
def compression_output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `slimserve compress` would write for a digits MLP with variants int8, noisy and slow."""
    out = tmp_path_factory.mktemp("compression")
    make_compression_output(out)
    return out


def write_spec(folder: Path, compression_output: Path, **overrides: object) -> Path:
    """A CompressedModel YAML whose files exist; `overrides` replace top-level spec sections."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(compression_output / "baseline.onnx", folder / "baseline.onnx")
    shutil.copytree(compression_output / "data", folder / "data", dirs_exist_ok=True)
    spec: dict[str, object] = {
        "source": {"uri": "baseline.onnx", "format": "onnx"},
        "data": {"evaluation": "data/test.npz", "calibration": "data/calibration.npz"},
        "compression": {
            "variants": [
                {"name": "int8", "steps": [{"quantize": {"mode": "dynamic"}}]},
                {"name": "noisy", "steps": [{"quantize": {"mode": "fp16"}}]},
                {"name": "slow", "steps": [{"quantize": {"mode": "fp16"}}]},
                {"name": "twin", "steps": [{"quantize": {"mode": "fp16"}}]},
            ],
            "measure": {"latencyRuns": 10, "throughputBatch": 8, "threads": 1},
        },
        "serving": {"maxBatchSize": 16, "dynamicBatching": {"preferredBatchSizes": [4, 8]}},
        # The default gates; only the steps are shorter than the default plan, to keep the tier quick.
        "rollout": {"candidate": "int8", "steps": [30, 100], "stepDuration": "8s", "users": 4, "spawnRate": 4},
    }
    spec.update(overrides)
    doc = {
        "apiVersion": "slimserve.dev/v1alpha1",
        "kind": "CompressedModel",
        "metadata": {"name": "digits-mlp"},
        "spec": spec,
    }
    path = folder / "model.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def processes_mentioning(text: str) -> list[tuple[int, str]]:
    """(pid, command line) of every live process whose command line contains `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append((int(entry.name), cmdline))
    return found


@pytest.fixture
def no_orphans(tmp_path: Path) -> Iterator[Path]:
    """Fails the test if any process naming its tmp_path (Triton, Prometheus, Locust) outlives it."""
    yield tmp_path
    deadline = time.monotonic() + 5
    left = processes_mentioning(str(tmp_path))
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = processes_mentioning(str(tmp_path))
    assert not left, f"orphan processes: {left}"
