"""Pure pieces of the evaluator and the runtime: statistics parsing, windows, registry, Pareto front."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from slimserve.api.report import pareto_front
from slimserve.errors import InvalidInput
from slimserve.evaluator.canary import parse_duration
from slimserve.evaluator.load import parse_stats, percentile
from slimserve.evaluator.prometheus import scrape_config
from slimserve.evaluator.served import check_inputs
from slimserve.local import registry
from slimserve.triton.server import parse_load_failures


def test_check_inputs_names_shape_and_dtype_problems() -> None:
    metadata = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]}
    check_inputs("m", metadata, True, {"x": np.zeros((2, 1, 8, 8), np.float32)})
    with pytest.raises(InvalidInput) as err:
        check_inputs("m", metadata, True, {"x": np.zeros((2, 64), np.float64)})
    text = err.value.render()
    assert "per-sample shape [64]" in text and "expects [1, 8, 8]" in text and "float64" in text
    with pytest.raises(InvalidInput, match="no array 'x'"):
        check_inputs("m", metadata, True, {"image": np.zeros((2, 1, 8, 8), np.float32)})


def test_locust_statistics_per_model_and_percentiles() -> None:
    entries = [
        {"name": "baseline", "num_requests": 100, "num_failures": 0, "start_time": 100.0,
         "last_request_timestamp": 110.0, "total_response_time": 200.0, "response_times": {"1": 50, "2": 49, "9": 1}},
        {"name": "int8", "num_requests": 10, "num_failures": 1, "start_time": 100.0,
         "last_request_timestamp": 110.0, "total_response_time": 30.0, "response_times": {"3": 10}},
    ]  # fmt: skip
    per_model, total, start, end = parse_stats(entries)
    assert per_model["baseline"].rps == 10.0 and per_model["baseline"].p50_ms == 1.0
    assert per_model["baseline"].p99_ms == 2.0 and per_model["baseline"].avg_ms == 2.0
    assert per_model["int8"].failure_rate == pytest.approx(0.1)
    assert (total.requests, total.failures, total.rps, start, end) == (110, 1, 11.0, 100.0, 110.0)
    assert percentile({}, 0.99) is None


def test_durations_and_scrape_config() -> None:
    assert (parse_duration("15s"), parse_duration("500ms"), parse_duration("2m")) == (15.0, 0.5, 120.0)
    with pytest.raises(InvalidInput, match="stepDuration"):
        parse_duration("15")
    config = json.loads(scrape_config(["127.0.0.1:8002"]))
    assert config["scrape_configs"][0]["scrape_interval"] == "1s"
    assert config["scrape_configs"][0]["static_configs"] == [{"targets": ["127.0.0.1:8002"]}]


def test_triton_load_failures_are_read_from_its_log() -> None:
    log = (
        "E1127 model_lifecycle.cc:642] \"failed to load 'slow' version 1: Internal: No Op registered for "
        'NoSuchOp \\"x\\"\\n\\nAt:\\n  model.py(29): initialize\\n"\n'
        "I1127 server.cc:604] ok\n"
    )
    assert parse_load_failures(log) == {"slow": 'Internal: No Op registered for NoSuchOp "x"'}


def test_pareto_front_keeps_the_undominated() -> None:
    points = [("baseline", 100.0, 0.0), ("int8", 25.0, 0.1), ("fp16", 50.0, 0.2), ("tiny", 10.0, 3.0)]
    assert pareto_front(points) == ["baseline", "int8", "tiny"]


def test_registry_promotes_copies_and_rollback_keeps_stable(tmp_path: Path) -> None:
    onnx_file = tmp_path / "int8.onnx"
    onnx_file.write_bytes(b"graph")
    state = registry.load_state(tmp_path, "digits")
    assert state.stable is None and state.history == []
    state = registry.record(tmp_path, state, "int8", "Promoted", "ok", onnx_file, "ab" * 32, "quantize")
    assert state.stable is not None and state.stable.variant == "int8"
    assert (tmp_path / state.stable.path).read_bytes() == b"graph"
    state = registry.record(tmp_path, registry.load_state(tmp_path, "digits"), "fp16", "RolledBack", "p99")
    reloaded = registry.load_state(tmp_path, "digits")
    assert reloaded.stable is not None and reloaded.stable.variant == "int8"
    assert [(h.stable_before, h.decision, h.stable_after) for h in reloaded.history] == [
        ("baseline", "Promoted", "int8"),
        ("int8", "RolledBack", "int8"),
    ]
    with pytest.raises(InvalidInput, match="belongs to model 'digits'"):
        registry.load_state(tmp_path, "other")
    (tmp_path / reloaded.stable.path).unlink()
    with pytest.raises(InvalidInput, match="stable model file"):
        registry.load_state(tmp_path, "digits")


def _variant(name: str, size: int, drop: float, sha: str | None = None) -> object:
    from slimserve.api.report import VariantRecord

    return VariantRecord(
        name=name, recipe=name, path=f"{name}.onnx", sha256=sha or name, size_bytes=size, compression_ratio=1.0,
        params=0, macs=0, metric="accuracy", quality=99.0, quality_ci=(98.0, 99.5), quality_unit="% correct",
        drop=drop, drop_ci=(drop - 0.4, drop + 0.4), drop_unit="points",
        latency_ms_p50=1.0, latency_ms_p99=2.0, throughput_rps=100.0, speedup=1.0, compress_seconds=0.0,
    )  # fmt: skip


def test_auto_candidate_is_the_smallest_within_budget_and_must_beat_the_stable() -> None:
    from slimserve.api import parse_compressed_model
    from slimserve.api.report import CompressionReport
    from slimserve.local.runtime import choose_candidate

    doc = {
        "apiVersion": "slimserve.dev/v1alpha1", "kind": "CompressedModel", "metadata": {"name": "m"},
        "spec": {
            "source": {"uri": "m.onnx"}, "data": {"evaluation": "t.npz"},
            "compression": {"variants": [{"name": "a", "steps": [{"quantize": {"mode": "dynamic"}}]}]},
            "gates": {"maxAccuracyDrop": 1.0},
        },
    }  # fmt: skip
    model = parse_compressed_model(doc)
    report = CompressionReport(
        model="m", device="cpu", baseline=_variant("baseline", 1000, 0.0),
        variants=[_variant("int8", 250, 0.2), _variant("tiny", 50, 4.0), _variant("fp16", 500, 0.0)],
    )  # fmt: skip
    assert choose_candidate(model, report, None).name == "int8"  # type: ignore[union-attr]  # tiny drops 4 points
    # int8 is stable now: fp16 is within budget but larger, so nothing beats the stable model.
    assert choose_candidate(model, report, "int8") is None
    # A stable from an older run (not in this report) is judged by its file size.
    assert choose_candidate(model, report, "old", stable_size=600).name == "int8"  # type: ignore[union-attr]
    assert choose_candidate(model, report, "old", stable_size=100) is None
    named = model.model_copy(
        update={
            "spec": model.spec.model_copy(
                update={"rollout": model.spec.rollout.model_copy(update={"candidate": "fp16"})}
            )
        }
    )
    assert choose_candidate(named, report, "int8").name == "fp16"  # type: ignore[union-attr]


def test_requests_file_round_trip_and_window_selection(tmp_path: Path) -> None:
    from slimserve.evaluator.load import Requests

    path = tmp_path / "requests.csv"
    path.write_text("100.0,candidate,2.5,0\n100.5,control,2.0,0\n101.0,candidate,9.0,1\n102.0,stable,1.0,0\n")
    requests = Requests.read(path)
    assert len(requests) == 4
    window = requests.select("candidate", 100.2, 101.5)
    assert window.latency_ms.tolist() == [9.0] and window.failed.tolist() == [True]
    assert len(Requests.read(tmp_path / "missing.csv")) == 0


def test_deterministic_split_gives_exact_shares() -> None:
    import importlib.util
    import sys

    # The locustfile imports locust (gevent monkey-patching) at module level: load only the Split class.
    source = Path(__file__).resolve().parents[2] / "slimserve" / "evaluator" / "locustfile.py"
    text = source.read_text()
    namespace: dict[str, object] = {}
    exec(text[text.index("class Split:") : text.index("class CanaryUser")], namespace)  # noqa: S102
    split = namespace["Split"]([10.0, 10.0, 80.0])  # type: ignore[operator]
    picks = [split.next() for _ in range(1000)]  # type: ignore[attr-defined]
    assert [picks.count(i) for i in range(3)] == [100, 100, 800]
    first = picks[:10]
    assert first.count(0) == 1 and first.count(1) == 1  # interleaved, not in runs
    assert importlib.util.find_spec("locust") is not None and "locust" not in sys.modules


def test_step_timing_refuses_windows_shorter_than_four_scrapes() -> None:
    from slimserve.api.spec import Rollout
    from slimserve.evaluator.canary import Timing

    timing = Timing.of(Rollout(step_duration="15s"), scrape_interval_s=1.0)
    assert timing.max_step_s == 60.0 and timing.warmup_s == 2.0
    with pytest.raises(InvalidInput, match=r"stepDuration = '15s'.*fewer than 4 scrapes of 30 s; use at least 123s"):
        Timing.of(Rollout(step_duration="15s"), scrape_interval_s=30.0)
