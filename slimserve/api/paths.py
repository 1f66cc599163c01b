"""Resolving the spec's URIs to local files.

Relative paths resolve against a base folder: the YAML file's folder by default, or the CLI's
`--base-dir`, so the same YAML works locally and in the cluster (where the worker Jobs read it
from a ConfigMap at /spec and pass the folder on the model volume that holds its files).
Remote URIs (s3://, gs://, https://, hf://, pvc://) are fetched first by `slimserve.storage.localize`,
which every command calls, so what reaches this module is a local path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from slimserve.api.resource import CompressedModel
from slimserve.errors import InvalidInput

# The fix for a relative path that names no file: every "file not found" message ends with it.
RELATIVE_HINT: Final = "relative paths resolve against the YAML file's folder, or --base-dir when given"


def resolve_uri(uri: str, base: Path, field: str) -> Path:
    """A local path for `uri`; a remote URI here means `slimserve.storage.localize` was not called first."""
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    elif "://" in uri:
        scheme = uri.split("://", 1)[0]
        raise InvalidInput(
            f"{field} = {uri!r}: {scheme}:// is fetched by slimserve.storage.localize(model, base_dir), which "
            "the slimserve commands call before their work; call it before reading the spec's files"
        )
    path = Path(uri)
    return path if path.is_absolute() else (base / path)


def data_files(model: CompressedModel, base: Path) -> dict[str, Path]:
    """The spec's data sets that are set, by role (train, calibration, evaluation)."""
    data = model.spec.data
    out = {}
    for role in ("train", "calibration", "evaluation"):
        uri = getattr(data, role)
        if uri is not None:
            out[role] = resolve_uri(uri, base, f"spec.data.{role}")
    return out


def check_files(model: CompressedModel, base: Path) -> None:
    """Every file the spec names exists; one problem per missing file."""
    problems = []
    wanted = {"spec.source.uri": resolve_uri(model.spec.source.uri, base, "spec.source.uri")}
    wanted.update({f"spec.data.{role}": p for role, p in data_files(model, base).items()})
    for field, path in wanted.items():
        if not path.is_file():
            problems.append(f"{field} = {str(path)!r}: file not found; fix the path ({RELATIVE_HINT})")
    if problems:
        raise InvalidInput(problems)
