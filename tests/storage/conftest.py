"""Local stand-ins for the storage services: moto's S3 server, an HTTP server and a mock Hugging Face Hub.

Every server binds 127.0.0.1 on a free port and stops with its fixture; nothing reaches the internet.
The tests point the standard variables at them (AWS_ENDPOINT_URL, HF_ENDPOINT), as a user would.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from slimserve.storage import Cache

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Moto:
    endpoint: str
    process: subprocess.Popen[bytes]
    fs: Any = None  # an s3fs filesystem with explicit credentials, for arranging the tests' objects


def start_moto(log: Path, **env: str) -> Moto:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, env={**os.environ, **env},
    )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)  # noqa: S310 - loopback
            return Moto(endpoint, process)
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("moto_server did not answer within 30 s")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    """One moto S3 server for the session; each test gets its own bucket (see `s3`)."""
    import s3fs

    server = start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
    server.fs = s3fs.S3FileSystem(
        key=CREDENTIALS["AWS_ACCESS_KEY_ID"], secret=CREDENTIALS["AWS_SECRET_ACCESS_KEY"], endpoint_url=server.endpoint,
        config_kwargs={"region_name": CREDENTIALS["AWS_DEFAULT_REGION"]}, use_listings_cache=False,
    )  # fmt: skip
    yield server
    stop(server.process)


@dataclass
class S3:
    endpoint: str
    bucket: str
    fs: Any  # an s3fs filesystem for arranging the test's objects

    def put(self, key: str, data: bytes) -> str:
        self.fs.pipe_file(f"{self.bucket}/{key}", data)
        return f"s3://{self.bucket}/{key}"

    def put_tree(self, local: Path, prefix: str) -> str:
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            self.fs.put_file(str(path), f"{self.bucket}/{prefix}/{path.relative_to(local).as_posix()}")
        return f"s3://{self.bucket}/{prefix}"


@pytest.fixture
def s3(moto_server: Moto, monkeypatch: pytest.MonkeyPatch) -> S3:
    """The AWS variables a user would set for MinIO, pointing at moto, and a fresh bucket."""
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    for key, value in {**CREDENTIALS, "AWS_ENDPOINT_URL": moto_server.endpoint}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    moto_server.fs.mkdir(bucket)
    return S3(moto_server.endpoint, bucket, moto_server.fs)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cache:
    """A cache of the test's own, also the one the CLI uses (SLIMSERVE_CACHE_DIR)."""
    root = tmp_path / "cache"
    monkeypatch.setenv("SLIMSERVE_CACHE_DIR", str(root))
    return Cache(root)


def cache_files(cache: Cache) -> list[Path]:
    """Every file under blobs/, index/ and trees/ (what a reader could ever be given)."""
    return sorted(p for d in ("blobs", "index", "trees") for p in (cache.root / d).rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------------
# HTTP: a folder served on loopback, with a log of requests and ways to misbehave
# ---------------------------------------------------------------------------------------------


@dataclass
class Site:
    url: str
    root: Path
    requests: list[tuple[str, str]] = field(default_factory=list)
    # path → (status, body, headers): answers that replace the file (404s, lies about the length, ...)
    answers: dict[str, tuple[int, bytes, dict[str, str]]] = field(default_factory=dict)

    def gets(self, path: str) -> int:
        return sum(1 for method, p in self.requests if method == "GET" and p == path)


class _Handler(http.server.SimpleHTTPRequestHandler):
    site: Site

    def log_message(self, *_: object) -> None:
        pass

    def _answer(self) -> bool:
        self.site.requests.append((self.command, self.path))
        answer = self.site.answers.get(self.path.split("?", 1)[0])
        if answer is None:
            return False
        status, body, headers = answer
        self.send_response(status)
        for key, value in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(body)
        return True

    def do_GET(self) -> None:  # noqa: N802 - http.server's names
        if not self._answer():
            super().do_GET()

    def do_HEAD(self) -> None:  # noqa: N802
        if not self._answer():
            super().do_HEAD()


def serve(handler: type[http.server.BaseHTTPRequestHandler]) -> tuple[http.server.ThreadingHTTPServer, str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    root = tmp_path / "www"
    root.mkdir()
    holder: dict[str, Site] = {}

    class Handler(_Handler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.site = holder["site"]
            super().__init__(*args, directory=str(root), **kwargs)

    server, url = serve(Handler)
    holder["site"] = Site(url, root)
    yield holder["site"]
    server.shutdown()
    server.server_close()


# ---------------------------------------------------------------------------------------------
# A mock Hugging Face Hub: the two routes huggingface_hub and the resolve URLs use
# ---------------------------------------------------------------------------------------------


@dataclass
class HubRepo:
    files: dict[str, bytes]
    commit: str
    revisions: dict[str, str]  # branch or tag → commit
    lfs: set[str] = field(default_factory=set)  # files stored in LFS (their SHA-256 is declared)
    private: bool = False
    lie_sha256: set[str] = field(default_factory=set)  # files whose declared SHA-256 is wrong
    lie_blob_id: set[str] = field(default_factory=set)  # files whose declared git blob id is wrong


@dataclass
class Hub:
    url: str
    token: str
    repos: dict[str, HubRepo] = field(default_factory=dict)  # "models/org/name" or "datasets/org/name"
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # method, path, Authorization


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data, usedforsecurity=False).hexdigest()


def _hub_handler(hub: Hub) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *_: object) -> None:
            pass

        def _send(self, status: int, body: bytes, content_type: str = "application/json", **headers: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in headers.items():
                self.send_header(key.replace("_", "-"), value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _repo(self, kind: str, repo_id: str) -> HubRepo | None:
            repo = hub.repos.get(f"{kind}/{repo_id}")
            if repo is None or (repo.private and self.headers.get("Authorization") != f"Bearer {hub.token}"):
                body = json.dumps({"error": "Repository Not Found"}).encode()
                self._send(401, body, X_Error_Code="RepoNotFound", X_Error_Message="Repository Not Found")
                return None
            return repo

        def do_HEAD(self) -> None:  # noqa: N802
            self.do_GET()

        def do_GET(self) -> None:  # noqa: N802
            path = urllib.request.unquote(self.path.split("?", 1)[0])
            hub.requests.append((self.command, self.path, self.headers.get("Authorization", "")))
            parts = path.strip("/").split("/")
            if parts[:2] == ["api", "agent-harnesses"]:  # huggingface_hub's user-agent registry: none here
                self._send(200, json.dumps({"standardEnvVars": [], "harnesses": {}}).encode())
                return
            if parts[0] == "api":  # /api/{models|datasets}/org/name[/revision/<rev>]
                kind, repo_id = parts[1], "/".join(parts[2:4])
                repo = self._repo(kind, repo_id)
                if repo is None:
                    return
                revision = "/".join(parts[5:]) if len(parts) > 4 and parts[4] == "revision" else "main"
                commit = repo.revisions.get(revision, revision if revision == repo.commit else None)
                if commit is None:
                    self._send(404, b'{"error": "Invalid rev id"}', X_Error_Code="RevisionNotFound")
                    return
                siblings = []
                for name, data in sorted(repo.files.items()):
                    blob_id = _git_blob_id(b"other" if name in repo.lie_blob_id else data)
                    sibling: dict[str, Any] = {"rfilename": name, "size": len(data), "blobId": blob_id}
                    if name in repo.lfs:
                        sha = hashlib.sha256(data).hexdigest()
                        sibling["lfs"] = {"sha256": "0" * 64 if name in repo.lie_sha256 else sha, "size": len(data),
                                          "pointerSize": 134}  # fmt: skip
                        sibling["blobId"] = _git_blob_id(b"pointer " + data[:8])
                    siblings.append(sibling)
                body = {"id": repo_id, "modelId": repo_id, "sha": commit, "private": repo.private, "siblings": siblings}
                self._send(200, json.dumps(body).encode())
                return
            # /[datasets/]org/name/resolve/<commit>/<path>
            kind = "datasets" if parts[0] == "datasets" else "models"
            parts = parts[1:] if kind == "datasets" else parts
            if len(parts) < 5 or parts[2] != "resolve":
                self._send(404, b"{}")
                return
            repo = self._repo(kind, "/".join(parts[:2]))
            if repo is None:
                return
            name = "/".join(parts[4:])
            if parts[3] != repo.commit or name not in repo.files:
                self._send(404, b'{"error": "Entry not found"}', X_Error_Code="EntryNotFound")
                return
            self._send(200, repo.files[name], "application/octet-stream", ETag=f'"{_git_blob_id(repo.files[name])}"')

    return Handler


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    """A mock Hub at HF_ENDPOINT; HF_TOKEN unset (tests set it when they want it)."""
    holder = Hub(url="", token="hf_test_token")
    server, url = serve(_hub_handler(holder))
    holder.url = url
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    # huggingface_hub reads HF_ENDPOINT once, at import, for requests slimserve does not make (the registry
    # of AI-agent user agents it fetches with every first request): keep those on loopback too.
    from huggingface_hub import constants
    from huggingface_hub.utils import _detect_agent

    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(_detect_agent, "_registry", {"standardEnvVars": [], "harnesses": {}})
    yield holder
    server.shutdown()
    server.server_close()


Counter = Callable[[], int]


@pytest.fixture
def count_downloads(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """How many files any backend has downloaded since the fixture started."""
    from slimserve.storage import remotes

    calls: list[str] = []
    for cls in (remotes.ObjectStore, remotes.Http, remotes.HuggingFace):
        original = cls.download

        def counted(self: Any, f: Any, dest: Path, progress: Any, _original: Any = original) -> None:
            calls.append(f.path)
            _original(self, f, dest, progress)

        monkeypatch.setattr(cls, "download", counted)
    return lambda: len(calls)


# ---------------------------------------------------------------------------------------------
# A mock of Google Cloud Storage's JSON API (what fake-gcs-server emulates), at STORAGE_EMULATOR_HOST
# ---------------------------------------------------------------------------------------------


@dataclass
class Gcs:
    url: str
    objects: dict[str, bytes] = field(default_factory=dict)  # "bucket/key" → content
    lie_md5: set[str] = field(default_factory=set)
    requests: list[str] = field(default_factory=list)

    def put(self, name: str, data: bytes) -> str:
        self.objects[name] = data
        return f"gs://{name}"


def _gcs_handler(gcs: Gcs) -> type[http.server.BaseHTTPRequestHandler]:
    import base64
    import re
    import urllib.parse

    def meta(name: str, data: bytes) -> dict[str, Any]:
        bucket, key = name.split("/", 1)
        md5 = hashlib.md5(b"other" if name in gcs.lie_md5 else data, usedforsecurity=False).digest()
        generation = str(int(hashlib.sha256(data).hexdigest()[:12], 16))
        return {"kind": "storage#object", "bucket": bucket, "name": key, "size": str(len(data)),
                "generation": generation, "md5Hash": base64.b64encode(md5).decode()}  # fmt: skip

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *_: object) -> None:
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802
            gcs.requests.append(self.path)
            url = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(url.query))
            match = re.fullmatch(r"/(download/)?storage/v1/b/([^/]+)(/o(/.+)?)?", url.path)
            if not match:
                return self._send(404, b"{}")
            download, bucket, objects, key = match.groups()
            if objects is None:
                known = any(n.startswith(bucket + "/") for n in gcs.objects)
                return self._send(200 if known else 404, json.dumps({"name": bucket}).encode())
            if key is None:  # a listing
                prefix, delimiter = query.get("prefix", ""), query.get("delimiter", "")
                items, prefixes = [], set()
                for name, data in sorted(gcs.objects.items()):
                    b, k = name.split("/", 1)
                    if b != bucket or not k.startswith(prefix):
                        continue
                    rest = k[len(prefix) :]
                    if delimiter and delimiter in rest:
                        prefixes.add(prefix + rest.split(delimiter)[0] + delimiter)
                    else:
                        items.append(meta(name, data))
                items = items[: int(query.get("maxResults", 1000))]
                return self._send(200, json.dumps({"items": items, "prefixes": sorted(prefixes)}).encode())
            name = f"{bucket}/{urllib.parse.unquote(key[1:])}"
            if name not in gcs.objects:
                return self._send(404, json.dumps({"error": {"code": 404, "message": "No such object"}}).encode())
            data = gcs.objects[name]
            if download or query.get("alt") == "media":
                return self._send(200, data, {"Content-Type": "application/octet-stream"})
            return self._send(200, json.dumps(meta(name, data)).encode())

    return Handler


@pytest.fixture
def gcs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gcs]:
    holder = Gcs(url="")
    server, url = serve(_gcs_handler(holder))
    holder.url = url
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    yield holder
    server.shutdown()
    server.server_close()
