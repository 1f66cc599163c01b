"""Which compressed variant rolls out: one choice for `slimserve run` and for the operator's compression Job.

Pure (pydantic models in, a record out), so the local runtime calls it in-process and the cluster's
compression Job runs it next to the report it just wrote (`python -m slimserve.api.choice`), printing the
chosen variant's evidence as its termination message: the operator reads a few hundred bytes, whatever the
number of variants, and never mounts the model volume.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from slimserve.api.report import CompressionReport, VariantRecord
from slimserve.api.resource import CompressedModel, load_compressed_model
from slimserve.errors import InvalidInput

# The evidence of the chosen variant the operator puts into the status (and nothing else).
SUMMARY_KEYS: Final = ("name", "compressionRatio", "metric", "drop", "dropCI", "dropUnit", "speedup",
                       "latencyMsP99", "throughputRps", "sizeBytes")  # fmt: skip


def _objective(model: CompressedModel) -> tuple[str, Callable[[VariantRecord], float]]:
    search = model.spec.compression.search
    objective = str(getattr(search.objective, "value", search.objective)) if search else "size"
    keys: dict[str, Callable[[VariantRecord], float]] = {
        "size": lambda v: v.size_bytes,
        "latency": lambda v: v.latency_ms_p50,
        "throughput": lambda v: -v.throughput_rps,
    }
    return objective, keys[objective]


def choose_candidate(
    model: CompressedModel, report: CompressionReport, stable_sha: str | None, stable_size: int | None = None
) -> VariantRecord | None:
    """The variant to roll out: the named one, or (auto) the best one within the accuracy budget.

    Within the budget means the upper end of the drop's paired interval is (as the gate will judge
    it). 'Best' follows the search objective when the spec has a search (else the smallest file). After a
    promotion, auto only offers a variant that beats the stable model on that objective (judged on
    this run's record of the same file, or on its size): rolling out something worse than what users
    already get is not progress. A variant identical to the stable model is never offered.
    """
    wanted = model.spec.rollout.candidate
    by_name = {v.name: v for v in report.variants}
    if wanted != "auto":
        if wanted not in by_name:
            raise InvalidInput(
                f"spec.rollout.candidate = {wanted!r}: not in the compression report; use one of {sorted(by_name)}"
            )
        return by_name[wanted]
    objective, key = _objective(model)
    stable = next((v for v in [report.baseline, *report.variants] if v.sha256 == stable_sha), None)

    def improves(v: VariantRecord) -> bool:
        if stable_sha is None:
            return True
        if v.sha256 == stable_sha:
            return False
        if stable is not None:
            return key(v) < key(stable)
        return objective != "size" or stable_size is None or v.size_bytes < stable_size

    if report.search and report.search.chosen in by_name and improves(by_name[report.search.chosen]):
        return by_name[report.search.chosen]
    budget = model.spec.gates.max_accuracy_drop
    eligible = [v for v in report.variants if v.drop_ci[1] <= budget and improves(v)]
    return min(eligible, key=key) if eligible else None


def no_candidate_reason(model: CompressedModel, report: CompressionReport, stable: str | None) -> str:
    """Why `choose_candidate` offered nothing, in the words a person acts on."""
    budget = model.spec.gates.max_accuracy_drop
    within = [v.name for v in report.variants if v.drop_ci[1] <= budget]
    if within:
        return (f"no variant within maxAccuracyDrop ({', '.join(within)}) beats the stable model {stable or ''}; "
                "nothing new to roll out")  # fmt: skip
    return (
        f"no variant's drop is within maxAccuracyDrop {budget} {report.baseline.drop_unit} (upper end of its 90% "
        "interval) offline; relax spec.gates.maxAccuracyDrop or add variants"
    )


def summary(model: CompressedModel, report: CompressionReport, stable_onnx: Path | None, stable: str | None) -> str:
    """One JSON line: the chosen variant's evidence (`candidate`, null when none) and why (`reason`)."""
    stable_sha = stable_size = None
    if stable_onnx is not None:
        stable_sha = hashlib.sha256(stable_onnx.read_bytes()).hexdigest()
        stable_size = stable_onnx.stat().st_size
    out: dict[str, Any] = {"candidate": None, "reason": ""}
    try:
        chosen = choose_candidate(model, report, stable_sha, stable_size)
    except InvalidInput as exc:  # a named candidate the report lacks: a decision, not a crash to retry
        out["reason"] = exc.render()
        return json.dumps(out, separators=(",", ":"))
    if chosen is None:
        out["reason"] = no_candidate_reason(model, report, stable)
    else:
        record = chosen.to_json_dict()
        out["candidate"] = {k: record[k] for k in SUMMARY_KEYS}
        searched = report.search is not None and report.search.chosen == chosen.name
        out["reason"] = (
            "named by spec.rollout.candidate"
            if model.spec.rollout.candidate != "auto"
            else "chosen by the search"
            if searched
            else "best within spec.gates.maxAccuracyDrop"
        )
    return json.dumps(out, separators=(",", ":"))


def main(argv: list[str] | None = None) -> int:
    """`python -m slimserve.api.choice SPEC.yaml --report compression-report.json [--stable-onnx FILE --stable NAME]`."""
    parser = argparse.ArgumentParser(prog="python -m slimserve.api.choice", description=__doc__)
    parser.add_argument("spec", type=Path)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument(
        "--stable-onnx", type=Path, help="The ONNX file the stable variant serves, if not the baseline."
    )
    parser.add_argument("--stable", help="The stable variant's name (for the message).")
    args = parser.parse_args(argv)
    try:
        model = load_compressed_model(args.spec)
        report = CompressionReport.model_validate_json(args.report.read_text())
        if args.stable_onnx is not None and not args.stable_onnx.is_file():
            raise InvalidInput(f"--stable-onnx = '{args.stable_onnx}': file not found; the stable's model files moved")
        print(summary(model, report, args.stable_onnx, args.stable))
    except (InvalidInput, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
