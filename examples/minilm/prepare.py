"""Write the MiniLM example's model files and data sets, deterministically and offline.

`python examples/minilm/prepare.py [FOLDER]` writes (next to this file by default):
- `minilm.onnx`: the pretrained encoder exported as a user would (torch.onnx.export, inputs by
  name, dynamic batch and sequence), the source of `compressedmodel.yaml`;
- `minilm.pt`: the same weights as a state dict, for the factory source in `factory.yaml`;
- `data/{train,calibration,evaluation}.npz`: `input_ids` and `attention_mask` (int64 [N, 128]) of
  real English sentences taken from the Python standard library's docstrings, disjoint sets, no
  labels (the metric is the cosine of each token's embedding to the fp32 model's).
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from model import model_dir, pretrained  # noqa: E402

SEQUENCE = 128
SIZES = {"evaluation": 256, "calibration": 128, "train": 512}
MODULES = (
    "json",
    "os",
    "pathlib",
    "collections",
    "itertools",
    "functools",
    "argparse",
    "logging",
    "subprocess",
    "threading",
    "asyncio",
    "email",
    "http.client",
    "urllib.request",
    "unittest",
    "decimal",
    "fractions",
    "statistics",
    "random",
    "datetime",
    "calendar",
    "csv",
    "sqlite3",
    "zipfile",
    "tarfile",
    "shutil",
    "tempfile",
    "textwrap",
    "string",
    "difflib",
    "heapq",
    "bisect",
    "queue",
    "socket",
    "ssl",
    "select",
    "selectors",
    "signal",
    "contextlib",
    "dataclasses",
    "enum",
    "typing",
    "inspect",
    "ast",
    "dis",
    "pickle",
    "copy",
    "pprint",
    "re",
    "struct",
    "codecs",
    "io",
    "time",
    "uuid",
    "hashlib",
    "hmac",
    "secrets",
    "base64",
    "binascii",
    "gzip",
    "bz2",
    "lzma",
    "zlib",
    "configparser",
    "optparse",
    "getopt",
    "locale",
    "gettext",
    "numbers",
    "math",
    "cmath",
    "operator",
    "weakref",
    "abc",
    "types",
    "warnings",
    "traceback",
    "gc",
    "platform",
    "sysconfig",
    "timeit",
    "cProfile",
    "pdb",
    "doctest",
    "xml.dom.minidom",
    "xml.etree.ElementTree",
    "html.parser",
    "mailbox",
    "mimetypes",
    "wave",
    "colorsys",
    "imaplib",
    "smtplib",
    "ftplib",
    "poplib",
    "socketserver",
    "http.server",
    "http.cookies",
    "urllib.parse",
    "ipaddress",
    "webbrowser",
    "concurrent.futures",
    "multiprocessing",
    "sched",
    "shelve",
    "dbm",
    "filecmp",
    "fnmatch",
    "glob",
    "linecache",
    "fileinput",
    "stat",
    "array",
    "graphlib",
    "reprlib",
    "keyword",
    "tokenize",
    "token",
    "symtable",
    "compileall",
    "py_compile",
    "zipimport",
    "pkgutil",
    "modulefinder",
    "runpy",
)


def sentences() -> list[str]:
    """Every distinct sentence of 6 to 60 words in the listed modules' docstrings, in a fixed order."""
    seen: dict[str, None] = {}
    for name in MODULES:
        module = importlib.import_module(name)
        objects = [module, *(v for _, v in sorted(vars(module).items()) if inspect.isclass(v) or inspect.isfunction(v))]
        for obj in objects:
            doc = inspect.getdoc(obj) or ""
            text = re.sub(r"\s+", " ", doc)
            for sentence in re.split(r"(?<=[.!?])\s+", text):
                words = sentence.split()
                if 6 <= len(words) <= 60 and sentence[0].isupper() and ">>>" not in sentence:
                    seen.setdefault(sentence, None)
    return list(seen)


def tokenize(texts: list[str]) -> dict[str, np.ndarray]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir())
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=SEQUENCE, return_tensors="np")
    return {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}


def write_data(folder: Path, sizes: dict[str, int] = SIZES) -> dict[str, Path]:
    """Disjoint evaluation, calibration and train sets from one seeded shuffle of the sentences."""
    texts = sentences()
    order = np.random.default_rng(0).permutation(len(texts))
    need = sum(sizes.values())
    if need > len(texts):
        raise SystemExit(f"only {len(texts)} sentences found, {need} needed")
    (folder / "data").mkdir(parents=True, exist_ok=True)
    paths, start = {}, 0
    for role, n in sizes.items():
        chosen = [texts[i] for i in order[start : start + n]]
        start += n
        paths[role] = folder / "data" / f"{role}.npz"
        np.savez_compressed(paths[role], **tokenize(chosen))
    return paths


class _ByName(torch.nn.Module):
    """Calls the encoder with keyword arguments and returns its outputs as a tuple (for the exporter)."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state, out.pooler_output


def export_onnx(path: Path) -> Path:
    """The pretrained encoder as ONNX, the way its model card suggests users export it."""
    model = _ByName(pretrained()).eval()
    ids = torch.ones((2, 16), dtype=torch.int64)
    dims = {0: "batch", 1: "sequence"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (ids, torch.ones_like(ids)),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["last_hidden_state", "pooler_output"],
            dynamic_axes={
                "input_ids": dims,
                "attention_mask": dims,
                "last_hidden_state": dims,
                "pooler_output": {0: "batch"},
            },
            opset_version=17,
            dynamo=False,
        )
    return path


def main(folder: Path = HERE) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_data(folder)
    export_onnx(folder / "minilm.onnx")
    torch.save(pretrained().state_dict(), folder / "minilm.pt")
    print(f"wrote minilm.onnx, minilm.pt and data/*.npz in {folder}")


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else HERE)
