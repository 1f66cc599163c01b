"""Train the digits CNN deterministically and write its data splits and weights.

Run from anywhere: `python examples/digits/train.py`. Writes, next to this file,
`data/{train,calibration,test}.npz` (x float32 [N,1,8,8] in [0,1], y int64) and `digits_cnn.pt`.
Same seed, same bytes: the data come from scikit-learn's bundled copy (no download).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from model import build  # noqa: E402

SEED = 0
TEST_SIZE = 900
CALIBRATION_SIZE = 256
EPOCHS = 30


def splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=TEST_SIZE, random_state=SEED, stratify=y)
    # The calibration set is a subset of the training images: it never touches the test set.
    rng = np.random.default_rng(SEED)
    calib = rng.choice(len(x_train), CALIBRATION_SIZE, replace=False)
    return {
        "train": (x_train, y_train),
        "calibration": (x_train[calib], y_train[calib]),
        "test": (x_test, y_test),
    }


def train(x: np.ndarray, y: np.ndarray) -> nn.Module:
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # deterministic reductions on CPU
    model = build()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, EPOCHS)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(SEED)
    for _ in range(EPOCHS):
        model.train()
        for idx in torch.randperm(len(xt), generator=gen).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
        sched.step()
    return model.eval()


def main() -> None:
    data = splits()
    (HERE / "data").mkdir(exist_ok=True)
    for name, (x, y) in data.items():
        np.savez_compressed(HERE / "data" / f"{name}.npz", x=x, y=y)
    model = train(*data["train"])
    x_test, y_test = data["test"]
    with torch.no_grad():
        acc = (model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean() * 100
    torch.save(model.state_dict(), HERE / "digits_cnn.pt")
    print(f"test accuracy {acc:.2f}% on {len(y_test)} samples; wrote {HERE / 'digits_cnn.pt'}")


if __name__ == "__main__":
    main()
