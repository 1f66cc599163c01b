"""`slimserve fetch FILE.yaml --out DIR`: the storage step, on its own (a cluster Job's first container)."""

from __future__ import annotations

from pathlib import Path

import typer

from slimserve.api import load_compressed_model
from slimserve.cli.common import BASE_DIR_HELP, base_dir_for, handle_errors


@handle_errors
def fetch(
    file: Path = typer.Argument(..., help="A CompressedModel YAML file (the same one you would kubectl apply)."),
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        help="Folder to write: compressedmodel.yaml naming local files, with the remote and pvc:// ones in "
        "source/, data/<role>/ and code/. Replaced as a whole once everything is fetched.",
    ),
    base_dir: Path = typer.Option(None, "--base-dir", help=BASE_DIR_HELP),
) -> None:
    """Fetch every URI the spec names (s3://, gs://, https://, hf://, pvc://) into the cache and OUT.

    Run the next command on OUT/compressedmodel.yaml: it needs neither credentials nor network. Credentials
    come from the standard variables (AWS_*, GOOGLE_APPLICATION_CREDENTIALS, HF_TOKEN; in a cluster, the
    Secret spec.storage.secretName names); the cache from SLIMSERVE_CACHE_DIR (default ~/.cache/slimserve).
    Exit codes: 0 done, 2 invalid input (a missing object, refused credentials), 1 storage unreachable.
    """
    from rich.console import Console

    from slimserve.storage import fetch_into

    written = fetch_into(loaded := load_compressed_model(file), base_dir_for(file, base_dir, loaded), out)
    Console(soft_wrap=True).print(
        f"[green]fetched[/] into {written.parent}; next: slimserve compress {written} --out DIR"
    )
