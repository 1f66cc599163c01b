"""Rollout controls: what `slimserve pause | resume | abort | promote | retry` ask of a rollout.

In a cluster they are annotations on the CompressedModel, not spec fields: a spec change starts a
new generation (compression again), and an annotation set by the CLI survives the next
`kubectl apply` of the user's YAML. Their prefix differs from the operator's own (`slimserve.dev/`,
which kopf leaves out of the diffs it reacts to), so setting one wakes the operator at once.

- `paused` is a level: "true" while the rollout should not start another step.
- `abort`, `promote` and `retry` are one-shot requests: each value (a timestamp) is acted on once;
  the operator records the value it handled in `status.handledRequests`.

Locally (`slimserve run --out DIR`) the same requests live in DIR/controls.json, which the CLI
writes atomically and the running rollout reads between steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

CONTROL_PREFIX: Final = "rollout.slimserve.dev"
PAUSED_ANNOTATION: Final = f"{CONTROL_PREFIX}/paused"
Request = Literal["abort", "promote", "retry"]
REQUESTS: Final[tuple[Request, ...]] = ("abort", "promote", "retry")


def request_annotation(request: Request) -> str:
    return f"{CONTROL_PREFIX}/{request}"


@dataclass(frozen=True)
class Controls:
    """What the user asked: paused or not, and the latest value of each one-shot request."""

    paused: bool = False
    requests: dict[str, str] = field(default_factory=dict)  # request → value (a timestamp)

    @classmethod
    def from_annotations(cls, annotations: Mapping[str, Any] | None) -> Controls:
        annotations = annotations or {}
        paused = str(annotations.get(PAUSED_ANNOTATION) or "").strip().lower() == "true"
        requests: dict[str, str] = {
            r: str(annotations[request_annotation(r)]) for r in REQUESTS if annotations.get(request_annotation(r))
        }
        return cls(paused=paused, requests=requests)

    def pending(self, handled: Mapping[str, Any] | None) -> list[Request]:
        """The requests not acted on yet (their value differs from the one last handled), in REQUESTS order."""
        handled = handled or {}
        return [r for r in REQUESTS if r in self.requests and self.requests[r] != handled.get(r)]
