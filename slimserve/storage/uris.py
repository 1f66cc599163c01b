"""What a spec URI names, before anything is read.

The operator may import this module (to know which claims a Job must mount) without pulling in
the fsspec family: nothing here does I/O beyond reading environment variables and stat().
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from slimserve.api.spec import URI_FORMS
from slimserve.errors import InvalidInput

REMOTE_SCHEMES: Final = ("s3", "gs", "https", "http", "hf")
LOCAL_SCHEMES: Final = ("file", "pvc")

# Where a Job mounts `pvc://<claim>/...` (read-only) and where slimserve looks for it.
ENV_PVC_ROOT: Final = "SLIMSERVE_PVC_ROOT"
PVC_MOUNT_ROOT: Final = "/mnt/pvc"


@dataclass(frozen=True)
class Location:
    """One spec URI, parsed. `path` is the local file for local URIs; `remote` the rest for remote ones."""

    uri: str
    field: str
    scheme: str  # "" for a plain path
    path: Path | None = None  # local file or folder (plain paths, file://, pvc://)
    remote: str = ""  # scheme-less remote path: "bucket/key", "host/path", "org/repo@rev/path"

    @property
    def is_remote(self) -> bool:
        return self.scheme in REMOTE_SCHEMES

    def where(self) -> str:
        """The prefix every message about this URI starts with: the field and the value."""
        return f"{self.field} = {self.uri!r}"


def scheme_of(uri: str) -> str:
    return uri.split("://", 1)[0].lower() if "://" in uri else ""


def is_remote(uri: str) -> bool:
    return scheme_of(uri) in REMOTE_SCHEMES


def parse(uri: str, base_dir: Path, field: str) -> Location:
    """Parse `uri` as the spec field `field` holds it; relative paths resolve against `base_dir`."""
    scheme = scheme_of(uri)
    if scheme == "":
        path = Path(uri)
        return Location(uri, field, "", path if path.is_absolute() else base_dir / path)
    rest = uri.split("://", 1)[1]
    if scheme == "file":
        if not rest.startswith("/"):
            raise InvalidInput(f"{field} = {uri!r}: file:// needs an absolute path (file:///data/x.npz)")
        return Location(uri, field, scheme, Path(rest))
    if scheme == "pvc":
        return Location(uri, field, scheme, pvc_path(uri, field))
    if scheme not in REMOTE_SCHEMES:
        raise InvalidInput(f"{field} = {uri!r}: {scheme}:// is not read by slimserve; use {URI_FORMS}")
    if scheme in ("s3", "gs"):
        bucket = rest.split("/", 1)[0]
        if not bucket:
            raise InvalidInput(f"{field} = {uri!r}: no bucket; use {scheme}://bucket/key")
    if scheme in ("http", "https") and not urlsplit(uri).netloc:
        raise InvalidInput(f"{field} = {uri!r}: no host; use {scheme}://host/path")
    return Location(uri, field, scheme, remote=rest)


def pvc_claim(uri: str) -> str:
    return uri.split("://", 1)[1].split("/", 1)[0]


def pvc_path(uri: str, field: str) -> Path:
    """Where `pvc://claim/path` is readable: under $SLIMSERVE_PVC_ROOT (in a Job, /mnt/pvc)/claim."""
    claim = pvc_claim(uri)
    inner = uri.split("://", 1)[1][len(claim) :].lstrip("/")
    root = Path(os.environ.get(ENV_PVC_ROOT, PVC_MOUNT_ROOT))
    mount = root / claim
    if not mount.is_dir():
        raise InvalidInput(
            f"{field} = {uri!r}: the claim '{claim}' is not mounted here ({mount} is not a folder). pvc:// is read "
            f"in the cluster, where the worker Jobs mount the claim at {PVC_MOUNT_ROOT}/{claim}; locally, give the "
            f"path of a copy instead, or set {ENV_PVC_ROOT} to a folder that holds '{claim}/'"
        )
    return mount / inner
