"""When a CompressedModel is reconciled again: a child changed, a deadline is due, or a slow resync.

Its children (Jobs, Deployments) are watched; a watch event whose child status differs from the
last one seen wakes that child's model, and only it (the child's `slimserve.dev/model` label
names it). Nothing here lists objects: each model is woken by its own children's events and its
own clock, so the work per model does not depend on how many models there are.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import zlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from slimserve.operator.builders import LABEL_MODEL

Key = tuple[str, str]  # (namespace, name)
# kopf gives listed objects (the watch's first page, and every page after a reconnect) type None.
LISTED: Final = None
# A second after the status's deadline: the phase machine compares whole seconds with `>`.
DUE_MARGIN_S: Final = 1.5


class Wakeups:
    """One event per model, set by its children's watch events; child status digests to skip no-ops."""

    def __init__(self) -> None:
        self._events: dict[Key, asyncio.Event] = {}
        self._seen: dict[tuple[str, str, str], str] = {}  # (kind, namespace, name) → status digest

    def register(self, namespace: str, name: str) -> asyncio.Event:
        return self._events.setdefault((namespace, name), asyncio.Event())

    def forget(self, namespace: str, name: str) -> None:
        self._events.pop((namespace, name), None)

    def child_event(self, kind: str, event_type: str | None, child: Mapping[str, Any]) -> bool:
        """Wake the owner when its child is deleted or its status changed; True when one was woken.

        A child seen first in a listing (the operator just started: the resume handler reconciles
        anyway) only records its status. An unknown owner (not reconciled by this operator) is not woken.
        """
        meta = child.get("metadata") or {}
        namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        owner = str((meta.get("labels") or {}).get(LABEL_MODEL) or "")
        key = (kind, namespace, name)
        if event_type == "DELETED":
            self._seen.pop(key, None)
            changed = True
        else:
            digest = status_digest(child.get("status"))
            before = self._seen.get(key)
            self._seen[key] = digest
            changed = digest != before and (before is not None or (event_type is not LISTED and digest != EMPTY))
        event = self._events.get((namespace, owner))
        if changed and event is not None:
            event.set()
            return True
        return False


def status_digest(status: Any) -> str:
    return hashlib.blake2b(json.dumps(status or {}, sort_keys=True).encode(), digest_size=8).hexdigest()


EMPTY: Final = status_digest({})


def seconds_until_due(status: Mapping[str, Any], now: datetime) -> float | None:
    """Seconds until the phase's deadline, the drain's end or a waiting webhook's next ask, whichever is first;
    None if none."""
    times = [status.get("deadline"), (status.get("drain") or {}).get("at"), status.get("webhookRetryAt")]
    due = [(_parse(t) - now).total_seconds() + DUE_MARGIN_S for t in times if t]
    return max(min(due), 0.0) if due else None


def next_resync(previous: float, changed: bool, first: float, longest: float) -> float:
    """Back off while nothing changes (doubling up to `longest`); start over at `first` after a change."""
    return first if changed else min(previous * 2, longest)


def jitter(uid: str) -> float:
    """A fixed factor in [0.9, 1.1) per object, so models created together do not resync together."""
    return 0.9 + 0.2 * (zlib.crc32(uid.encode()) % 1000) / 1000


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(str(text).replace("Z", "+00:00"))
