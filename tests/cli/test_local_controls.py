"""`slimserve pause|resume|abort|promote --out DIR` steering a local run between its steps."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from typer.testing import CliRunner

from slimserve.cli.main import app
from slimserve.evaluator.rollout import run_rollout
from slimserve.local.controls import CONTROLS_FILE, RunControls, read_controls, update_controls
from tests.kube.test_reconcile import FakeJudge, _model


class SteeredJudge(FakeJudge):
    """Passes every step; after the `at`-th step it runs `then` (the user typing a command)."""

    def __init__(self, model, at: int, then) -> None:  # type: ignore[no-untyped-def]
        super().__init__(model, [])
        self.count, self.at, self.then = 0, at, then

    def step(self, weight: int):  # type: ignore[no-untyped-def]
        self.count += 1
        if self.count == self.at:
            self.then()
        return super().step(weight)


def test_abort_and_promote_end_a_run_before_its_next_step(tmp_path: Path) -> None:
    update_controls(tmp_path, request="abort")  # an earlier run's request: ignored
    control = RunControls(tmp_path, manual_approval=False, say=print, poll_s=0.01)
    judge = SteeredJudge(_model(), 2, lambda: update_controls(tmp_path, request="abort"))
    outcome = run_rollout(judge, control=control)  # type: ignore[arg-type]
    assert outcome.decision == "RolledBack" and "aborted by hand" in outcome.reason
    assert [s.weight for s in outcome.steps] == [0, 10]
    control = RunControls(tmp_path, manual_approval=False, say=print, poll_s=0.01)
    judge = SteeredJudge(_model(), 2, lambda: update_controls(tmp_path, request="promote"))
    outcome = run_rollout(judge, control=control)  # type: ignore[arg-type]
    assert outcome.decision == "Promoted" and "skipping the remaining steps" in outcome.reason
    assert [s.weight for s in outcome.steps] == [0, 10]


def test_pause_holds_the_run_until_resumed(tmp_path: Path) -> None:
    said: list[str] = []
    resumed = threading.Timer(0.3, lambda: update_controls(tmp_path, paused=False))
    control = RunControls(tmp_path, manual_approval=False, say=said.append, poll_s=0.01)
    judge = SteeredJudge(_model(), 1, lambda: (update_controls(tmp_path, paused=True), resumed.start()))
    outcome = run_rollout(judge, control=control)  # type: ignore[arg-type]
    assert outcome.decision == "Promoted" and [s.weight for s in outcome.steps] == [0, 10, 50, 100]
    assert said == [f"paused before the step at 10%: slimserve resume --out {tmp_path} goes on"]


def test_manual_approval_waits_for_promote(tmp_path: Path) -> None:
    said: list[str] = []

    def say(text: str) -> None:
        said.append(text)
        update_controls(tmp_path, request="promote")

    model = _model(rollout={"steps": [10, 50, 100], "stepDuration": "10s", "approval": "manual"})
    control = RunControls(tmp_path, manual_approval=True, say=say, poll_s=0.01)
    outcome = run_rollout(FakeJudge(model, []), control=control)  # type: ignore[arg-type]
    assert outcome.decision == "Promoted" and outcome.reason.startswith("approved by hand")
    assert len(outcome.steps) == 4 and "waiting for approval" in said[0]


def test_concurrent_commands_lose_nothing(tmp_path: Path) -> None:
    def hammer(request: str) -> None:
        for _ in range(20):
            update_controls(tmp_path, request=request)  # type: ignore[arg-type]
            update_controls(tmp_path, paused=True)

    threads = [threading.Thread(target=hammer, args=(r,)) for r in ("abort", "promote", "retry")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    controls = read_controls(tmp_path)
    assert controls.paused and set(controls.requests) == {"abort", "promote", "retry"}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_the_cli_writes_the_controls_file(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["pause", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / CONTROLS_FILE).read_text())["paused"] is True
    assert runner.invoke(app, ["promote", "--out", str(tmp_path)], input="n\n").exit_code == 1
    assert "promote" not in read_controls(tmp_path).requests
    assert runner.invoke(app, ["promote", "--out", str(tmp_path), "--yes"]).exit_code == 0
    assert "promote" in read_controls(tmp_path).requests and read_controls(tmp_path).paused
    neither = runner.invoke(app, ["abort"])
    assert neither.exit_code == 2 and "one of the two" in neither.output
    missing = runner.invoke(app, ["pause", "--out", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "not a folder" in missing.output
