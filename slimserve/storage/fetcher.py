"""Fetch one URI into the cache: list it, reuse what is unchanged, download the rest, verify, link."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Final, Literal

from slimserve.errors import InvalidInput
from slimserve.storage.cache import Blob, Cache
from slimserve.storage.errors import explain
from slimserve.storage.remotes import Backend, Listing, Progress, RemoteFile, backend_for
from slimserve.storage.uris import Location, parse

log = logging.getLogger(__name__)

# Downloads at least this large show a progress bar on a terminal (and a log line elsewhere).
PROGRESS_MIN_BYTES: Final = 16 * 1024 * 1024

Kind = Literal["file", "folder", "any"]


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError


@contextlib.contextmanager
def _progress(loc: Location, todo: list[RemoteFile]) -> Iterator[Progress]:
    total = sum(f.expected.size or 0 for f in todo)
    if total < PROGRESS_MIN_BYTES:
        yield lambda _n: None
        return
    log.info("fetching %s (%d files, %s)", loc.uri, len(todo), _human(total))
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        console=console, transient=True, disable=not console.is_terminal,
    ) as bar:  # fmt: skip
        task = bar.add_task(f"fetching {loc.uri}", total=total)
        yield lambda n: bar.advance(task, n)


def _call(loc: Location, action: str, func: object, *args: object) -> object:
    try:
        return func(*args)  # type: ignore[operator]
    except (InvalidInput, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - translated into an error that names the fix, or re-raised
        better = explain(exc, loc)
        if better is None:
            log.debug("%s %s failed", action, loc.uri, exc_info=True)
            raise
        raise better from None


def list_remote(loc: Location, siblings: bool = False) -> tuple[Backend, Listing]:
    """What a remote URI names, without downloading anything (`slimserve validate` stops here)."""
    backend = backend_for(loc)
    listing = _call(loc, "listing", backend.list, loc, siblings)
    assert isinstance(listing, Listing)
    return backend, listing


def fetch(
    uri: str, *, field: str, base_dir: Path, cache: Cache | None = None, kind: Kind = "any", siblings: bool = False
) -> Path:
    """A local path for `uri`: the path itself for local URIs, a cached copy for remote ones.

    A folder URI (an s3/gs prefix, an hf:// repository or folder) gives a folder with its files
    under their relative names. `siblings` also brings the files beside a file whose names extend
    its name (an ONNX model's `model.onnx.data`). Files whose version is unchanged since the last
    fetch are not downloaded again.
    """
    loc = parse(uri, base_dir, field)
    if not loc.is_remote:
        assert loc.path is not None
        return loc.path
    cache = cache or Cache()
    backend, listing = list_remote(loc, siblings)
    if kind == "file" and listing.folder:
        raise InvalidInput(f"{loc.where()}: names a folder ({len(listing.files)} files); name one file in it")
    for f in listing.files:
        parts = PurePosixPath(f.rel).parts
        if not parts or f.rel.startswith("/") or ".." in parts:
            raise InvalidInput(f"{loc.where()}: holds {f.path!r}, whose name would escape the folder; rename it")
    blobs: dict[str, Blob] = {}
    todo = []
    for f in listing.files:
        hit = cache.lookup(backend.key(f), f.version)
        if hit is None:
            todo.append(f)
        else:
            blobs[f.rel] = hit
    if todo:
        with _progress(loc, todo) as progress:
            for f in todo:
                blobs[f.rel] = _download(cache, backend, loc, f, progress)
    log.debug("%s: %d files, %d downloaded", uri, len(listing.files), len(todo))
    tree = cache.tree(blobs)
    return tree if listing.folder else tree / listing.files[0].rel


def _download(cache: Cache, backend: Backend, loc: Location, f: RemoteFile, progress: Progress) -> Blob:
    key = backend.key(f)
    with cache.lock(key):
        hit = cache.lookup(key, f.version)  # another process may have fetched it while we waited
        if hit is not None:
            return hit
        with cache.partial() as partial:
            _call(loc, "downloading", backend.download, f, partial, progress)
            return cache.add(key, f.version, partial, f.expected, f"{loc.where()} ({f.rel})")
