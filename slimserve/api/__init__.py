"""The CompressedModel contract: spec, status, reports and the CRD generated from them.

Imports only pydantic and yaml, so every layer (CLI, local runtime, operator) can use it.
"""

from slimserve.api.report import (
    CheckResult,
    CompressionReport,
    EvaluationReport,
    SearchReport,
    SearchTrial,
    ServedRecord,
    StepResult,
    VariantRecord,
)
from slimserve.api.resource import CompressedModel, load_compressed_model, parse_compressed_model
from slimserve.api.spec import (
    API_GROUP,
    API_VERSION,
    KIND,
    PLURAL,
    CompressedModelSpec,
    Step,
    Variant,
    compression_hash,
)
from slimserve.api.status import CompressedModelStatus, Phase, set_condition

__all__ = [
    "API_GROUP",
    "API_VERSION",
    "KIND",
    "PLURAL",
    "CheckResult",
    "CompressedModel",
    "CompressedModelSpec",
    "CompressedModelStatus",
    "CompressionReport",
    "EvaluationReport",
    "Phase",
    "SearchReport",
    "SearchTrial",
    "ServedRecord",
    "Step",
    "StepResult",
    "Variant",
    "VariantRecord",
    "load_compressed_model",
    "parse_compressed_model",
    "compression_hash",
    "set_condition",
]
