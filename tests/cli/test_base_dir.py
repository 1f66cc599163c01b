"""`--base-dir`: the YAML in one folder, its files in another (how the operator's Jobs run the CLI).

In the cluster the worker reads the spec from a ConfigMap at /spec while the model, data sets and
factory module sit on the model volume; `--base-dir` is what lets the bundled example's relative
paths work there unchanged.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

from slimserve.api import load_compressed_model
from slimserve.cli.main import app
from slimserve.operator import builders as b
from tests.compression.conftest import DIGITS

runner = CliRunner()


def _inputs(folder: Path) -> Path:
    """The example's files (model, factory module, data sets) without its YAML."""
    folder.mkdir()
    for name in ("digits_cnn.pt", "model.py"):
        shutil.copy(DIGITS / name, folder / name)
    shutil.copytree(DIGITS / "data", folder / "data")
    return folder


FP16: list[dict[str, object]] = [{"name": "fp16", "steps": [{"quantize": {"mode": "fp16"}}]}]


def _spec_alone(folder: Path, variants: list[dict[str, object]] = FP16) -> Path:
    """A spec with relative paths, alone in its folder (like /spec in a worker Job)."""
    folder.mkdir()
    body = {
        "apiVersion": "slimserve.dev/v1alpha1",
        "kind": "CompressedModel",
        "metadata": {"name": "m"},
        "spec": {
            "source": {"uri": "digits_cnn.pt", "format": "factory", "factory": "model:build"},
            "data": {"calibration": "data/calibration.npz", "evaluation": "data/test.npz"},
            "compression": {"measure": {"latencyRuns": 10, "throughputBatch": 8}, "variants": variants},
        },
    }
    path = folder / "compressedmodel.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def test_compress_resolves_relative_uris_and_the_factory_against_base_dir(tmp_path: Path) -> None:
    inputs = _inputs(tmp_path / "inputs")
    spec = _spec_alone(tmp_path / "spec")
    out = tmp_path / "out"
    result = runner.invoke(app, ["compress", str(spec), "--base-dir", str(inputs), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "compression-report.json").is_file() and (out / "fp16.onnx").is_file()


def test_compress_with_a_wrong_base_dir_is_exit_2_naming_field_and_resolved_path(tmp_path: Path) -> None:
    _inputs(tmp_path / "inputs")
    spec = _spec_alone(tmp_path / "spec")
    wrong = tmp_path / "elsewhere"
    wrong.mkdir()
    result = runner.invoke(app, ["compress", str(spec), "--base-dir", str(wrong), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "spec.source.uri" in result.stderr and str(wrong.resolve() / "digits_cnn.pt") in result.stderr
    assert "spec.data.evaluation" in result.stderr and "--base-dir" in result.stderr
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_without_base_dir_relative_uris_still_resolve_against_the_yaml_folder(tmp_path: Path) -> None:
    spec = _spec_alone(tmp_path / "spec")
    result = runner.invoke(app, ["validate", str(spec)])
    assert result.exit_code == 2
    assert str((tmp_path / "spec" / "data" / "test.npz").resolve()) in result.stderr


def test_a_base_dir_that_is_not_a_folder_is_exit_2(tmp_path: Path) -> None:
    spec = _spec_alone(tmp_path / "spec")
    result = runner.invoke(app, ["validate", str(spec), "--base-dir", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "--base-dir" in result.stderr and "not a folder" in result.stderr


def test_a_missing_base_dir_is_fine_when_the_spec_reads_nothing_from_it(tmp_path: Path) -> None:
    """The S3 example in a cluster: every file in a bucket, nothing in the model volume's inputs folder."""
    spec = _spec_alone(tmp_path / "spec")
    body = yaml.safe_load(spec.read_text())
    body["spec"]["source"] |= {"uri": f"file://{DIGITS / 'digits_cnn.pt'}", "codeUri": f"file://{DIGITS / 'model.py'}"}
    body["spec"]["data"] = {"calibration": f"file://{DIGITS / 'data' / 'calibration.npz'}",
                            "evaluation": f"file://{DIGITS / 'data' / 'test.npz'}"}  # fmt: skip
    spec.write_text(yaml.safe_dump(body))
    result = runner.invoke(app, ["validate", str(spec), "--base-dir", str(tmp_path / "missing")])
    assert result.exit_code == 0, result.output
    del body["spec"]["source"]["codeUri"]  # the factory module would be imported from --base-dir
    spec.write_text(yaml.safe_dump(body))
    result = runner.invoke(app, ["validate", str(spec), "--base-dir", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "--base-dir" in result.stderr and "not a folder" in result.stderr


def test_the_bundled_example_works_from_the_spec_configmap_with_base_dir(tmp_path: Path) -> None:
    """What the operator's Jobs see: the example's spec at /spec, its files at --base-dir."""
    example = load_compressed_model(DIGITS / "compressedmodel.yaml")
    owner = b.Owner(name="digits-cnn", namespace="models", uid="u", generation=1)
    config_map = b.build_spec_config_map(example, owner)
    (tmp_path / "spec").mkdir()
    spec = tmp_path / "spec" / "compressedmodel.yaml"
    spec.write_text(config_map["data"]["compressedmodel.yaml"])
    assert runner.invoke(app, ["validate", str(spec)]).exit_code == 2  # no files next to /spec
    result = runner.invoke(app, ["validate", str(spec), "--base-dir", str(DIGITS)])
    assert result.exit_code == 0, result.output


def test_evaluate_with_a_wrong_base_dir_is_exit_2_before_any_traffic(tmp_path: Path) -> None:
    spec = _spec_alone(tmp_path / "spec")
    wrong = tmp_path / "elsewhere"
    wrong.mkdir()
    args = [
        "evaluate",
        str(spec),
        "--base-dir",
        str(wrong),
        "--control-url",
        "http://127.0.0.1:9",
        "--candidate-url",
        "http://127.0.0.1:9",
        "--control-model",
        "baseline",
        "--candidate-model",
        "fp16",
        "--weight",
        "10",
        "--prometheus-url",
        "http://127.0.0.1:9",
        "--out",
        str(tmp_path / "evaluation-report.json"),
    ]
    code = "import sys; from slimserve.cli.main import main; sys.argv = ['slimserve', *sys.argv[1:]]; main()"
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "spec.data.evaluation" in result.stderr and str(wrong.resolve() / "data" / "test.npz") in result.stderr
