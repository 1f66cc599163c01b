"""`slimserve compress`: exit codes 0/2/1, messages without tracebacks, the table and the files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from slimserve.cli.main import app
from tests.compression.conftest import digits_spec, write_spec

runner = CliRunner()


def test_success_prints_the_table_and_writes_the_report(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, digits_spec(tmp_path, [{"name": "fp16", "steps": [{"quantize": {"mode": "fp16"}}]}]))
    result = runner.invoke(app, ["compress", str(spec), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "baseline" in result.stdout and "fp16" in result.stdout and "2.00x" in result.stdout
    report = json.loads((tmp_path / "out" / "compression-report.json").read_text())
    assert report["variants"][0]["name"] == "fp16"
    assert (tmp_path / "out" / "fp16.onnx").is_file() and (tmp_path / "out" / "compression-report.md").is_file()


def test_missing_data_file_is_exit_2_naming_the_field(tmp_path: Path) -> None:
    body = digits_spec(tmp_path, [{"name": "fp16", "steps": [{"quantize": {"mode": "fp16"}}]}])
    body["data"]["evaluation"] = "missing.npz"  # type: ignore[index]
    spec = write_spec(tmp_path, body)
    result = runner.invoke(app, ["compress", str(spec), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "spec.data.evaluation" in result.stderr and "file not found" in result.stderr
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_corrupted_onnx_is_exit_2(tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_bytes(b"\x00garbage" * 64)
    body = digits_spec(tmp_path, [{"name": "int8", "steps": [{"quantize": {"mode": "dynamic"}}]}])
    body["source"] = {"uri": "m.onnx", "format": "onnx"}
    spec = write_spec(tmp_path, body)
    result = runner.invoke(app, ["compress", str(spec), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "spec.source.uri" in result.stderr and "not a valid ONNX model" in result.stderr


def test_invalid_spec_is_exit_2(tmp_path: Path) -> None:
    body = digits_spec(tmp_path, [{"name": "p", "steps": [{"prune": {"ratio": 1.5}}]}])
    spec = write_spec(tmp_path, body)
    result = runner.invoke(app, ["compress", str(spec), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "ratio" in result.stderr


def test_internal_failure_is_exit_1_without_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import slimserve.compression

    def crash(*_: object, **__: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(slimserve.compression, "run_compression", crash)
    spec = write_spec(tmp_path, digits_spec(tmp_path, [{"name": "fp16", "steps": [{"quantize": {"mode": "fp16"}}]}]))
    result = runner.invoke(app, ["compress", str(spec), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "internal error: RuntimeError: disk on fire" in result.stderr and "Traceback" not in result.output


def test_help_is_fast_and_does_not_import_torch() -> None:
    code = (
        "import sys; from slimserve.cli.main import main; sys.argv=['slimserve','compress','--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules and 'onnxruntime' not in sys.modules, 'heavy import at --help'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--out" in result.stdout and "Exit codes" in result.stdout
