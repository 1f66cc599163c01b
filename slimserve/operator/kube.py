"""A small async surface over the Kubernetes API: get, list, create-or-patch, delete.

It rides on kopf's own authenticated client (the same credentials, session, retries with backoff
on 5xx/429/connection errors), so the operator logs in once and works against any API server
kopf works against, kmock's emulator included. kopf is pinned (==1.45.2) because
`kopf._cogs.clients` is not public API; this module is the only place that touches it.
"""

from __future__ import annotations

import logging
from typing import Any, Final, Literal

import kopf
from kopf._cogs.clients import api as kopf_api
from kopf._cogs.clients import errors as kopf_errors

from slimserve.operator.builders import SPEC_HASH_ANNOTATION
from slimserve.operator.metrics import API_REQUESTS

Manifest = dict[str, Any]
Outcome = Literal["created", "patched", "unchanged"]

PLURALS: Final = {
    "ConfigMap": "configmaps",
    "PersistentVolumeClaim": "persistentvolumeclaims",
    "Service": "services",
    "Pod": "pods",
    "Job": "jobs",
    "Deployment": "deployments",
    "HorizontalPodAutoscaler": "horizontalpodautoscalers",
    "ScaledObject": "scaledobjects",
    "HTTPRoute": "httproutes",
    "Gateway": "gateways",
    "CompressedModel": "compressedmodels",
}
# Kinds from CRDs a cluster may not have: a 404 on their create means the API is missing, and says which.
OPTIONAL_APIS: Final = {
    "HTTPRoute": "the Gateway API CRDs are not installed (gateway.networking.k8s.io/v1 HTTPRoute): install them "
    "and a Gateway controller, or set spec.rollout.trafficSplit: replicas",
    "ScaledObject": "KEDA is not installed (keda.sh/v1alpha1 ScaledObject): install KEDA, or remove "
    "spec.serving.autoscaling.kedaQuery to scale with an HPA",
}
# Children whose spec cannot change after creation: a 409 means "already there", never a patch.
IMMUTABLE_KINDS: Final = frozenset({"Job", "PersistentVolumeClaim"})
MERGE_PATCH: Final = {"Content-Type": "application/merge-patch+json"}

NotFound = kopf_errors.APINotFoundError
Conflict = kopf_errors.APIConflictError
APIError = kopf_errors.APIError
BACKGROUND: Final = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}


class MissingAPI(Exception):
    """A child's kind is not served by this cluster (its CRD is not installed)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        super().__init__(OPTIONAL_APIS.get(kind, f"the API of {kind} is not installed"))


class NameTaken(Exception):
    """A child's name belongs to an object this CompressedModel does not control (another model's, or one
    made by hand): it is never patched, adopted or deleted."""

    def __init__(self, kind: str, name: str, holder: str) -> None:
        self.kind = kind
        super().__init__(
            f"{kind} {name} already exists and belongs to {holder}; slimserve never overwrites or adopts it: "
            f"delete or rename that {kind}, or give this CompressedModel another name"
        )


def _controller(obj: Manifest) -> dict[str, Any] | None:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return next((r for r in refs if r.get("controller")), None)


def url(api_version: str, kind: str, namespace: str, name: str | None = None, subresource: str | None = None) -> str:
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    out = f"{base}/namespaces/{namespace}/{PLURALS[kind]}"
    if name:
        out += f"/{name}"
    if subresource:
        out += f"/{subresource}"
    return out


class KubeApi:
    """Requests counted per instance, so the benchmark can report requests per reconcile."""

    def __init__(self, settings: kopf.OperatorSettings, logger: logging.Logger | None = None) -> None:
        self.settings = settings
        self.logger = logger or logging.getLogger(__name__)
        self.requests = 0

    def _kw(self, logger: Any, verb: str) -> dict[str, Any]:
        self.requests += 1
        API_REQUESTS.labels(verb).inc()
        return {"settings": self.settings, "logger": logger or self.logger}

    async def get(self, api_version: str, kind: str, namespace: str, name: str, logger: Any = None) -> Manifest | None:
        try:
            path = url(api_version, kind, namespace, name)
            return await kopf_api.get(path, **self._kw(logger, "get"))  # type: ignore[no-any-return]
        except NotFound:
            return None

    async def list(
        self, api_version: str, kind: str, namespace: str, labels: dict[str, str], logger: Any = None
    ) -> list[Manifest]:
        """Objects with all `labels` (filtered here too: not every server honours labelSelector)."""
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        path = f"{url(api_version, kind, namespace)}?labelSelector={selector}"
        found = await kopf_api.get(path, **self._kw(logger, "list"))
        items = found.get("items") or []
        return [
            item
            for item in items
            if all((item.get("metadata", {}).get("labels") or {}).get(k) == v for k, v in labels.items())
        ]

    async def apply(self, manifest: Manifest, logger: Any = None) -> Outcome:
        """Create, or patch when the stored spec-hash differs; a 409 is not an error when the object is ours
        (same controller uid), and `NameTaken` when it is not."""
        meta = manifest["metadata"]
        api_version, kind, namespace, name = manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"]
        try:
            path = url(api_version, kind, namespace)
            await kopf_api.post(path, payload=manifest, **self._kw(logger, "create"))
            return "created"
        except Conflict:
            pass
        except NotFound as exc:  # a namespaced create is 404 only when the resource type itself is missing
            raise MissingAPI(kind) from exc
        if kind in IMMUTABLE_KINDS:
            return "unchanged"
        existing = await self.get(api_version, kind, namespace, name, logger)
        ours, theirs = _controller(manifest), _controller(existing or {})
        if existing is not None and ours is not None and (theirs or {}).get("uid") != ours.get("uid"):
            holder = f"{theirs.get('kind')} {theirs.get('name')}" if theirs else "no controller (made by hand?)"
            raise NameTaken(kind, name, holder)
        wanted = (meta.get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
        if (
            existing is not None
            and wanted
            and ((existing.get("metadata", {}).get("annotations") or {}).get(SPEC_HASH_ANNOTATION) == wanted)
        ):
            return "unchanged"
        await self.patch(api_version, kind, namespace, name, manifest, logger)
        return "patched"

    async def patch(
        self,
        api_version: str,
        kind: str,
        namespace: str,
        name: str,
        body: Manifest,
        logger: Any = None,
        subresource: str | None = None,
    ) -> Manifest:
        return await kopf_api.patch(  # type: ignore[no-any-return]
            url(api_version, kind, namespace, name, subresource),
            payload=body,
            headers=MERGE_PATCH,
            **self._kw(logger, "patch"),
        )

    async def delete(self, api_version: str, kind: str, namespace: str, name: str, logger: Any = None) -> bool:
        """Delete with its dependents (a Job's pods go too); False when it was not there (or its API is not)."""
        try:
            await kopf_api.delete(url(api_version, kind, namespace, name), payload=BACKGROUND,
                                  **self._kw(logger, "delete"))  # fmt: skip
            return True
        except NotFound:
            return False

    async def scale(self, namespace: str, name: str, replicas: int, logger: Any = None) -> bool:
        """Set a Deployment's replicas, and forget its spec hash so the next apply of its manifest patches it."""
        body = {"metadata": {"annotations": {SPEC_HASH_ANNOTATION: None}}, "spec": {"replicas": replicas}}
        try:
            await self.patch("apps/v1", "Deployment", namespace, name, body, logger)
            return True
        except NotFound:
            return False
