"""The Grafana dashboard SREs watch during a rollout, built as data (and checked by tests).

Every variant serves under one client-facing Triton model name, so Triton's own `model` label does not
tell variants apart: the chart's PodMonitor adds the pods' labels, `slimserve_dev_model` = the
CompressedModel, `slimserve_dev_variant` = the variant and `app_kubernetes_io_component` (`triton`, or
`triton-control` for the evaluator's control copy, left out here). The operator's own gauges carry
`model` = the CompressedModel (canary weight, gate thresholds, variant roles).
`python -m slimserve.operator.manifests` writes it into the chart.
"""

from __future__ import annotations

import json
from typing import Any, Final

TRITON: Final = 'namespace=~"$namespace", slimserve_dev_model=~"$model", app_kubernetes_io_component="triton"'
OPERATOR: Final = 'namespace=~"$namespace", model=~"$model"'
RATE: Final = "$__rate_interval"


def _rate(metric: str) -> str:
    return f"sum by (slimserve_dev_variant) (rate({metric}{{{TRITON}}}[{RATE}]))"


QUERIES: Final = {
    "throughput": _rate("nv_inference_request_success"),
    "p50": f'max by (slimserve_dev_variant) (nv_inference_request_summary_us{{{TRITON}, quantile="0.5"}}) / 1000',
    "p99": f'max by (slimserve_dev_variant) (nv_inference_request_summary_us{{{TRITON}, quantile="0.99"}}) / 1000',
    "error_rate": (
        f"{_rate('nv_inference_request_failure')} / "
        f"({_rate('nv_inference_request_success')} + {_rate('nv_inference_request_failure')})"
    ),
    "queue_ms": f"{_rate('nv_inference_queue_duration_us')} / {_rate('nv_inference_request_success')} / 1000",
    "batch_size": f"{_rate('nv_inference_count')} / {_rate('nv_inference_exec_count')}",
    "replicas": (
        'sum by (deployment) (kube_deployment_status_replicas_available{namespace=~"$namespace", '
        'deployment=~"$model-.*"})'
    ),
    "canary_weight": f"slimserve_canary_weight_percent{{{OPERATOR}}}",
    "role": f"slimserve_variant_role{{{OPERATOR}}}",
    "quality_drop": f"max by (variant, metric) (slimserve_quality_drop{{{OPERATOR}}})",
}


def _threshold(gate: str) -> str:
    return f'max(slimserve_gate_threshold{{{OPERATOR}, gate="{gate}"}})'


def _target(expr: str, legend: str, ref: str, instant: bool = False) -> dict[str, Any]:
    target: dict[str, Any] = {
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "expr": expr,
        "legendFormat": legend,
        "refId": ref,
    }
    if instant:
        target.update(instant=True, format="table")
    return target


def _timeseries(
    id: int,
    title: str,
    unit: str,
    targets: list[dict[str, Any]],
    x: int,
    y: int,
    description: str,
    threshold_refs: tuple[str, ...] = (),
) -> dict[str, Any]:
    overrides = [
        {
            "matcher": {"id": "byFrameRefID", "options": ref},
            "properties": [
                {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}},
            ],
        }
        for ref in threshold_refs
    ]
    return {
        "id": id,
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": overrides},
        "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]}},
        "targets": targets,
    }


def build_dashboard() -> dict[str, Any]:
    """Per model and variant: throughput, p50/p99, errors, queue time, batch size, replicas, canary weight,
    the candidate's quality drop."""
    q = QUERIES
    panels = [
        _timeseries(
            1,
            "Throughput per variant",
            "reqps",
            [
                _target(q["throughput"], "{{slimserve_dev_variant}}", "A"),
                _target(_threshold("min_throughput_rps"), "gate: min throughput", "T"),
            ],
            0,
            0,
            "Successful inferences per second, by variant (the pods' slimserve.dev/variant).",
            ("T",),
        ),
        _timeseries(
            2,
            "Latency p50 / p99 per variant",
            "ms",
            [
                _target(q["p50"], "{{slimserve_dev_variant}} p50", "A"),
                _target(q["p99"], "{{slimserve_dev_variant}} p99", "B"),
                _target(_threshold("max_p99_ms"), "gate: max p99", "T"),
            ],
            12,
            0,
            "Server-side request latency summary (summary_latencies=true).",
            ("T",),
        ),
        _timeseries(
            3,
            "Error rate per variant",
            "percentunit",
            [
                _target(q["error_rate"], "{{slimserve_dev_variant}}", "A"),
                _target(_threshold("max_error_rate"), "gate: max error rate", "T"),
            ],
            0,
            8,
            "Failed / all requests.",
            ("T",),
        ),
        _timeseries(
            4,
            "Queue time per request",
            "ms",
            [_target(q["queue_ms"], "{{slimserve_dev_variant}}", "A")],
            12,
            8,
            "Time requests wait for a batch: rising queue time means too few instances.",
        ),
        _timeseries(
            5,
            "Average batch size",
            "short",
            [_target(q["batch_size"], "{{slimserve_dev_variant}}", "A")],
            0,
            16,
            "Inferences per model execution (dynamic batching at work).",
        ),
        _timeseries(
            6,
            "Replicas",
            "short",
            [_target(q["replicas"], "{{deployment}}", "A")],
            12,
            16,
            "Available Triton replicas per variant (kube-state-metrics).",
        ),
        _timeseries(
            7,
            "Canary weight",
            "percent",
            [_target(q["canary_weight"], "{{model}}", "A")],
            0,
            24,
            "Percent of traffic the HTTPRoute sends to the canary.",
        ),
        _timeseries(
            9,
            "Quality drop of the candidate",
            "short",
            [
                _target(q["quality_drop"], "{{variant}} ({{metric}})", "A"),
                _target(_threshold("max_quality_drop"), "gate: max quality drop", "T"),
            ],
            0,
            32,
            "The candidate's drop versus the uncompressed baseline, in its metric's unit (spec.quality: points of "
            "a 0-100 score, or % error increase for mse/mae), as the served quality check measured it.",
            ("T",),
        ),
        {
            "id": 8,
            "type": "table",
            "title": "Stable vs canary",
            "description": "The numbers the gate compares, side by side for the variants now serving.",
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 8, "w": 12, "x": 12, "y": 24},
            "targets": [
                # Aggregated to the two labels it shows: the operator's series also carry the
                # ServiceMonitor's target labels (pod, job, instance...), which would become columns.
                _target(
                    "max by (slimserve_dev_variant, role) (label_replace("
                    f'{q["role"]}, "slimserve_dev_variant", "$1", "variant", "(.*)"))',
                    "",
                    "ROLE",
                    instant=True,
                ),
                _target(q["throughput"], "", "RPS", instant=True),
                _target(q["p99"], "", "P99", instant=True),
                _target(q["error_rate"], "", "ERR", instant=True),
                _target(q["queue_ms"], "", "QUEUE", instant=True),
            ],
            "transformations": [
                {"id": "merge", "options": {}},
                {
                    "id": "organize",
                    "options": {
                        "excludeByName": {"Time": True, "Value #ROLE": True},
                        "renameByName": {
                            "slimserve_dev_variant": "variant",
                            "Value #RPS": "req/s",
                            "Value #P99": "p99 ms",
                            "Value #ERR": "error rate",
                            "Value #QUEUE": "queue ms",
                        },
                    },
                },
            ],
        },
    ]
    variable = {
        "type": "query",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "current": {"text": "All", "value": "$__all"},
    }
    return {
        "uid": "slimserve-rollout",
        "title": "slimserve: compressed models and canary rollouts",
        "tags": ["slimserve", "triton"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
                {
                    **variable,
                    "name": "namespace",
                    "label": "Namespace",
                    "query": "label_values(slimserve_canary_weight_percent, namespace)",
                },
                {
                    **variable,
                    "name": "model",
                    "label": "CompressedModel",
                    "query": 'label_values(slimserve_canary_weight_percent{namespace=~"$namespace"}, model)',
                },
            ]
        },
        "panels": panels,
    }


def render_dashboard() -> str:
    return json.dumps(build_dashboard(), indent=2, sort_keys=True) + "\n"
