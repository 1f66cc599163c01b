"""Validate a CR body the way the API server does with the generated CRD.

Strict field validation (unknown fields rejected, as `kubectl apply --validate=strict`),
OpenAPI v3 keywords via jsonschema's draft-4 semantics (boolean exclusiveMinimum), defaults
applied first, then every `x-kubernetes-validations` CEL rule evaluated with cel-python.
Shared by the API tests and the operator tests.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any

import celpy
import jsonschema

from slimserve.api.crd import build_crd


@lru_cache(maxsize=1)
def crd_schema() -> dict[str, Any]:
    return build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _strict(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _strict(v) for k, v in node.items() if k != "x-kubernetes-validations"}
        if (
            "properties" in node
            and "additionalProperties" not in node
            and node is not crd_schema()["properties"]["metadata"]
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


def _apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    if isinstance(value, dict) and "properties" in schema:
        for key, sub in schema["properties"].items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = _apply_defaults(sub, value[key])
    elif isinstance(value, list) and "items" in schema:
        return [_apply_defaults(schema["items"], v) for v in value]
    return value


def _cel_errors(schema: dict[str, Any], value: Any, path: str, env: celpy.Environment) -> list[str]:
    errors = []
    for rule in schema.get("x-kubernetes-validations", []):
        program = env.program(env.compile(rule["rule"]))
        try:
            ok = program.evaluate({"self": celpy.json_to_cel(value)})
        except Exception as exc:  # a CEL runtime error rejects the object, as in the API server
            ok = False
            rule = {**rule, "message": f"{rule['message']} ({exc})"}
        if not ok:
            errors.append(f"{path}: {rule['message']}")
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                errors += _cel_errors(sub, value[key], f"{path}.{key}", env)
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += _cel_errors(schema["items"], item, f"{path}[{i}]", env)
    return errors


def crd_errors(body: dict[str, Any]) -> list[str]:
    """The API server's objections to `body` (empty when it would be accepted)."""
    schema = crd_schema()
    body = _apply_defaults(schema, copy.deepcopy(body))
    validator = jsonschema.Draft4Validator(_strict(schema))
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(body)]
    if errors:
        return errors
    return _cel_errors(schema, body, "", celpy.Environment())
