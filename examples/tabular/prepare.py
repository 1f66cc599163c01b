"""Train the two tabular examples deterministically and write their data sets and weights.

`python examples/tabular/prepare.py [FOLDER]` writes `binary.pt` (breast_cancer, one logit, labels
y int64 0/1) and `regression.pt` (diabetes, one value, labels y float32), with
`data/<task>-{train,calibration,evaluation}.npz` (x float32 [N, F]). scikit-learn ships both data
sets in its wheel; same seed, same bytes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from model import binary, regression  # noqa: E402

SEED = 0
EPOCHS = 50


def _splits(x: np.ndarray, y: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(SEED)
    order = rng.permutation(len(x))
    n_eval = len(x) // 3
    ev, tr = order[:n_eval], order[n_eval:]
    mean, std = x[tr].mean(0), x[tr].std(0) + 1e-8
    x = ((x - mean) / std).astype(np.float32)
    calib = rng.choice(tr, min(128, len(tr)), replace=False)
    return {"train": (x[tr], y[tr]), "calibration": (x[calib], y[calib]), "evaluation": (x[ev], y[ev])}


def _train(model: nn.Module, x: np.ndarray, y: np.ndarray, loss_fn: nn.Module) -> nn.Module:
    torch.manual_seed(SEED)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).float().reshape(-1, 1)
    gen = torch.Generator().manual_seed(SEED)
    for _ in range(EPOCHS):
        for idx in torch.randperm(len(xt), generator=gen).split(64):
            opt.zero_grad()
            loss_fn(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


def main(folder: Path = HERE) -> None:
    from sklearn.datasets import load_breast_cancer, load_diabetes

    (folder / "data").mkdir(parents=True, exist_ok=True)
    cancer = load_breast_cancer()
    diabetes = load_diabetes()
    target = ((diabetes.target - diabetes.target.mean()) / diabetes.target.std()).astype(np.float32)
    tasks = {
        "binary": (binary, cancer.data, cancer.target.astype(np.int64), nn.BCEWithLogitsLoss()),
        "regression": (regression, diabetes.data, target, nn.MSELoss()),
    }
    torch.set_num_threads(1)
    for name, (factory, x, y, loss) in tasks.items():
        data = _splits(x.astype(np.float32), y)
        for role, (xs, ys) in data.items():
            np.savez(folder / "data" / f"{name}-{role}.npz", x=xs, y=ys)
        model = _train(factory(), *data["train"], loss)
        torch.save(model.state_dict(), folder / f"{name}.pt")
    print(f"wrote binary.pt, regression.pt and data/*.npz in {folder}")


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else HERE)
