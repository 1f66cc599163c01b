"""The operator's Kubernetes client: get, list, server-side apply, merge patch, delete.

Built on kubernetes_asyncio's dynamic client. Why that one: it is generated from the Kubernetes
OpenAPI and released with each Kubernetes minor; it runs on aiohttp, which kopf already brings (no
second HTTP stack in the operator image); it logs in the two ways kopf does, with the official
loaders (the pod's service account with token refresh, or a kubeconfig, exec plugins included); and its
dynamic client finds a kind's URL through API discovery, so there is no table of plurals here and a
kind whose CRD is not installed is known before any request. kr8s has no server-side apply;
lightkube has a typed one, but decodes every answer into strict typed models and brings httpx2,
msgspec and its models package.

Children the operator owns are written with server-side apply (field manager `FIELD_MANAGER`,
forced: every field in a manifest is the operator's to set). Jobs and PVCs are created once and
never changed: a 409 there means "already there". A refused or unanswered request is an `APIError`,
which the handlers turn into a retry of the whole pass.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable
from typing import Any, Final, Literal

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.config import ConfigException
from kubernetes_asyncio.dynamic import DynamicClient
from kubernetes_asyncio.dynamic.exceptions import DynamicApiError, ResourceNotFoundError
from kubernetes_asyncio.dynamic.resource import Resource

from slimserve import __version__
from slimserve.operator.builders import SPEC_HASH_ANNOTATION
from slimserve.operator.metrics import API_REQUESTS
from slimserve.operator.settings import FIELD_MANAGER

Manifest = dict[str, Any]
Outcome = Literal["created", "patched", "unchanged"]

# Kinds from CRDs a cluster may not have: applying one the cluster does not serve says which, and what to do.
OPTIONAL_APIS: Final = {
    "HTTPRoute": "the Gateway API CRDs are not installed (gateway.networking.k8s.io/v1 HTTPRoute): install them "
    "and a Gateway controller, or set spec.rollout.trafficSplit: replicas",
    "ScaledObject": "KEDA is not installed (keda.sh/v1alpha1 ScaledObject): install KEDA, or remove "
    "spec.serving.autoscaling.kedaQuery to scale with an HPA",
}
# Children whose spec cannot change after creation: a 409 means "already there", never a patch.
IMMUTABLE_KINDS: Final = frozenset({"Job", "PersistentVolumeClaim"})
MERGE_PATCH: Final = "application/merge-patch+json"
USER_AGENT: Final = f"slimserve-operator/{__version__}"
BACKGROUND: Final = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}


class APIError(Exception):
    """A request the API server refused (`status` is its HTTP status), or one that never got an answer (0)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(f"{status} {message}" if status else message)


class NotFound(APIError):
    """404: the object is not there."""


class Conflict(APIError):
    """409: the object is already there, or changed since it was read."""


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


def _error(status: int, message: str) -> APIError:
    return {404: NotFound, 409: Conflict}.get(status, APIError)(status, message)


async def _read(response: aiohttp.ClientResponse) -> Any:
    text = await response.text()
    try:
        return json.loads(text) if text else {}
    except ValueError:  # an error from a proxy in front of the API server: plain text
        return {"message": text.strip()}


class KubeApi:
    """Requests counted per instance, so the benchmark can report requests per reconcile."""

    def __init__(self, dynamic: DynamicClient, logger: logging.Logger | None = None) -> None:
        self.dynamic = dynamic
        self.logger = logger or logging.getLogger(__name__)
        self.requests = 0
        self._resources: dict[tuple[str, str], Resource] = {}
        self._discovery = asyncio.Lock()

    @classmethod
    async def connect(cls, logger: logging.Logger | None = None) -> KubeApi:
        """Log in as kopf does: the pod's service account in a cluster, else the kubeconfig ($KUBECONFIG or
        ~/.kube/config); then read the cluster's API groups (the kinds themselves are discovered on first use)."""
        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)
        except ConfigException:
            # $KUBECONFIG read now, not when kubernetes_asyncio was imported (its default).
            await config.load_kube_config(os.environ.get("KUBECONFIG"), client_configuration=configuration)
        api = client.ApiClient(configuration)
        api.user_agent = USER_AGENT  # in audit logs (and the benchmark's emulator): the operator's own requests
        try:
            dynamic = await DynamicClient(api)
        except BaseException:
            await api.close()
            raise
        return cls(dynamic, logger)

    async def close(self) -> None:
        await self.dynamic.client.close()

    async def _resource(self, api_version: str, kind: str) -> Resource | None:
        """The kind's API resource, or None when this cluster does not serve it (asked again next time: a CRD
        may be installed meanwhile). One discovery at a time: concurrent first uses would each fetch it."""
        key = (api_version, kind)
        if key not in self._resources:
            async with self._discovery:
                if key not in self._resources:
                    prefix = "apis" if "/" in api_version else "api"  # core kinds: else every group's v1 is searched
                    try:
                        found = await self.dynamic.resources.get(prefix=prefix, api_version=api_version, kind=kind)
                    except ResourceNotFoundError:
                        return None
                    except (TimeoutError, aiohttp.ClientError) as exc:
                        raise APIError(0, f"discovery of {kind}: {type(exc).__name__}: {exc}") from exc
                    self._resources[key] = found
        return self._resources[key]

    async def _send(self, verb: str, what: str, request: Awaitable[Any], logger: Any) -> Any:
        """One counted request; its JSON answer, or the API server's refusal as `APIError`."""
        self.requests += 1
        API_REQUESTS.labels(verb).inc()
        (logger or self.logger).debug("%s %s", verb, what)
        try:
            response = await request
            body = await _read(response)
        except DynamicApiError as exc:
            raise _error(exc.status or 0, exc.summary()) from exc
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise APIError(0, f"{type(exc).__name__}: {exc}") from exc
        # The dynamic client returns error statuses instead of raising them when it is not asked to decode
        # the answer (tomplus/kubernetes_asyncio#402), and that is how it is called here: checked here.
        if response.status >= 400:
            raise _error(response.status, str((body or {}).get("message") or response.reason))
        return body

    async def get(self, api_version: str, kind: str, namespace: str, name: str, logger: Any = None) -> Manifest | None:
        resource = await self._resource(api_version, kind)
        if resource is None:
            return None
        try:
            request = self.dynamic.get(resource, name=name, namespace=namespace, serialize=False)
            return await self._send("get", f"{kind} {namespace}/{name}", request, logger)  # type: ignore[no-any-return]
        except NotFound:
            return None

    async def list(
        self, api_version: str, kind: str, namespace: str, labels: dict[str, str], logger: Any = None
    ) -> list[Manifest]:
        """Objects with all `labels` (filtered here too: not every server honours labelSelector)."""
        resource = await self._resource(api_version, kind)
        if resource is None:
            return []
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        request = self.dynamic.get(resource, namespace=namespace, label_selector=selector, serialize=False)
        found = await self._send("list", f"{kind} {namespace} {selector}", request, logger)
        items = found.get("items") or []
        return [
            item
            for item in items
            if all((item.get("metadata", {}).get("labels") or {}).get(k) == v for k, v in labels.items())
        ]

    async def apply(self, manifest: Manifest, logger: Any = None) -> Outcome:
        """Server-side apply, skipped when the stored spec-hash is the manifest's (no write when nothing
        changed). An existing object this model does not control is `NameTaken`, never applied over;
        Jobs and PVCs are only ever created."""
        meta = manifest["metadata"]
        api_version, kind, namespace, name = manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"]
        resource = await self._resource(api_version, kind)
        if resource is None:
            raise MissingAPI(kind)
        what = f"{kind} {namespace}/{name}"
        if kind in IMMUTABLE_KINDS:
            try:
                request = self.dynamic.create(resource, body=manifest, namespace=namespace, serialize=False)
                await self._send("create", what, request, logger)
                return "created"
            except Conflict:
                return "unchanged"
        existing = await self.get(api_version, kind, namespace, name, logger)
        if existing is not None:
            ours, theirs = _controller(manifest), _controller(existing)
            if ours is not None and (theirs or {}).get("uid") != ours.get("uid"):
                holder = f"{theirs.get('kind')} {theirs.get('name')}" if theirs else "no controller (made by hand?)"
                raise NameTaken(kind, name, holder)
            wanted = (meta.get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
            if wanted and (existing.get("metadata", {}).get("annotations") or {}).get(SPEC_HASH_ANNOTATION) == wanted:
                return "unchanged"
        request = self.dynamic.server_side_apply(
            resource, body=manifest, namespace=namespace, field_manager=FIELD_MANAGER, force_conflicts=True,
            serialize=False,
        )  # fmt: skip
        try:
            await self._send("apply", what, request, logger)
        except NotFound as exc:  # an apply creates a missing object: a 404 means the kind went away
            raise MissingAPI(kind) from exc
        return "created" if existing is None else "patched"

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
        """A JSON merge patch (of the object, or of its `subresource`, e.g. status)."""
        resource = await self._resource(api_version, kind)
        if resource is None:
            raise NotFound(404, str(MissingAPI(kind)))
        target = resource.subresources[subresource] if subresource else resource
        request = self.dynamic.patch(target, body=body, name=name, namespace=namespace, content_type=MERGE_PATCH,
                                     serialize=False)  # fmt: skip
        return await self._send("patch", f"{kind} {namespace}/{name}", request, logger)  # type: ignore[no-any-return]

    async def delete(self, api_version: str, kind: str, namespace: str, name: str, logger: Any = None) -> bool:
        """Delete with its dependents (a Job's pods go too); False when it was not there (or its API is not)."""
        resource = await self._resource(api_version, kind)
        if resource is None:
            return False
        try:
            request = self.dynamic.delete(resource, name=name, namespace=namespace, body=BACKGROUND, serialize=False)
            await self._send("delete", f"{kind} {namespace}/{name}", request, logger)
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
