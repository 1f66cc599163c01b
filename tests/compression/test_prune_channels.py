"""Structured prune on a depthwise-separable inverted-residual CNN with TF-"same" padding (ZeroPad2d).

The pruned model must equal the source model with the removed channels replaced by their calibration
mean at the input of every layer that reads them (what the recipe folds into those layers' bias), and
every coupled slice (expand conv, BN, depthwise conv, BN, project conv, residual, classifier) must
keep the same channels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from slimserve.api.spec import Prune
from slimserve.compression.loading import DataSet
from slimserve.compression.recipes import REGISTRY, ModelState, RecipeContext
from slimserve.compression.recipes.base import clone
from slimserve.errors import InvalidInput


class _SameConv(nn.Conv2d):
    """Like efficientnet_lite_pytorch's Conv2dStaticSamePadding: a ZeroPad2d, then F.conv2d."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(cin, cout, k, stride, groups=groups, bias=False)
        pad = k - 1 if stride == 1 else max(k - stride, 0)
        self.static_padding = nn.ZeroPad2d((pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv2d(self.static_padding(x), self.weight, self.bias, self.stride, 0, 1, self.groups)


class _Block(nn.Module):
    def __init__(self, c: int, expand: int) -> None:
        super().__init__()
        self.expand, self.bn0 = _SameConv(c, c * expand, 1), nn.BatchNorm2d(c * expand)
        self.dw, self.bn1 = _SameConv(c * expand, c * expand, 3, groups=c * expand), nn.BatchNorm2d(c * expand)
        self.project, self.bn2 = _SameConv(c * expand, c, 1), nn.BatchNorm2d(c)
        self.act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn0(self.expand(x)))
        y = self.act(self.bn1(self.dw(y)))
        return x + self.bn2(self.project(y))


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = _SameConv(3, 16, 3, stride=2), nn.BatchNorm2d(16)
        self.block = _Block(16, 4)
        self.act = nn.ReLU6()
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(self.act(self.bn(self.stem(x))))
        return self.fc(y.mean((2, 3)))


def _net() -> _Net:
    torch.manual_seed(0)
    net = _Net()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                nn.init.uniform_(m.weight, 0.2, 2.0)
                nn.init.uniform_(m.bias, -1.0, 2.0)
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(torch.empty(m.num_features).uniform_(-0.3, 0.3))
                m.running_var.copy_(torch.empty(m.num_features).uniform_(0.05, 1.0))
        net.block.bn1.weight[7] = 0.0  # channel 7 of the expanded space is dead: it always outputs relu6(-1) = 0
        net.block.bn1.bias[7] = -1.0
        net.block.dw.weight[7] *= 50.0  # ... behind the largest depthwise weights
    return net.eval()


def _rows(original: torch.Tensor, pruned: torch.Tensor) -> list[int]:
    """The original channel (row) each pruned row is, by value."""
    o, p = original.detach().flatten(1), pruned.detach().flatten(1)
    found = []
    for row in p:
        diff = (o - row).abs().sum(1)
        assert float(diff.min()) < 1e-6, "a pruned row is no row of the original"
        found.append(int(diff.argmin()))
    return found


def _bn_rows(original: nn.BatchNorm2d, pruned: nn.BatchNorm2d) -> list[int]:
    def table(bn: nn.BatchNorm2d) -> torch.Tensor:
        return torch.stack([bn.weight, bn.bias, bn.running_mean, bn.running_var], 1)  # type: ignore[list-item]

    return _rows(table(original), table(pruned))


def test_prune_keeps_coupled_slices_aligned_and_folds_the_removed_mean(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    data = DataSet(tmp_path / "d.npz", {"x": rng.normal(size=(48, 3, 16, 16)).astype(np.float32)}, None)
    ctx = RecipeContext(
        variant="v",
        input_names=["x"],
        evaluation=data,
        work_dir=tmp_path,
        base_dir=tmp_path,
        device=torch.device("cpu"),
        calibration=data,
    )
    source = _net()
    pruned = REGISTRY["prune"](ModelState(module=clone(source)), Prune(ratio=0.25), ctx).module
    assert isinstance(pruned, _Net)
    assert pruned.block.dw.groups == pruned.block.dw.out_channels == 48
    assert pruned.stem.out_channels == 12 and pruned.fc.out_features == 5

    inner = _rows(source.block.dw.weight, pruned.block.dw.weight)
    assert 7 not in inner  # the dead channel goes first, however large its weights
    stream = _bn_rows(source.bn, pruned.bn)
    assert _bn_rows(source.block.bn0, pruned.block.bn0) == inner
    assert _bn_rows(source.block.bn1, pruned.block.bn1) == inner
    assert _rows(source.block.expand.weight[:, stream], pruned.block.expand.weight) == inner
    assert _bn_rows(source.block.bn2, pruned.block.bn2) == stream  # the residual add keeps one channel set
    assert _rows(source.block.project.weight[:, inner], pruned.block.project.weight) == stream
    assert _rows(source.stem.weight, pruned.stem.weight) == stream
    assert torch.equal(pruned.fc.weight.detach(), source.fc.weight.detach()[:, stream])

    # Reference by hand: the source model with the removed channels held at their calibration mean
    # wherever a dense layer reads them.
    readers = {source.block.expand: stream, source.block.project: inner, source.fc: stream}
    means: dict[nn.Module, torch.Tensor] = {}
    hooks = [
        m.register_forward_pre_hook(
            lambda m, i: means.__setitem__(
                m, i[0].transpose(0, 1).flatten(1).mean(1) if i[0].dim() == 4 else i[0].mean(0)
            )
        )
        for m in readers
    ]
    x = torch.from_numpy(data.inputs["x"])
    with torch.no_grad():
        source(x)
    for h in hooks:
        h.remove()

    def hold(layer: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor]:
        y = inputs[0].clone()
        gone = [c for c in range(y.shape[1]) if c not in readers[layer]]
        fill = means[layer][gone]
        y[:, gone] = fill.view(-1, *([1] * (y.dim() - 2))) if y.dim() == 4 else fill
        return (y,)

    for m in readers:
        m.register_forward_pre_hook(hold)
    with torch.no_grad():
        expected, got = source(x), pruned(x)
    assert torch.allclose(got, expected, atol=1e-4), float((got - expected).abs().max())


class _Uneven(nn.Module):
    """Three conv layers; `mid` has 12 dead channels (BN scale 0, negative shift: ReLU outputs 0), the others none."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.bn1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.mid, self.bn2 = nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32)
        self.last, self.bn3 = nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.first(x)))
        x = torch.relu(self.bn2(self.mid(x)))
        x = torch.relu(self.bn3(self.last(x)))
        return self.fc(x.mean((2, 3)))


def _uneven() -> _Uneven:
    torch.manual_seed(1)
    net = _Uneven()
    with torch.no_grad():
        for bn in (net.bn1, net.bn2, net.bn3):
            nn.init.uniform_(bn.weight, 0.5, 1.5)
            nn.init.uniform_(bn.bias, 0.0, 0.5)
        net.bn2.weight[:12] = 0.0
        net.bn2.bias[:12] = -1.0
    return net.eval()


def test_global_scope_prunes_where_importance_is_low(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    data = DataSet(tmp_path / "d.npz", {"x": rng.normal(size=(32, 3, 12, 12)).astype(np.float32)}, None)
    source = _uneven()
    x = torch.from_numpy(data.inputs["x"])

    def run(scope: str) -> tuple[_Uneven, float, list[str]]:
        ctx = RecipeContext(
            variant="v", input_names=["x"], evaluation=data, work_dir=tmp_path, base_dir=tmp_path,
            device=torch.device("cpu"), calibration=data,
        )  # fmt: skip
        pruned = REGISTRY["prune"](ModelState(module=clone(source)), Prune(ratio=0.25, scope=scope), ctx).module
        assert isinstance(pruned, _Uneven)
        with torch.no_grad():
            error = float((pruned(x) - source(x)).pow(2).mean())
        return pruned, error, ctx.notes

    layer, layer_error, _ = run("layer")
    assert (layer.first.out_channels, layer.mid.out_channels, layer.last.out_channels) == (12, 24, 24)
    pruned, global_error, notes = run("global")
    widths = (pruned.first.out_channels, pruned.mid.out_channels, pruned.last.out_channels)
    assert sum(widths) == 80 - 20  # 25% of the 80 prunable channels (fc's outputs are the model's)
    assert 32 - widths[1] >= 12 > 16 - widths[0]  # the dead channels went first, `first` lost least
    assert (32 - widths[1]) / 32 > (16 - widths[0]) / 16
    assert global_error < layer_error
    assert "scope global" in notes[0] and "most pruned: mid" in notes[0], notes


def test_prune_scope_spec() -> None:
    assert Prune(ratio=0.1).scope == "layer"
    assert Prune.model_validate({"ratio": 0.1, "scope": "global", "roundTo": 8}).scope == "global"
    with pytest.raises(ValidationError, match="scope"):
        Prune.model_validate({"ratio": 0.1, "scope": "globl"})
    with pytest.raises(ValueError, match="scope global.*needs method structured.*Set scope: layer"):
        Prune.model_validate({"ratio": 0.2, "scope": "global", "method": "unstructured"})


def _ctx(tmp_path: Path, x: np.ndarray) -> RecipeContext:
    data = DataSet(tmp_path / "d.npz", {"x": x.astype(np.float32)}, None)
    return RecipeContext(
        variant="v", input_names=["x"], evaluation=data, work_dir=tmp_path, base_dir=tmp_path,
        device=torch.device("cpu"), calibration=data,
    )  # fmt: skip


def test_global_scope_leaves_every_layer_a_tenth(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    source = _uneven()
    with torch.no_grad():
        source.bn3.weight.mul_(1e-3)  # all of `last` nearly silent: the global ranking would take it whole
    ctx = _ctx(tmp_path, np.random.default_rng(0).normal(size=(16, 3, 8, 8)))
    pruned = REGISTRY["prune"](ModelState(module=source), Prune(ratio=0.6, scope="global"), ctx).module
    assert isinstance(pruned, _Uneven)
    # torch-pruning alone (max_pruning_ratio 0.9) would skip `last` whole here and remove 16 channels, not 48
    assert pruned.last.out_channels == 4  # 90% of 32 at most (28) went
    assert pruned.first.out_channels + pruned.mid.out_channels + pruned.last.out_channels == 80 - 48


class _Heads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.num_attention_heads = 2
        self.query, self.key, self.value = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (m(x).unflatten(-1, (2, 4)).transpose(1, 2) for m in (self.query, self.key, self.value))
        return nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention, self.fc = _Heads(), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.attention(x).mean(1))


@pytest.mark.parametrize(
    ("model", "params", "names"),
    [
        (_Encoder, Prune(ratio=0.2, scope="global"), "prune.scope global.*attention.*prune.scope: layer"),
    ],
)
def test_global_scope_refusals(tmp_path: Path, model: type[nn.Module], params: Prune, names: str) -> None:
    x = np.random.default_rng(0).normal(size=(4, 5, 8) if model is _Encoder else (4, 3, 8, 8))
    with pytest.raises(InvalidInput, match=names):
        REGISTRY["prune"](ModelState(module=model()), params, _ctx(tmp_path, x))
