"""`slimserve package FILE.yaml --report DIR/compression-report.json --repository REPO`: a Triton model repository."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import typer

from slimserve.api import load_compressed_model
from slimserve.api.spec import DNS_LABEL_PATTERN
from slimserve.cli.common import handle_errors
from slimserve.errors import InvalidInput


def parse_variants(text: str) -> tuple[list[str], dict[str, str]]:
    """`--variants a,b=b-g2` → (["a", "b"], {"b": "b-g2"}): what to package and under which model names."""
    names: list[str] = []
    model_names: dict[str, str] = {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        variant, _, model_name = (part.strip() for part in entry.partition("="))
        names.append(variant)
        if model_name:
            if not re.fullmatch(DNS_LABEL_PATTERN, model_name):
                raise InvalidInput(
                    f"--variants {text}: model name {model_name!r} is not valid; use lowercase letters, digits "
                    "and '-' (e.g. int8-g2)"
                )
            model_names[variant] = model_name
    return names, model_names


@handle_errors
def package(
    file: Path = typer.Argument(..., help="The CompressedModel YAML file (its spec.serving shapes the configs)."),
    report: Path = typer.Option(..., "--report", help="compression-report.json written by `slimserve compress`."),
    repository: str = typer.Option(
        ...,
        "--repository",
        help="Folder to write the Triton model repository into, or s3://bucket/prefix: uploaded to "
        "<prefix>/<version>/ (a content hash), then <prefix>/<version>.complete is written; credentials from "
        "the AWS variables (AWS_ENDPOINT_URL for MinIO).",
    ),
    backend: str = typer.Option(
        None,
        "--backend",
        help="onnxruntime (Triton images, the cluster) or python (the local pytriton Triton). "
        "Default: spec.serving.backend, where auto means onnxruntime.",
    ),  # fmt: skip
    variants: str = typer.Option(
        "",
        "--variants",
        help="Comma-separated variants to package (the baseline is always included). Default: all. "
        "VARIANT=MODEL packages a variant as Triton model MODEL (the operator does this when a new "
        "generation's candidate has the name of the variant already serving).",
    ),
    repository_version: str = typer.Option(
        None,
        "--repository-version",
        help="With an s3:// repository: upload to <prefix>/<this>/ instead of a content hash (the operator "
        "passes gen-<generation>/<variant>, so it names Triton's --model-repository before the upload).",
    ),
    uri_file: Path = typer.Option(
        None,
        "--uri-file",
        help="Write what Triton's --model-repository should be to this file: the folder, or "
        "s3://bucket/prefix/<version> (s3://http://host:port/bucket/... with AWS_ENDPOINT_URL, as Triton wants "
        "it). The operator's packaging Job passes /dev/termination-log.",
    ),
) -> None:
    """Build a Triton model repository: one model per variant with a config.pbtxt from its ONNX graph.

    The operator's packaging Job runs this. Exit codes: 0 done, 2 invalid input, 1 internal failure.
    """
    from rich.console import Console

    from slimserve.api.report import CompressionReport
    from slimserve.triton.repository import BACKENDS, build_repository

    model = load_compressed_model(file)
    default = model.spec.serving.backend
    chosen = backend or str(getattr(default, "value", default))
    if chosen == "auto":
        chosen = "onnxruntime"
    if chosen not in BACKENDS:
        raise InvalidInput(f"--backend = {chosen!r}: use one of {', '.join(BACKENDS)}")
    if not report.is_file():
        raise InvalidInput(f"--report = '{report}': file not found; run `slimserve compress` first")
    try:
        parsed = CompressionReport.model_validate_json(report.read_text())
    except ValueError as exc:
        raise InvalidInput(f"--report = '{report}': not a slimserve compression report ({exc})") from None
    names, model_names = parse_variants(variants)

    def build(folder: Path) -> dict[str, Path]:
        return build_repository(
            parsed, report.parent, folder, chosen, names or None, model.spec.serving,  # type: ignore[arg-type]
            tensorrt=model.spec.serving.instance_kind == "gpu", model_names=model_names,
        )  # fmt: skip

    if "://" in repository:
        from slimserve.storage import triton_repository_uri, upload_repository

        with tempfile.TemporaryDirectory(prefix="slimserve-repository-") as staging:
            built = build(Path(staging))
            location = upload_repository(Path(staging), repository, version=repository_version)
        for_triton = triton_repository_uri(location)
        detail = f" (Triton: --model-repository={for_triton} with the AWS variables)"
    else:
        if repository_version:
            raise InvalidInput(
                f"--repository-version = {repository_version!r}: names a version under an s3:// --repository; "
                f"a folder ({repository!r}) is written as it is"
            )
        built = build(Path(repository))
        location, for_triton, detail = repository, repository, ""
    if uri_file is not None:
        uri_file.write_text(for_triton + "\n")
    Console(soft_wrap=True).print(f"[green]packaged[/] {', '.join(built)} into {location} (backend {chosen}){detail}")
