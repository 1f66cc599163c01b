"""`slimserve validate FILE.yaml`: check a CompressedModel without running anything."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from slimserve.api import load_compressed_model
from slimserve.cli.common import BASE_DIR_HELP, base_dir_for, handle_errors


@handle_errors
def validate(
    file: Path = typer.Argument(..., help="A CompressedModel YAML file (the same one you would kubectl apply)."),
    base_dir: Path = typer.Option(None, "--base-dir", help=BASE_DIR_HELP),
) -> None:
    """Validate a CompressedModel file: fields, values, and that the files and URIs it names exist
    (remote ones are listed, not downloaded)."""
    from slimserve.storage import check_reachable

    model = load_compressed_model(file)
    check_reachable(model, base_dir_for(file, base_dir, model))
    variants = ", ".join(v.name for v in model.spec.compression.variants) or "(search only)"
    Console().print(f"[green]valid[/]: {model.metadata.name} with variants {variants}")
