"""`slimserve run` reuses a finished compression only when its inputs are unchanged (slimserve.local.reuse)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from slimserve.api.resource import load_compressed_model
from slimserve.local import reuse
from tests.serving.conftest import write_spec
from tests.serving.models import make_compression_output


@pytest.fixture(scope="module")
def compressed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("compression")
    make_compression_output(out)
    return out


def _edit(spec: Path, section: str, value: object) -> None:
    doc = yaml.safe_load(spec.read_text())
    doc["spec"][section] = value
    spec.write_text(yaml.safe_dump(doc, sort_keys=False))


def _key(spec: Path) -> str:
    return reuse.input_key(load_compressed_model(spec), spec.parent)


def test_only_a_finished_compression_of_the_same_inputs_is_reused(compressed: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec", compressed)
    folder = tmp_path / "out" / "compression"
    shutil.copytree(compressed, folder)
    key = _key(spec)
    assert reuse.reusable(folder, key) is None, "no key: the compression never finished"
    reuse.remember(folder, key)
    report = reuse.reusable(folder, key)
    assert report is not None and [v.name for v in report.variants] == ["int8", "noisy", "slow", "twin"]

    # Gates, rollout and serving do not decide the compression output: the same key.
    _edit(spec, "gates", {"maxAccuracyDrop": 2.0})
    _edit(spec, "rollout", {"candidate": "twin", "steps": [50, 100]})
    assert _key(spec) == key
    # New weights under the same path, new data, or other compression settings: another key.
    source = spec.parent / "baseline.onnx"
    original = source.read_bytes()
    source.write_bytes(original + b"\0")
    assert _key(spec) != key
    source.write_bytes(original)
    assert _key(spec) == key
    doc = yaml.safe_load(spec.read_text())
    _edit(spec, "compression", {**doc["spec"]["compression"], "seed": 7})
    assert _key(spec) != key

    # A variant file that is not what the report recorded: compress again.
    (folder / report.variants[0].path).write_bytes(b"not the variant")
    assert reuse.reusable(folder, key) is None
    # A compression that starts forgets the key first, so a crash in it is never reused.
    shutil.rmtree(folder)
    shutil.copytree(compressed, folder)
    reuse.remember(folder, key)
    reuse.forget(folder)
    assert reuse.reusable(folder, key) is None
