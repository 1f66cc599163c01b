"""The accuracy-aware search: falls back until the constraint holds, and never passes a failing trial."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from slimserve.api import load_compressed_model
from slimserve.api.report import SearchTrial
from slimserve.compression import run_compression
from slimserve.compression.export import export_onnx
from slimserve.compression.loading import DataSet
from slimserve.compression.search import pareto
from tests.compression.conftest import write_spec


def _trial(name: str, drop: float, size: int, passed: bool = True) -> SearchTrial:
    return SearchTrial(name=name, recipe="r", drop=drop, drop_ci=(drop - 1, drop + 1), size_bytes=size, latency_ms_p50=1.0,
                       throughput_rps=1.0, passed=passed, reason="")


def test_pareto_front_keeps_only_undominated_trials() -> None:
    trials = [_trial("a", 0.0, 100), _trial("b", 0.5, 50), _trial("c", 0.6, 60), _trial("d", 2.0, 10)]
    assert pareto(trials, "size") == ["a", "b", "d"]


def _outlier_model(folder: Path) -> None:
    """An ONNX MLP whose first layer ignores feature 0, and a calibration set with a huge feature 0.

    Quantizing the first Gemm's input with that range rounds every real feature to zero, so
    plain static int8 fails; keeping just that one node in float passes.
    """
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 6))
    with torch.no_grad():
        net[0].weight[:, 0] = 0.0
    rng = np.random.default_rng(0)
    evaluation = rng.standard_normal((300, 16)).astype(np.float32)
    calibration = rng.standard_normal((64, 16)).astype(np.float32)
    calibration[0, 0] = 1e5
    np.savez(folder / "eval.npz", x=evaluation)
    np.savez(folder / "calib.npz", x=calibration)
    export_onnx(net, DataSet(folder, {"x": evaluation}, None), ["x"], folder / "mlp.onnx")


def _search_spec(folder: Path, max_trials: int) -> Path:
    return write_spec(folder, {
        "source": {"uri": "mlp.onnx", "format": "onnx"},
        "data": {"calibration": "calib.npz", "evaluation": "eval.npz"},
        "quality": {"metric": "agreement"},
        "compression": {"measure": {"latencyRuns": 10, "throughputBatch": 4},
                        "search": {"maxAccuracyDrop": 2.0, "objective": "size", "maxTrials": max_trials}},
    })


def test_search_falls_back_to_keeping_the_most_sensitive_layer_in_float(tmp_path: Path) -> None:
    _outlier_model(tmp_path)
    spec = _search_spec(tmp_path, max_trials=3)
    report = run_compression(load_compressed_model(spec), tmp_path, tmp_path / "out")
    search = report.search
    assert search is not None and report.baseline.metric == "agreement"
    first, fp16, fallback = search.trials
    assert first.recipe == "quantize(mode=static)" and not first.passed and "fall back" in first.reason
    assert first.drop > 2.0
    assert fp16.passed and "fp16" in fp16.recipe
    assert fallback.passed and "excludeNodes=['/0/Gemm']" in fallback.recipe
    assert search.chosen == fallback.name  # smallest passing trial
    chosen = [v for v in report.variants if v.name == search.chosen]
    assert len(chosen) == 1 and chosen[0].passed is True and chosen[0].drop_ci[1] <= 2.0
    assert (tmp_path / "out" / chosen[0].path).is_file()


def test_search_never_returns_a_failing_trial(tmp_path: Path) -> None:
    _outlier_model(tmp_path)
    spec = _search_spec(tmp_path, max_trials=1)
    report = run_compression(load_compressed_model(spec), tmp_path, tmp_path / "out")
    assert report.search is not None
    assert [t.passed for t in report.search.trials] == [False]
    assert report.search.chosen is None
    assert report.variants == []
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["baseline.onnx", "report.json", "report.md"]
    assert "no trial met the constraint" in (tmp_path / "out" / "report.md").read_text()
