"""The Grafana dashboard SREs watch during a rollout, built as data (and checked by tests).

Every variant serves under one client-facing Triton model name, so Triton's own `model` label does not
tell variants apart: the chart's PodMonitor adds the pods' labels, `slimserve_dev_model` = the
CompressedModel, `slimserve_dev_variant` = the variant and `app_kubernetes_io_component` (`triton`, or
`triton-control` for the evaluator's control copy, left out here). The operator's own gauges carry
`model` = the CompressedModel (canary weight, gate thresholds, variant roles).
Built with Grafana's own dashboards-as-code SDK (grafana-foundation-sdk, the `chart` extra);
`python -m slimserve.chart.manifests` writes it into the chart.
"""

from __future__ import annotations

import json
from typing import Any, Final

from grafana_foundation_sdk.builders import common as options
from grafana_foundation_sdk.builders import dashboard, prometheus, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import LegendDisplayMode, LegendPlacement, SortOrder, TooltipDisplayMode
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef,
    DataTransformerConfig,
    DynamicConfigValue,
    GridPos,
    VariableOption,
    VariableRefresh,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

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


DATASOURCE: Final = DataSourceRef(type_val="prometheus", uid="${datasource}")
# A gate threshold is drawn as a red dashed line over the series it bounds.
THRESHOLD_LINE: Final = [
    DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}),
    DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": "red"}),
]


def _target(expr: str, legend_format: str, ref: str) -> prometheus.Dataquery:
    return prometheus.Dataquery().datasource(DATASOURCE).expr(expr).legend_format(legend_format).ref_id(ref)


def _instant(expr: str, ref: str) -> prometheus.Dataquery:
    return _target(expr, "", ref).instant().format(PromQueryFormat.TABLE)


def _timeseries(
    id: int,
    title: str,
    unit: str,
    targets: list[prometheus.Dataquery],
    x: int,
    y: int,
    description: str,
    threshold_refs: tuple[str, ...] = (),
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .id(id)
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .grid_pos(GridPos(h=8, w=12, x=x, y=y))
        .unit(unit)
        .legend(
            options.VizLegendOptions()
            .show_legend(True)
            .display_mode(LegendDisplayMode.TABLE)
            .placement(LegendPlacement.BOTTOM)
            .calcs(["lastNotNull", "max"])
        )
        .tooltip(options.VizTooltipOptions().mode(TooltipDisplayMode.SINGLE).sort(SortOrder.NONE))
    )
    for target in targets:
        panel.with_target(target)
    for ref in threshold_refs:
        panel.override_by_query(ref, THRESHOLD_LINE)
    return panel


def _variable(name: str, label: str, query: str) -> dashboard.QueryVariable:
    return (
        dashboard.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .include_all(True)
        .multi(True)
        .current(VariableOption(text="All", value="$__all"))
    )


def build_dashboard() -> dict[str, Any]:
    """Per model and variant: throughput, p50/p99, errors, queue time, batch size, replicas, canary weight,
    the candidate's quality drop; as Grafana's dashboard JSON."""
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
        table.Panel()
        .id(8)
        .title("Stable vs canary")
        .description("The numbers the gate compares, side by side for the variants now serving.")
        .datasource(DATASOURCE)
        .grid_pos(GridPos(h=8, w=12, x=12, y=24))
        .targets(
            [
                # Aggregated to the two labels it shows: the operator's series also carry the
                # ServiceMonitor's target labels (pod, job, instance...), which would become columns.
                _instant(
                    "max by (slimserve_dev_variant, role) (label_replace("
                    f'{q["role"]}, "slimserve_dev_variant", "$1", "variant", "(.*)"))',
                    "ROLE",
                ),
                _instant(q["throughput"], "RPS"),
                _instant(q["p99"], "P99"),
                _instant(q["error_rate"], "ERR"),
                _instant(q["queue_ms"], "QUEUE"),
            ]
        )
        .transformations(
            [
                DataTransformerConfig(id_val="merge", options={}),
                DataTransformerConfig(
                    id_val="organize",
                    options={
                        "excludeByName": {"Time": True, "Value #ROLE": True},
                        "renameByName": {
                            "slimserve_dev_variant": "variant",
                            "Value #RPS": "req/s",
                            "Value #P99": "p99 ms",
                            "Value #ERR": "error rate",
                            "Value #QUEUE": "queue ms",
                        },
                    },
                ),
            ]
        ),
    ]
    built = (
        dashboard.Dashboard("slimserve: compressed models and canary rollouts")
        .uid("slimserve-rollout")
        .tags(["slimserve", "triton"])
        .timezone("browser")
        .version(1)
        .refresh("10s")
        .time("now-1h", "now")
        .variables(
            [
                dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus"),
                _variable("namespace", "Namespace", "label_values(slimserve_canary_weight_percent, namespace)"),
                _variable(
                    "model",
                    "CompressedModel",
                    'label_values(slimserve_canary_weight_percent{namespace=~"$namespace"}, model)',
                ),
            ]
        )
    )
    for panel in panels:
        built.with_panel(panel)
    result: dict[str, Any] = json.loads(JSONEncoder().encode(built.build()))
    return result


def render_dashboard() -> str:
    return json.dumps(build_dashboard(), indent=2, sort_keys=True) + "\n"
