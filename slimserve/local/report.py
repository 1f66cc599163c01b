"""`rollout-report.md` and the PNG plots of a local run (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

from slimserve.api.report import CompressionReport, RolloutReport, pareto_front


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def write_markdown(path: Path, doc: RolloutReport) -> None:
    quality = doc.served_quality
    lines = [
        f"# slimserve run: {doc.model}",
        "",
        f"**Decision: {doc.decision}** — {doc.reason}",
        "",
        f"Candidate `{doc.candidate}` against a fresh copy of the stable model `{doc.stable}` (the control: "
        "same share of the load, same seconds); quality against the uncompressed `baseline`.",
        "",
        f"Metric: **{doc.metric}** — {doc.metric_detail}.",
        "",
    ]
    if quality:
        lines += [
            f"Served quality: candidate {quality.candidate:.4g} vs baseline {quality.baseline:.4g} on "
            f"{quality.n} samples; drop {quality.drop:+.3g} {quality.unit} "
            f"(90% CI [{quality.drop_low:+.3g}, {quality.drop_high:+.3g}], {quality.method}).",
            "",
        ]
    lines += [
        "## Gate evidence",
        "",
        "How to read it: intervals are 90% two-sided (each end a one-sided 95% bound). A check passes only",
        "when its whole interval is on the good side of the threshold,",
        "fails only when the whole interval is on the bad side, and is inconclusive otherwise. A step with",
        "too few requests is inconclusive whatever else it shows.",
        "",
        "| step | check | verdict | value | 90% interval | threshold | detail |",
        "|---:|---|---|---:|---:|---:|---|",
    ]
    for step in doc.steps:
        for c in step.checks:
            interval = "—" if c.low is None or c.high is None else f"[{c.low:.4g}, {c.high:.4g}]"
            where = "quality" if step.weight == 0 else f"{step.weight}%"
            lines.append(
                f"| {where} | {c.name} | {c.verdict} | {_fmt(c.value, 4)} | {interval} | {_fmt(c.threshold, 3)} | "
                f"{c.detail} |"
            )
    lines += ["", "## Load windows (Locust, client side; judged seconds only)", ""]
    lines += [
        "| step | target | requests | failures | req/s | p50 ms | p99 ms | generator CPU |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for window in doc.load:
        for name, m in window.per_target.items():
            lines.append(
                f"| {window.weight}% | {name} | {m.requests} | {m.failures} | {_fmt(m.rps, 1)} | "
                f"{_fmt(m.p50_ms, 2)} | {_fmt(m.p99_ms, 2)} | {_fmt(window.generator_cpu, 2)}"
                f"{' (generator-bound)' if window.generator_bound else ''} |"
            )
    lines += ["", "## Variants (offline)", ""]
    lines += ["| variant | quality | drop [90% CI] | size ratio | speedup |", "|---|---:|---:|---:|---:|"]
    for v in doc.variants:
        low, high = v.drop_ci
        lines.append(
            f"| {v.name} | {v.quality:.4g} {v.quality_unit} | {v.drop:+.3g} [{low:+.3g}, {high:+.3g}] "
            f"{v.drop_unit} | {v.compression_ratio:.2f}x | {v.speedup:.2f}x |"
        )
    lines += ["", "Plots: `throughput_vs_p99.png`, `quality_vs_size.png`.", ""]
    path.write_text("\n".join(lines))


def plot_throughput_vs_p99(path: Path, points: list[tuple[str, int, float, float]]) -> None:
    """One point per (target, step): client-side request rate against client-side p99, judged seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name in sorted({p[0] for p in points}):
        mine = [p for p in points if p[0] == name]
        ax.plot([p[3] for p in mine], [p[2] for p in mine], "o-", label=name)
        for _, weight, rps, p99 in mine:
            ax.annotate(f"{weight}%", (p99, rps), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("p99 latency (ms, client side)")
    ax.set_ylabel("requests/s (client side)")
    ax.set_title("Served throughput vs p99 per variant (labels: candidate traffic share)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_accuracy_vs_size(path: Path, report: CompressionReport) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [report.baseline, *report.variants]
    points = [(r.name, r.size_bytes / 1024, r.drop) for r in records]
    front = set(pareto_front(points))
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, size, drop in points:
        ax.scatter(size, drop, color="tab:red" if name in front else "tab:gray", zorder=3)
        ax.annotate(name, (size, drop), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ordered = sorted((p for p in points if p[0] in front), key=lambda p: p[1])
    ax.plot([p[1] for p in ordered], [p[2] for p in ordered], "--", color="tab:red", label="Pareto front")
    ax.set_xlabel("size (KiB)")
    ax.set_ylabel(f"{report.baseline.metric} drop ({report.baseline.drop_unit}, offline)")
    ax.set_title("Quality drop vs size")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
