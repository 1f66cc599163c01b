"""Two operator processes with kopf peering against the emulator: one active, a clean takeover.

The benchmark's own run (`python -m benchmarks.operator --replicas 2`), at a small N: the emulator
and both operators as their own processes, as the chart runs them (`kopf run --peering=...`).
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from benchmarks.operator import run_takeover

pytestmark = [pytest.mark.kube]


@pytest.mark.parametrize(
    ("sig", "lifetime", "within"), [(signal.SIGTERM, 60, 10.0), (signal.SIGKILL, 10, 25.0)], ids=["term", "kill"]
)
def test_the_standby_takes_over_every_model_once(
    tmp_path: Path, sig: signal.Signals, lifetime: int, within: float
) -> None:
    """Models created before and after the active replica stops all get exactly one compression Job."""
    run = asyncio.run(run_takeover(12, tmp_path, replicas=2, kill_after=1.0, kill_signal=sig, lifetime=lifetime,
                                   timeout=90))  # fmt: skip
    assert run["priorities_distinct"]
    assert not any(run["standby_reconciles_before_the_stop"].values())  # paused while the active one lives
    assert run["models_with_one_job"] == 12 and run["models_with_several_jobs"] == 0
    assert run["standby_first_reconcile_seconds"] is not None and run["standby_first_reconcile_seconds"] < within
    standby = next(name for name in run["reconciles_by_replica"] if name != run["active_before"])
    assert run["reconciles_by_replica"][standby] >= 6  # the models created after the stop were its own
    if sig == signal.SIGTERM:
        assert run["peers_left"] == [standby]  # a clean exit removes its keep-alive: the handover is at once
