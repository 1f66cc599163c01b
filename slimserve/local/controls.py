"""Controls of a running `slimserve run --out DIR`: `slimserve pause|resume|abort|promote --out DIR`.

The CLI writes `DIR/controls.json` (paused, and the latest value of each one-shot request) by
read-modify-write under `DIR/.controls.lock` and `registry.write_atomic`: two commands at once never
lose each other's change, and the run never reads half a file. The run (which holds `DIR/.lock`
for its whole length) reads the file between steps; a request present when the run started was
meant for an earlier run and is ignored.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final

from slimserve.api.controls import REQUESTS, Controls, Request
from slimserve.api.report import Decision
from slimserve.errors import InvalidInput
from slimserve.evaluator import policy
from slimserve.local import registry

if TYPE_CHECKING:
    from slimserve.local.webhooks import LocalWebhooks

CONTROLS_FILE: Final = "controls.json"
CONTROLS_LOCK: Final = ".controls.lock"
POLL_SECONDS: Final = 1.0


def read_controls(out_dir: Path) -> Controls:
    path = out_dir / CONTROLS_FILE
    if not path.is_file():
        return Controls()
    try:
        doc = json.loads(path.read_text())
    except ValueError as exc:
        raise InvalidInput(f"{path}: not a slimserve controls file ({exc}); remove it") from None
    requests: dict[str, str] = {r: str(doc[r]) for r in REQUESTS if doc.get(r)}
    return Controls(paused=bool(doc.get("paused")), requests=requests)


@contextlib.contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    with open(out_dir / CONTROLS_LOCK, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield


def update_controls(out_dir: Path, paused: bool | None = None, request: Request | None = None) -> Controls:
    """Set paused and/or add a request (a new value each time), atomically and without losing another's write."""
    if not out_dir.is_dir():
        raise InvalidInput(f"--out = '{out_dir}': not a folder; pass the --out folder of a `slimserve run`")
    with _locked(out_dir):
        current = read_controls(out_dir)
        doc: dict[str, object] = {"paused": current.paused if paused is None else paused, **current.requests}
        if request is not None:
            doc[request] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        registry.write_atomic(out_dir / CONTROLS_FILE, json.dumps(doc, indent=2) + "\n")
    return read_controls(out_dir)


class RunControls:
    """The `control` hook of `run_rollout` for one run: abort and promote end it; pause and approval hold it;
    then the rollout webhooks (spec.rollout.webhooks) may hold it or decide."""

    def __init__(
        self,
        out_dir: Path,
        manual_approval: bool,
        say: Callable[[str], None],
        poll_s: float = POLL_SECONDS,
        webhooks: LocalWebhooks | None = None,
    ) -> None:
        self.out_dir = out_dir
        self.manual = manual_approval
        self.say = say
        self.poll_s = poll_s
        self.webhooks = webhooks
        self.handled = dict(read_controls(out_dir).requests)  # earlier runs' requests

    def __call__(self, nxt: policy.NextStep) -> tuple[Decision, str] | None:
        said = ""
        while True:
            controls = read_controls(self.out_dir)
            pending = controls.pending(self.handled)
            self.handled.update(controls.requests)
            if "abort" in pending:
                return "RolledBack", "aborted by hand (slimserve abort)"
            if "promote" in pending:
                why = (
                    "approved by hand"
                    if nxt.decision == "Promoted"
                    else "promoted by hand, skipping the remaining steps"
                )
                return "Promoted", f"{why} (slimserve promote)"
            if nxt.decision == "Promoted" and self.manual:
                wait = f"every step passed; waiting for approval: slimserve promote --out {self.out_dir} (or abort)"
            elif nxt.decision is None and controls.paused:
                wait = f"paused before the step at {nxt.weight}%: slimserve resume --out {self.out_dir} goes on"
            elif self.webhooks is None:
                return None
            else:
                check = self.webhooks.check(nxt)
                if check[0] == "go":
                    return None
                if check[0] == "decide":
                    return check[1]
                wait = f"{check[1]} (slimserve abort|promote --out {self.out_dir} end the wait)"
            if wait != said:
                self.say(wait)
                said = wait
            time.sleep(self.poll_s)
