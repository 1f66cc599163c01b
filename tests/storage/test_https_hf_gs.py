"""https:// against a local HTTP server, hf:// against a mock Hub at HF_ENDPOINT, gs:// against a mock of the
GCS JSON API at STORAGE_EMULATOR_HOST: nothing leaves loopback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from slimserve.errors import InvalidInput
from slimserve.storage import Cache, CorruptDownload, StorageUnavailable, fetch
from tests.storage.conftest import Counter, Gcs, Hub, HubRepo, Site, cache_files

pytestmark = pytest.mark.storage

COMMIT = "a" * 40


def test_http_file_is_downloaded_once_while_unchanged(site: Site, cache: Cache) -> None:
    (site.root / "test.npz").write_bytes(b"npz bytes")
    uri = f"{site.url}/test.npz"
    path = fetch(uri, field="spec.data.evaluation", base_dir=Path("."), cache=cache, kind="file")
    assert path.name == "test.npz" and path.read_bytes() == b"npz bytes"
    assert fetch(uri, field="spec.data.evaluation", base_dir=Path("."), cache=cache) == path
    assert site.gets("/test.npz") == 1, "Last-Modified unchanged: the second fetch only asks"

    (site.root / "test.npz").write_bytes(b"new npz bytes")
    os.utime(site.root / "test.npz", (1e9, 1e9))
    assert fetch(uri, field="f", base_dir=Path("."), cache=cache).read_bytes() == b"new npz bytes"
    assert site.gets("/test.npz") == 2


def test_http_404_names_the_field_and_the_fix(site: Site, cache: Cache) -> None:
    with pytest.raises(InvalidInput, match=r"spec.data.train = 'http://.*/nope.npz': the server answered 404"):
        fetch(f"{site.url}/nope.npz", field="spec.data.train", base_dir=Path("."), cache=cache)


def test_http_403_says_no_credentials_are_sent(site: Site, cache: Cache) -> None:
    site.answers["/private.npz"] = (403, b"denied", {})
    with pytest.raises(InvalidInput, match=r"refused access \(HTTP 403\); slimserve sends no credentials"):
        fetch(f"{site.url}/private.npz", field="spec.data.train", base_dir=Path("."), cache=cache)


def test_http_5xx_is_worth_a_retry(site: Site, cache: Cache) -> None:
    site.answers["/flaky.npz"] = (503, b"busy", {})
    with pytest.raises(StorageUnavailable, match=r"HTTP 503"):
        fetch(f"{site.url}/flaky.npz", field="spec.data.train", base_dir=Path("."), cache=cache)


def test_a_response_shorter_than_declared_is_never_served(site: Site, cache: Cache) -> None:
    body = b"0123456789" * 100
    site.answers["/cut.npz"] = (200, body[:300], {"Content-Length": str(len(body))})  # the connection drops
    with pytest.raises((CorruptDownload, StorageUnavailable)):
        fetch(f"{site.url}/cut.npz", field="spec.data.train", base_dir=Path("."), cache=cache)
    assert cache_files(cache) == [] and list((cache.root / "tmp").glob("*.part")) == []


def test_an_http_folder_is_refused(site: Site, cache: Cache) -> None:
    with pytest.raises(InvalidInput, match="names one file, not a folder"):
        fetch(f"{site.url}/data/", field="spec.data.train", base_dir=Path("."), cache=cache)


def test_concurrent_processes_download_a_file_once(site: Site, cache: Cache, tmp_path: Path) -> None:
    (site.root / "shared.npz").write_bytes(os.urandom(200_000))
    code = (
        "import sys; from pathlib import Path; from slimserve.storage import Cache, fetch\n"
        "print(fetch(sys.argv[1], field='f', base_dir=Path('.'), cache=Cache(Path(sys.argv[2]))))"
    )
    uri = f"{site.url}/shared.npz"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, uri, str(cache.root)], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outputs = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(outputs) == 1 and Path(outputs.pop()).read_bytes() == (site.root / "shared.npz").read_bytes()
    assert site.gets("/shared.npz") == 1, "the others waited on the lock and found the blob"


# ---------------------------------------------------------------------------------------------
# hf://
# ---------------------------------------------------------------------------------------------


def add_repo(hub: Hub, name: str = "models/acme/digits", **kwargs: object) -> HubRepo:
    files = {
        "config.json": b'{"width": 1}',
        "model.safetensors": b"S" * 5000,
        "onnx/model.onnx": b"graph",
        "onnx/model.onnx.data": b"W" * 3000,
        "tokenizer/vocab.txt": b"a\nb\n",
    }
    repo = HubRepo(files=files, commit=COMMIT, revisions={"main": COMMIT, "v1.0": COMMIT},
                   lfs={"model.safetensors", "onnx/model.onnx.data"}, **kwargs)  # type: ignore[arg-type]  # fmt: skip
    hub.repos[name] = repo
    return repo


def test_hf_uri_maps_to_the_api_and_resolve_urls_at_one_commit(
    hub: Hub, cache: Cache, count_downloads: Counter
) -> None:
    add_repo(hub)
    path = fetch("hf://acme/digits@v1.0/onnx/model.onnx", field="spec.source.uri", base_dir=Path("."), cache=cache,
                 kind="file", siblings=True)  # fmt: skip
    assert path.read_bytes() == b"graph" and (path.parent / "model.onnx.data").read_bytes() == b"W" * 3000
    paths = [p for _, p, _ in hub.requests]
    assert paths[0] == "/api/models/acme/digits/revision/v1.0?blobs=true"
    assert sorted(paths[1:]) == [f"/acme/digits/resolve/{COMMIT}/onnx/model.onnx",
                                 f"/acme/digits/resolve/{COMMIT}/onnx/model.onnx.data"]  # fmt: skip
    assert fetch("hf://acme/digits@v1.0/onnx/model.onnx", field="f", base_dir=Path("."), cache=cache,
                 siblings=True) == path  # fmt: skip
    assert count_downloads() == 2


def test_hf_folder_and_whole_repository(hub: Hub, cache: Cache) -> None:
    add_repo(hub)
    folder = fetch("hf://acme/digits/tokenizer", field="spec.source.codeUri", base_dir=Path("."), cache=cache)
    assert [p.name for p in folder.iterdir()] == ["vocab.txt"]
    repo = fetch("hf://acme/digits", field="spec.source.codeUri", base_dir=Path("."), cache=cache)
    assert (repo / "config.json").read_bytes() == b'{"width": 1}' and (repo / "onnx" / "model.onnx").is_file()
    assert ("GET", "/api/models/acme/digits?blobs=true", "") in hub.requests, "no revision: the default branch"


def test_hf_datasets_have_their_own_routes(hub: Hub, cache: Cache) -> None:
    add_repo(hub, "datasets/acme/digits-data")
    path = fetch("hf://datasets/acme/digits-data/config.json", field="spec.data.train", base_dir=Path("."),
                 cache=cache)  # fmt: skip
    assert path.read_bytes() == b'{"width": 1}'
    assert [p for _, p, _ in hub.requests] == [
        "/api/datasets/acme/digits-data?blobs=true", f"/datasets/acme/digits-data/resolve/{COMMIT}/config.json",
    ]  # fmt: skip


def test_hf_private_repository_needs_hf_token(hub: Hub, cache: Cache, monkeypatch: pytest.MonkeyPatch) -> None:
    add_repo(hub, private=True)
    with pytest.raises(InvalidInput) as info:
        fetch("hf://acme/digits/config.json", field="spec.source.uri", base_dir=Path("."), cache=cache)
    message = info.value.render()
    assert message.startswith("spec.source.uri = 'hf://acme/digits/config.json': repository not found at http://")
    assert "set HF_TOKEN" in message and "spec.storage.secretName" in message

    monkeypatch.setenv("HF_TOKEN", hub.token)
    path = fetch("hf://acme/digits/config.json", field="spec.source.uri", base_dir=Path("."), cache=cache)
    assert path.read_bytes() == b'{"width": 1}'
    assert all(auth == f"Bearer {hub.token}" for _, _, auth in hub.requests[-2:]), "the token goes to both routes"


def test_hf_unknown_revision_and_path(hub: Hub, cache: Cache) -> None:
    add_repo(hub)
    with pytest.raises(InvalidInput, match=r"@v9/config.json': no such revision at http://.*; use a branch, tag"):
        fetch("hf://acme/digits@v9/config.json", field="spec.source.uri", base_dir=Path("."), cache=cache)
    with pytest.raises(InvalidInput, match=r"no file or folder 'weights.bin' in model repository acme/digits"):
        fetch("hf://acme/digits/weights.bin", field="spec.source.uri", base_dir=Path("."), cache=cache)
    with pytest.raises(InvalidInput, match=r"hf:// reads model and dataset repositories, not spaces"):
        fetch("hf://spaces/acme/app/x.py", field="spec.source.codeUri", base_dir=Path("."), cache=cache)


def test_hf_file_that_fails_its_declared_sha256_is_never_served(hub: Hub, cache: Cache) -> None:
    add_repo(hub, lie_sha256={"model.safetensors"})
    with pytest.raises(CorruptDownload, match=r"SHA-256 differs\); nothing was cached"):
        fetch("hf://acme/digits/model.safetensors", field="spec.source.uri", base_dir=Path("."), cache=cache)
    assert cache_files(cache) == []


def test_hf_small_files_are_checked_against_their_git_blob_id(hub: Hub, cache: Cache) -> None:
    add_repo(hub, lie_blob_id={"config.json"})
    with pytest.raises(CorruptDownload, match=r"git blob id differs"):
        fetch("hf://acme/digits/config.json", field="spec.source.uri", base_dir=Path("."), cache=cache)
    hub.repos["models/acme/digits"].lie_blob_id.clear()
    assert fetch("hf://acme/digits/config.json", field="f", base_dir=Path("."), cache=cache).is_file()


# ---------------------------------------------------------------------------------------------
# gs:// (gcsfs against a mock of the JSON API at STORAGE_EMULATOR_HOST)
# ---------------------------------------------------------------------------------------------


def test_gcs_file_and_folder_are_fetched_once(gcs: Gcs, cache: Cache, count_downloads: Counter) -> None:
    uri = gcs.put("models/digits/data/test.npz", b"T" * 5000)
    gcs.put("models/digits/code/model.py", b"def build(): ...\n")
    gcs.put("models/digits/code/layers/conv.py", b"x = 1\n")
    path = fetch(uri, field="spec.data.evaluation", base_dir=Path("."), cache=cache, kind="file")
    assert path.read_bytes() == b"T" * 5000
    code = fetch("gs://models/digits/code", field="spec.source.codeUri", base_dir=Path("."), cache=cache)
    assert sorted(p.relative_to(code).as_posix() for p in code.rglob("*") if p.is_file()) == [
        "layers/conv.py", "model.py",
    ]  # fmt: skip
    assert fetch(uri, field="f", base_dir=Path("."), cache=cache) == path and count_downloads() == 3
    assert any(r.startswith("/download/storage/v1/b/models/o/digits%2Fdata%2Ftest.npz") for r in gcs.requests)


def test_gcs_missing_object_and_md5_mismatch(gcs: Gcs, cache: Cache) -> None:
    with pytest.raises(InvalidInput, match=r"spec.data.train = 'gs://models/nope.npz': no object or folder there"):
        fetch("gs://models/nope.npz", field="spec.data.train", base_dir=Path("."), cache=cache)
    uri = gcs.put("models/bad.npz", b"B" * 100)
    gcs.lie_md5.add("models/bad.npz")
    with pytest.raises(CorruptDownload, match="MD5 differs"):
        fetch(uri, field="spec.data.train", base_dir=Path("."), cache=cache)
    assert cache_files(cache) == []
