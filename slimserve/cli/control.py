"""`slimserve pause | resume | abort | promote | retry NAME -n NS`: steer a rollout in a cluster.

With `--out DIR` instead of NAME they steer a running `slimserve run --out DIR`
(`slimserve.local.controls`: a controls file the run reads between steps). In a cluster each command patches one annotation on the CompressedModel (`slimserve.api.controls`), as
`kubectl argo rollouts` does, with the kubeconfig kubectl uses; the operator acts on it at once and
says what it did in an Event (`kubectl describe compressedmodel NAME`). The `kubernetes` client is
imported inside the commands: the worker image does not need it.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, cast

import typer

from slimserve.api import API_GROUP, API_VERSION, PLURAL
from slimserve.api.controls import PAUSED_ANNOTATION, Request, request_annotation
from slimserve.cli.common import handle_errors
from slimserve.errors import InvalidInput

NAME_HELP: Final = "The CompressedModel's name (kubectl get compressedmodels); or --out DIR for a local run."
NAMESPACE_OPTION: Final = typer.Option(
    None, "--namespace", "-n", help="Its namespace. Default: the kubeconfig context's namespace, else default."
)
KUBECONFIG_OPTION: Final = typer.Option(
    None, "--kubeconfig", envvar="KUBECONFIG", help="The kubeconfig file kubectl uses. Default: ~/.kube/config."
)
CONTEXT_OPTION: Final = typer.Option(None, "--context", help="The kubeconfig context. Default: its current one.")
OUT_OPTION: Final = typer.Option(
    None, "--out", "-o", help="Steer the `slimserve run` with this --out folder instead of a cluster's rollout."
)
IN_FLIGHT: Final = ("Pending", "Compressing", "Packaging", "Deploying", "Evaluating", "Progressing")


class Cluster:
    """The CompressedModel API through the kubernetes client, with errors a person can act on."""

    def __init__(self, kubeconfig: str | None, context: str | None, namespace: str | None) -> None:
        try:
            from kubernetes import client, config
        except ImportError:
            raise InvalidInput(
                "the cluster controls need the kubernetes client: pip install 'slimserve[operator]'"
            ) from None
        path = str(Path(kubeconfig.split(os.pathsep)[0] if kubeconfig else "~/.kube/config").expanduser())
        try:
            self.api = client.CustomObjectsApi(config.new_client_from_config(config_file=path, context=context))
            _, active = config.list_kube_config_contexts(config_file=path)
            if context:
                contexts, _ = config.list_kube_config_contexts(config_file=path)
                active = next((c for c in contexts if c["name"] == context), active)
        except (config.ConfigException, OSError) as exc:
            raise InvalidInput(
                f"--kubeconfig = '{path}': {exc}; point --kubeconfig (or KUBECONFIG) at the file kubectl uses"
            ) from None
        self.namespace = namespace or (active.get("context") or {}).get("namespace") or "default"
        self._errors = client.ApiException

    def get(self, name: str) -> dict[str, Any]:
        try:
            obj = self.api.get_namespaced_custom_object(API_GROUP, API_VERSION, self.namespace, PLURAL, name)
            return cast(dict[str, Any], obj)
        except self._errors as exc:
            if exc.status == 404:
                raise InvalidInput(
                    f"compressedmodel '{name}' not found in namespace '{self.namespace}' "
                    "(kubectl get compressedmodels -A lists them; pass -n NAMESPACE)"
                ) from None
            raise InvalidInput(f"reading compressedmodel {self.namespace}/{name}: {exc.status} {exc.reason}") from None

    def annotate(self, name: str, annotations: dict[str, str | None]) -> None:
        body = {"metadata": {"annotations": annotations}}
        try:
            self.api.patch_namespaced_custom_object(API_GROUP, API_VERSION, self.namespace, PLURAL, name, body,
                                                    _content_type="application/merge-patch+json")  # fmt: skip
        except self._errors as exc:
            raise InvalidInput(
                f"annotating compressedmodel {self.namespace}/{name}: {exc.status} {exc.reason} "
                "(your account needs patch on compressedmodels.slimserve.dev: the chart grants it to the edit and admin roles)"
            ) from None


def _target(name: str | None, out: Path | None) -> str:
    """Where the command acts: "local" (--out) or "cluster" (NAME); neither or both is refused."""
    if (name is None) == (out is None):
        raise InvalidInput("name a CompressedModel (slimserve pause NAME -n NS) or a local run (slimserve pause "
                           "--out DIR), one of the two")  # fmt: skip
    return "local" if out is not None else "cluster"


def _local(out: Path, paused: bool | None = None, request: Request | None = None) -> None:
    from slimserve.local.controls import CONTROLS_FILE, update_controls

    update_controls(out, paused, request)
    what = request or ("paused" if paused else "resumed")
    typer.echo(f"{out}: {what} ({out / CONTROLS_FILE}); a running `slimserve run --out {out}` acts on it between "
               "steps")  # fmt: skip


def _request_value() -> str:
    """A new value per request (microseconds): the operator acts once on each value."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _where(obj: dict[str, Any]) -> str:
    status = obj.get("status") or {}
    return f"{status.get('phase') or 'Pending'}: {status.get('message') or 'no status yet'}"


def _done(cluster: Cluster, name: str, what: str) -> None:
    typer.echo(
        f"compressedmodel {cluster.namespace}/{name}: {what}\n"
        f"follow it with: kubectl describe compressedmodel {name} -n {cluster.namespace}  (Events say what the "
        "operator did)"
    )


def _one_shot(name: str, request: Request, cluster: Cluster, allowed: tuple[str, ...], refusal: str) -> None:
    obj = cluster.get(name)
    phase = (obj.get("status") or {}).get("phase") or "Pending"
    if phase not in allowed:
        raise InvalidInput(f"{request} {cluster.namespace}/{name}: it is {_where(obj)}; {refusal}")
    cluster.annotate(name, {request_annotation(request): _request_value()})
    _done(cluster, name, f"{request} requested (it was {phase})")


@handle_errors
def pause(
    name: str | None = typer.Argument(None, help=NAME_HELP),
    namespace: str | None = NAMESPACE_OPTION,
    kubeconfig: str | None = KUBECONFIG_OPTION,
    context: str | None = CONTEXT_OPTION,
    out: Path | None = OUT_OPTION,
) -> None:
    """Pause a rollout: no new step starts until `slimserve resume`.

    A step being judged finishes and is recorded; then the canary keeps its weight and no deadline
    runs. Paused before the first step, the canary is deployed but gets no traffic. The pause holds
    across spec changes until resumed (condition Paused).

    Examples: slimserve pause digits -n models; slimserve pause --out out/digits
    """
    if _target(name, out) == "local":
        assert out is not None
        return _local(out, paused=True)
    assert name is not None
    cluster = Cluster(kubeconfig, context, namespace)
    obj = cluster.get(name)
    cluster.annotate(name, {PAUSED_ANNOTATION: "true"})
    _done(cluster, name, f"paused (it was {_where(obj)})")


@handle_errors
def resume(
    name: str | None = typer.Argument(None, help=NAME_HELP),
    namespace: str | None = NAMESPACE_OPTION,
    kubeconfig: str | None = KUBECONFIG_OPTION,
    context: str | None = CONTEXT_OPTION,
    out: Path | None = OUT_OPTION,
) -> None:
    """Resume a paused rollout: the next step starts now.

    Examples: slimserve resume digits -n models; slimserve resume --out out/digits
    """
    if _target(name, out) == "local":
        assert out is not None
        return _local(out, paused=False)
    assert name is not None
    cluster = Cluster(kubeconfig, context, namespace)
    cluster.get(name)
    cluster.annotate(name, {PAUSED_ANNOTATION: None})
    _done(cluster, name, "resumed")


@handle_errors
def abort(
    name: str | None = typer.Argument(None, help=NAME_HELP),
    namespace: str | None = NAMESPACE_OPTION,
    kubeconfig: str | None = KUBECONFIG_OPTION,
    context: str | None = CONTEXT_OPTION,
    out: Path | None = OUT_OPTION,
) -> None:
    """Roll back now: all traffic back on the stable, the canary drains, the Job in flight stops.

    The generation ends RolledBack (condition Promoted, reason Aborted); `slimserve retry` deploys
    and judges its candidate again without compressing.

    Locally the run ends before its next step, rolled back (exit 3).

    Examples: slimserve abort digits -n models; slimserve abort --out out/digits
    """
    if _target(name, out) == "local":
        assert out is not None
        return _local(out, request="abort")
    assert name is not None
    cluster = Cluster(kubeconfig, context, namespace)
    _one_shot(name, "abort", cluster, IN_FLIGHT, "only a rollout in flight can be aborted")


@handle_errors
def promote(
    name: str | None = typer.Argument(None, help=NAME_HELP),
    namespace: str | None = NAMESPACE_OPTION,
    kubeconfig: str | None = KUBECONFIG_OPTION,
    context: str | None = CONTEXT_OPTION,
    out: Path | None = OUT_OPTION,
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Promote the canary now, skipping the remaining steps; asks first unless --yes.

    Also the approval of a rollout with spec.rollout.approval: manual that waits for it
    (condition WaitingForApproval), and the end of a wait for confirm-promotion webhooks
    (status.waitingFor): promoted without them. The canary must be serving (Evaluating or Progressing).

    Locally the run promotes its candidate before its next step (exit 0).

    Examples: slimserve promote digits -n models --yes; slimserve promote --out out/digits
    """
    if _target(name, out) == "local":
        assert out is not None
        if not yes:
            typer.confirm(f"Promote the candidate of the run in {out} now, skipping its remaining steps?", abort=True)
        return _local(out, request="promote")
    assert name is not None
    cluster = Cluster(kubeconfig, context, namespace)
    obj = cluster.get(name)
    status = obj.get("status") or {}
    phase = status.get("phase") or "Pending"
    if phase not in ("Evaluating", "Progressing"):
        raise InvalidInput(f"promote {cluster.namespace}/{name}: it is {_where(obj)}; a canary can be promoted once "
                           "it serves (Evaluating or Progressing)")  # fmt: skip
    candidate = status.get("candidateVariant") or "the candidate"
    if not yes:
        typer.confirm(
            f"{name} ({cluster.namespace}): {candidate} is at {status.get('canaryWeight') or 0}% ({phase}). Promote it "
            f"now, skipping the remaining steps, so it serves all traffic?",
            abort=True,
        )
    _one_shot(name, "promote", cluster, ("Evaluating", "Progressing"), "")


@handle_errors
def retry(
    name: str = typer.Argument(..., help=NAME_HELP),
    namespace: str | None = NAMESPACE_OPTION,
    kubeconfig: str | None = KUBECONFIG_OPTION,
    context: str | None = CONTEXT_OPTION,
) -> None:
    """Retry a RolledBack or Failed generation without compressing again.

    Its candidate is packaged, deployed and judged from the start again from the compression
    output on the model volume (its Jobs end in -r1, -r2, ...; status.retries counts). A generation
    whose compression failed has nothing to retry: fix the cause and change the spec.

    Example: slimserve retry digits -n models
    """
    cluster = Cluster(kubeconfig, context, namespace)
    obj = cluster.get(name)
    if not (obj.get("status") or {}).get("candidateVariant"):
        raise InvalidInput(f"retry {cluster.namespace}/{name}: it is {_where(obj)}; it has no compression output to "
                           "deploy again: fix the cause and change the spec to compress again")  # fmt: skip
    _one_shot(name, "retry", cluster, ("RolledBack", "Failed"), "only a RolledBack or Failed generation is retried")
