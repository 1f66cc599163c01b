"""The whole CompressedModel object, and loading it from YAML with errors a person can act on."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

from slimserve.api.spec import API_GROUP, API_VERSION, DNS_LABEL_PATTERN, KIND, PATTERN_HINTS, CompressedModelSpec
from slimserve.api.status import CompressedModelStatus
from slimserve.errors import InvalidInput


class ObjectMeta(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")

    name: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)
    namespace: str | None = None


class CompressedModel(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="forbid")

    api_version: Literal["slimserve.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["CompressedModel"]
    metadata: ObjectMeta
    spec: CompressedModelSpec
    status: CompressedModelStatus | None = None


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before", "function-wrap") or "[" in str(part):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


def _allowed_fields(model: type[BaseModel] | None) -> list[str]:
    if model is None:
        return []
    return [f.alias or name for name, f in model.model_fields.items()]


def _model_at(root: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The pydantic model class that owns the last element of `loc` (for 'did you mean')."""
    import typing

    current: Any = root
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = next((f for n, f in current.model_fields.items() if part in (n, f.alias)), None)
        if field is None:
            return None
        ann = field.annotation
        while True:
            args = [a for a in typing.get_args(ann) if a is not type(None)]
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                break
            if not args:
                break
            ann = args[-1] if typing.get_origin(ann) is dict else args[0]
        current = ann
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _fix(err: ErrorDetails, root: type[BaseModel]) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        allowed = _allowed_fields(_model_at(root, err["loc"]))
        name = str(err["loc"][-1])
        near = difflib.get_close_matches(name, allowed, n=1)
        hint = f"did you mean '{near[0]}'? " if near else ""
        return f"unknown field; {hint}allowed here: {', '.join(allowed)}"
    if kind == "missing":
        return "is required; add it"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return err["msg"].lower() + "; use a value in range"
    if kind == "enum" or kind == "literal_error":
        return f"use one of: {ctx.get('expected', '')}"
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern"))
        return PATTERN_HINTS.get(pattern, f"does not match {pattern}; see `kubectl explain compressedmodel.spec`")
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    return err["msg"] + "; fix the type or value"


def format_validation_error(exc: ValidationError, root: type[BaseModel] | None = None) -> list[str]:
    """One line per problem: `field: value → fix`."""
    root = root or CompressedModel
    lines = []
    for err in exc.errors():
        loc = _loc(err["loc"])
        value = err.get("input")
        shown = "" if err["type"] == "missing" or isinstance(value, dict) else f" = {value!r}"
        fix = _fix(err, root)
        # Cross-field validators name their own fields; don't repeat the parent's path.
        lines.append(fix if fix.startswith(f"{loc}.") else f"{loc or '(top level)'}{shown}: {fix}")
    return lines


def parse_compressed_model(body: dict[str, Any], source: str | None = None) -> CompressedModel:
    """Validate a CR body (from YAML or from the Kubernetes API)."""
    if not isinstance(body, dict):
        raise InvalidInput(
            f"expected a CompressedModel mapping (apiVersion, kind, metadata, spec), got {type(body).__name__}",
            source,
        )
    if body.get("kind") != KIND or body.get("apiVersion") != f"{API_GROUP}/{API_VERSION}":
        raise InvalidInput(
            f"kind/apiVersion = {body.get('kind')!r}/{body.get('apiVersion')!r}: "
            f"use kind: {KIND} and apiVersion: {API_GROUP}/{API_VERSION}",
            source,
        )
    try:
        return CompressedModel.model_validate(body)
    except ValidationError as exc:
        raise InvalidInput(format_validation_error(exc), source) from None


def load_compressed_model(path: str | Path) -> CompressedModel:
    """Read one CompressedModel from a YAML file; raise InvalidInput naming field, value and fix."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"file not found: '{path}'; pass the path of a CompressedModel YAML file")
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InvalidInput(
            f"not valid YAML{where}: {getattr(exc, 'problem', exc)}; fix the syntax", str(path)
        ) from None
    models = [d for d in docs if isinstance(d, dict) and d.get("kind") == KIND]
    if len(models) != 1:
        raise InvalidInput(f"found {len(models)} CompressedModel documents; the file must hold exactly one", str(path))
    return parse_compressed_model(models[0], str(path))
