"""Constant work per model: a model wakes on its own children's events and its own clock only."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from slimserve.operator.metrics import REGISTRY
from slimserve.operator.wakeups import Wakeups, next_resync, seconds_until_due
from tests.kube.emulator import SUMMARY, emulated_cluster, example_model, running_operator

pytestmark = [pytest.mark.filterwarnings("ignore:read_binary is deprecated:DeprecationWarning")]


def _job(name: str, model: str, status: dict | None = None, ns: str = "models") -> dict:
    return {"metadata": {"name": name, "namespace": ns, "labels": {"slimserve.dev/model": model}},
            "status": status or {}}  # fmt: skip


def test_a_childs_status_change_wakes_its_own_model_only() -> None:
    wakeups = Wakeups()
    a, b = wakeups.register("models", "a"), wakeups.register("models", "b")
    assert not wakeups.child_event("Job", "ADDED", _job("a-compress-g1", "a"))  # just created: nothing to read
    assert not a.is_set() and not b.is_set()
    assert wakeups.child_event("Job", "MODIFIED", _job("a-compress-g1", "a", {"succeeded": 1}))
    assert a.is_set() and not b.is_set()
    a.clear()
    assert not wakeups.child_event("Job", "MODIFIED", _job("a-compress-g1", "a", {"succeeded": 1}))  # a label edit
    assert wakeups.child_event("Job", "DELETED", _job("a-compress-g1", "a", {"succeeded": 1}))
    assert a.is_set() and not b.is_set()
    assert not wakeups.child_event("Job", "MODIFIED", _job("x-compress-g1", "x", {"failed": 1}))  # not ours


def test_a_listing_after_a_restart_wakes_nobody_but_a_listing_after_a_gap_wakes_what_changed() -> None:
    wakeups = Wakeups()
    a = wakeups.register("models", "a")
    assert not wakeups.child_event("Job", None, _job("a-compress-g1", "a", {"active": 1}))  # resume reconciles
    assert not wakeups.child_event("Job", None, _job("a-compress-g1", "a", {"active": 1}))  # relist, unchanged
    assert wakeups.child_event("Job", None, _job("a-compress-g1", "a", {"succeeded": 1}))  # missed while away
    assert a.is_set()


def test_deadlines_and_drains_wake_a_model_on_time() -> None:
    now = datetime(2026, 1, 1, 0, 0, 0, tzinfo=UTC)
    assert seconds_until_due({}, now) is None
    assert seconds_until_due({"deadline": "2026-01-01T00:01:00Z"}, now) == pytest.approx(61.5)
    due = seconds_until_due({"deadline": "2026-01-01T01:00:00Z", "drain": {"at": "2026-01-01T00:00:30Z"}}, now)
    assert due == pytest.approx(31.5)
    assert seconds_until_due({"deadline": "2025-12-31T00:00:00Z"}, now) == 0.0


def test_the_resync_backs_off_while_nothing_changes() -> None:
    delays = [10.0]
    for _ in range(6):
        delays.append(next_resync(delays[-1], changed=False, first=10, longest=300))
    assert delays == [10, 20, 40, 80, 160, 300, 300]
    assert next_resync(300, changed=True, first=10, longest=300) == 10


def _wakeups(cause: str) -> float:
    return REGISTRY.get_sample_value("slimserve_operator_wakeups_total", {"cause": cause}) or 0.0


def test_a_job_finishing_moves_its_model_on_without_any_polling(tmp_path: Path) -> None:
    """With the resync ten minutes away, only the Jobs' watch events can move the model on."""

    async def scenario() -> None:
        async with emulated_cluster(tmp_path) as cluster, running_operator(interval=600):
            await cluster.create_model(example_model())
            await cluster.create_model(example_model("other"))
            await cluster.wait(lambda: cluster.get("batch/v1/jobs", "digits-compress-g1"), message="compression Job")
            timers, children = _wakeups("timer"), _wakeups("child")
            await cluster.finish_job("digits-compress-g1", summary=SUMMARY)
            await cluster.wait_phase("digits", "Packaging", timeout=5)
            await cluster.finish_job("digits-package-g1")
            await cluster.wait_phase("digits", "Deploying", timeout=5)
            assert cluster.status("other")["phase"] == "Compressing"  # not woken by its neighbour's Jobs
            assert _wakeups("timer") == timers
            assert 2 <= _wakeups("child") - children <= 3  # each Job's status change (the pod's create is not watched)

    asyncio.run(scenario())
