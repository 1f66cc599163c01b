"""Rollout webhooks, as in Flagger: call one, and what its answer means at each point of a rollout.

Both `slimserve run` and the operator use this module; it imports only the standard library and the
API, so the operator image stays small. A call is an HTTP POST of JSON that ends in an `Answer`
(ok, refused with a status code, timeout, error); `gate` turns the answers of one point's webhooks
into what the rollout does:

- start (before the first step): confirm-rollout webhooks, then pre-rollout webhooks;
- step (before every later step): rollback webhooks;
- promotion (the gate passed every step): rollback webhooks, then confirm-promotion webhooks.

confirm-* wait (asked again every `retry_seconds`, nothing counts as failed) until every one answers
2xx; a pre-rollout answer other than 2xx is a failed check, asked again, and one failure more than
`failureBudget` rolls back; a rollback webhook answering 2xx rolls back now (a timeout or an error
does not). post-rollout (after Promoted or RolledBack) and event webhooks are told, never asked:
their failures are logged and change nothing.
"""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from slimserve.api.spec import Rollout, Webhook, duration_seconds

Kind = Literal["ok", "refused", "timeout", "error"]
Point = Literal["start", "step", "promotion"]
Action = Literal["go", "ask", "wait", "retry", "rollback"]
# The webhook types asked at each point, in order: a later type is asked only once the earlier ones said go.
POINTS: Final[dict[Point, tuple[str, ...]]] = {
    "start": ("confirm-rollout", "pre-rollout"),
    "step": ("rollback",),
    "promotion": ("rollback", "confirm-promotion"),
}
TOLD: Final = frozenset({"post-rollout", "event"})
BODY_LIMIT: Final = 200  # characters of a refusal's body kept for the status and Events
USER_AGENT: Final = "slimserve-webhook/1"


@dataclass(frozen=True)
class Answer:
    """How one call ended: ok (2xx), refused (another status), timeout, or error (no HTTP answer)."""

    kind: Kind
    status: int | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.kind == "ok"

    def describe(self) -> str:
        """'HTTP 200', 'HTTP 403: not yet', 'timed out after 10s', 'error: connection refused'."""
        if self.kind in ("ok", "refused"):
            return f"HTTP {self.status}" + (f": {self.detail}" if self.detail else "")
        if self.kind == "timeout":
            return f"timed out after {self.detail}"
        return f"error: {self.detail}"


@dataclass(frozen=True)
class Verdict:
    """What the rollout does at a point: go on, ask `ask`, wait, retry (a failed check), or roll back."""

    action: Action
    reason: str = ""
    ask: list[Webhook] = field(default_factory=list)
    hook: Webhook | None = None  # the webhook that made the rollout wait, retry or roll back

    @property
    def waiting_for(self) -> str:
        """What the rollout waits for, for status.waitingFor: "confirm-promotion webhook 'qa' (HTTP 403)"."""
        return self.reason if self.action in ("wait", "retry") else ""


def named(hook: Webhook) -> str:
    return f"{hook.type} webhook '{hook.name}'"


def of_type(hooks: Sequence[Webhook], *types: str) -> list[Webhook]:
    return [h for h in hooks if h.type in types]


def gate(
    hooks: Sequence[Webhook],
    point: Point,
    answers: Mapping[str, Answer],
    failures: int = 0,
    failure_budget: int = 0,
) -> Verdict:
    """The verdict of `point` from the answers so far (by webhook name); `failures` failed pre-rollout checks
    were counted before this one."""
    for kind in POINTS[point]:
        mine = of_type(hooks, kind)
        missing = [h for h in mine if h.name not in answers]
        if missing:
            return Verdict("ask", ask=missing)
        for hook in mine:
            answer = answers[hook.name]
            what = f"{named(hook)} ({answer.describe()})"
            if kind == "rollback" and answer.ok:
                return Verdict("rollback", f"{named(hook)} asked for a rollback ({answer.describe()})", hook=hook)
            if kind in ("confirm-rollout", "confirm-promotion") and not answer.ok:
                return Verdict("wait", what, hook=hook)
            if kind == "pre-rollout" and not answer.ok:
                failed = failures + 1
                if failed > failure_budget:
                    return Verdict(
                        "rollback",
                        f"{what} failed; {failed} failed pre-rollout check(s) > failureBudget {failure_budget}",
                        hook=hook,
                    )
                return Verdict("retry", f"{what} failed ({failed} of {failure_budget + 1} allowed)", hook=hook)
    return Verdict("go")


def retry_seconds(rollout: Rollout) -> float:
    """How often a waiting rollout asks again: once per canary window (stepDuration), at least every second."""
    return max(duration_seconds(rollout.step_duration), 1.0)


def timeout_seconds(hook: Webhook) -> float:
    return duration_seconds(hook.timeout)


# ---------------------------------------------------------------------------------------------
# payloads and calls
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    """What a payload says about the rollout."""

    model: str
    namespace: str
    phase: str
    variant: str | None = None  # the candidate rolled out
    stable: str | None = None
    weight: int | None = None
    message: str = ""


def payload(hook: Webhook, context: Context) -> dict[str, Any]:
    """Flagger's shape (name, namespace, phase, type, metadata) plus the variants; Slack's is {text}."""
    if hook.format == "slack":
        where = f"{context.namespace}/{context.model}" if context.namespace else context.model
        return {"text": f"[{where}] {context.phase}: {context.message}".rstrip(": ")}
    return {
        "name": context.model,
        "namespace": context.namespace,
        "phase": context.phase,
        "type": str(hook.type),
        "variant": context.variant,
        "stable": context.stable,
        "weight": context.weight,
        "message": context.message,
        "metadata": dict(hook.metadata),
    }


def call(hook: Webhook, body: Mapping[str, Any]) -> Answer:
    """POST `body` as JSON; any 2xx is ok. Blocks at most about `hook.timeout` (connect and each read)."""
    timeout = timeout_seconds(hook)
    request = urllib.request.Request(
        hook.url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": USER_AGENT},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # http(s) only: the spec's pattern
            return Answer("ok", response.status)
    except urllib.error.HTTPError as exc:
        try:
            text = exc.read(BODY_LIMIT * 4).decode(errors="replace")
        except (OSError, TimeoutError):
            text = ""
        return Answer("refused", exc.code, " ".join(text.split())[:BODY_LIMIT])
    except TimeoutError:
        return Answer("timeout", detail=hook.timeout)
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            return Answer("timeout", detail=hook.timeout)
        return Answer("error", detail=_reason(exc.reason))
    except (OSError, ValueError) as exc:
        return Answer("error", detail=_reason(exc))


def _reason(exc: object) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host ({exc.strerror})"
    return str(getattr(exc, "strerror", None) or exc) or type(exc).__name__


async def call_async(hook: Webhook, body: Mapping[str, Any]) -> Answer:
    """`call` in a thread, never holding the event loop, and given up on a second after its timeout."""
    limit = timeout_seconds(hook) + 1.0
    try:
        return await asyncio.wait_for(asyncio.to_thread(call, hook, body), limit)
    except TimeoutError:
        return Answer("timeout", detail=hook.timeout)


async def ask_all(calls: Sequence[tuple[Webhook, Mapping[str, Any]]]) -> dict[str, Answer]:
    """Every call at once; the answers by webhook name."""
    answers = await asyncio.gather(*(call_async(hook, body) for hook, body in calls))
    return {hook.name: answer for (hook, _), answer in zip(calls, answers, strict=True)}
