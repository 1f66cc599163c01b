"""The real serving stack on loopback: Triton (pytriton wheel), Prometheus (Debian), Locust.

Short windows (3 s steps) keep the whole file to a few minutes on two cores. Each test checks that
nothing it started outlives it (`no_orphans`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from slimserve.api import load_compressed_model
from slimserve.api.report import CompressionReport
from slimserve.errors import InvalidInput, ServingError
from slimserve.processes import free_port, live_processes
from tests.serving.conftest import write_spec

pytestmark = pytest.mark.serving
REPO_ROOT = Path(__file__).resolve().parents[2]


def fake_compress(compression_output: Path, mutate: object = None):  # noqa: ANN201
    """A stand-in for run_compression that copies prepared variants (optionally altered)."""

    def compress(model: object, base_dir: Path, out_dir: Path, progress: object = None) -> CompressionReport:
        shutil.rmtree(out_dir, ignore_errors=True)
        shutil.copytree(compression_output, out_dir)
        if mutate is not None:
            mutate(out_dir)  # type: ignore[operator]
        return CompressionReport.model_validate_json((out_dir / "compression-report.json").read_text())

    return compress


def run(spec: Path, out: Path, compression_output: Path, mutate: object = None):  # noqa: ANN201
    from rich.console import Console

    from slimserve.local.runtime import run_local

    return run_local(
        load_compressed_model(spec),
        spec.parent,
        out,
        Console(width=140),
        compress=fake_compress(compression_output, mutate),
    )


STEPS = {"steps": [30, 100], "stepDuration": "8s", "users": 4, "spawnRate": 4}


def _checks(report: dict[str, object]) -> dict[tuple[int, str], str]:
    return {(s["weight"], c["name"]): c["verdict"] for s in report["steps"] for c in s["checks"]}  # type: ignore[index, union-attr]


def test_a_twin_is_not_rolled_back_with_the_default_gates(compression_output: Path, no_orphans: Path) -> None:
    """A/A: the stable model's own file as the candidate, judged against a fresh copy of the stable."""
    spec = write_spec(no_orphans / "spec", compression_output, rollout={"candidate": "twin", **STEPS})
    out = no_orphans / "run"
    result = run(spec, out, compression_output)
    report = json.loads((out / "rollout-report.json").read_text())
    assert result.decision != "RolledBack", result.reason
    assert not [k for k, v in _checks(report).items() if v == "Fail"], _checks(report)
    assert report["servedQuality"]["drop"] == 0.0 and report["servedQuality"]["dropHigh"] > 0  # never zero-width
    for window in report["load"]:
        shares = window["perTarget"]
        assert shares["candidate"]["requests"] >= 500 and shares["control"]["requests"] >= 500


def test_promotion_then_second_run_compares_with_it_and_a_slowed_candidate_rolls_back(
    compression_output: Path, no_orphans: Path
) -> None:
    out = no_orphans / "run"
    spec = write_spec(no_orphans / "spec", compression_output, rollout={"candidate": "int8", **STEPS})
    first = run(spec, out, compression_output)
    assert first.decision == "Promoted", first.reason
    report = json.loads((out / "rollout-report.json").read_text())
    assert report["decision"] == "Promoted" and report["candidate"] == "int8" and report["metric"] == "accuracy"
    assert [s["weight"] for s in report["steps"]] == [0, 30, 100]
    checks = {c["name"]: c for s in report["steps"] for c in s["checks"]}
    assert {"qualityDrop", "samples", "errorRate", "p99VsBaseline", "throughputVsBaseline"} <= set(checks)
    assert all(c["threshold"] is not None and c["verdict"] == "Pass" for c in checks.values())
    assert all(c["low"] is not None and c["high"] is not None for n, c in checks.items() if n != "samples")
    # 30% of the requests on the candidate, 30% on the control, 40% on the stable: exactly, not on average.
    thirty = report["load"][0]["perTarget"]
    assert abs(thirty["candidate"]["requests"] - thirty["control"]["requests"]) <= 0.02 * thirty["control"]["requests"]
    for name in ("rollout-report.md", "throughput_vs_p99.png", "quality_vs_size.png"):
        assert (out / name).stat().st_size > 0
    state = json.loads((out / "state.json").read_text())
    assert state["stable"]["variant"] == "int8"
    assert (out / state["stable"]["path"]).is_file()

    # Second run: the promoted int8 is now the stable model, and the control is a copy of it.
    # Only the rollout changed: the finished compression in `out` is reused, never run again.
    slow_spec = write_spec(no_orphans / "spec2", compression_output, rollout={"candidate": "slow", **STEPS})
    second = run(slow_spec, out, compression_output, mutate=lambda _: pytest.fail("compressed again"))
    assert second.decision == "RolledBack", second.reason
    report = json.loads((out / "rollout-report.json").read_text())
    assert report["stable"] == "int8"
    failed = {name for (_, name), verdict in _checks(report).items() if verdict == "Fail"}
    assert failed & {"p99VsBaseline", "throughputVsBaseline"}, _checks(report)
    assert [s["weight"] for s in report["steps"]] == [0, 30]  # rolled back at the first canary step
    state = json.loads((out / "state.json").read_text())
    assert state["stable"]["variant"] == "int8"  # a rollback leaves the stable model untouched
    assert [h["decision"] for h in state["history"]] == ["Promoted", "RolledBack"]
    assert (out / "repository" / "stable_current" / "config.pbtxt").is_file()
    assert (out / "repository" / "stable_control" / "config.pbtxt").is_file()
    assert not live_processes()


def test_an_accuracy_wrecked_candidate_is_rolled_back_before_any_traffic(
    compression_output: Path, no_orphans: Path
) -> None:
    spec = write_spec(no_orphans / "spec", compression_output, rollout={"candidate": "noisy", **STEPS})
    result = run(spec, no_orphans / "run", compression_output)
    assert result.decision == "RolledBack" and result.exit_code == 3
    report = json.loads((no_orphans / "run" / "rollout-report.json").read_text())
    assert [s["weight"] for s in report["steps"]] == [0]
    check = report["steps"][0]["checks"][0]
    assert check["name"] == "qualityDrop" and check["verdict"] == "Fail" and check["low"] > 1.0
    # The served baseline accuracy is the real one, computed here without slimserve.
    data = np.load(spec.parent / "data" / "test.npz")
    import onnxruntime as ort

    session = ort.InferenceSession(str(compression_output / "baseline.onnx"), providers=["CPUExecutionProvider"])
    expected = 100 * float((session.run(None, {"x": data["x"]})[0].argmax(1) == data["y"]).mean())
    assert report["servedQuality"]["baseline"] == pytest.approx(expected)
    assert report["load"] == []
    assert not (no_orphans / "run" / "state.json").read_text().count('"variant"')  # nothing became stable


def test_a_second_run_on_the_same_folder_is_refused_and_loses_nothing(compression_output: Path, tmp_path: Path) -> None:
    from slimserve.local import registry

    out = tmp_path / "run"
    spec = write_spec(tmp_path / "spec", compression_output)
    with registry.exclusive(out), pytest.raises(InvalidInput, match=r"another slimserve run \(pid \d+\) is using"):
        run(spec, out, compression_output)
    assert not (out / "rollout-report.json").exists() and not (out / "compression").exists()


def test_input_shape_mismatch_is_invalid_input_and_stops_everything(compression_output: Path, no_orphans: Path) -> None:
    spec = write_spec(no_orphans / "spec", compression_output)
    with np.load(spec.parent / "data" / "test.npz") as data:
        np.savez(spec.parent / "data" / "test.npz", x=data["x"].reshape(len(data["x"]), 64), y=data["y"])
    with pytest.raises(
        InvalidInput, match=r"per-sample shape \[64\] but model 'baseline' input 'x' expects \[1, 8, 8\]"
    ):
        run(spec, no_orphans / "run", compression_output)
    assert not live_processes()


def test_model_that_fails_to_load_names_the_model_and_triton_reason(compression_output: Path, no_orphans: Path) -> None:
    def break_slow(out_dir: Path) -> None:  # a well-formed graph onnxruntime cannot load
        model = onnx.load(str(out_dir / "slow.onnx"))
        model.graph.node[0].op_type = "NoSuchOp"
        onnx.save(model, str(out_dir / "slow.onnx"))

    spec = write_spec(
        no_orphans / "spec", compression_output,
        rollout={"candidate": "slow", "steps": [100], "stepDuration": "8s", "users": 4, "spawnRate": 4},
    )  # fmt: skip
    with pytest.raises(InvalidInput, match=r"model 'slow' failed to load in Triton: .*NoSuchOp"):
        run(spec, no_orphans / "run", compression_output, mutate=break_slow)
    assert not live_processes()


def test_corrupted_onnx_is_invalid_input_before_anything_starts(compression_output: Path, no_orphans: Path) -> None:
    def corrupt(out_dir: Path) -> None:
        (out_dir / "int8.onnx").write_bytes(b"not an onnx file at all" * 20)

    spec = write_spec(no_orphans / "spec", compression_output)
    with pytest.raises(InvalidInput, match="int8.onnx: not a readable ONNX model"):
        run(spec, no_orphans / "run", compression_output, mutate=corrupt)


@pytest.mark.parametrize(
    ("victim", "message"),
    [("triton", "Triton is no longer running"), ("prometheus", "Prometheus")],
)
def test_a_component_dying_mid_run_is_an_error_and_nothing_is_promoted(
    compression_output: Path, no_orphans: Path, monkeypatch: pytest.MonkeyPatch, victim: str, message: str
) -> None:
    import slimserve.evaluator.rollout as rollout

    real = rollout.measure_step

    def kill_then_measure(prom, roles, weight, *args, **kwargs):  # noqa: ANN001, ANN202
        process = next(p for p in live_processes() if p.name == victim)
        os.killpg(process.pid, signal.SIGKILL)
        return real(prom, roles, weight, *args, **kwargs)

    monkeypatch.setattr(rollout, "measure_step", kill_then_measure)
    spec = write_spec(no_orphans / "spec", compression_output)
    with pytest.raises(ServingError, match=message):
        run(spec, no_orphans / "run", compression_output)
    assert not (no_orphans / "run" / "state.json").exists()
    assert not live_processes()


def test_ports_taken_are_invalid_input(tmp_path: Path) -> None:
    import socket

    from slimserve.evaluator.prometheus import PrometheusServer
    from slimserve.triton.server import TritonServer

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(InvalidInput, match=f"Triton http port = {port}: already in use"):
            TritonServer(tmp_path, tmp_path, http_port=port)
        with pytest.raises(InvalidInput, match=f"Prometheus port = {port}: already in use"):
            PrometheusServer(["127.0.0.1:1"], tmp_path, port=port)


def test_a_port_taken_after_it_was_picked_is_retried_on_new_ports(tmp_path: Path, no_orphans: Path) -> None:
    import socket

    from slimserve.triton.server import TritonServer

    triton = TritonServer(tmp_path / "empty-repo", no_orphans / "triton")
    (tmp_path / "empty-repo").mkdir()
    with socket.socket() as holder:  # someone binds the port free_port() chose before Triton starts
        holder.bind(("127.0.0.1", triton.http_port))
        holder.listen()
        taken = triton.http_port
        with triton:
            assert triton.http_port != taken and triton._ready()


def test_prometheus_missing_stops_triton(
    compression_output: Path, no_orphans: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLIMSERVE_PROMETHEUS", str(no_orphans / "no-prometheus"))
    spec = write_spec(no_orphans / "spec", compression_output)
    with pytest.raises(ServingError, match="Prometheus is missing"):
        run(spec, no_orphans / "run", compression_output)
    assert not live_processes()


def test_locust_failing_is_a_clear_error(compression_output: Path, tmp_path: Path) -> None:
    from slimserve.evaluator.load import Target, run_locust

    broken = tmp_path / "locustfile.py"
    broken.write_text("raise RuntimeError('broken locustfile')\n")
    with pytest.raises(ServingError, match="Locust exited with code"):
        run_locust(
            [Target(f"http://127.0.0.1:{free_port()}", "m", 100)], compression_output / "data" / "test.npz",
            users=1, spawn_rate=1, duration_s=1, work_dir=tmp_path, locustfile=broken,
        )  # fmt: skip


def _cli(args: list[str], env: dict[str, str] | None = None, **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "slimserve"), *args], cwd=REPO_ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip


def test_cli_run_with_real_compression_then_triton_missing(compression_output: Path, no_orphans: Path) -> None:
    spec = write_spec(
        no_orphans / "spec", compression_output,
        compression={
            "variants": [{"name": "int8", "steps": [{"quantize": {"mode": "dynamic"}}]}],
            "measure": {"latencyRuns": 10, "throughputBatch": 8, "threads": 1},
        },
        rollout={"candidate": "auto", **STEPS},
    )  # fmt: skip
    out = no_orphans / "out"
    proc = _cli(["run", str(spec), "--out", str(out)])
    text, _ = proc.communicate(timeout=240)
    assert proc.returncode in (0, 3, 4), text
    report = json.loads((out / "rollout-report.json").read_text())
    expected = {"Promoted": 0, "RolledBack": 3, "Inconclusive": 4}[report["decision"]]
    assert proc.returncode == expected and report["candidate"] == "int8"
    assert report["decision"] in text and "qualityDrop" in text
    again = _cli(["run", str(spec), "--out", str(out)])
    text, _ = again.communicate(timeout=240)
    if report["decision"] == "Promoted":  # the second run starts from the promoted int8: nothing new to roll out
        assert again.returncode == 4 and "beats the stable model" in text, text
    missing = _cli(
        ["run", str(spec), "--out", str(no_orphans / "out2")], env={"SLIMSERVE_TRITONSERVER": str(no_orphans / "nope")}
    )
    text, _ = missing.communicate(timeout=240)
    assert missing.returncode == 1, text
    assert "Triton is missing" in text and "nothing was promoted" in text


def test_ctrl_c_stops_every_process(compression_output: Path, no_orphans: Path) -> None:
    spec = write_spec(
        no_orphans / "spec", compression_output,
        compression={"variants": [{"name": "int8", "steps": [{"quantize": {"mode": "dynamic"}}]}],
                     "measure": {"latencyRuns": 10, "throughputBatch": 8, "threads": 1}},
        rollout={"candidate": "int8", "steps": [50, 100], "stepDuration": "30s", "users": 4, "spawnRate": 4},
    )  # fmt: skip
    # As from a terminal: a shell without job control (CI's, `cmd &`) starts its children with SIGINT
    # ignored, and Python keeps an inherited SIG_IGN, so the Ctrl-C below would be lost.
    proc = _cli(
        ["run", str(spec), "--out", str(no_orphans / "out")],
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 180
    seen = ""
    assert proc.stdout is not None
    while time.monotonic() < deadline:  # wait until Locust is running a window
        line = proc.stdout.readline()
        seen += line
        if "served quality" in line or not line:
            break
    time.sleep(4)
    proc.send_signal(signal.SIGINT)
    text, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, seen + text
    assert "interrupted" in text


def test_cli_evaluate_judges_one_weight_against_running_servers(compression_output: Path, no_orphans: Path) -> None:
    """What the operator's evaluator Job runs: one weight, an EvaluationReport, the step's exit code."""
    from slimserve.api.report import EvaluationReport
    from slimserve.evaluator.prometheus import PrometheusServer
    from slimserve.triton.repository import build_repository
    from slimserve.triton.server import TritonServer

    report = CompressionReport.model_validate_json((compression_output / "compression-report.json").read_text())
    control = report.baseline.model_copy(update={"name": "stable_control"})
    report = report.model_copy(update={"variants": [*report.variants, control]})
    repo = no_orphans / "repo"
    build_repository(report, compression_output, repo, "python", ["noisy", "slow", "stable_control"])
    spec = write_spec(no_orphans / "spec", compression_output)
    with (
        TritonServer(repo, no_orphans / "triton") as triton,
        PrometheusServer([triton.metrics_target], no_orphans / "prom") as prom,
    ):
        prom.wait_for_targets()
        results = {}
        for name, candidate, weight in (("quality", "noisy", 0), ("canary", "slow", 30)):
            out = no_orphans / f"{name}.json"
            proc = _cli([
                "evaluate", str(spec), "--weight", str(weight), "--candidate-url", triton.url,
                "--candidate-model", candidate, "--control-url", triton.url, "--control-model", "stable_control",
                "--stable-url", triton.url, "--stable-model", "baseline",
                "--reference-onnx", str(compression_output / "baseline.onnx"),
                "--prometheus-url", prom.url, "--out", str(out),
            ])  # fmt: skip
            text, _ = proc.communicate(timeout=120)
            results[name] = (proc.returncode, EvaluationReport.model_validate_json(out.read_text()), text)
    code, quality, text = results["quality"]
    assert code == 3 and quality.step.verdict == "Fail" and quality.weight == 0, text
    assert quality.quality is not None and quality.quality.drop_low > 1.0
    code, canary, text = results["canary"]
    assert code == 3 and canary.step.verdict == "Fail", text
    verdicts = {c.name: c.verdict for c in canary.step.checks}
    assert verdicts["samples"] == "Pass" and "Fail" in (verdicts["p99VsBaseline"], verdicts["throughputVsBaseline"])
    assert canary.load is not None and set(canary.load) == {"candidate", "control"}


def test_a_failing_pre_rollout_webhook_rolls_back_before_any_step(compression_output: Path, no_orphans: Path) -> None:
    """`slimserve run` asks the spec's webhooks as the operator does: a refused pre-rollout check rolls back
    (failureBudget 0), and the post-rollout and event webhooks are told."""
    from tests.webhook_server import webhook_endpoint

    with webhook_endpoint() as endpoint:
        endpoint.answer("/smoke", 500, "smoke test failed")
        hooks = [{"name": "smoke", "type": "pre-rollout", "url": endpoint.url + "/smoke"},
                 {"name": "done", "type": "post-rollout", "url": endpoint.url + "/done"},
                 {"name": "chat", "type": "event", "url": endpoint.url + "/chat", "format": "slack"}]  # fmt: skip
        spec = write_spec(no_orphans / "spec", compression_output, rollout={"candidate": "int8", **STEPS,
                                                                            "webhooks": hooks})  # fmt: skip
        result = run(spec, no_orphans / "run", compression_output)
        assert result.decision == "RolledBack" and result.exit_code == 3
        assert result.reason.startswith("pre-rollout webhook 'smoke' (HTTP 500: smoke test failed) failed")
        report = json.loads((no_orphans / "run" / "rollout-report.json").read_text())
        assert report["steps"] == [] and report["load"] == []
        sent = endpoint.calls("/smoke")[0]
        assert (sent["name"], sent["type"], sent["variant"], sent["stable"]) == ("digits-mlp", "pre-rollout", "int8",
                                                                                  "baseline")  # fmt: skip
        assert [c["phase"] for c in endpoint.calls("/done")] == ["RolledBack"]
        texts = [c["text"] for c in endpoint.calls("/chat")]
        assert texts[0].startswith("[digits-mlp] Progressing: rolling out candidate int8") and "RolledBack" in texts[-1]
