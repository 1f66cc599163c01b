"""Reports exchanged between the pipeline's stages (compression → serving → gate → status).

`report.json` written by `slimserve compress` and read by the packaging step, the evaluator and
the operator; `EvaluationReport` written by the evaluator (locally, or into a ConfigMap).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


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
    metric: Literal["accuracy", "fidelity"]
    accuracy: float
    accuracy_ci: tuple[float, float] = Field(alias="accuracyCI", description="95% Wilson interval, percent.")
    accuracy_drop: float = Field(description="Baseline accuracy minus this, in points (negative = better).")
    latency_ms_p50: float
    latency_ms_p99: float
    throughput_rps: float = Field(description="Samples per second at the measurement batch size.")
    speedup: float = Field(description="Baseline p50 latency / this p50 latency, batch 1.")
    compress_seconds: float
    notes: list[str] = Field(default_factory=list)
    passed: bool | None = Field(default=None, description="Met the search's maxAccuracyDrop (search trials only).")
    served: ServedRecord | None = None


class SearchTrial(ReportModel):
    name: str
    recipe: str
    accuracy_drop: float
    size_bytes: int
    latency_ms_p50: float
    throughput_rps: float
    passed: bool
    reason: str


class SearchReport(ReportModel):
    objective: str
    max_accuracy_drop: float
    trials: list[SearchTrial]
    pareto: list[str]
    chosen: str | None


class CompressionReport(ReportModel):
    model: str
    device: str
    baseline: VariantRecord
    variants: list[VariantRecord]
    search: SearchReport | None = None
    environment: dict[str, str] = Field(default_factory=dict)


Decision = Literal["Promoted", "RolledBack", "Inconclusive"]
Verdict = Literal["Pass", "Fail", "Inconclusive"]


class CheckResult(ReportModel):
    """One gate check with its evidence: the observed value, the threshold and the verdict."""

    name: str
    verdict: Verdict
    value: float | None
    threshold: float | None
    baseline: float | None = None
    detail: str = ""


class StepResult(ReportModel):
    weight: int
    verdict: Verdict
    checks: list[CheckResult]


class EvaluationReport(ReportModel):
    baseline: str
    candidate: str
    decision: Decision
    reason: str
    steps: list[StepResult]


def pareto_front(points: Sequence[tuple[str, float, float]]) -> list[str]:
    """Names of the points no other point beats on both costs (lower is better on each)."""
    return [
        name
        for name, a, b in points
        if not any(x <= a and y <= b and (x < a or y < b) for other, x, y in points if other != name)
    ]
