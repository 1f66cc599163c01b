"""`slimserve run FILE.yaml --out DIR`: the whole pipeline on this machine, ending in a decision."""

from __future__ import annotations

from pathlib import Path

import typer

from slimserve.api import load_compressed_model
from slimserve.cli.common import handle_errors


@handle_errors
def run(
    file: Path = typer.Argument(..., help="A CompressedModel YAML file (the same one you would kubectl apply)."),
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        help="Run folder: compression/, repository/, logs/, rollout-report.json, "
        "rollout-report.md, PNG plots and state.json (the local registry; kept across runs).",
    ),
    recompress: bool = typer.Option(
        False,
        "--recompress",
        help="Compress again even when --out holds a finished compression of the same inputs (by default it "
        "is reused when spec.source, spec.data, spec.quality, spec.compression and the input files are "
        "unchanged: a run that only changes gates, rollout or serving starts at packaging).",
    ),
) -> None:
    """Compress, serve behind a real Triton, canary the best variant under Locust load, and gate it.

    Prometheus scrapes Triton every second; the gate compares the candidate with the stable model
    measured in the same run. spec.rollout.webhooks are asked and told as in a cluster (a line per
    call; a confirm-* wait ends Inconclusive after maxStepDuration). Exit codes: 0 promoted, 3 rolled
    back, 4 inconclusive, 2 invalid input, 1 internal failure (a component missing or dying). Every
    process started is stopped on success, failure and Ctrl-C.
    """
    from rich.console import Console

    from slimserve.local.runtime import run_local
    from slimserve.processes import install_signal_handlers, stop_all
    from slimserve.storage import localize

    install_signal_handlers()
    model, base = localize(load_compressed_model(file), file.resolve().parent)
    try:
        console = Console()
        if not console.is_terminal:  # logs and pipes: one line per table row
            console = Console(width=140)
        result = run_local(model, base, out, console, recompress=recompress)
    finally:
        stop_all()
    raise typer.Exit(result.exit_code)
