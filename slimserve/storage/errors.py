"""Turn what the storage libraries raise into messages that name the field, the URI and the fix.

User errors (a missing object, a wrong bucket, missing or refused credentials) become `InvalidInput`
(exit 2); a service that cannot be reached or answers 5xx becomes `StorageUnavailable` (exit 1, so a
Job retries it). Exceptions are recognised by class name, so this module imports none of the libraries.
"""

from __future__ import annotations

import os
from typing import Final

from slimserve.errors import InvalidInput, SlimserveError
from slimserve.storage.uris import Location

SECRET_HINT: Final = "in a cluster, put them in the Secret that spec.storage.secretName names"


class StorageUnavailable(SlimserveError):
    """A storage service could not be reached or failed (5xx); running again may succeed."""


def s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def hf_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and what caused it (fsspec wraps an HTTP 403 in a FileNotFoundError, for one)."""
    out: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in out:
        out.append(current)
        current = current.__cause__ or current.__context__
    return out


def _names(exc: BaseException) -> set[str]:
    return {cls.__name__ for e in _chain(exc) for cls in type(e).__mro__}


def _status(exc: BaseException) -> int | None:
    for e in _chain(exc):
        for attr in ("status", "status_code"):
            value = getattr(e, attr, None)
            if isinstance(value, int) and 100 <= value < 600:
                return value
        code = getattr(getattr(e, "response", None), "status_code", None)
        if isinstance(code, int):
            return code
    return None


def _where_s3(loc: Location) -> str:
    return s3_endpoint() or "AWS S3"


def explain(exc: BaseException, loc: Location) -> SlimserveError | None:
    """The error to raise instead of `exc`, or None when `exc` is not a storage failure we know."""
    names = _names(exc)
    where = loc.where()
    text = str(exc).strip() or type(exc).__name__
    status = _status(exc)
    bucket = loc.remote.split("/", 1)[0]

    if loc.scheme == "s3":
        if "NoCredentialsError" in names or "PartialCredentialsError" in names:
            return InvalidInput(
                f"{where}: no AWS credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and "
                f"AWS_ENDPOINT_URL for MinIO or another S3-compatible store); {SECRET_HINT}"
            )
        if "EndpointConnectionError" in names or "ConnectTimeoutError" in names or "ReadTimeoutError" in names:
            return StorageUnavailable(
                f"{where}: cannot reach the S3 endpoint {_where_s3(loc)} ({text}); check AWS_ENDPOINT_URL "
                "(or AWS_ENDPOINT_URL_S3) and that the service is up"
            )
        if isinstance(exc, PermissionError) or status in (401, 403):
            key_id = os.environ.get("AWS_ACCESS_KEY_ID", "")
            shown = f" (AWS_ACCESS_KEY_ID {key_id[:4]}...)" if key_id else ""
            return InvalidInput(
                f"{where}: access denied by {_where_s3(loc)}{shown}: {text}; fix AWS_ACCESS_KEY_ID and "
                f"AWS_SECRET_ACCESS_KEY, or grant them s3:GetObject and s3:ListBucket on bucket '{bucket}'; "
                f"{SECRET_HINT}"
            )
        if isinstance(exc, FileNotFoundError):
            if "bucket does not exist" in text.lower() or "NoSuchBucket" in text:
                return InvalidInput(
                    f"{where}: bucket '{bucket}' does not exist at {_where_s3(loc)}; fix the bucket name (and "
                    "AWS_ENDPOINT_URL when the bucket lives in MinIO or another S3-compatible store)"
                )
            return InvalidInput(
                f"{where}: no object or folder at this key in bucket '{bucket}' ({_where_s3(loc)}); fix the key, "
                f"or upload it: aws s3 cp FILE {loc.uri}"
            )
    if loc.scheme == "gs":
        if "DefaultCredentialsError" in names or "RefreshError" in names:
            return InvalidInput(
                f"{where}: no usable Google credentials ({text}); set GOOGLE_APPLICATION_CREDENTIALS to a "
                f"service-account key file; {SECRET_HINT} (with the key file)"
            )
        if isinstance(exc, PermissionError) or status in (401, 403):
            return InvalidInput(
                f"{where}: access denied ({text}); grant storage.objects.get and storage.objects.list on bucket "
                f"'{bucket}' to the account in GOOGLE_APPLICATION_CREDENTIALS, or set it to one that has them"
            )
        if isinstance(exc, FileNotFoundError):
            return InvalidInput(
                f"{where}: no object or folder there (or bucket '{bucket}' does not exist); fix the bucket and path, "
                f"or upload it: gcloud storage cp FILE {loc.uri}"
            )
    if loc.scheme == "hf":
        endpoint = hf_endpoint()
        token_hint = f"set HF_TOKEN to a token that can read it ({SECRET_HINT})"
        if "RevisionNotFoundError" in names:
            return InvalidInput(f"{where}: no such revision at {endpoint}; use a branch, tag or commit that exists")
        if "GatedRepoError" in names:
            return InvalidInput(
                f"{where}: the repository is gated at {endpoint}; accept its terms on the Hub and {token_hint}"
            )
        if "RepositoryNotFoundError" in names or status == 401:
            return InvalidInput(
                f"{where}: repository not found at {endpoint}, or it is private; check the name "
                f"(hf://org/repo[@revision]/path), or {token_hint}"
            )
        if status == 403:
            return InvalidInput(f"{where}: access refused by {endpoint} ({text}); {token_hint}")
        if isinstance(exc, FileNotFoundError) or status == 404:
            return InvalidInput(f"{where}: {text}; fix the path inside the repository")
    if loc.scheme in ("http", "https") and status in (401, 403):
        return InvalidInput(
            f"{where}: the server refused access (HTTP {status}); slimserve sends no credentials to "
            "http(s):// URLs: use a presigned URL, or s3://, gs:// or hf:// with their credentials"
        )
    if status is not None and 500 <= status < 600:
        return StorageUnavailable(f"{where}: the storage service failed (HTTP {status}); run again later")
    if names & {"ClientConnectorError", "ServerDisconnectedError", "ClientPayloadError", "ConnectError",
                "ConnectionError", "TimeoutError", "ServerTimeoutError", "ConnectTimeout", "ReadTimeout"}:  # fmt: skip
        hint = {"hf": "check HF_ENDPOINT and the network", "gs": "check the network (and STORAGE_EMULATOR_HOST)"}
        cause = _chain(exc)[-1]
        return StorageUnavailable(
            f"{where}: cannot reach the storage service or the transfer broke off ({type(cause).__name__}: "
            f"{cause}); {hint.get(loc.scheme, 'check the URL and the network')}"
        )
    if loc.scheme in ("http", "https") and (isinstance(exc, FileNotFoundError) or status == 404):
        return InvalidInput(f"{where}: the server answered 404 Not Found; fix the URL")
    return None
