"""A content-addressed cache of downloaded files, safe to share between processes.

Layout under the root ($SLIMSERVE_CACHE_DIR, else $XDG_CACHE_HOME/slimserve, else ~/.cache/slimserve):

    blobs/sha256/<ab>/<sha256>   file contents, read-only, named by their SHA-256
    index/<sha256 of key>.json   what a remote file was when fetched: key, version, sha256, size
    trees/<sha256>/...           a URI's files under the names the spec uses (hard links to blobs)
    locks/<sha256 of key>.lock   held while one process fetches that remote file
    tmp/                         partial downloads: never read, removed on failure, swept when stale

A blob or tree appears by `os.replace`/`os.rename` only once it is complete and verified, so a
reader never sees half a file, and deleting the whole folder at any time is safe.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from slimserve.errors import InvalidInput, SlimserveError

ENV_CACHE_DIR: Final = "SLIMSERVE_CACHE_DIR"
STALE_TMP_S: Final = 24 * 3600
_CHUNK: Final = 1 << 20


class CorruptDownload(SlimserveError):
    """A download did not match what the server declared (size or checksum); nothing was cached."""


def default_root() -> Path:
    if os.environ.get(ENV_CACHE_DIR):
        return Path(os.environ[ENV_CACHE_DIR])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "slimserve"


@dataclass(frozen=True)
class Expected:
    """What the server says a file is; any field may be unknown."""

    size: int | None = None
    sha256: str | None = None
    md5: str | None = None  # hex
    git_sha1: str | None = None  # a git blob id (Hugging Face files not stored in LFS)


@dataclass(frozen=True)
class Blob:
    sha256: str
    size: int
    path: Path


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def md5_from_base64(value: str) -> str:
    return base64.b64decode(value).hex()


class Cache:
    """The cache at `root` (created on first use)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = (root or default_root()).expanduser()
        self._swept = False

    def _dir(self, name: str) -> Path:
        path = self.root / name
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidInput(
                f"{ENV_CACHE_DIR}: cannot write the download cache at {self.root} ({exc.strerror}); set "
                f"{ENV_CACHE_DIR} to a writable folder (in a cluster, a volume such as the model PVC)"
            ) from None
        return path

    def blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / "sha256" / sha256[:2] / sha256

    def _index_path(self, key: str) -> Path:
        return self.root / "index" / f"{_digest(key)}.json"

    def lookup(self, key: str, version: str | None) -> Blob | None:
        """The blob fetched for `key` at `version`, if it is still here and whole; None otherwise."""
        if version is None:  # the server gives no version: it cannot say the file is unchanged
            return None
        try:
            entry = json.loads(self._index_path(key).read_text())
        except (OSError, ValueError):
            return None
        if entry.get("key") != key or entry.get("version") != version:
            return None
        path = self.blob_path(str(entry["sha256"]))
        try:
            if path.stat().st_size != entry["size"]:
                return None
        except OSError:
            return None
        return Blob(str(entry["sha256"]), int(entry["size"]), path)

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold the per-key lock (flock: released by the kernel if the process dies)."""
        path = self._dir("locks") / f"{_digest(key)}.lock"
        with open(path, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def partial(self) -> Iterator[Path]:
        """A fresh path under tmp/ for a download; whatever is left there is removed on the way out."""
        tmp = self._dir("tmp")
        self._sweep(tmp)
        path = tmp / f"{uuid.uuid4().hex}.part"
        try:
            yield path
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _sweep(self, tmp: Path) -> None:
        """Remove partial files that a killed process left behind (older than a day)."""
        if self._swept:
            return
        self._swept = True
        cutoff = time.time() - STALE_TMP_S
        for entry in tmp.iterdir():
            with contextlib.suppress(OSError):
                if entry.stat().st_mtime < cutoff:
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()

    def add(self, key: str, version: str | None, partial: Path, expected: Expected, where: str) -> Blob:
        """Verify `partial` against `expected`, move it into blobs/ and record it for `key`."""
        sha256, md5, git_sha1 = (
            hashlib.sha256(),
            hashlib.md5(usedforsecurity=False),
            hashlib.sha1(usedforsecurity=False),
        )
        size = partial.stat().st_size
        if expected.git_sha1:
            git_sha1.update(f"blob {size}\0".encode())
        with open(partial, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                sha256.update(chunk)
                if expected.md5:
                    md5.update(chunk)
                if expected.git_sha1:
                    git_sha1.update(chunk)
        mismatch = []
        if expected.size is not None and size != expected.size:
            mismatch.append(f"{size} bytes of {expected.size}")
        if expected.sha256 and sha256.hexdigest() != expected.sha256.lower():
            mismatch.append("SHA-256 differs")
        if expected.md5 and md5.hexdigest() != expected.md5.lower():
            mismatch.append("MD5 differs")
        if expected.git_sha1 and git_sha1.hexdigest() != expected.git_sha1.lower():
            mismatch.append("git blob id differs")
        if mismatch:
            raise CorruptDownload(
                f"{where}: the download does not match what the server declared ({', '.join(mismatch)}); "
                "nothing was cached; run again, and check the storage service if it persists"
            )
        digest = sha256.hexdigest()
        target = self.blob_path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial.chmod(0o444)
        os.replace(partial, target)  # same content under the same name: replacing is harmless
        entry = {"key": key, "version": version, "sha256": digest, "size": size, "fetched": time.time()}
        self._write_json(self._index_path(key), entry)
        return Blob(digest, size, target)

    def _write_json(self, path: Path, value: object) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._dir("tmp"), suffix=".json")
        with os.fdopen(fd, "w") as handle:
            json.dump(value, handle)
        os.replace(tmp, path)

    def tree(self, files: Mapping[str, Blob]) -> Path:
        """A folder holding `files` (relative path → blob), shared by every URI with the same content."""
        listing = sorted((rel, blob.sha256) for rel, blob in files.items())
        target = self.root / "trees" / _digest(json.dumps(listing))
        if target.is_dir():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(dir=self._dir("tmp"), suffix=".tree"))
        try:
            for rel, blob in files.items():
                link_or_copy(blob.path, building / rel)
            try:
                building.rename(target)
            except OSError:  # another process finished the same tree first
                if not target.is_dir():
                    raise
        finally:
            shutil.rmtree(building, ignore_errors=True)
        return target


def link_or_copy(source: Path, dest: Path) -> None:
    """Hard-link `source` at `dest` (no extra space), or copy it where links are not possible."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, dest)
    except OSError:
        shutil.copyfile(source, dest)
        dest.chmod(0o444)
