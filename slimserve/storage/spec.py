"""The spec's URIs made local: what every `slimserve` command does before its work.

`localize` gives the same CompressedModel with every URI replaced by a local absolute path (remote
files come from the cache), so the compression pipeline, the local runtime and the evaluator read
files as before. `fetch_into` is the storage step of a cluster Job: it writes a self-contained
folder (the files and a YAML that names them) for the next container, which needs no credentials.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Final

import yaml

from slimserve.api.paths import RELATIVE_HINT
from slimserve.api.resource import CompressedModel
from slimserve.errors import InvalidInput
from slimserve.storage.cache import Cache, link_or_copy
from slimserve.storage.errors import StorageUnavailable
from slimserve.storage.fetcher import fetch, list_remote
from slimserve.storage.uris import parse, pvc_claim, scheme_of

CODE_FIELD: Final = "spec.source.codeUri"
SPEC_FILE: Final = "compressedmodel.yaml"


def spec_uris(model: CompressedModel) -> dict[str, str]:
    """Every URI the spec names, by field."""
    source, data = model.spec.source, model.spec.data
    uris = {"spec.source.uri": source.uri}
    if source.code_uri:
        uris[CODE_FIELD] = source.code_uri
    for role in ("train", "calibration", "evaluation"):
        value = getattr(data, role)
        if value is not None:
            uris[f"spec.data.{role}"] = value
    return uris


def pvc_claims(model: CompressedModel) -> list[str]:
    """The claims that `pvc://` URIs name: a Job mounts each read-only at /mnt/pvc/<claim>."""
    return sorted({pvc_claim(u) for u in spec_uris(model).values() if scheme_of(u) == "pvc"})


def _fetch_field(field: str, uri: str, base_dir: Path, cache: Cache, model: CompressedModel) -> Path:
    if field == CODE_FIELD:
        return fetch(uri, field=field, base_dir=base_dir, cache=cache)
    siblings = field == "spec.source.uri" and model.spec.source.format == "onnx"
    return fetch(uri, field=field, base_dir=base_dir, cache=cache, kind="file", siblings=siblings)


def _with_uris(model: CompressedModel, uris: dict[str, str]) -> CompressedModel:
    source, data = model.spec.source, model.spec.data
    source = source.model_copy(update={"uri": uris["spec.source.uri"], "code_uri": uris.get(CODE_FIELD)})
    data = data.model_copy(update={r: uris.get(f"spec.data.{r}") for r in ("train", "calibration", "evaluation")})
    return model.model_copy(update={"spec": model.spec.model_copy(update={"source": source, "data": data})})


def localize(model: CompressedModel, base_dir: Path, cache: Cache | None = None) -> tuple[CompressedModel, Path]:
    """(the model with local absolute paths, the folder for `module:function` imports).

    The import folder is `spec.source.codeUri` when set (a folder, or the folder of one .py file),
    else `base_dir` as before.
    """
    cache = cache or Cache()
    local = {field: _fetch_field(field, uri, base_dir, cache, model) for field, uri in spec_uris(model).items()}
    code_dir = base_dir
    if CODE_FIELD in local:
        code = local[CODE_FIELD]
        if not code.exists():
            raise InvalidInput(
                f"{CODE_FIELD} = {model.spec.source.code_uri!r}: {code} not found; fix the path ({RELATIVE_HINT})"
            )
        code_dir = code if code.is_dir() or code.suffix != ".py" else code.parent
        if not code_dir.is_dir():
            raise InvalidInput(
                f"{CODE_FIELD} = {model.spec.source.code_uri!r}: {code_dir} is not a folder; name the folder "
                "(or the .py file) that holds the module of source.factory"
            )
        local[CODE_FIELD] = code_dir
    return _with_uris(model, {field: str(path) for field, path in local.items()}), code_dir


def check_reachable(model: CompressedModel, base_dir: Path) -> None:
    """Every URI names something that exists (remote ones listed, nothing downloaded); all problems at once."""
    problems: list[str] = []
    for field, uri in spec_uris(model).items():
        try:
            loc = parse(uri, base_dir, field)
            if loc.is_remote:
                _, listing = list_remote(loc)
                if listing.folder and field != CODE_FIELD:
                    problems.append(f"{loc.where()}: names a folder ({len(listing.files)} files); name one file in it")
            elif loc.path is not None and not (loc.path.exists() if field == CODE_FIELD else loc.path.is_file()):
                problems.append(f"{field} = {str(loc.path)!r}: file not found; fix the path ({RELATIVE_HINT})")
        except InvalidInput as exc:
            problems.extend(exc.problems)
        except StorageUnavailable as exc:
            problems.append(str(exc))
    if problems:
        raise InvalidInput(problems)


def fetch_into(model: CompressedModel, base_dir: Path, out_dir: Path, cache: Cache | None = None) -> Path:
    """Write `out_dir/compressedmodel.yaml` whose remote and pvc:// URIs are files linked (or copied) into
    `out_dir`, so the next container needs neither credentials nor the claims.

    Plain paths become absolute; without `codeUri` the imports still come from `base_dir`.
    `out_dir` is replaced as a whole, only once everything is fetched.
    """
    cache = cache or Cache()
    out_dir = out_dir.resolve()
    building = out_dir.parent / f".{out_dir.name}.{uuid.uuid4().hex[:8]}"
    building.mkdir(parents=True)
    try:
        uris: dict[str, str] = {}
        for field, uri in spec_uris(model).items():
            local = _fetch_field(field, uri, base_dir, cache, model)
            if scheme_of(uri) in ("", "file"):  # the YAML's own folder, or a path the next container sees too
                uris[field] = str(local)
                continue
            sub = {"spec.source.uri": "source", CODE_FIELD: "code"}.get(field) or f"data/{field.rsplit('.', 1)[1]}"
            folder = local if local.is_dir() else local.parent
            for file in sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
                link_or_copy(file, building / sub / file.relative_to(folder))
            uris[field] = sub if local.is_dir() else f"{sub}/{local.name}"
        uris.setdefault(CODE_FIELD, str(base_dir.resolve()))
        body = _with_uris(model, uris).model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"status"})
        (building / SPEC_FILE).write_text(yaml.safe_dump(body, sort_keys=False))
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out_dir, old)
            shutil.rmtree(old, ignore_errors=True)
        os.rename(building, out_dir)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return out_dir / SPEC_FILE
