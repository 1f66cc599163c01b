"""One backend per remote scheme, each a thin layer over an fsspec-family library.

A backend lists what a URI names (one file, or every file under a prefix) with a version that
changes when the content does, and downloads one file to a local path. Libraries are imported
when a backend is first made, so `slimserve --help` and the operator never load them.

- s3://  s3fs; the standard AWS variables, AWS_ENDPOINT_URL(_S3) for MinIO and other stores.
- gs://   gcsfs; GOOGLE_APPLICATION_CREDENTIALS (or gcloud's, or the metadata server); an emulator
          at STORAGE_EMULATOR_HOST is read anonymously.
- http(s):// fsspec's HTTP filesystem; one file per URI (HTTP has no folder listing).
- hf://   huggingface_hub lists the repository at one commit (HF_ENDPOINT, HF_TOKEN); files come
          from `<endpoint>/<repo>/resolve/<commit>/<path>` through the HTTP filesystem.
"""

from __future__ import annotations

import functools
import os
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import quote

from slimserve.errors import InvalidInput
from slimserve.storage.cache import Expected, md5_from_base64
from slimserve.storage.errors import hf_endpoint, s3_endpoint
from slimserve.storage.uris import Location

INSTALL_HINT = "install the storage extra: pip install 'slimserve[storage]'"
Progress = Callable[[int], None]  # called with the number of bytes just received


@dataclass(frozen=True)
class RemoteFile:
    rel: str  # the name it gets locally, relative to the URI's folder
    path: str  # what the backend downloads
    version: str | None  # changes when the content changes; None: the server does not say
    expected: Expected


@dataclass(frozen=True)
class Listing:
    folder: bool  # the URI names a folder (prefix), not one file
    files: list[RemoteFile]


class Backend(Protocol):
    def key(self, f: RemoteFile) -> str: ...

    def list(self, loc: Location, siblings: bool = False) -> Listing: ...

    def download(self, f: RemoteFile, dest: Path, progress: Progress) -> None: ...


def _callback(progress: Progress) -> Any:
    from fsspec.callbacks import Callback

    class _Forward(Callback):  # type: ignore[misc]
        def relative_update(self, inc: int = 1) -> None:
            progress(inc)

    return _Forward()


class ObjectStore:
    """s3:// and gs://: buckets of objects, where a prefix is a folder."""

    def __init__(self, scheme: str) -> None:
        self.scheme = scheme
        if scheme == "s3":
            import s3fs

            self.endpoint = s3_endpoint() or "aws"
            # The endpoint, region and credentials come from the standard AWS variables (botocore reads them).
            self.fs = s3fs.S3FileSystem(
                skip_instance_cache=True, use_listings_cache=False,
                config_kwargs={"connect_timeout": 10, "read_timeout": 60, "retries": {"mode": "standard"}},
            )  # fmt: skip
        else:
            # The plain JSON-API filesystem: gcsfs' default class probes the bucket type over gRPC first.
            from gcsfs.core import GCSFileSystem

            emulator = os.environ.get("STORAGE_EMULATOR_HOST")
            self.endpoint = emulator or "gcs"
            # Credentials: GOOGLE_APPLICATION_CREDENTIALS, gcloud's, the metadata server, else anonymous;
            # an emulator (fake-gcs-server) takes none.
            anon = emulator and not os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
            self.fs = GCSFileSystem(token="anon" if anon else None, skip_instance_cache=True, use_listings_cache=False)

    def key(self, f: RemoteFile) -> str:
        return f"{self.scheme}|{self.endpoint}|{f.path}"

    def _file(self, info: dict[str, Any], rel: str) -> RemoteFile:
        size = info.get("size")
        if self.scheme == "s3":
            etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
            version = f"{etag}|{info.get('VersionId') or ''}|{size}" if etag else None
            expected = Expected(size=size)  # an S3 ETag is an MD5 only for some uploads: size only
        else:
            version = str(info.get("generation") or info.get("etag") or "") or None
            md5 = info.get("md5Hash")
            expected = Expected(size=size, md5=md5_from_base64(md5) if md5 else None)
        return RemoteFile(rel, str(info["name"]), version, expected)

    def list(self, loc: Location, siblings: bool = False) -> Listing:
        path = loc.remote.rstrip("/")
        info = self.fs.info(path)
        if info.get("type") == "file" and not loc.remote.endswith("/"):
            files = [self._file(info, posixpath.basename(path))]
            if siblings:  # e.g. model.onnx.data beside model.onnx
                name = posixpath.basename(path)
                for other in self.fs.ls(posixpath.dirname(path), detail=True):
                    other_name = posixpath.basename(str(other["name"]))
                    if other.get("type") == "file" and other_name != name and other_name.startswith(name):
                        files.append(self._file(other, other_name))
            return Listing(False, files)
        found = self.fs.find(path, detail=True)
        files = [
            self._file(i, name[len(path) + 1 :])
            for name, i in sorted(found.items())
            if i.get("type") == "file" and not name.endswith("/") and name.startswith(path + "/")
        ]
        if not files:
            raise FileNotFoundError(loc.uri)
        return Listing(True, files)

    def download(self, f: RemoteFile, dest: Path, progress: Progress) -> None:
        self.fs.get_file(f.path, str(dest), callback=_callback(progress))


def _http_fs(headers: dict[str, str] | None = None) -> Any:
    import aiohttp
    import fsspec

    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
    return fsspec.filesystem(
        "http", skip_instance_cache=True, headers=headers or {}, client_kwargs={"timeout": timeout}
    )


class Http:
    """http(s)://: one file per URI; ETag or Last-Modified says whether it changed."""

    def __init__(self) -> None:
        self.fs = _http_fs()

    def key(self, f: RemoteFile) -> str:
        return f"http|{f.path}"

    def list(self, loc: Location, siblings: bool = False) -> Listing:
        if loc.uri.endswith("/"):
            raise InvalidInput(f"{loc.where()}: an http(s):// URI names one file, not a folder; name the file")
        info = self.fs.info(loc.uri)
        size = info.get("size")
        tag = info.get("ETag") or info.get("Last-Modified")
        version = f"{tag}|{size}" if tag else None
        name = posixpath.basename(loc.uri.split("?", 1)[0]) or "download"
        return Listing(False, [RemoteFile(name, loc.uri, version, Expected(size=size))])

    def download(self, f: RemoteFile, dest: Path, progress: Progress) -> None:
        self.fs.get_file(f.path, str(dest), callback=_callback(progress))


class HuggingFace:
    """hf://[datasets/]org/repo[@revision][/path]: the repository's files at one commit."""

    def __init__(self) -> None:
        import huggingface_hub as hub

        self.endpoint = hf_endpoint()
        self.token = hub.get_token()
        self.api = hub.HfApi(endpoint=self.endpoint, token=self.token)
        self.fs = _http_fs({"Authorization": f"Bearer {self.token}"} if self.token else None)

    def key(self, f: RemoteFile) -> str:
        return f"hf|{self.endpoint}|{f.path}"

    def list(self, loc: Location, siblings: bool = False) -> Listing:
        from huggingface_hub.errors import HfUriError
        from huggingface_hub.utils import parse_hf_uri

        try:
            uri = parse_hf_uri(loc.uri)
        except HfUriError as exc:
            raise InvalidInput(f"{loc.where()}: {exc.msg}; use hf://org/repo[@revision][/path]") from None
        if uri.type not in ("model", "dataset"):
            raise InvalidInput(f"{loc.where()}: hf:// reads model and dataset repositories, not {uri.type}s")
        info = self.api.repo_info(uri.id, repo_type=uri.type, revision=uri.revision, files_metadata=True)
        prefix = "" if uri.type == "model" else "datasets/"
        wanted = uri.path_in_repo.strip("/")
        files = []
        for sibling in getattr(info, "siblings", None) or []:
            name = sibling.rfilename
            if wanted and name == wanted and not uri.path_in_repo.endswith("/"):
                rel, folder = posixpath.basename(name), False
            elif not wanted or name.startswith(wanted + "/"):
                rel, folder = name[len(wanted) + 1 :] if wanted else name, True
            elif siblings and name.startswith(wanted) and posixpath.dirname(name) == posixpath.dirname(wanted):
                rel, folder = posixpath.basename(name), False
            else:
                continue
            lfs = sibling.lfs
            expected = Expected(
                size=sibling.size, sha256=lfs.sha256 if lfs else None, git_sha1=None if lfs else sibling.blob_id
            )
            url = f"{self.endpoint}/{prefix}{uri.id}/resolve/{info.sha}/{quote(name)}"
            version = (lfs.sha256 if lfs else sibling.blob_id) or info.sha
            files.append((folder, RemoteFile(rel, url, version, expected)))
        if not files:
            at = f" at revision {uri.revision}" if uri.revision else ""
            raise FileNotFoundError(
                f"no file or folder '{wanted}' in {uri.type} repository {uri.id}{at} ({self.endpoint})"
            )
        folder = any(is_folder for is_folder, _ in files)
        return Listing(folder, [f for is_folder, f in files if is_folder == folder or not folder])

    def download(self, f: RemoteFile, dest: Path, progress: Progress) -> None:
        self.fs.get_file(f.path, str(dest), callback=_callback(progress))


_ENV_PREFIXES: Final = ("AWS_", "GOOGLE_", "STORAGE_EMULATOR_HOST", "HF_")


def backend_for(loc: Location) -> Backend:
    """The backend for the URI's scheme; one per scheme while the credentials variables stay the same."""
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)))
    try:
        return _backend("http" if loc.scheme == "https" else loc.scheme, env)
    except ImportError as exc:
        raise InvalidInput(f"{loc.where()}: {loc.scheme}:// needs the '{exc.name}' package; {INSTALL_HINT}") from None


@functools.lru_cache(maxsize=8)
def _backend(scheme: str, env: tuple[tuple[str, str], ...]) -> Backend:
    if scheme in ("s3", "gs"):
        return ObjectStore(scheme)
    if scheme == "http":
        return Http()
    if scheme == "hf":
        return HuggingFace()
    raise AssertionError(f"no backend for {scheme}://")
