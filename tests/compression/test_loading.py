"""Loading errors name the field, the value and the fix (exit code 2 in the CLI, never a traceback)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from slimserve.api.spec import Source
from slimserve.compression.loading import InputSpec, load_npz, load_source
from slimserve.errors import InvalidInput
from tests.compression.conftest import DIGITS


def test_corrupted_onnx_names_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not a protobuf" * 10)
    with pytest.raises(InvalidInput) as exc:
        load_source(Source(uri="model.onnx", format="onnx"), tmp_path, {"x"})
    message = str(exc.value)
    assert "spec.source.uri" in message and "not a valid ONNX model" in message and "re-export" in message


def test_missing_source_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"spec.source.uri = .*nope.onnx.*file not found"):
        load_source(Source(uri="nope.onnx", format="onnx"), tmp_path, {"x"})


def test_state_dict_of_another_architecture(tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text("from torch import nn\ndef build():\n    return nn.Linear(4, 2)\n")
    torch.save(torch.nn.Linear(8, 2).state_dict(), tmp_path / "w.pt")
    with pytest.raises(InvalidInput, match=r"spec.source.uri.*does not fit the module that model:build builds"):
        load_source(Source(uri="w.pt", format="factory", factory="model:build"), tmp_path, {"x"})


def test_corrupted_state_dict(tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text("from torch import nn\ndef build():\n    return nn.Linear(4, 2)\n")
    (tmp_path / "w.pt").write_bytes(b"not a zip")
    with pytest.raises(InvalidInput, match=r"not a readable PyTorch state dict.*torch.save"):
        load_source(Source(uri="w.pt", format="factory", factory="model:build"), tmp_path, {"x"})


def test_factory_that_does_not_exist(tmp_path: Path) -> None:
    (tmp_path / "w.pt").write_bytes(b"")
    with pytest.raises(InvalidInput, match=r"spec.source.factory = 'missing_mod:build': cannot import"):
        load_source(Source(uri="w.pt", format="factory", factory="missing_mod:build"), tmp_path, {"x"})


def test_factory_module_next_to_yaml_wins_over_a_cached_one(tmp_path: Path) -> None:
    """Two specs whose factories are both `model.py` get their own module each."""
    for i, width in enumerate((3, 5)):
        folder = tmp_path / str(i)
        folder.mkdir()
        (folder / "model.py").write_text(f"from torch import nn\ndef build():\n    return nn.Linear({width}, 2)\n")
        torch.save(torch.nn.Linear(width, 2).state_dict(), folder / "w.pt")
        loaded = load_source(Source(uri="w.pt", format="factory", factory="model:build"), folder, {"x"})
        assert loaded.module is not None and loaded.module.in_features == width  # type: ignore[union-attr]
        assert loaded.input_names == ["x"]


def test_wrong_shape_names_array_and_expected_shape(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((5, 1, 7, 7), np.float32), y=np.zeros(5, np.int64))
    spec = InputSpec("x", np.dtype(np.float32), (1, 8, 8))
    with pytest.raises(InvalidInput) as exc:
        load_npz(path, "spec.data.evaluation", ["x"], [spec])
    assert "spec.data.evaluation" in str(exc.value) and "[5, 1, 7, 7]" in str(exc.value)
    assert "['N', 1, 8, 8]" in str(exc.value)


def test_wrong_dtype_says_how_to_fix(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((5, 1, 8, 8), np.float64))
    spec = InputSpec("x", np.dtype(np.float32), (1, 8, 8))
    with pytest.raises(InvalidInput, match=r"'x' is float64 but the model expects float32; save it with .astype"):
        load_npz(path, "spec.data.train", ["x"], [spec])


def test_missing_input_array_lists_what_is_there(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, input_ids=np.zeros((3, 4), np.int64))
    with pytest.raises(InvalidInput) as exc:
        load_npz(path, "spec.data.calibration", ["input_ids", "attention_mask"])
    assert "no array 'attention_mask'" in str(exc.value) and "['input_ids']" in str(exc.value)


def test_labels_are_class_ids_or_regression_targets(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((3, 2), np.float32), y=np.zeros((3, 10), np.float64))
    assert load_npz(path, "spec.data.evaluation", ["x"]).labels.dtype == np.float32  # type: ignore[union-attr]
    np.savez(path, x=np.zeros((3, 2), np.float32), y=np.array(["a", "b", "c"]))
    with pytest.raises(InvalidInput, match=r"'y' is <U1 \[3\]; labels are int class ids"):
        load_npz(path, "spec.data.evaluation", ["x"])


def test_corrupted_npz(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    path.write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(InvalidInput, match=r"spec.data.evaluation = .*not a readable .npz"):
        load_npz(path, "spec.data.evaluation", ["x"])


def test_bundled_digits_sets_match_the_contract() -> None:
    spec = InputSpec("x", np.dtype(np.float32), (1, 8, 8))
    sizes = {}
    for name in ("train", "calibration", "test"):
        data = load_npz(DIGITS / "data" / f"{name}.npz", name, ["x"], [spec])
        assert data.labels is not None and data.labels.dtype == np.int64
        assert data.inputs["x"].min() >= 0.0 and data.inputs["x"].max() <= 1.0
        sizes[name] = len(data)
    assert sizes["test"] == 900 and sizes["calibration"] == 256
