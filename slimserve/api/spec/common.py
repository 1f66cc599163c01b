"""What every part of the spec shares: the API's names, the base model, field patterns and their hints."""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Final

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

API_GROUP: Final = "slimserve.dev"
API_VERSION: Final = "v1alpha1"
KIND: Final = "CompressedModel"
PLURAL: Final = "compressedmodels"

# RE2-compatible (Kubernetes evaluates CRD patterns with Go's regexp): no ".." anywhere.
NO_DOTDOT_PATTERN: Final = r"^([^.]|\.([^.]|$))*$"
DNS_LABEL_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
FACTORY_PATTERN: Final = r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$"
DURATION_PATTERN: Final = r"^[0-9]+(ms|s|m)$"
_DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
CPU_PATTERN: Final = r"^[0-9]+(\.[0-9]+)?m?$"
MEMORY_PATTERN: Final = r"^[0-9]+(Ki|Mi|Gi|Ti)?$"
DEADLINE_PATTERN: Final = r"^[0-9]+(s|m|h)$"
DNS_SUBDOMAIN_PATTERN: Final = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
# What Triton's S3 client parses: bucket, then path segments of letters, digits, '.', '-' and '_'.
WEBHOOK_URL_PATTERN: Final = r"^https?://[^/?#\s]+(/\S*)?$"
S3_REPOSITORY_PATTERN: Final = r"^s3://[a-z0-9][a-z0-9.-]*[a-z0-9](/[0-9A-Za-z._-]+)*/?$"

# The URIs slimserve reads (slimserve.storage fetches them): one RE2 pattern per scheme, checked by
# pydantic and by the CRD's CEL rule alike. A value without "://" is a path.
URI_PATTERNS: Final = {
    "s3": r"^s3://[a-z0-9][a-z0-9.-]*[a-z0-9](/.*)?$",
    "gs": r"^gs://[a-z0-9][a-z0-9._-]*[a-z0-9](/.*)?$",
    "http": r"^https?://[^/?#]+(/.*)?$",
    "hf": r"^hf://((models|datasets)/)?[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*(@[^@]+)?(/.*)?$",
    "pvc": r"^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?$",
    "file": r"^file:///.*$",
}
URI_FORMS: Final = (
    "s3://bucket/key, gs://bucket/key, https://host/path, hf://org/repo[@revision]/path, pvc://claim/path, "
    "file:///absolute/path, or a path relative to the YAML file's folder"
)
_ANY_URI: Final = "^(" + "|".join(p[1:-1] for p in URI_PATTERNS.values()) + ")$"

# What each pattern means, for error messages that say how to fix the value.
PATTERN_HINTS: Final = {
    NO_DOTDOT_PATTERN: "contains '..' and could escape the allowed root; use a path inside the YAML file's "
    "folder (in a cluster /models/<name>/inputs) without '..'",
    DNS_LABEL_PATTERN: "use lowercase letters, digits and '-', starting and ending with a letter or digit (e.g. int8-static)",
    FACTORY_PATTERN: "use 'module:function', e.g. model:build",
    DURATION_PATTERN: "use a duration such as 500ms, 15s or 2m",
    CPU_PATTERN: "use a Kubernetes CPU quantity such as 2 or 500m",
    MEMORY_PATTERN: "use a Kubernetes memory quantity such as 512Mi or 8Gi",
    DEADLINE_PATTERN: "use a duration in whole seconds, minutes or hours, such as 90s, 15m or 6h",
    DNS_SUBDOMAIN_PATTERN: "use the name of a Kubernetes object: lowercase letters, digits, '-' and '.'",
    WEBHOOK_URL_PATTERN: "use an http:// or https:// URL, e.g. http://qa-gate.ci.svc/confirm",
    S3_REPOSITORY_PATTERN: "use s3://bucket/prefix with path segments of letters, digits, '.', '-' and '_' "
    "(what Triton's S3 client reads), e.g. s3://models/digits/repository",
}


class Model(BaseModel):
    """Base for every spec object: frozen, camelCase in YAML, unknown fields rejected.

    `cel` holds the CEL twins of a class's cross-field validators; the CRD generator attaches
    them to the class's schema as `x-kubernetes-validations`.
    """

    cel: ClassVar[list[dict[str, str]]] = []

    model_config = ConfigDict(
        frozen=True,
        populate_by_name=True,
        alias_generator=to_camel,
        extra="forbid",
        use_enum_values=True,
    )


def _readable_uri(uri: str) -> str:
    """A URI names a scheme slimserve reads, in that scheme's shape (the CEL rule on `Uri` is its twin)."""
    if "://" not in uri:
        return uri
    scheme = uri.split("://", 1)[0].lower()
    key = "http" if scheme in ("http", "https") else scheme
    if key not in URI_PATTERNS:
        raise ValueError(f"{scheme}:// is not read by slimserve; use {URI_FORMS}")
    if not re.fullmatch(URI_PATTERNS[key], uri):
        shapes = {"s3": "s3://bucket/key", "gs": "gs://bucket/key", "http": f"{scheme}://host/path",
                  "hf": "hf://org/repo[@revision][/path] or hf://datasets/org/repo[@revision][/path]",
                  "pvc": "pvc://claim/path (a PersistentVolumeClaim name, then the path in it)",
                  "file": "file:///absolute/path"}  # fmt: skip
        raise ValueError(f"not a {scheme}:// URI slimserve reads; use {shapes[key]}")
    return uri


Uri = Annotated[
    str,
    Field(
        min_length=1,
        max_length=1024,
        pattern=NO_DOTDOT_PATTERN,
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": f"!self.contains('://') || self.matches('{_ANY_URI}')", "message": f"use {URI_FORMS}"}
            ]
        },
    ),
    AfterValidator(_readable_uri),
]


def duration_seconds(text: str) -> float:
    """'500ms', '15s', '2m', '6h' → seconds. Spec fields are already held to DURATION_PATTERN (or
    DEADLINE_PATTERN) when parsed; this is the one parser the operator, the webhooks and the settings use."""
    match = re.fullmatch(r"([0-9]+)(ms|s|m|h)", text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration such as 500ms, 15s, 10m or 6h")
    return int(match.group(1)) * _DURATION_UNITS[match.group(2)]
