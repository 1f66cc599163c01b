"""`slimserve` entry point: one typer app; each command lives in its own module and is registered here.

Exit codes (slimserve.errors): 0 success/promoted, 1 internal failure, 2 invalid input,
3 rolled back, 4 inconclusive. Invalid input prints a message naming field, value and fix,
never a traceback.
"""

from __future__ import annotations

import logging
import sys

import typer

from slimserve import __version__
from slimserve.cli import compress, control, evaluate, fetch, package, run, validate

app = typer.Typer(
    name="slimserve",
    help=(
        "Compress a trained model into smaller, faster variants, serve them behind Triton, "
        "and promote one only when a gate has seen it be as good as the baseline.\n\n"
        "Start with: slimserve compress examples/digits/compressedmodel.yaml --out out/digits"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"slimserve {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages and tracebacks."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


# The order of `slimserve --help`: the steps of a run, then the rollout controls.
# Command modules import only typer, rich and slimserve.api; heavy imports stay inside the commands.
app.command()(validate.validate)
app.command(help=compress.HELP)(compress.compress)
app.command()(package.package)
app.command()(evaluate.evaluate)
app.command()(run.run)
app.command()(fetch.fetch)
for command in (control.pause, control.resume, control.abort, control.promote, control.retry):
    app.command()(command)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
