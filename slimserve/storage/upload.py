"""Upload a finished Triton model repository to s3://, where Triton reads it natively.

Object stores have no rename, so a repository is never written in place: it goes to
`<uri>/<version>/` (version: a hash of its content), and only then `<uri>/<version>.complete`
appears, listing every file. A repository whose marker lists the same files is complete and is not
uploaded again; a failed upload leaves no marker, and the next run writes the same version again.

The operator names the version itself (`gen-<generation>/<variant>`, the layout of the model volume),
so it can render Triton's `--model-repository` before the upload: no Triton reads that prefix until
the packaging Job has written its marker.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from slimserve.errors import InvalidInput
from slimserve.storage.errors import explain, s3_endpoint
from slimserve.storage.uris import parse

MARKER_SUFFIX: Final = ".complete"
VERSION_LENGTH: Final = 16


def _files(local_dir: Path) -> dict[str, tuple[int, str]]:
    out = {}
    for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        out[path.relative_to(local_dir).as_posix()] = (path.stat().st_size, digest.hexdigest())
    return out


def repository_version(local_dir: Path) -> str:
    """A name for the repository's content: the same files always give the same version."""
    listing = json.dumps(sorted((rel, sha) for rel, (_, sha) in _files(local_dir).items()))
    return hashlib.sha256(listing.encode()).hexdigest()[:VERSION_LENGTH]


def upload_repository(local_dir: Path, uri: str, field: str = "--repository", version: str | None = None) -> str:
    """Upload `local_dir` to `<uri>/<version>/`, then write the marker; return `<uri>/<version>`.

    `version` defaults to a hash of the content; a given one (`gen-2/int8`) is uploaded again when its
    marker lists other files (a retried generation packaged for another backend)."""
    loc = parse(uri, Path.cwd(), field)
    if loc.scheme != "s3":
        raise InvalidInput(f"{field} = {uri!r}: a remote model repository is s3://bucket/prefix (Triton reads it)")
    files = _files(local_dir)
    if not files:
        raise InvalidInput(f"{field}: {local_dir} holds no files to upload")
    version = (version or repository_version(local_dir)).strip("/")
    root = loc.remote.rstrip("/")
    target, marker = f"{root}/{version}", f"{root}/{version}{MARKER_SUFFIX}"
    from slimserve.storage.remotes import ObjectStore

    try:
        fs = ObjectStore("s3").fs
        listing = {r: {"size": s, "sha256": h} for r, (s, h) in files.items()}
        if not fs.exists(marker) or json.loads(fs.cat_file(marker)).get("files") != listing:
            if fs.exists(marker):
                fs.rm_file(marker)  # incomplete from here until the new marker
            for rel in files:
                fs.put_file(str(local_dir / rel), f"{target}/{rel}")
            body = {"version": version, "created": time.time(), "files": listing}
            fs.pipe_file(marker, json.dumps(body, indent=1).encode())
    except (InvalidInput, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - translated into an error that names the fix, or re-raised
        better = explain(exc, loc)
        if better is None:
            raise
        raise better from None
    return f"s3://{target}"


def triton_repository_uri(uri: str, endpoint: str | None = None) -> str:
    """What Triton's `--model-repository` takes for `uri`: with a custom endpoint (MinIO, moto) Triton
    wants it inside the URI, `s3://http://host:port/bucket/prefix`; AWS itself needs `s3://bucket/prefix`.

    `endpoint` defaults to AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL.
    """
    endpoint = endpoint if endpoint is not None else s3_endpoint()
    if not uri.startswith("s3://"):
        raise InvalidInput(f"model repository = {uri!r}: Triton reads s3://bucket/prefix here")
    if not endpoint:
        return uri
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"AWS_ENDPOINT_URL = {endpoint!r}: use http(s)://host[:port]")
    port = parts.port or (443 if parts.scheme == "https" else 80)  # Triton's parser wants the port
    return f"s3://{parts.scheme}://{parts.hostname}:{port}/{uri[len('s3://') :]}"
