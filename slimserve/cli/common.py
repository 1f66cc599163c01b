"""What every command shares: error handling with exit codes, the console, `--base-dir`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import typer
from rich.console import Console

from slimserve.errors import EXIT_INTERNAL, EXIT_INVALID, InvalidInput, SlimserveError

if TYPE_CHECKING:
    from slimserve.api import CompressedModel

err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

BASE_DIR_HELP: Final = (
    "Folder that relative paths in the spec (source.uri, source.codeUri, data.*) resolve against and that "
    "comes first on sys.path for source.factory when spec.source.codeUri is not set. Default: the YAML file's "
    "folder. The operator's Jobs read the YAML from /spec and pass the folder on the model volume that holds "
    "its files."
)


def base_dir_for(file: Path, base_dir: Path | None, model: CompressedModel) -> Path:
    """The folder relative URIs resolve against: `--base-dir`, else the YAML file's own folder.

    A `--base-dir` that does not exist is refused only when the spec reads from it (a relative path, or a
    factory module without codeUri): a spec whose files are all in a bucket has nothing on the model volume.
    """
    if base_dir is None:
        return file.resolve().parent
    if not base_dir.is_dir() and _reads_base_dir(model):
        raise InvalidInput(
            f"--base-dir = '{base_dir}': not a folder; pass the folder that holds the files the spec names"
        )
    return base_dir.resolve()


def _reads_base_dir(model: CompressedModel) -> bool:
    from slimserve.storage.spec import spec_uris  # the fetchers load only when a URI is read

    source = model.spec.source
    relative = any("://" not in uri and not Path(uri).is_absolute() for uri in spec_uris(model).values())
    return relative or (bool(source.factory) and not source.code_uri)


def handle_errors(func: F) -> F:
    """Map InvalidInput to exit 2 and a known failure (a component missing or dying) to exit 1,
    each with a clean message; anything unexpected to exit 1 with a hint to use --verbose."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except InvalidInput as exc:
            err_console.print(f"[bold red]error:[/] {exc.render()}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_INVALID) from None
        except SlimserveError as exc:
            err_console.print(f"[bold red]error:[/] {exc}\nnothing was promoted", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_INTERNAL) from None
        except KeyboardInterrupt:
            err_console.print(
                "[yellow]interrupted[/]: every process it started was stopped; a run's decision counts only "
                "once its rollout-report.json is written (state.json is written after it)"
            )
            raise typer.Exit(130) from None
        except typer.Exit:
            raise
        except Exception as exc:  # noqa: BLE001 - the last line of defence for a CLI
            logging.getLogger("slimserve").debug("internal failure", exc_info=True)
            err_console.print(
                f"[bold red]internal error:[/] {type(exc).__name__}: {exc}\n"
                "run again with --verbose for the traceback, and report it if it persists",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(EXIT_INTERNAL) from None

    return wrapper  # type: ignore[return-value]
