"""The commands a user runs on a spec whose files live in S3 (moto on loopback): validate, fetch,
compress (the bundled example), package to s3://, and Triton loading that repository natively."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from slimserve.cli.main import app
from slimserve.storage import Cache, triton_repository_uri
from tests.storage.conftest import S3, Counter

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits"

pytestmark = pytest.mark.storage


def s3_example(s3: S3, folder: Path, **spec: object) -> Path:
    """examples/digits uploaded to the test's bucket, and compressedmodel-s3.yaml pointing at it."""
    for name in ("digits_cnn.pt", "model.py", "data/train.npz", "data/calibration.npz", "data/test.npz"):
        s3.fs.put_file(str(DIGITS / name), f"{s3.bucket}/digits/{name}")
    text = (DIGITS / "compressedmodel-s3.yaml").read_text().replace("s3://slimserve-examples/", f"s3://{s3.bucket}/")
    body = yaml.safe_load(text)
    body["spec"].update(spec)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "compressedmodel.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def test_validate_lists_remote_files_without_downloading(
    s3: S3, cache: Cache, tmp_path: Path, count_downloads: Counter
) -> None:
    spec = s3_example(s3, tmp_path / "spec")
    result = runner.invoke(app, ["validate", str(spec)])
    assert result.exit_code == 0, result.output
    assert "valid" in result.stdout and count_downloads() == 0

    s3.fs.rm_file(f"{s3.bucket}/digits/data/test.npz")
    s3.fs.rm_file(f"{s3.bucket}/digits/model.py")
    result = runner.invoke(app, ["validate", str(spec)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "2 problems" in result.stderr
    assert f"spec.data.evaluation = 's3://{s3.bucket}/digits/data/test.npz': no object" in result.stderr
    assert f"spec.source.codeUri = 's3://{s3.bucket}/digits/model.py': no object" in result.stderr


def test_fetch_writes_a_folder_the_next_step_reads_without_credentials(
    s3: S3, cache: Cache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = s3_example(s3, tmp_path / "spec")
    result = runner.invoke(app, ["fetch", str(spec), "--out", str(tmp_path / "inputs")])
    assert result.exit_code == 0, result.output
    inputs = tmp_path / "inputs"
    assert sorted(p.relative_to(inputs).as_posix() for p in inputs.rglob("*") if p.is_file()) == [
        "code/model.py", "compressedmodel.yaml", "data/calibration/calibration.npz",
        "data/evaluation/test.npz", "data/train/train.npz", "source/digits_cnn.pt",
    ]  # fmt: skip
    assert (inputs / "source" / "digits_cnn.pt").read_bytes() == (DIGITS / "digits_cnn.pt").read_bytes()
    local = yaml.safe_load((inputs / "compressedmodel.yaml").read_text())
    assert (
        local["spec"]["source"]["uri"] == "source/digits_cnn.pt"
        and local["spec"]["source"]["codeUri"] == "code/model.py"
    )

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key)
    result = runner.invoke(app, ["validate", str(inputs / "compressedmodel.yaml")])
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_the_digits_example_compresses_from_s3_uris(s3: S3, cache: Cache, tmp_path: Path) -> None:
    """`slimserve compress` on the bundled example with every file in S3 (one variant, to stay quick)."""
    variants = [{"name": "int8-static", "steps": [{"quantize": {"mode": "static", "calibration": "minmax"}}]}]
    compression = {"variants": variants, "measure": {"latencyRuns": 20, "throughputBatch": 8, "threads": 1}}
    spec = s3_example(s3, tmp_path / "elsewhere", compression=compression)
    out = tmp_path / "out"
    result = runner.invoke(app, ["compress", str(spec), "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "compression-report.json").read_text())
    assert report["variants"][0]["name"] == "int8-static" and report["baseline"]["quality"] > 90
    assert not (tmp_path / "elsewhere" / "model.py").exists(), "the factory module came from codeUri in S3"


@pytest.fixture(scope="module")
def compression(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `slimserve compress` writes, for a one-layer ONNX model and an `int8` variant (no torch)."""
    import hashlib

    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from slimserve.api.report import CompressionReport, VariantRecord

    out = tmp_path_factory.mktemp("compression")
    weights = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 10)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["logits"])], "m",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], [weights],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    records = []
    for name in ("baseline", "int8"):
        onnx.save(model, out / f"{name}.onnx")
        data = (out / f"{name}.onnx").read_bytes()
        records.append(VariantRecord(
            name=name, recipe=name, path=f"{name}.onnx", sha256=hashlib.sha256(data).hexdigest(),
            size_bytes=len(data), compression_ratio=1.0, params=640, macs=640, metric="accuracy", quality=90.0,
            quality_ci=(89.0, 91.0), quality_unit="% correct", drop=0.0, drop_ci=(-0.5, 0.5), drop_unit="points",
            latency_ms_p50=0.1, latency_ms_p99=0.2, throughput_rps=1000.0, speedup=1.0, compress_seconds=0.1,
        ))  # fmt: skip
    report = CompressionReport(model="digits", device="cpu", baseline=records[0], variants=records[1:])
    (out / "compression-report.json").write_text(json.dumps(report.to_json_dict()))
    spec = {"source": {"uri": "baseline.onnx"}, "data": {"evaluation": "test.npz"},
            "compression": {"variants": [{"name": "int8", "steps": [{"quantize": {"mode": "dynamic"}}]}]}}  # fmt: skip
    body = {"apiVersion": "slimserve.dev/v1alpha1", "kind": "CompressedModel", "metadata": {"name": "m"}, "spec": spec}
    (out / "compressedmodel.yaml").write_text(yaml.safe_dump(body))
    return out


def _package_to_s3(s3: S3, compression: Path, tmp_path: Path, backend: str) -> tuple[str, list[str]]:
    root = f"s3://{s3.bucket}/digits/repository"
    result = runner.invoke(app, [
        "package", str(compression / "compressedmodel.yaml"), "--report", str(compression / "compression-report.json"),
        "--repository", root, "--backend", backend, "--uri-file", str(tmp_path / "uri"),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    for_triton = (tmp_path / "uri").read_text().strip()
    assert for_triton.startswith(f"s3://{s3.endpoint}/{s3.bucket}/digits/repository/") and for_triton in result.stdout
    location = root + "/" + for_triton.rsplit("/", 1)[1]
    assert f"into {location} " in result.stdout
    return location, sorted(s3.fs.find(location[len("s3://") :]))


def test_package_uploads_the_repository_to_s3(s3: S3, compression: Path, tmp_path: Path) -> None:
    location, keys = _package_to_s3(s3, compression, tmp_path, "onnxruntime")
    base = location[len("s3://") :]
    assert keys == [f"{base}/{m}/{f}" for m in ("baseline", "int8") for f in ("1/model.onnx", "config.pbtxt")]
    assert s3.fs.exists(base + ".complete")


def test_package_uploads_to_the_version_it_is_given(s3: S3, compression: Path, tmp_path: Path) -> None:
    """What the operator's packaging Job runs: a version it names before the upload (`gen-<g>/<variant>`)."""
    root = f"s3://{s3.bucket}/digits/repository"
    args = ["package", str(compression / "compressedmodel.yaml"), "--report", str(compression / "compression-report.json"),
            "--backend", "onnxruntime", "--variants", "int8=digits", "--repository-version", "gen-1/int8"]  # fmt: skip
    result = runner.invoke(app, [*args, "--repository", root, "--uri-file", str(tmp_path / "uri")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "uri").read_text().strip() == f"s3://{s3.endpoint}/{s3.bucket}/digits/repository/gen-1/int8"
    base = f"{s3.bucket}/digits/repository/gen-1/int8"
    assert f"{base}/digits/1/model.onnx" in s3.fs.find(base)
    assert s3.fs.exists(base + ".complete")
    result = runner.invoke(app, [*args, "--repository", str(tmp_path / "folder")])
    assert result.exit_code == 2 and "--repository-version = 'gen-1/int8'" in result.output


@pytest.mark.serving
def test_triton_serves_the_packaged_repository_from_s3(s3: S3, compression: Path, tmp_path: Path) -> None:
    """The pytriton wheel's tritonserver reads s3://http://host:port/bucket/prefix with the AWS variables."""
    from slimserve.triton.server import TritonServer

    location, _ = _package_to_s3(s3, compression, tmp_path, "python")
    with TritonServer(triton_repository_uri(location), tmp_path / "triton") as triton:  # type: ignore[arg-type]
        for model in ("baseline", "int8"):
            with urllib.request.urlopen(f"{triton.url}/v2/models/{model}/ready", timeout=5) as response:  # noqa: S310
                assert response.status == 200
        body = {"inputs": [{"name": "x", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.5] * 64}]}
        request = urllib.request.Request(f"{triton.url}/v2/models/int8/infer", data=json.dumps(body).encode())
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
            outputs = json.loads(response.read())["outputs"]
    assert len(outputs[0]["data"]) == 10
    assert "s3://http://127.0.0.1:" in (tmp_path / "triton" / "triton.log").read_text()


@pytest.mark.serving
def test_slimserve_run_takes_the_s3_example_to_a_decision(s3: S3, cache: Cache, tmp_path: Path) -> None:
    """`slimserve run` on the S3 example, as a user runs it: every file fetched from the bucket, the local
    stack (Triton, Prometheus, Locust) judging one quick variant to Promoted."""
    variants = [{"name": "int8-static", "steps": [{"quantize": {"mode": "static", "calibration": "minmax"}}]}]
    spec = s3_example(
        s3, tmp_path / "elsewhere",
        compression={"variants": variants, "measure": {"latencyRuns": 20, "throughputBatch": 8, "threads": 1}},
        rollout={"candidate": "int8-static", "steps": [100], "stepDuration": "8s", "users": 4, "spawnRate": 4},
    )  # fmt: skip
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(spec), "--out", str(out)])
    report = json.loads((out / "rollout-report.json").read_text())
    assert result.exit_code == 0, result.output
    assert report["decision"] == "Promoted" and report["candidate"] == "int8-static", report
    assert not (tmp_path / "elsewhere" / "model.py").exists(), "the factory module came from codeUri in S3"
