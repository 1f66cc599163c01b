"""s3:// against moto's S3 server on loopback, configured the way a MinIO user would (AWS_ENDPOINT_URL)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slimserve.errors import InvalidInput
from slimserve.storage import Cache, StorageUnavailable, fetch, triton_repository_uri, upload_repository
from tests.storage.conftest import S3, Counter, cache_files, free_port, start_moto, stop

pytestmark = pytest.mark.storage


def test_a_file_is_fetched_once_and_reused_while_unchanged(s3: S3, cache: Cache, count_downloads: Counter) -> None:
    uri = s3.put("digits/data/test.npz", b"first version")
    path = fetch(uri, field="spec.data.evaluation", base_dir=Path("."), cache=cache, kind="file")
    assert path.name == "test.npz" and path.read_bytes() == b"first version"
    assert fetch(uri, field="spec.data.evaluation", base_dir=Path("."), cache=cache) == path
    assert count_downloads() == 1

    s3.put("digits/data/test.npz", b"second version")
    changed = fetch(uri, field="spec.data.evaluation", base_dir=Path("."), cache=cache)
    assert changed.read_bytes() == b"second version" and count_downloads() == 2
    assert path.read_bytes() == b"first version", "a path handed out earlier never changes under its reader"


def test_identical_content_is_stored_once(s3: S3, cache: Cache) -> None:
    a = fetch(s3.put("a/x.npz", b"same bytes"), field="f", base_dir=Path("."), cache=cache)
    b = fetch(s3.put("b/x.npz", b"same bytes"), field="f", base_dir=Path("."), cache=cache)
    assert a == b
    assert len([p for p in (cache.root / "blobs").rglob("*") if p.is_file()]) == 1


def test_a_prefix_is_a_folder_with_its_files(s3: S3, cache: Cache, tmp_path: Path) -> None:
    (tmp_path / "repo" / "tokenizer").mkdir(parents=True)
    (tmp_path / "repo" / "model.safetensors").write_bytes(b"w" * 1000)
    (tmp_path / "repo" / "config.json").write_text("{}")
    (tmp_path / "repo" / "tokenizer" / "vocab.txt").write_text("a\nb\n")
    uri = s3.put_tree(tmp_path / "repo", "hf-style")
    folder = fetch(uri + "/", field="spec.source.codeUri", base_dir=Path("."), cache=cache)
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "config.json", "model.safetensors", "tokenizer/vocab.txt",
    ]  # fmt: skip
    assert fetch(uri, field="f", base_dir=Path("."), cache=cache) == folder, "with or without the trailing slash"
    with pytest.raises(InvalidInput, match=r"spec.source.uri = 's3://.*/hf-style': names a folder \(3 files\)"):
        fetch(uri, field="spec.source.uri", base_dir=Path("."), cache=cache, kind="file")


def test_a_key_that_would_escape_the_folder_is_refused(s3: S3, cache: Cache) -> None:
    s3.put("m/../../outside.py", b"x")
    with pytest.raises(InvalidInput, match="whose name would escape the folder"):
        fetch(f"s3://{s3.bucket}/m", field="spec.source.codeUri", base_dir=Path("."), cache=cache)
    assert cache_files(cache) == []


def test_a_large_download_advances_a_progress_bar(s3: S3, cache: Cache, monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.progress import Progress

    from slimserve.storage import fetcher

    advanced: list[float] = []
    monkeypatch.setattr(fetcher, "PROGRESS_MIN_BYTES", 100_000)
    monkeypatch.setattr(Progress, "advance", lambda self, task, n: advanced.append(n))
    uri = s3.put("big.npz", b"z" * 200_000)
    assert fetch(uri, field="f", base_dir=Path("."), cache=cache).stat().st_size == 200_000
    assert sum(advanced) == 200_000
    fetch(s3.put("small.npz", b"z" * 1_000), field="f", base_dir=Path("."), cache=cache)
    assert sum(advanced) == 200_000, "no bar below the threshold"


def test_an_onnx_model_brings_its_external_data(s3: S3, cache: Cache) -> None:
    uri = s3.put("m/model.onnx", b"graph")
    s3.put("m/model.onnx.data", b"weights")
    s3.put("m/other.onnx", b"not this one")
    path = fetch(uri, field="spec.source.uri", base_dir=Path("."), cache=cache, kind="file", siblings=True)
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx", "model.onnx.data"]


def test_a_missing_key_names_the_field_the_uri_and_the_upload(s3: S3, cache: Cache) -> None:
    uri = f"s3://{s3.bucket}/digits/nope.npz"
    with pytest.raises(InvalidInput) as info:
        fetch(uri, field="spec.data.train", base_dir=Path("."), cache=cache)
    message = info.value.render()
    assert message.startswith(f"spec.data.train = '{uri}': no object or folder at this key")
    assert s3.endpoint in message and f"aws s3 cp FILE {uri}" in message
    assert cache_files(cache) == []


def test_a_wrong_bucket_says_so_and_mentions_the_endpoint(s3: S3, cache: Cache) -> None:
    with pytest.raises(InvalidInput, match=r"bucket 'no-such-bucket' does not exist at http://127.0.0.1:\d+; fix"):
        fetch("s3://no-such-bucket/x.npz", field="spec.data.train", base_dir=Path("."), cache=cache)


def test_missing_credentials_name_the_variables_and_the_secret(
    s3: S3, cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = s3.put("x.npz", b"x")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(InvalidInput) as info:
        fetch(uri, field="spec.data.train", base_dir=Path("."), cache=cache)
    message = info.value.render()
    assert "no AWS credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in message
    assert "spec.storage.secretName" in message


def test_refused_credentials_are_a_403_with_the_fix(
    tmp_path: Path, cache: Cache, monkeypatch: pytest.MonkeyPatch, s3: S3
) -> None:
    strict = start_moto(tmp_path / "moto-auth.log", INITIAL_NO_AUTH_ACTION_COUNT="0")  # checks every key
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", strict.endpoint)
        with pytest.raises(InvalidInput) as info:
            fetch("s3://models/x.npz", field="spec.source.uri", base_dir=Path("."), cache=cache)
    finally:
        stop(strict.process)
    message = info.value.render()
    assert message.startswith("spec.source.uri = 's3://models/x.npz': access denied by http://127.0.0.1:")
    assert "AWS_ACCESS_KEY_ID test..." in message and "s3:GetObject" in message


def test_an_unreachable_endpoint_is_exit_1_naming_the_variable(
    s3: S3, cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore retries 3 times by default; the message is the same
    with pytest.raises(StorageUnavailable, match=r"spec.data.train = 's3://b/x.npz': cannot reach the S3 endpoint"):
        fetch("s3://b/x.npz", field="spec.data.train", base_dir=Path("."), cache=cache)


def test_a_truncated_download_is_never_served(s3: S3, cache: Cache, monkeypatch: pytest.MonkeyPatch) -> None:
    from slimserve.storage import remotes

    uri = s3.put("big.npz", b"x" * 10_000)

    def short(self: object, f: remotes.RemoteFile, dest: Path, progress: object) -> None:
        dest.write_bytes(b"x" * 4_000)  # the connection dropped, and the library did not notice

    monkeypatch.setattr(remotes.ObjectStore, "download", short)
    from slimserve.storage import CorruptDownload

    with pytest.raises(CorruptDownload, match=r"4000 bytes of 10000\); nothing was cached"):
        fetch(uri, field="spec.data.train", base_dir=Path("."), cache=cache)
    assert cache_files(cache) == [] and list((cache.root / "tmp").iterdir()) == []


def test_a_repository_upload_is_versioned_marked_and_idempotent(s3: S3, tmp_path: Path) -> None:
    repo = tmp_path / "repository"
    (repo / "baseline" / "1").mkdir(parents=True)
    (repo / "baseline" / "config.pbtxt").write_text('name: "baseline"')
    (repo / "baseline" / "1" / "model.onnx").write_bytes(b"onnx")
    root = f"s3://{s3.bucket}/digits/repository"
    location = upload_repository(repo, root)
    version = location.rsplit("/", 1)[1]
    assert location == f"{root}/{version}" and len(version) == 16
    keys = sorted(s3.fs.find(f"{s3.bucket}/digits/repository"))
    prefix = f"{s3.bucket}/digits/repository/{version}"
    assert keys == [f"{prefix}.complete", f"{prefix}/baseline/1/model.onnx", f"{prefix}/baseline/config.pbtxt"]
    marker = json.loads(s3.fs.cat_file(f"{prefix}.complete"))
    assert sorted(marker["files"]) == ["baseline/1/model.onnx", "baseline/config.pbtxt"]

    s3.fs.rm_file(f"{prefix}/baseline/config.pbtxt")
    assert upload_repository(repo, root) == location  # the marker says complete: nothing is uploaded again
    assert not s3.fs.exists(f"{prefix}/baseline/config.pbtxt")
    (repo / "baseline" / "config.pbtxt").write_text('name: "baseline"\nmax_batch_size: 8')
    assert upload_repository(repo, root) != location, "new content, new version: a running Triton is never rewritten"


def test_a_named_version_is_uploaded_again_only_when_its_files_change(s3: S3, tmp_path: Path) -> None:
    """The operator's `gen-<g>/<variant>`: a retried generation re-packages to the same place."""
    repo = tmp_path / "repository"
    (repo / "m" / "1").mkdir(parents=True)
    (repo / "m" / "config.pbtxt").write_text('name: "m"')
    (repo / "m" / "1" / "model.onnx").write_bytes(b"onnx")
    root = f"s3://{s3.bucket}/digits/repository"
    assert upload_repository(repo, root, version="gen-2/int8") == f"{root}/gen-2/int8"
    prefix = f"{s3.bucket}/digits/repository/gen-2/int8"
    assert sorted(s3.fs.find(prefix)) == [f"{prefix}/m/1/model.onnx", f"{prefix}/m/config.pbtxt"]
    marker = s3.fs.info(f"{prefix}.complete")["ETag"]

    upload_repository(repo, root, version="gen-2/int8")
    assert s3.fs.info(f"{prefix}.complete")["ETag"] == marker  # the same files: nothing written
    (repo / "m" / "1" / "model.onnx").write_bytes(b"onnx, packaged again")
    upload_repository(repo, root, version="gen-2/int8")
    assert s3.fs.cat_file(f"{prefix}/m/1/model.onnx") == b"onnx, packaged again"
    assert json.loads(s3.fs.cat_file(f"{prefix}.complete"))["files"]["m/1/model.onnx"]["size"] == 20


def test_an_unwritable_cache_names_the_variable(s3: S3, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(InvalidInput, match=r"SLIMSERVE_CACHE_DIR: cannot write the download cache at .*; set"):
        fetch(s3.put("x.npz", b"x"), field="f", base_dir=Path("."), cache=Cache(tmp_path / "file" / "cache"))


def test_triton_gets_the_endpoint_inside_the_uri() -> None:
    assert triton_repository_uri("s3://b/r/v1", "") == "s3://b/r/v1"
    assert triton_repository_uri("s3://b/r/v1", "http://127.0.0.1:9000") == "s3://http://127.0.0.1:9000/b/r/v1"
    assert triton_repository_uri("s3://b/r", "https://minio.example") == "s3://https://minio.example:443/b/r"
