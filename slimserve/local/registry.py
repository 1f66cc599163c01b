"""The local registry `DIR/state.json`: which variant is stable, and the history of decisions.

Promotion copies the candidate's ONNX file into `DIR/registry/`, so the stable model survives the
next run's compression (which replaces its output folder). A rollback or an inconclusive run only
appends to the history; the stable variant stays what it was.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from slimserve.errors import InvalidInput

STATE_FILE: Final = "state.json"
LOCK_FILE: Final = ".lock"
REGISTRY_DIR: Final = "registry"
BASELINE: Final = "baseline"  # the stable model before any promotion


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, alias_generator=to_camel, extra="forbid")


class StableModel(_Model):
    variant: str
    sha256: str
    path: str  # relative to DIR
    recipe: str = ""
    promoted_at: str


class HistoryEntry(_Model):
    at: str
    candidate: str | None
    decision: str
    reason: str
    stable_before: str
    stable_after: str


class State(_Model):
    model: str
    stable: StableModel | None = None
    history: list[HistoryEntry] = []


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def load_state(out_dir: Path, model: str) -> State:
    path = out_dir / STATE_FILE
    if not path.is_file():
        return State(model=model)
    try:
        state = State.model_validate_json(path.read_text())
    except ValueError as exc:
        raise InvalidInput(f"{path}: not a slimserve state file ({exc}); move it away to start afresh") from None
    if state.model != model:
        raise InvalidInput(
            f"{path} belongs to model '{state.model}', not '{model}'; use another --out folder for this model"
        )
    if state.stable is not None and not (out_dir / state.stable.path).is_file():
        raise InvalidInput(f"{path}: stable model file {state.stable.path} is missing; restore it or remove state.json")
    return state


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write a file so that readers see the old content or the whole new one, even after a crash.

    A uniquely named temporary file in the same folder, flushed to disk, renamed over the target,
    and the folder synced so the rename itself survives a power cut.
    """
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def save_state(out_dir: Path, state: State) -> None:
    """Write atomically: a crash mid-write never leaves a half state file."""
    write_atomic(out_dir / STATE_FILE, json.dumps(state.model_dump(mode="json", by_alias=True), indent=2) + "\n")


@contextlib.contextmanager
def exclusive(out_dir: Path) -> Iterator[None]:
    """Hold `DIR/.lock` for a whole run; a second run on the same folder is refused, not interleaved."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOCK_FILE
    handle = open(path, "a+")  # noqa: SIM115 - held for the whole run
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise InvalidInput(
                f"--out = '{out_dir}': another slimserve run ({holder}) is using this folder; wait for it to "
                "finish, or choose another --out folder"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        yield
    finally:
        handle.close()


def record(
    out_dir: Path,
    state: State,
    candidate: str | None,
    decision: str,
    reason: str,
    promoted_file: Path | None = None,
    sha256: str = "",
    recipe: str = "",
) -> State:
    """Append the decision; on promotion, copy the candidate's ONNX into the registry as stable."""
    before = state.stable.variant if state.stable else BASELINE
    stable = state.stable
    if decision == "Promoted" and promoted_file is not None and candidate is not None:
        registry = out_dir / REGISTRY_DIR
        registry.mkdir(parents=True, exist_ok=True)
        target = registry / f"{candidate}-{sha256[:12]}.onnx"
        if not target.is_file():  # the same name and hash is the same file: never rewrite a stable in place
            data = promoted_file.with_name(promoted_file.name + ".data")
            if data.is_file():
                write_atomic(registry / data.name, data.read_bytes())
            write_atomic(target, promoted_file.read_bytes())
        stable = StableModel(
            variant=candidate, sha256=sha256, path=str(target.relative_to(out_dir)), recipe=recipe, promoted_at=_now()
        )
    entry = HistoryEntry(
        at=_now(),
        candidate=candidate,
        decision=decision,
        reason=reason,
        stable_before=before,
        stable_after=stable.variant if stable else BASELINE,
    )
    new = state.model_copy(update={"stable": stable, "history": [*state.history, entry]})
    save_state(out_dir, new)
    return new
