"""Shared fixtures: the bundled digits data and model, tiny models, and a recipe context."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from slimserve.compression.loading import DataSet, load_npz
from slimserve.compression.recipes import RecipeContext

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits"


def _load_digits_module():  # type: ignore[no-untyped-def]
    # A private module name: tests also write their own `model.py` factories.
    spec = importlib.util.spec_from_file_location("digits_example_model", DIGITS / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_DIGITS_MODEL = _load_digits_module()


def digits_build(width: float = 1.0) -> nn.Module:
    return _DIGITS_MODEL.build(width)  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def digits_data() -> dict[str, DataSet]:
    names = ["x"]
    return {
        role: load_npz(DIGITS / "data" / f"{file}.npz", f"spec.data.{role}", names)
        for role, file in (("train", "train"), ("calibration", "calibration"), ("evaluation", "test"))
    }


@pytest.fixture()
def trained_digits() -> nn.Module:
    model = digits_build()
    model.load_state_dict(torch.load(DIGITS / "digits_cnn.pt", weights_only=True))
    return model.eval()


@pytest.fixture()
def make_ctx(tmp_path: Path, digits_data: dict[str, DataSet]):  # type: ignore[no-untyped-def]
    def make(**overrides: object) -> RecipeContext:
        args: dict[str, object] = dict(
            variant="v",
            input_names=["x"],
            evaluation=digits_data["evaluation"],
            work_dir=tmp_path,
            base_dir=tmp_path,
            device=torch.device("cpu"),
            train=digits_data["train"],
            calibration=digits_data["calibration"],
            factory=digits_build,
            factory_ref="model:build",
        )
        args.update(overrides)
        return RecipeContext(**args)  # type: ignore[arg-type]

    return make


def write_spec(folder: Path, spec: dict[str, object], name: str = "m") -> Path:
    body = {"apiVersion": "slimserve.dev/v1alpha1", "kind": "CompressedModel", "metadata": {"name": name}, "spec": spec}
    path = folder / "compressedmodel.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def digits_spec(folder: Path, variants: list[dict[str, object]], **compression: object) -> dict[str, object]:
    """A spec for a YAML in `folder` on the bundled example's files, fast measurement settings."""
    shutil.copy(DIGITS / "model.py", folder / "model.py")  # the factory sits next to the YAML
    return {
        "source": {"uri": str(DIGITS / "digits_cnn.pt"), "format": "factory", "factory": "model:build"},
        "data": {
            "train": str(DIGITS / "data" / "train.npz"),
            "calibration": str(DIGITS / "data" / "calibration.npz"),
            "evaluation": str(DIGITS / "data" / "test.npz"),
        },
        "compression": {"measure": {"latencyRuns": 10, "throughputBatch": 8}, "variants": variants, **compression},
    }


class TokenModel(nn.Module):
    """Embedding + masked mean pool + Linear: a transformer-shaped two-input int64 model."""

    def __init__(self, vocab: int = 50, dim: int = 32, classes: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.hidden = nn.Linear(dim, 64)
        self.head = nn.Linear(64, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(torch.float32)
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.head(torch.relu(self.hidden(pooled)))


def token_data(n: int = 64, seq: int = 12, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 50, size=(n, seq)).astype(np.int64)
    mask = np.ones((n, seq), dtype=np.int64)
    mask[:, seq // 2 :] = rng.integers(0, 2, size=(n, seq - seq // 2))
    return {"input_ids": ids, "attention_mask": mask}
