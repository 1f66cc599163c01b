"""Reports exchanged between the pipeline's stages (compression → serving → gate → status).

`compression-report.json` written by `slimserve compress` and read by the packaging step, the evaluator and
the operator; `EvaluationReport` written by the evaluator (locally, or into a ConfigMap).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

# Three reports, three names: what `slimserve compress` measured (its --out folder, and `compression/` of a
# run folder), what one evaluator step judged (`slimserve evaluate --out`), what `slimserve run` decided.
COMPRESSION_REPORT: Final = "compression-report.json"
EVALUATION_REPORT: Final = "evaluation-report.json"
ROLLOUT_REPORT: Final = "rollout-report.json"


class ReportModel(BaseModel):
    model_config = ConfigDict(populate_by_name=True, alias_generator=to_camel, extra="forbid")

    def to_json_dict(self) -> dict[str, object]:
        return self.model_dump(mode="json", by_alias=True)


class ServedRecord(ReportModel):
    """A variant as measured behind Triton under load (filled by the evaluator)."""

    throughput_rps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    error_rate: float | None = None
    accuracy: float | None = None
    samples: int = 0


class VariantRecord(ReportModel):
    """One variant's measured record. Accuracy values are percent (0-100)."""

    name: str
    recipe: str = Field(
        description="The chain of steps, e.g. 'prune(ratio=0.5) → fineTune(epochs=3) → quantize(static)'."
    )
    path: str = Field(description="ONNX file, relative to the report's directory.")
    sha256: str
    size_bytes: int = Field(description="ONNX file plus external data.")
    compression_ratio: float = Field(description="Baseline size / this size.")
    params: int
    macs: int
    metric: str = Field(description="The quality metric (spec.quality.metric as resolved), e.g. accuracy, cosine.")
    metric_detail: str = Field(default="", description="What the metric reads and why it was chosen.")
    quality: float = Field(description="This variant's score, in `qualityUnit`.")
    quality_ci: tuple[float, float] = Field(alias="qualityCI", description="90% interval of the score.")
    quality_unit: str = Field(description="Unit of the score, e.g. '% correct', 'cosine x 100', 'MSE'.")
    drop: float = Field(description="Quality lost versus the baseline in `dropUnit` (negative = better).")
    drop_ci: tuple[float, float] = Field(
        alias="dropCI", description="Paired 90% interval of the drop: what budgets are judged on."
    )
    drop_unit: str = Field(description="Unit of the drop and of the budgets: points, or % error increase.")
    latency_ms_p50: float
    latency_ms_p99: float
    throughput_rps: float = Field(description="Samples per second at the measurement batch size.")
    speedup: float = Field(description="Baseline p50 latency / this p50 latency, batch 1.")
    speedup_range: tuple[float, float] | None = Field(
        default=None,
        description="Lowest and highest batch-1 speedup over the interleaved measurement blocks "
        "(each block's median against the baseline's in the same block): the spread over repeats.",
    )
    throughput_speedup: float | None = Field(
        default=None, description="This throughput / the baseline's, at the measurement batch size."
    )
    compress_seconds: float
    notes: list[str] = Field(default_factory=list)
    passed: bool | None = Field(default=None, description="Met the search's maxAccuracyDrop (search trials only).")
    served: ServedRecord | None = None


class SearchTrial(ReportModel):
    name: str
    recipe: str
    drop: float
    drop_ci: tuple[float, float] = Field(alias="dropCI")
    size_bytes: int
    latency_ms_p50: float
    throughput_rps: float
    passed: bool
    reason: str


class VariantFailure(ReportModel):
    """A variant or search trial that could not be built or measured: a result, not a crash."""

    name: str
    stage: Literal["variant", "search"] = "variant"
    step: str = Field(description="Where it failed, e.g. 'steps[0] (prune)' or 'measure'.")
    recipe: str = ""
    reason: str


class SearchReport(ReportModel):
    objective: str
    metric: str = ""
    max_accuracy_drop: float
    trials: list[SearchTrial]
    pareto: list[str]
    chosen: str | None
    why: str = Field(default="", description="Why the chosen trial was chosen, or why none was.")
    sensitivity: dict[str, list[tuple[str, float, float]]] = Field(
        default_factory=dict,
        description="Per int8 mode, the quantized nodes most sensitive first: (node, quality drop recovered by "
        "keeping it in float, relative output error removed), from the accuracy-aware fallback.",
    )


class CompressionReport(ReportModel):
    model: str
    device: str
    baseline: VariantRecord
    variants: list[VariantRecord]
    search: SearchReport | None = None
    failures: list[VariantFailure] = Field(
        default_factory=list, description="Variants and search trials that failed, with the step and the reason."
    )
    environment: dict[str, str] = Field(default_factory=dict)


Decision = Literal["Promoted", "RolledBack", "Inconclusive"]
Verdict = Literal["Pass", "Fail", "Inconclusive"]


class CheckResult(ReportModel):
    """One gate check with its evidence: the observed value, the threshold and the verdict."""

    name: str
    verdict: Verdict
    value: float | None
    threshold: float | None
    low: float | None = Field(default=None, description="Lower bound of the value's 90% interval.")
    high: float | None = Field(default=None, description="Upper bound of the value's 90% interval.")
    baseline: float | None = None
    detail: str = ""


class StepResult(ReportModel):
    weight: int
    verdict: Verdict
    checks: list[CheckResult]


class ServedQuality(ReportModel):
    """Both models' scores of one metric on the same served samples, and the paired drop with its 90% interval.

    `drop`, `drop_low` and `drop_high` are in the budgets' unit (`unit`): points, or % error increase
    for mse/mae (the JSON keys are camelCase: dropLow, dropHigh).
    """

    metric: str
    unit: str
    n: int = Field(description="Samples both models answered.")
    baseline: float
    candidate: float
    drop: float
    drop_low: float
    drop_high: float
    method: str = Field(default="", description="How the interval was computed (Newcombe, bootstrap).")
    detail: str = ""


class TargetLoad(ReportModel):
    """One target's share of a judged window, client side (Locust): requests, failures, rate, latency."""

    requests: int
    failures: int
    rps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None


class EvaluationReport(ReportModel):
    """One judged weight, as the evaluator Job reports it (weight 0 is the served quality check).

    The rollout's decision is not in here: the operator feeds the step into the same policy as
    `slimserve run` (`slimserve.evaluator.policy`).
    """

    candidate: str
    control: str
    weight: int
    step: StepResult
    quality: ServedQuality | None = Field(default=None, description="The served quality evidence (weight 0).")
    load: dict[str, TargetLoad] | None = Field(
        default=None, description="Requests, rps and latency per target: candidate and control (canary steps)."
    )


class Window(ReportModel):
    """Judged seconds (epoch)."""

    start: float
    end: float


class LoadWindow(ReportModel):
    """The load of one judged weight: its windows (epoch seconds), per-target totals, Locust's own numbers."""

    weight: int
    windows: list[Window]
    generator_cpu: float | None = Field(default=None, description="Locust's CPU seconds per second (1.0 = one core).")
    generator_bound: bool = False
    per_target: dict[str, TargetLoad]
    locust: list[dict[str, Any]] = Field(default_factory=list, description="Locust's summary of each load run.")


class RolloutReport(ReportModel):
    """What `slimserve run` decided and why: `rollout-report.json` in the run folder (written before state.json)."""

    model: str
    stable: str = Field(description="The stable variant the candidate was judged against.")
    candidate: str | None
    decision: Decision
    reason: str
    exit_code: int
    metric: str
    metric_detail: str = ""
    served_quality: ServedQuality | None = None
    quality_reference: str = Field(description="The variant served quality is measured against (the baseline).")
    steps: list[StepResult]
    load: list[LoadWindow]
    variants: list[VariantRecord] = Field(description="The baseline and every compressed variant, offline.")
    stable_before: dict[str, Any] | None = None
    stable_after: str
    generator_bound: bool = Field(description="True when the load generator, not the server, limited a window.")


def pareto_front(points: Sequence[tuple[str, float, float]]) -> list[str]:
    """Names of the points no other point beats on both costs (lower is better on each)."""
    return [
        name
        for name, a, b in points
        if not any(x <= a and y <= b and (x < a or y < b) for other, x, y in points if other != name)
    ]
