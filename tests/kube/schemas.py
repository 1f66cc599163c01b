"""Structural schemas for the CRD kinds kubernetes-validate does not bundle.

Transcribed (subset, strict where we emit fields) from the upstream CRDs: Gateway API v1.1
HTTPRoute, KEDA v2 ScaledObject, prometheus-operator ServiceMonitor/PodMonitor/PrometheusRule;
kopf's KopfPeering/ClusterKopfPeering from the chart's own CRD.
Unknown fields fail, as the API server's pruning would silently drop them.
"""

from __future__ import annotations

from typing import Any

import jsonschema

_NAME = {"type": "string", "minLength": 1, "maxLength": 253, "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"}
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_OWNER_REF = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "name", "uid"],
    "properties": {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "name": {"type": "string"},
        "uid": {"type": "string"},
        "controller": {"type": "boolean"},
        "blockOwnerDeletion": {"type": "boolean"},
    },
}
_META = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": _NAME,
        "namespace": _NAME,
        "labels": _LABELS,
        "annotations": _LABELS,
        "ownerReferences": {"type": "array", "items": _OWNER_REF},
    },
}


def _object(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"apiVersion": {"const": api_version}, "kind": {"const": kind}, "metadata": _META, "spec": spec},
    }


_PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
HTTPROUTE = _object(
    "gateway.networking.k8s.io/v1",
    "HTTPRoute",
    {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "parentRefs": {
                "type": "array",
                "maxItems": 32,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "properties": {
                        "group": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": _NAME,
                        "namespace": _NAME,
                        "sectionName": {"type": "string"},
                        "port": _PORT,
                    },
                },
            },
            "hostnames": {"type": "array", "items": {"type": "string"}},
            "rules": {
                "type": "array",
                "maxItems": 16,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "matches": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "path": {
                                        "type": "object",
                                        "additionalProperties": False,
                                        "properties": {
                                            "type": {"enum": ["Exact", "PathPrefix", "RegularExpression"]},
                                            "value": {"type": "string", "maxLength": 1024},
                                        },
                                    }
                                },
                            },
                        },
                        "backendRefs": {
                            "type": "array",
                            "maxItems": 16,
                            "items": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["name"],
                                "properties": {
                                    "group": {"type": "string"},
                                    "kind": {"type": "string"},
                                    "name": _NAME,
                                    "namespace": _NAME,
                                    "port": _PORT,
                                    "weight": {"type": "integer", "minimum": 0, "maximum": 1000000},
                                },
                            },
                        },
                    },
                },
            },
        },
    },
)
SCALEDOBJECT = _object(
    "keda.sh/v1alpha1",
    "ScaledObject",
    {
        "type": "object",
        "additionalProperties": False,
        "required": ["scaleTargetRef", "triggers"],
        "properties": {
            "scaleTargetRef": {
                "type": "object",
                "required": ["name"],
                "additionalProperties": False,
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "name": {"type": "string"},
                },
            },
            "minReplicaCount": {"type": "integer", "minimum": 0},
            "maxReplicaCount": {"type": "integer", "minimum": 1},
            "pollingInterval": {"type": "integer"},
            "cooldownPeriod": {"type": "integer"},
            "triggers": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["type", "metadata"],
                    "additionalProperties": False,
                    "properties": {
                        "type": {"type": "string"},
                        "name": {"type": "string"},
                        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                    },
                },
            },
        },
    },
)
_ENDPOINT = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "port": {"type": "string"},
        "path": {"type": "string"},
        "interval": {"type": "string", "pattern": r"^[0-9]+(ms|s|m|h)$"},
        "scrapeTimeout": {"type": "string"},
        "relabelings": {"type": "array"},
        "metricRelabelings": {"type": "array"},
        "honorLabels": {"type": "boolean"},
    },
}
_SELECTOR = {
    "type": "object",
    "properties": {"matchLabels": _LABELS, "matchExpressions": {"type": "array"}},
    "additionalProperties": False,
}
SERVICEMONITOR = _object(
    "monitoring.coreos.com/v1",
    "ServiceMonitor",
    {
        "type": "object",
        "additionalProperties": False,
        "required": ["selector", "endpoints"],
        "properties": {
            "selector": _SELECTOR,
            "endpoints": {"type": "array", "minItems": 1, "items": _ENDPOINT},
            "namespaceSelector": {"type": "object"},
            "jobLabel": {"type": "string"},
        },
    },
)
PODMONITOR = _object(
    "monitoring.coreos.com/v1",
    "PodMonitor",
    {
        "type": "object",
        "additionalProperties": False,
        "required": ["selector", "podMetricsEndpoints"],
        "properties": {
            "selector": _SELECTOR,
            "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": _ENDPOINT},
            "namespaceSelector": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "any": {"type": "boolean"},
                    "matchNames": {"type": "array", "items": {"type": "string"}},
                },
            },
            "podTargetLabels": {"type": "array", "items": {"type": "string"}},
        },
    },
)
PROMETHEUSRULE = _object(
    "monitoring.coreos.com/v1",
    "PrometheusRule",
    {
        "type": "object",
        "additionalProperties": False,
        "required": ["groups"],
        "properties": {
            "groups": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name", "rules"],
                    "properties": {
                        "name": {"type": "string"},
                        "interval": {"type": "string"},
                        "rules": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["expr"],
                                "properties": {
                                    "alert": {"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9_]*$"},
                                    "record": {"type": "string"},
                                    "expr": {"type": "string", "minLength": 1},
                                    "for": {"type": "string", "pattern": r"^[0-9]+(s|m|h)$"},
                                    "labels": _LABELS,
                                    "annotations": _LABELS,
                                },
                            },
                        },
                    },
                },
            }
        },
    },
)


def _peering(kind: str) -> dict[str, Any]:
    """kopf's peering objects (the chart's kopfpeerings CRD): no spec; kopf writes status."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata"],
        "properties": {"apiVersion": {"const": "kopf.dev/v1"}, "kind": {"const": kind}, "metadata": _META},
    }


SCHEMAS = {
    "HTTPRoute": HTTPROUTE,
    "KopfPeering": _peering("KopfPeering"),
    "ClusterKopfPeering": _peering("ClusterKopfPeering"),
    "ScaledObject": SCALEDOBJECT,
    "ServiceMonitor": SERVICEMONITOR,
    "PodMonitor": PODMONITOR,
    "PrometheusRule": PROMETHEUSRULE,
}


def validate_custom(manifest: dict[str, Any]) -> None:
    jsonschema.validate(manifest, SCHEMAS[manifest["kind"]])
