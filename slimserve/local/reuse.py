"""`slimserve run` compresses again only when what decides the compression output changed.

The key is the spec's compression hash (`slimserve.api.compression_hash`: source, data, quality and
compression settings; not serving, rollout or gates) plus the bytes of every local file compression
reads (the source model, its code, the data sets): locally the files can be read, so new weights
under the same path count as a change. The key is written beside `compression/compression-report.json` only after
a compression finished, and removed before a new one starts, so a crashed compression is never reused.
A report is reused only when every file it records is there with the digest it records.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Final

from slimserve.api import compression_hash
from slimserve.api.paths import data_files, resolve_uri
from slimserve.api.report import COMPRESSION_REPORT, CompressionReport
from slimserve.api.resource import CompressedModel
from slimserve.local.registry import write_atomic

KEY_FILE: Final = "inputs.sha256"


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return [path] if path.is_file() else []


def input_key(model: CompressedModel, base: Path) -> str:
    """The spec's compression hash and the digest of every local input file, in one sha256."""
    spec = model.spec
    inputs = {"spec.source.uri": resolve_uri(spec.source.uri, base, "spec.source.uri")}
    if spec.source.code_uri:
        inputs["spec.source.codeUri"] = resolve_uri(spec.source.code_uri, base, "spec.source.codeUri")
    inputs.update({f"spec.data.{role}": path for role, path in data_files(model, base).items()})
    key = hashlib.sha256(compression_hash(spec).encode())
    for field, root in sorted(inputs.items()):
        for path in _files(root):
            key.update(f"{field}:{path.relative_to(root) if root.is_dir() else path.name}:".encode())
            key.update(_file_digest(path).encode())
    return key.hexdigest()


def reusable(compression_dir: Path, key: str) -> CompressionReport | None:
    """The finished compression in `compression_dir` when it was made from the same inputs, else None."""
    try:
        if (compression_dir / KEY_FILE).read_text().strip() != key:
            return None
        report = CompressionReport.model_validate_json((compression_dir / COMPRESSION_REPORT).read_text())
    except (OSError, ValueError):
        return None
    from slimserve.compression.export import sha256

    for record in [report.baseline, *report.variants]:
        path = compression_dir / record.path
        try:
            intact = path.is_file() and sha256(path) == record.sha256
        except Exception:  # noqa: BLE001 - a file that cannot even be read as ONNX is not the one recorded
            intact = False
        if not intact:
            return None
    return report


def forget(compression_dir: Path) -> None:
    """Before a compression starts: whatever is in the folder is no longer known to be complete."""
    (compression_dir / KEY_FILE).unlink(missing_ok=True)


def remember(compression_dir: Path, key: str) -> None:
    """After a compression finished and wrote its report."""
    write_atomic(compression_dir / KEY_FILE, key + "\n")
