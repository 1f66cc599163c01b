"""One canary window: Locust traffic split by weight, then Prometheus read over the same seconds.

Shared by the local runtime (`slimserve run`, all steps against the local Triton) and the
evaluator Job (`slimserve evaluate`, one step against the cluster's services).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from slimserve.api.spec import Rollout
from slimserve.errors import InvalidInput
from slimserve.evaluator.gate import Window
from slimserve.evaluator.load import LoadResult, Target, run_locust
from slimserve.evaluator.prometheus import PromClient, wait_for_scrape

_DURATION = re.compile(r"^([0-9]+)(ms|s|m)$")


def parse_duration(text: str, field: str = "spec.rollout.stepDuration") -> float:
    """'15s' → 15.0, '500ms' → 0.5, '2m' → 120.0 (seconds)."""
    match = _DURATION.match(text)
    if not match:
        raise InvalidInput(f"{field} = {text!r}: use a number with ms, s or m, e.g. 15s")
    value, unit = int(match.group(1)), match.group(2)
    return value * {"ms": 0.001, "s": 1.0, "m": 60.0}[unit]


@dataclass(frozen=True)
class Measurement:
    """What one window produced: client-side (Locust) and server-side (Prometheus) per model."""

    weight: int
    load: LoadResult
    windows: dict[str, Window]


def measure_window(
    prom: PromClient,
    baseline: Target,
    candidate: Target | None,
    weight: int,
    data: Path,
    rollout: Rollout,
    work_dir: Path,
    duration_s: float | None = None,
) -> Measurement:
    """Send `weight`% of the requests to the candidate (0 with no candidate: the reference window).

    The Prometheus window is Locust's own first-to-last request span, so both models are read
    over exactly the seconds the load ran.
    """
    duration = duration_s if duration_s is not None else parse_duration(rollout.step_duration)
    targets = [Target(baseline.url, baseline.model, 100 - weight)]
    if candidate is not None and weight > 0:
        targets.append(Target(candidate.url, candidate.model, weight))
    targets = [t for t in targets if t.weight > 0]
    load = run_locust(
        targets,
        data,
        users=rollout.users,
        spawn_rate=rollout.spawn_rate,
        duration_s=duration,
        work_dir=work_dir,
        name=f"step-{weight:03d}",
    )
    wait_for_scrape()
    # Trim the spawn ramp: the window starts when every user is running.
    ramp = min(rollout.users / max(rollout.spawn_rate, 1), load.duration_s / 2)
    span = max(load.duration_s - ramp, 1.0)
    models = [baseline.model] + ([candidate.model] if candidate is not None else [])
    windows = {m: prom.model_window(m, span, load.end) for m in models}
    return Measurement(weight=weight, load=load, windows=windows)
