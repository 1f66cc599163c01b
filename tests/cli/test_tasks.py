"""Each kind of model reports its true metric through `slimserve compress`, as a new user would see it.

The baseline's value in compression-report.json is checked against one computed here, independently, from the
same ONNX file with onnxruntime and scikit-learn: a one-logit binary classifier (its accuracy, not
the class-0 share), a regression model (R²), and an embedding model (cosine, not per-token argmax).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.metrics import accuracy_score, r2_score
from torch import nn
from typer.testing import CliRunner

from slimserve.cli.main import app

runner = CliRunner()


def _export(model: nn.Module, example: tuple[torch.Tensor, ...], names: list[str], path: Path, output: str) -> None:
    axes = {n: {0: "batch"} for n in [*names, output]}
    torch.onnx.export(
        model.eval(),
        example,
        str(path),
        input_names=names,
        output_names=[output],
        dynamic_axes=axes,
        dynamo=False,
        opset_version=17,
    )


def _spec(folder: Path, quality: dict[str, object] | None = None) -> Path:
    body: dict[str, object] = {
        "source": {"uri": "model.onnx", "format": "onnx"},
        "data": {"evaluation": "eval.npz"},
        "compression": {
            "measure": {"latencyRuns": 10, "throughputBatch": 8, "threads": 1},
            "variants": [{"name": "int8", "steps": [{"quantize": {"mode": "dynamic"}}]}],
        },
    }
    if quality:
        body["quality"] = quality
    doc = {"apiVersion": "slimserve.dev/v1alpha1", "kind": "CompressedModel", "metadata": {"name": "t"}, "spec": body}
    path = folder / "model.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _compress(spec: Path) -> dict[str, object]:
    out = spec.parent / "out"
    result = runner.invoke(app, ["compress", str(spec), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads((out / "compression-report.json").read_text())  # type: ignore[no-any-return]


def _train(model: nn.Module, x: torch.Tensor, target: torch.Tensor, loss: nn.Module, steps: int = 300) -> nn.Module:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        opt.zero_grad()
        loss(model(x), target).backward()
        opt.step()
    return model


def test_one_logit_binary_classifier_reports_its_accuracy(tmp_path: Path) -> None:
    data = load_breast_cancer()
    x = ((data.data - data.data.mean(0)) / data.data.std(0)).astype(np.float32)
    y = data.target.astype(np.int64)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 16), nn.ReLU(), nn.Linear(16, 1))
    _train(model, torch.from_numpy(x[:400]), torch.from_numpy(y[:400, None].astype(np.float32)), nn.BCEWithLogitsLoss())
    _export(model, (torch.zeros(1, 30),), ["x"], tmp_path / "model.onnx", "logit")
    np.savez(tmp_path / "eval.npz", x=x[400:], y=y[400:])
    report = _compress(_spec(tmp_path))
    base = report["baseline"]
    logits = ort.InferenceSession(str(tmp_path / "model.onnx")).run(None, {"x": x[400:]})[0]
    expected = 100 * accuracy_score(y[400:], (logits[:, 0] > 0).astype(int))
    assert base["metric"] == "accuracy" and "threshold 0" in base["metricDetail"]  # type: ignore[index]
    assert base["quality"] == pytest.approx(expected, abs=1e-3) and expected > 90  # type: ignore[index]
    share = 100 * max(np.mean(y[400:] == 0), np.mean(y[400:] == 1))
    assert abs(base["quality"] - share) > 5  # type: ignore[index, operator]  # the old bug's class share


def test_regression_model_reports_r2(tmp_path: Path) -> None:
    data = load_diabetes()
    x = ((data.data - data.data.mean(0)) / data.data.std(0)).astype(np.float32)
    y = ((data.target - data.target.mean()) / data.target.std()).astype(np.float32)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))
    _train(model, torch.from_numpy(x[:300]), torch.from_numpy(y[:300, None]), nn.MSELoss())
    _export(model, (torch.zeros(1, 10),), ["x"], tmp_path / "model.onnx", "prediction")
    np.savez(tmp_path / "eval.npz", x=x[300:], y=y[300:])
    report = _compress(_spec(tmp_path))
    base, (int8,) = report["baseline"], report["variants"]  # type: ignore[misc]
    predictions = ort.InferenceSession(str(tmp_path / "model.onnx")).run(None, {"x": x[300:]})[0][:, 0]
    assert base["metric"] == "r2" and base["dropUnit"] == "points"
    assert base["quality"] == pytest.approx(100 * r2_score(y[300:], predictions), abs=1e-2)
    assert int8["dropCI"][0] <= int8["drop"] <= int8["dropCI"][1]


class Encoder(nn.Module):
    """A tiny transformer encoder: token ids and a padding mask in, per-token vectors out."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 32)
        self.layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.layer(self.embed(input_ids), src_key_padding_mask=attention_mask == 0)


def test_embedding_model_reports_cosine_over_real_tokens(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Encoder().eval()
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 100, (120, 12)).astype(np.int64)
    mask = np.ones((120, 12), dtype=np.int64)
    mask[:, 9:] = 0
    ids[:, 9:] = 0
    _export(
        model,
        (torch.from_numpy(ids[:2]), torch.from_numpy(mask[:2])),
        ["input_ids", "attention_mask"],
        tmp_path / "model.onnx",
        "last_hidden_state",
    )
    np.savez(tmp_path / "eval.npz", input_ids=ids, attention_mask=mask)
    report = _compress(_spec(tmp_path))
    base, (int8,) = report["baseline"], report["variants"]  # type: ignore[misc]
    assert base["metric"] == "cosine" and base["quality"] == pytest.approx(100.0)
    session = ort.InferenceSession(str(tmp_path / "out" / int8["path"]))
    reference = ort.InferenceSession(str(tmp_path / "model.onnx")).run(
        None, {"input_ids": ids, "attention_mask": mask}
    )[0]
    ours = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    a, b = reference[:, :9].reshape(-1, 32), ours[:, :9].reshape(-1, 32)
    cosine = 100 * np.mean((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1))
    assert int8["quality"] == pytest.approx(cosine, abs=1e-3)
    assert int8["drop"] == pytest.approx(100 - cosine, abs=1e-3) and int8["dropUnit"] == "points"


def test_ambiguous_auto_is_exit_2_naming_the_field(tmp_path: Path) -> None:
    torch.manual_seed(0)
    _export(nn.Linear(8, 16), (torch.zeros(1, 8),), ["x"], tmp_path / "model.onnx", "out")
    np.savez(tmp_path / "eval.npz", x=np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32))
    result = runner.invoke(app, ["compress", str(_spec(tmp_path)), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "spec.quality.metric" in result.stderr and "agreement" in result.stderr and "cosine" in result.stderr
    assert not (tmp_path / "out").exists()
    ok = runner.invoke(app, ["compress", str(_spec(tmp_path, {"metric": "cosine"})), "--out", str(tmp_path / "out")])
    assert ok.exit_code == 0, ok.output
