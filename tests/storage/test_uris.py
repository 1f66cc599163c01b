"""The URI forms the spec accepts (pydantic and the CRD alike), and where local ones point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from slimserve.api import parse_compressed_model
from slimserve.errors import InvalidInput
from slimserve.storage import pvc_claims
from slimserve.storage.uris import parse
from tests.api.test_spec_and_crd import edit, good
from tests.crd_schema import crd_errors

ROOT = Path(__file__).resolve().parents[2]

ACCEPTED = [
    "s3://models/digits/digits_cnn.pt",
    "s3://my.bucket-1/a/b/c.npz",
    "gs://models_eu/digits/test.npz",
    "https://example.org/files/test.npz?sig=abc",
    "http://minio.storage:9000/bucket/test.npz",
    "hf://org/repo/model.safetensors",
    "hf://org/repo@v1.0/onnx/model.onnx",
    "hf://datasets/org/digits@main/test.npz",
    "pvc://training-data/digits/test.npz",
    "file:///data/test.npz",
    "data/test.npz",
    "/abs/data/test.npz",
]

# (uri, a fragment of pydantic's message)
REFUSED = [
    ("ftp://host/x.npz", "ftp:// is not read by slimserve"),
    ("s3://Bucket_Upper/x", "use s3://bucket/key"),
    ("s3:///x.npz", "use s3://bucket/key"),
    ("hf://repo-without-org", "hf://org/repo[@revision][/path]"),
    ("pvc://Claim_Name/x", "pvc://claim/path"),
    ("file://relative/x.npz", "file:///absolute/path"),
    ("https:///nohost", "https://host/path"),
]


@pytest.mark.parametrize("uri", ACCEPTED)
def test_every_supported_form_is_accepted_by_both(uri: str) -> None:
    body = good()
    body["spec"]["source"].update(uri=uri, codeUri=uri)
    body["spec"]["data"].update(evaluation=uri, train=uri)
    assert crd_errors(body) == []
    parse_compressed_model(body)


@pytest.mark.parametrize(("uri", "fragment"), REFUSED, ids=[u for u, _ in REFUSED])
def test_an_unreadable_uri_is_refused_by_both_naming_the_field_and_the_form(uri: str, fragment: str) -> None:
    body = edit("spec.data.calibration", uri)
    with pytest.raises(InvalidInput) as info:
        parse_compressed_model(body)
    message = info.value.render()
    assert f"spec.data.calibration = {uri!r}" in message and fragment in message, message
    assert crd_errors(body), f"the CRD accepts {uri}"


@pytest.mark.parametrize(
    ("uri", "ok"),
    [
        ("s3://models/digits/repository", True),
        ("s3://models/digits_v2/repo-1.0/", True),
        ("s3://models/with space/x", False),
        ("s3://models/ünïcode", False),
        ("gs://models/repo", False),
    ],
)
def test_model_repository_uri_is_what_tritons_s3_client_reads(uri: str, ok: bool) -> None:
    body = edit("spec.serving", {"modelRepository": {"uri": uri}})
    assert (crd_errors(body) == []) == ok
    if ok:
        parse_compressed_model(body)
    else:
        with pytest.raises(InvalidInput, match="what Triton's S3 client reads|spec.serving.modelRepository.uri"):
            parse_compressed_model(body)


def test_storage_secret_name_is_a_kubernetes_name() -> None:
    assert crd_errors(edit("spec.storage", {"secretName": "model-storage"})) == []
    assert parse_compressed_model(edit("spec.storage", {"secretName": "model-storage"})).spec.storage.secret_name
    body = edit("spec.storage", {"secretName": "Model_Storage"})
    assert crd_errors(body)
    with pytest.raises(InvalidInput, match=r"spec.storage.secretName = 'Model_Storage': use the name of a Kubernetes"):
        parse_compressed_model(body)


def test_relative_paths_resolve_against_the_base_folder(tmp_path: Path) -> None:
    assert parse("data/x.npz", tmp_path, "f").path == tmp_path / "data" / "x.npz"
    assert parse("/abs/x.npz", tmp_path, "f").path == Path("/abs/x.npz")
    assert parse("file:///abs/x.npz", tmp_path, "f").path == Path("/abs/x.npz")
    loc = parse("s3://b/k/x.npz", tmp_path, "spec.data.train")
    assert loc.is_remote and loc.remote == "b/k/x.npz" and loc.path is None


def test_pvc_is_read_where_the_job_mounts_the_claim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLIMSERVE_PVC_ROOT", str(tmp_path))
    (tmp_path / "training-data").mkdir()
    loc = parse("pvc://training-data/digits/test.npz", Path("/elsewhere"), "spec.data.evaluation")
    assert loc.path == tmp_path / "training-data" / "digits" / "test.npz" and not loc.is_remote


def test_pvc_outside_a_cluster_says_where_it_is_read_and_the_local_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLIMSERVE_PVC_ROOT", raising=False)
    with pytest.raises(InvalidInput) as info:
        parse("pvc://training-data/test.npz", Path("."), "spec.data.evaluation")
    message = info.value.render()
    assert message.startswith("spec.data.evaluation = 'pvc://training-data/test.npz'")
    assert "/mnt/pvc/training-data" in message and "SLIMSERVE_PVC_ROOT" in message


def test_pvc_claims_lists_what_a_job_must_mount() -> None:
    body: dict[str, Any] = good()
    body["spec"]["source"]["uri"] = "pvc://weights/m.pt"
    body["spec"]["data"]["train"] = "pvc://data/train.npz"
    body["spec"]["data"]["evaluation"] = "pvc://data/test.npz"
    assert pvc_claims(parse_compressed_model(body)) == ["data", "weights"]


def test_the_s3_example_is_the_bundled_example_with_other_uris() -> None:
    """examples/digits/compressedmodel-s3.yaml may not drift from the example it mirrors."""
    plain = yaml.safe_load((ROOT / "examples/digits/compressedmodel.yaml").read_text())
    remote = yaml.safe_load((ROOT / "examples/digits/compressedmodel-s3.yaml").read_text())
    prefix = "s3://slimserve-examples/digits/"
    source, data = remote["spec"].pop("source"), remote["spec"].pop("data")
    assert remote["spec"].pop("storage") == {"secretName": "model-storage"}
    assert remote["spec"]["serving"].pop("modelRepository") == {"uri": prefix + "repository"}
    plain_source = plain["spec"].pop("source")
    assert source.pop("codeUri") == prefix + "model.py"
    assert source == {**plain_source, "uri": prefix + plain_source["uri"]}
    assert data == {role: prefix + path for role, path in plain["spec"].pop("data").items()}
    assert remote["spec"] == plain["spec"] and remote["metadata"]["name"] == plain["metadata"]["name"] + "-s3"


def test_the_storage_libraries_load_only_when_a_remote_uri_is_read() -> None:
    """The operator and `slimserve --help` import slimserve.storage; fsspec and friends stay out."""
    code = (
        "import sys; import slimserve.storage; import slimserve.cli.main\n"
        "heavy = [m for m in ('fsspec', 's3fs', 'gcsfs', 'huggingface_hub', 'botocore', 'aiohttp', 'torch') "
        "if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
