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
    return SearchTrial(
        name=name,
        recipe="r",
        drop=drop,
        drop_ci=(drop - 1, drop + 1),
        size_bytes=size,
        latency_ms_p50=1.0,
        throughput_rps=1.0,
        passed=passed,
        reason="",
    )


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
    return write_spec(
        folder,
        {
            "source": {"uri": "mlp.onnx", "format": "onnx"},
            "data": {"calibration": "calib.npz", "evaluation": "eval.npz"},
            "quality": {"metric": "agreement"},
            "compression": {
                "measure": {"latencyRuns": 10, "throughputBatch": 4},
                "search": {"maxAccuracyDrop": 2.0, "objective": "size", "maxTrials": max_trials},
            },
        },
    )


def test_search_falls_back_to_keeping_the_most_sensitive_layer_in_float(tmp_path: Path) -> None:
    _outlier_model(tmp_path)
    spec = _search_spec(tmp_path, max_trials=4)
    report = run_compression(load_compressed_model(spec), tmp_path, tmp_path / "out")
    search = report.search
    assert search is not None and report.baseline.metric == "agreement"
    first, dynamic, fp16, fallback = search.trials
    assert first.recipe == "quantize(mode=static)" and not first.passed and "fall back" in first.reason
    assert first.drop > 2.0
    assert dynamic.recipe == "quantize(mode=dynamic)" and "fp16" in fp16.recipe
    # The metric-ranked fallback reverts exactly the node whose input range the outlier ruined.
    assert fallback.passed and "excludeNodes=['/0/Gemm']" in fallback.recipe
    top = search.sensitivity["static"][0]
    assert top[0] == "/0/Gemm" and top[1] > 2.0  # reverting it alone recovers more than the budget
    passing = [t for t in search.trials if t.passed]
    assert search.chosen == min(passing, key=lambda t: t.size_bytes).name  # smallest passing trial
    chosen = [v for v in report.variants if v.name == search.chosen]
    assert len(chosen) == 1 and chosen[0].passed is True and chosen[0].drop_ci[1] <= 2.0
    assert chosen[0].size_bytes < report.baseline.size_bytes
    assert (tmp_path / "out" / chosen[0].path).is_file()


def test_search_never_returns_a_failing_trial(tmp_path: Path) -> None:
    _outlier_model(tmp_path)
    spec = _search_spec(tmp_path, max_trials=1)
    report = run_compression(load_compressed_model(spec), tmp_path, tmp_path / "out")
    assert report.search is not None
    assert [t.passed for t in report.search.trials] == [False]
    assert report.search.chosen is None and "no trial held the quality budget" in report.search.why
    assert report.variants == []
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "baseline.onnx",
        "compress.log",
        "compression-report.json",
        "compression-report.md",
    ]
    assert "no trial held the quality budget" in (tmp_path / "out" / "compression-report.md").read_text()


def test_search_choice_must_beat_the_baseline_on_the_objective(tmp_path: Path) -> None:
    """On a tiny MLP every int8 graph is slower than fp32 at batch 1: a latency search chooses nothing."""
    _outlier_model(tmp_path)
    spec = write_spec(
        tmp_path,
        {
            "source": {"uri": "mlp.onnx", "format": "onnx"},
            "data": {"evaluation": "eval.npz"},
            "quality": {"metric": "agreement"},
            "compression": {
                "measure": {"latencyRuns": 40, "throughputBatch": 4},
                "search": {"maxAccuracyDrop": 50.0, "objective": "latency", "maxTrials": 2},
            },
        },
    )
    report = run_compression(load_compressed_model(spec), tmp_path, tmp_path / "out")
    search = report.search
    assert search is not None and [t.recipe for t in search.trials] == ["quantize(mode=dynamic)"]
    (trial,) = search.trials
    if search.chosen is None:
        assert "nothing beat the baseline on latency" in search.why
    else:  # chosen only with a latency gain above 1x, and the why says how much
        assert search.chosen == trial.name
        gain = float(search.why.split("gain (median of paired per-block ratios) ")[1].split("x")[0])
        assert gain > 1.0


def test_speed_gain_pairs_each_block_with_the_baseline_next_to_it() -> None:
    from slimserve.compression.measure import Speed
    from slimserve.compression.search import _gain

    # A load spike in blocks 3-5 slows both; the trial is 2x faster in every block.
    base = Speed(10.0, 50.0, 100.0, block_p50_ms=(10, 10, 40, 40, 40, 10), block_throughput=(100,) * 6)
    fast = Speed(5.0, 30.0, 180.0, block_p50_ms=(5, 5, 20, 20, 20, 5), block_throughput=(180,) * 6)
    trial = SearchTrial(
        name="t",
        recipe="r",
        drop=0,
        drop_ci=(0, 0),
        size_bytes=50,
        latency_ms_p50=5,
        throughput_rps=180,
        passed=True,
        reason="",
    )
    speeds = {"baseline": base, "t": fast}
    assert _gain(speeds, "baseline", 100, trial, "latency") == 2.0
    assert _gain(speeds, "baseline", 100, trial, "throughput") == 1.8
    assert _gain(speeds, "baseline", 100, trial, "size") == 2.0


def test_a_failing_search_trial_is_recorded_and_the_search_goes_on(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from slimserve.compression.recipes import quantize

    real = quantize.dynamic_int8

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no kernel for this op")

    monkeypatch.setattr(quantize, "dynamic_int8", broken)
    _outlier_model(tmp_path)
    spec = _search_spec(tmp_path, max_trials=3)
    report = run_compression(load_compressed_model(spec), tmp_path, tmp_path / "out")
    assert real is not broken
    (failure,) = report.failures
    assert failure.stage == "search" and failure.step == "steps[0] (quantize)"
    assert "RuntimeError: no kernel for this op" in failure.reason
    assert report.search is not None
    # the failed trial counts toward maxTrials; the other families go on
    assert [t.recipe for t in report.search.trials] == ["quantize(mode=static)", "quantize(mode=fp16)"]
    assert "failed to build" in report.search.why
