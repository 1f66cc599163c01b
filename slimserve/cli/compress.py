"""`slimserve compress FILE.yaml --out DIR`: build and measure every variant the spec asks for."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Final

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from slimserve.api import load_compressed_model
from slimserve.cli.common import BASE_DIR_HELP, base_dir_for, handle_errors


def _table(report: object) -> Table:
    from slimserve.api.report import CompressionReport

    assert isinstance(report, CompressionReport)
    metric = report.baseline.metric
    table = Table(
        title=f"{report.model}: variants vs baseline ({report.baseline.metric_detail})",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        padding=(0, 1),
    )
    for col, justify in [
        ("variant", "left"),
        ("size", "right"),
        ("ratio", "right"),
        ("MMACs", "right"),
        (f"{metric} ({report.baseline.quality_unit})", "right"),
        (f"drop ({report.baseline.drop_unit})", "right"),
        ("p50 ms", "right"),
        ("p99 ms", "right"),
        ("samples/s", "right"),
        ("speedup", "right"),
    ]:
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in [report.baseline, *report.variants]:
        lo, hi = r.drop_ci
        table.add_row(
            r.name,
            f"{r.size_bytes / 1024:,.0f}K",
            f"{r.compression_ratio:.2f}x",
            f"{r.macs / 1e6:,.2f}",
            f"{r.quality:.4g}",
            f"{r.drop:+.3g} [{lo:+.3g},{hi:+.3g}]",
            f"{r.latency_ms_p50:.3f}",
            f"{r.latency_ms_p99:.3f}",
            f"{r.throughput_rps:,.0f}",
            f"{r.speedup:.2f}x",
        )
    return table


def _recipes(report: object) -> str:
    from slimserve.api.report import CompressionReport

    assert isinstance(report, CompressionReport)
    return "\n".join(f"  [bold]{r.name}[/]: {r.recipe}" for r in report.variants)


HELP: Final = (
    "Compress a model into the variants its spec lists, and measure each against the baseline.\n\n"
    "Every variant ends as an ONNX file with a measured record: size, parameters, MACs, accuracy "
    "with a 90% CI (or fidelity to the baseline without labels), accuracy drop, onnxruntime latency "
    "p50/p99 at batch 1 and throughput.\n\n"
    "A variant that cannot be built is reported with its step and reason (one line each) and the run goes on. "
    "Library warnings go to compress.log beside the report.\n\n"
    "Exit codes: 0 done (at least one variant built), 2 invalid input (the message names the field and the fix; "
    "also when no variant could be built from it), 1 internal failure."
)


@handle_errors
def compress(
    file: Annotated[Path, typer.Argument(help="A CompressedModel YAML file (the same one you would kubectl apply).")],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Output folder: compression-report.json, compression-report.md and one .onnx per "
            "variant; replaced atomically when the run completes.",
        ),
    ],
    base_dir: Annotated[Path | None, typer.Option("--base-dir", help=BASE_DIR_HELP)] = None,
) -> None:
    """Compress a model into measured variants (help text: HELP)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from slimserve.storage import localize

    model, base = localize(loaded := load_compressed_model(file), base_dir_for(file, base_dir, loaded))
    console = Console()
    if not console.is_terminal:  # logs and pipes: keep the table on one line per variant
        console = Console(width=140)
    from slimserve.compression import run_compression  # heavy: torch, onnxruntime

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as progress:
        report = run_compression(model, base, out, progress=progress)
    console.print(_table(report))
    console.print(_recipes(report), highlight=False)
    for f in report.failures:
        console.print(
            f"[red]failed[/] {f.stage} [bold]{f.name}[/] at {f.step}: {f.reason}", highlight=False, soft_wrap=True
        )
    if report.search is not None:
        chosen = report.search.chosen
        console.print(
            f"search ({report.search.objective}, max drop {report.search.max_accuracy_drop} {report.baseline.drop_unit}): "
            + (f"chose [green]{chosen}[/]" if chosen else "[yellow]chose nothing[/]")
            + f" — {report.search.why}",
            highlight=False,
            soft_wrap=True,
        )
    console.print(
        f"wrote {out / 'compression-report.json'}, {out / 'compression-report.md'}, {len(report.variants) + 1} ONNX files and "
        f"{out / 'compress.log'} (library warnings)"
    )
