"""Operator metrics (prometheus-client): units in the names, bounded labels.

Per-model gauges carry `namespace` and `model` only (one series per CompressedModel), so the
Grafana dashboard can draw the canary weight and the gate thresholds next to Triton's metrics.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from slimserve.api import CompressedModel, CompressedModelStatus
from slimserve.api.status import TERMINAL_PHASES
from slimserve.operator.builders import canary_variant

REGISTRY: Final = CollectorRegistry(auto_describe=True)

RECONCILES: Final = Counter(
    "slimserve_operator_reconciles_total", "Reconcile passes by result.", ["result"], registry=REGISTRY
)
RECONCILE_SECONDS: Final = Histogram(
    "slimserve_operator_reconcile_duration_seconds",
    "Time of one reconcile pass.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
API_REQUESTS: Final = Counter(
    "slimserve_operator_api_requests_total",
    "Kubernetes API requests made by reconciles (not kopf's own).",
    ["verb"],
    registry=REGISTRY,
)
WAKEUPS: Final = Counter(
    "slimserve_operator_wakeups_total",
    "Why a reconcile pass ran: handler (create/update/resume), child (a Job or Deployment's watch event), "
    "deadline, timer (the backing-off resync) or retry.",
    ["cause"],
    registry=REGISTRY,
)
CHILD_EVENTS: Final = Counter(
    "slimserve_operator_child_events_total",
    "Watch events of the models' Jobs and Deployments: woke the model, or ignored (status unchanged).",
    ["kind", "outcome"],
    registry=REGISTRY,
)
PHASE_TRANSITIONS: Final = Counter(
    "slimserve_operator_phase_transitions_total",
    "CompressedModel phase changes, per model.",
    ["namespace", "model", "from_phase", "to_phase"],
    registry=REGISTRY,
)
GATE_DECISIONS: Final = Counter(
    "slimserve_operator_gate_decisions_total",
    "Evaluator step decisions read from reports, per model.",
    ["namespace", "model", "decision"],
    registry=REGISTRY,
)
WEBHOOK_CALLS: Final = Counter(
    "slimserve_operator_webhook_calls_total",
    "Rollout webhook calls (spec.rollout.webhooks) by type and outcome: ok, refused, timeout or error.",
    ["type", "outcome"],
    registry=REGISTRY,
)
CHILDREN_APPLIED: Final = Counter(
    "slimserve_operator_children_applied_total",
    "Child objects applied, by kind and outcome.",
    ["kind", "outcome"],
    registry=REGISTRY,
)
PHASE_SECONDS: Final = Histogram(
    "slimserve_operator_phase_duration_seconds",
    "Time spent in a phase before leaving it.",
    ["phase"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200),
    registry=REGISTRY,
)
CANARY_WEIGHT: Final = Gauge(
    "slimserve_canary_weight_percent",
    "Percent of client traffic on the canary (status.clientShare: whole pods in replica mode).",
    ["namespace", "model"],
    registry=REGISTRY,
)
VARIANT_ROLE: Final = Gauge(
    "slimserve_variant_role",
    "1 for the variant serving as stable or canary (joins Triton's model label).",
    ["namespace", "model", "variant", "role"],
    registry=REGISTRY,
)
PHASE_ENTERED: Final = Gauge(
    "slimserve_phase_entered_timestamp_seconds",
    "When the model entered its current phase (stuck-phase alerts).",
    ["namespace", "model", "phase"],
    registry=REGISTRY,
)
QUALITY_DROP: Final = Gauge(
    "slimserve_quality_drop",
    "The candidate's quality drop versus the baseline, in the unit of its metric (spec.quality): points of a "
    "0-100 score, or % error increase for mse/mae. The latest judged value (status.qualityDrop).",
    ["namespace", "model", "variant", "metric"],
    registry=REGISTRY,
)
GATE_THRESHOLD: Final = Gauge(
    "slimserve_gate_threshold",
    "Gate thresholds from the spec (for dashboard lines).",
    ["namespace", "model", "gate"],
    registry=REGISTRY,
)


# The label tuples set per model and gauge, so a model's series are dropped without scanning every
# model's (prometheus-client has no prefix removal): a reconcile's cost does not grow with N.
_SERIES: Final[dict[tuple[str, str], dict[str, set[tuple[str, ...]]]]] = {}


def _set(gauge: Gauge, labels: tuple[str, ...], value: float) -> None:
    gauge.labels(*labels).set(value)
    _SERIES.setdefault((labels[0], labels[1]), {}).setdefault(gauge._name, set()).add(labels)  # noqa: SLF001


def observe_model(model: CompressedModel, namespace: str, status: Mapping[str, Any]) -> None:
    """Publish the per-model gauges: canary weight, variant roles, phase and the gate thresholds."""
    name = model.metadata.name
    # The status as written (a None value is a deletion in the patch: absent).
    typed = CompressedModelStatus.model_validate({k: v for k, v in status.items() if v is not None})
    share = typed.client_share  # what clients get; the step's weight where no share is known
    CANARY_WEIGHT.labels(namespace, name).set(share if share is not None else typed.canary_weight or 0)
    roles = {
        "stable": typed.stable_variant,
        "canary": canary_variant(typed, typed.observed_generation or 0),
    }
    if typed.phase in TERMINAL_PHASES:
        roles["canary"] = None
    wanted = {
        (namespace, name, variant, role)
        for role, variant in roles.items()
        if variant and not (role == "canary" and variant == roles["stable"])
    }
    for labels in _series(VARIANT_ROLE, namespace, name) - wanted:
        _remove(VARIANT_ROLE, labels)
    for labels in wanted:
        _set(VARIANT_ROLE, labels, 1)
    phase = typed.phase.value
    if (namespace, name, phase) not in _series(PHASE_ENTERED, namespace, name):
        _forget(PHASE_ENTERED, namespace, name)
        _set(PHASE_ENTERED, (namespace, name, phase), time.time())
    drop, candidate = typed.quality_drop, typed.candidate_variant
    quality: dict[tuple[str, ...], float] = {}
    if drop is not None and candidate:
        quality[(namespace, name, candidate, typed.metric or "auto")] = drop
    for labels in _series(QUALITY_DROP, namespace, name) - quality.keys():
        _remove(QUALITY_DROP, labels)
    for labels, points in quality.items():
        _set(QUALITY_DROP, labels, points)
    gates = model.spec.gates
    for gate, value in (
        ("max_p99_ms", gates.max_p99_ms),
        ("max_error_rate", gates.max_error_rate),
        ("min_throughput_rps", gates.min_throughput_rps),
        ("max_quality_drop", gates.max_accuracy_drop),
        ("p99_tolerance_ratio", gates.p99_tolerance),
        ("min_throughput_ratio", gates.min_throughput_ratio),
    ):
        if value is not None:
            _set(GATE_THRESHOLD, (namespace, name, gate), value)


def forget_model(namespace: str, name: str) -> None:
    """Drop a deleted model's series so they stop being scraped."""
    with contextlib.suppress(KeyError):
        CANARY_WEIGHT.remove(namespace, name)
    for gauge in (GATE_THRESHOLD, VARIANT_ROLE, PHASE_ENTERED, QUALITY_DROP):
        _forget(gauge, namespace, name)
    _SERIES.pop((namespace, name), None)


def _series(gauge: Gauge, namespace: str, name: str) -> set[tuple[str, ...]]:
    return set(_SERIES.get((namespace, name), {}).get(gauge._name, ()))  # noqa: SLF001


def _remove(gauge: Gauge, labels: tuple[str, ...]) -> None:
    with contextlib.suppress(KeyError):
        gauge.remove(*labels)
    _SERIES.get((labels[0], labels[1]), {}).get(gauge._name, set()).discard(labels)  # noqa: SLF001


def _forget(gauge: Gauge, namespace: str, name: str) -> None:
    for labels in _series(gauge, namespace, name):
        _remove(gauge, labels)


def serve(port: int) -> None:
    start_http_server(port, registry=REGISTRY)
