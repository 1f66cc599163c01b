"""`report.md` and the PNG plots of a local run (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slimserve.api.report import CompressionReport, StepResult, pareto_front


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def write_markdown(path: Path, doc: dict[str, Any], steps: list[StepResult]) -> None:
    lines = [
        f"# slimserve run: {doc['model']}",
        "",
        f"**Decision: {doc['decision']}** — {doc['reason']}",
        "",
        f"Candidate `{doc['candidate']}` against stable `{doc['baseline']}` (accuracy against `baseline`).",
        "",
        "## Gate evidence",
        "",
        "| step | check | verdict | value | threshold | baseline | detail |",
        "|---:|---|---|---:|---:|---:|---|",
    ]
    for step in steps:
        for c in step.checks:
            lines.append(
                f"| {step.weight}% | {c.name} | {c.verdict} | {_fmt(c.value, 3)} | {_fmt(c.threshold, 3)} | "
                f"{_fmt(c.baseline, 3)} | {c.detail} |"
            )
    lines += [
        "",
        "## Served variants",
        "",
        "| variant | offline acc. | served acc. | req/s | p50 ms | p99 ms | error rate | requests |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v in doc["variants"]:
        s = v.get("served") or {}
        lines.append(
            f"| {v['name']} | {v['accuracy']:.2f} | {_fmt(s.get('accuracy'))} | {_fmt(s.get('throughputRps'), 1)} | "
            f"{_fmt(s.get('p50Ms'), 3)} | {_fmt(s.get('p99Ms'), 3)} | {_fmt(s.get('errorRate'), 4)} | "
            f"{s.get('samples', 0)} |"
        )
    lines += ["", "## Load windows (Locust, client side)", ""]
    lines += [
        "| window | model | requests | failures | req/s | p50 ms | p99 ms | generator CPU |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for window in doc.get("load", []):
        for name, m in window["perModel"].items():
            lines.append(
                f"| {window['weight']}% | {name} | {m['requests']} | {m['failures']} | {m['rps']:.1f} | "
                f"{_fmt(m['p50_ms'], 1)} | {_fmt(m['p99_ms'], 1)} | {window['generatorCpu']:.2f}"
                f"{' (generator-bound)' if window['generatorBound'] else ''} |"
            )
    lines += ["", "Plots: `throughput_vs_p99.png`, `accuracy_vs_size.png`.", ""]
    path.write_text("\n".join(lines))


def plot_throughput_vs_p99(path: Path, points: list[tuple[str, int, float, float]]) -> None:
    """One point per (model, window): server-side throughput against server-side p99."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name in sorted({p[0] for p in points}):
        mine = [p for p in points if p[0] == name]
        ax.plot([p[3] for p in mine], [p[2] for p in mine], "o-", label=name)
        for _, weight, rps, p99 in mine:
            ax.annotate(f"{weight}%", (p99, rps), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("p99 latency (ms, Triton)")
    ax.set_ylabel("throughput (req/s, Triton)")
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
    points = [(r.name, r.size_bytes / 1024, r.accuracy_drop) for r in records]
    front = set(pareto_front(points))
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, size, drop in points:
        ax.scatter(size, drop, color="tab:red" if name in front else "tab:gray", zorder=3)
        ax.annotate(name, (size, drop), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ordered = sorted((p for p in points if p[0] in front), key=lambda p: p[1])
    ax.plot([p[1] for p in ordered], [p[2] for p in ordered], "--", color="tab:red", label="Pareto front")
    ax.set_xlabel("size (KiB)")
    ax.set_ylabel("accuracy drop (points, offline)")
    ax.set_title("Accuracy drop vs size")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
