"""compression-report.json (the contract other stages read) and compression-report.md (for people)."""

from __future__ import annotations

import json
from pathlib import Path

from slimserve.api.report import COMPRESSION_REPORT, CompressionReport, VariantRecord


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _row(r: VariantRecord) -> str:
    lo, hi = r.quality_ci
    dlo, dhi = r.drop_ci
    return (
        f"| {r.name} | {r.recipe} | {_size(r.size_bytes)} | {r.compression_ratio:.2f}x | {r.params:,} | {r.macs:,} | "
        f"{r.quality:.4g} [{lo:.4g}, {hi:.4g}] | {r.drop:+.3g} [{dlo:+.3g}, {dhi:+.3g}] | {r.latency_ms_p50:.3f} | "
        f"{r.latency_ms_p99:.3f} | {r.throughput_rps:,.0f} | {r.speedup:.2f}x |"
    )


def render_markdown(report: CompressionReport) -> str:
    b = report.baseline
    lines = [
        f"# Compression report: {report.model}",
        "",
        f"Metric: **{b.metric}** on the evaluation set — {b.metric_detail}. Score in {b.quality_unit} with its "
        f"90% interval; drop versus the baseline in {b.drop_unit} with its paired 90% interval: each end a one-sided 95% bound (what budgets "
        "are judged on). "
        "Latency: in-process onnxruntime at batch 1, variants measured interleaved; "
        f"throughput: samples/s at batch {report.environment.get('throughputBatch', '?')}. "
        f"Training device: {report.device}.",
        "",
        "| variant | recipe | size | ratio | params | MACs | "
        f"{b.metric} [90% CI] | drop [90% CI] | p50 ms | p99 ms | samples/s | speedup |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        _row(b),
        *(_row(r) for r in report.variants),
        "",
    ]
    if report.failures:
        lines += [
            "## Failed variants",
            "",
            "| variant | stage | step | recipe | reason |",
            "|---|---|---|---|---|",
            *(f"| {f.name} | {f.stage} | {f.step} | {f.recipe} | {f.reason} |" for f in report.failures),
            "",
        ]
    notes = [(r.name, n) for r in [b, *report.variants] for n in r.notes]
    if notes:
        lines += ["## Notes", "", *(f"- **{name}**: {note}" for name, note in notes), ""]
    if report.search is not None:
        s = report.search
        lines += [
            "## Search",
            "",
            f"Objective: {s.objective}; allowed drop: {s.max_accuracy_drop} {b.drop_unit} (upper end of the "
            "paired 90% interval, the one-sided 95% bound); "
            f"chosen: {s.chosen or 'none'} — {s.why}; Pareto front: {', '.join(s.pareto) or '-'}.",
            "",
            "| trial | recipe | drop [90% CI] | size | p50 ms | samples/s | passed | why |",
            "|---|---|---|---|---|---|---|---|",
            *(
                f"| {t.name} | {t.recipe} | {t.drop:+.3g} [{t.drop_ci[0]:+.3g}, {t.drop_ci[1]:+.3g}] | "
                f"{_size(t.size_bytes)} | {t.latency_ms_p50:.3f} | "
                f"{t.throughput_rps:,.0f} | {'yes' if t.passed else 'no'} | {t.reason} |"
                for t in s.trials
            ),
            "",
        ]
    env = ", ".join(f"{k}={v}" for k, v in report.environment.items())
    lines += [f"Environment: {env}", ""]
    return "\n".join(lines)


def write_reports(report: CompressionReport, out: Path) -> None:
    (out / COMPRESSION_REPORT).write_text(json.dumps(report.to_json_dict(), indent=2) + "\n")
    (out / COMPRESSION_REPORT.replace(".json", ".md")).write_text(render_markdown(report))
