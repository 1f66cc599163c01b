"""Generate the CompressedModel CRD from the pydantic models, so the two cannot disagree.

`python -m slimserve.api.crd` prints the CRD; `manifests/crds/` and the chart hold its output,
and a test fails when they drift.
"""

from __future__ import annotations

import copy
import sys
from typing import Any, Final

import yaml
from pydantic import BaseModel

from slimserve.api import spec as spec_module
from slimserve.api.spec import API_GROUP, API_VERSION, KIND, PLURAL, CompressedModelSpec, Model
from slimserve.api.status import CompressedModelStatus

PRINTER_COLUMNS: Final = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Candidate", "type": "string", "jsonPath": ".status.candidateVariant"},
    {"name": "Stable", "type": "string", "jsonPath": ".status.stableVariant"},
    {"name": "Size-Ratio", "type": "number", "jsonPath": ".status.sizeRatio", "format": "float"},
    {"name": "Metric", "type": "string", "jsonPath": ".status.metric", "priority": 1},
    {"name": "Drop", "type": "number", "jsonPath": ".status.qualityDrop", "format": "float"},
    {"name": "P99-ms", "type": "number", "jsonPath": ".status.p99Ms", "format": "float"},
    {"name": "RPS", "type": "number", "jsonPath": ".status.throughputRps", "format": "float", "priority": 1},
    {"name": "Canary", "type": "integer", "jsonPath": ".status.canaryWeight"},
    {"name": "Client-Share", "type": "integer", "jsonPath": ".status.clientShare", "priority": 1},
    {"name": "Compression-Hash", "type": "string", "jsonPath": ".status.compressionHash", "priority": 1},
    {"name": "Waiting-For", "type": "string", "jsonPath": ".status.waitingFor", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

_DROP_KEYS: Final = {"title", "additionalProperties", "$defs"}


def _model_classes() -> dict[str, type[BaseModel]]:
    return {
        name: obj
        for name, obj in vars(spec_module).items()
        if isinstance(obj, type) and issubclass(obj, Model) and obj is not Model
    }


def _structural(node: Any, defs: dict[str, Any], classes: dict[str, type[BaseModel]]) -> Any:
    """Turn pydantic's JSON Schema into a Kubernetes structural OpenAPI v3 schema."""
    if isinstance(node, list):
        return [_structural(n, defs, classes) for n in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        name = node.pop("$ref").split("/")[-1]
        merged = {**defs[name], **node}
        resolved = _structural(merged, defs, classes)
        rules = getattr(classes.get(name), "cel", [])
        if rules:
            resolved["x-kubernetes-validations"] = copy.deepcopy(rules)
        return resolved
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express union {options} structurally")
        return _structural({**options[0], **node}, defs, classes)
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if "enum" in node and "type" not in node:
        node["type"] = "string"
    for bound, flag in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if bound in node and not isinstance(node[bound], bool):
            node[flag] = node.pop(bound)
            node[bound] = True
    if node.get("default", "absent") is None:
        node.pop("default")
    if "prefixItems" in node:  # fixed-length tuple
        items = node.pop("prefixItems")
        node["items"] = _structural(items[0], defs, classes)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP_KEYS:
            if key == "additionalProperties" and isinstance(value, dict):
                out[key] = _structural(value, defs, classes)
            continue
        if key == "properties":
            out[key] = {k: _structural(v, defs, classes) for k, v in value.items()}
        elif key == "items":
            out[key] = _structural(value, defs, classes)
        else:
            out[key] = value
    if "properties" in out:
        out["type"] = "object"
    return out


def schema_for(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    out = _structural(raw, defs, _model_classes())
    rules = getattr(model, "cel", [])
    if rules:
        out["x-kubernetes-validations"] = copy.deepcopy(rules)
    # A step holds exactly one recipe key.
    step = out["properties"]["compression"]["properties"]["variants"]["items"]["properties"]["steps"]["items"]
    step["minProperties"] = 1
    step["maxProperties"] = 1
    return out


def build_crd() -> dict[str, Any]:
    spec_schema = schema_for(CompressedModelSpec)
    status_raw = CompressedModelStatus.model_json_schema(by_alias=True, mode="serialization")
    status_schema = _structural(status_raw, status_raw.pop("$defs", {}), {})
    status_schema.pop("required", None)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{API_GROUP}"},
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "plural": PLURAL,
                "singular": KIND.lower(),
                "listKind": f"{KIND}List",
                "shortNames": ["cmodel"],
                "categories": ["slimserve"],
            },
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A trained model to compress, serve behind Triton and roll out behind a gate.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {
                                    "type": "string",
                                    "description": f"The versioned schema of this object: {API_GROUP}/{API_VERSION}.",
                                },
                                "kind": {"type": "string", "description": f"The kind of this object: {KIND}."},
                                "metadata": {
                                    "type": "object",
                                    "description": "Standard object metadata; metadata.name is the default "
                                    "spec.serving.modelName and prefixes the objects the operator creates.",
                                },
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def render_crd() -> str:
    header = "# Generated by `python -m slimserve.api.crd` from slimserve/api/spec.py; do not edit.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=120)


if __name__ == "__main__":
    sys.stdout.write(render_crd())
