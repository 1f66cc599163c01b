"""Write the EfficientNet-Lite0 example's model files and image sets, deterministically and offline.

`python examples/efficientnet/prepare.py [FOLDER]` writes (next to this file by default):
- `efficientnet_lite0.pt`: the pretrained weights as a state dict (factory source `model:build`);
- `efficientnet_lite0.onnx`: the same model exported with a dynamic batch (for ONNX-source runs);
- `data/{calibration,evaluation,train}.npz`: `x` float32 [N, 3, 224, 224], [-1, 1]-scaled random
  crops (seeded) of real photographs that scikit-image, scikit-learn and matplotlib ship in their
  wheels. Evaluation crops come from 17 photographs, calibration and train crops from 8 others. No
  labels: the metric is top-1 agreement with the fp32 model, over 1000 ImageNet classes.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from model import pretrained  # noqa: E402

SIZE = 224
SIZES = {"evaluation": 500, "calibration": 128, "train": 128}
# EfficientNet-Lite's own preprocessing (as its TF reference and the TFLite models): (pixel - 127) / 128.
MEAN = np.float32(127.0 / 255.0)
STD = np.float32(128.0 / 255.0)
# Evaluation and tuning (calibration + train) crops come from different photographs, so that
# calibration ranges and quantization-aware fine-tuning are judged on images they never saw. Both
# groups mix ImageNet-like photos with textures, text and microscopy.
EVALUATION_PHOTOS = (
    "astronaut",
    "chelsea",
    "rocket",
    "camera",
    "motorcycle",
    "china",
    "hubble_deep_field",
    "immunohistochemistry",
    "colorwheel",
    "coins",
    "moon",
    "page",
    "clock",
    "grass",
    "brick",
    "horse",
    "cell",
)
TUNING_PHOTOS = ("coffee", "grace_hopper", "flower", "retina", "logo", "text", "gravel", "microaneurysms")
ROLES = {"evaluation": EVALUATION_PHOTOS, "calibration": TUNING_PHOTOS, "train": TUNING_PHOTOS}


def _photo(name: str) -> np.ndarray:
    """One photograph bundled in an installed wheel (scikit-image, scikit-learn, matplotlib)."""
    import skimage.data

    if name == "motorcycle":
        return skimage.data.stereo_motorcycle()[0]
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{name}.jpg")
    if name == "grace_hopper":
        import matplotlib.cbook
        import skimage.io

        return skimage.io.imread(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    return getattr(skimage.data, name)()


def photos(names: tuple[str, ...] = EVALUATION_PHOTOS) -> list[np.ndarray]:
    """The named photographs as float RGB in [0, 1] (grey ones repeated to three channels)."""
    out = []
    for name in names:
        img = np.asarray(_photo(name), dtype=np.float32)
        if img.max() > 1.0:
            img = img / 255.0
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        out.append(np.ascontiguousarray(img[:, :, :3]))
    return out


def crops(n: int, seed: int, names: tuple[str, ...] = EVALUATION_PHOTOS) -> np.ndarray:
    """`n` random square crops (50-100% of the short side, random flips), resized to 224 and normalised."""
    from skimage.transform import resize

    rng = np.random.default_rng(seed)
    images = photos(names)
    out = np.empty((n, 3, SIZE, SIZE), dtype=np.float32)
    for i in range(n):
        img = images[rng.integers(len(images))]
        h, w = img.shape[:2]
        side = int(min(h, w) * rng.uniform(0.5, 1.0))
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = img[top : top + side, left : left + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crop = resize(crop, (SIZE, SIZE), anti_aliasing=True, preserve_range=True).astype(np.float32)
        out[i] = ((crop - MEAN) / STD).transpose(2, 0, 1)
    return out


def write_data(folder: Path, sizes: dict[str, int] = SIZES) -> dict[str, Path]:
    (folder / "data").mkdir(parents=True, exist_ok=True)
    paths = {}
    for seed, (role, n) in enumerate(sizes.items()):
        paths[role] = folder / "data" / f"{role}.npz"
        np.savez(paths[role], x=crops(n, seed=100 + seed, names=ROLES[role]))
    return paths


def export_onnx(path: Path) -> Path:
    model = pretrained()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, SIZE, SIZE),),
            str(path),
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return path


def main(folder: Path = HERE) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_data(folder)
    torch.save(pretrained().state_dict(), folder / "efficientnet_lite0.pt")
    export_onnx(folder / "efficientnet_lite0.onnx")
    print(f"wrote efficientnet_lite0.pt, efficientnet_lite0.onnx and data/*.npz in {folder}")


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else HERE)
