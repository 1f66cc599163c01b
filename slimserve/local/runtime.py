"""`slimserve run`: compress → package → Triton + Prometheus → served quality → canary → gate → report.

Everything runs on this machine with the real components. The candidate is compared with a fresh
copy of the *stable* model (what users get now: the baseline on a first run, the promoted variant
after that) that gets the same share of the load in the same seconds, and its quality with the
uncompressed baseline, so quality cannot drift down one promotion at a time. What is judged next and
when to stop is `slimserve.evaluator.policy`'s call, the same as in the operator. Every process
started here is stopped on success, failure and Ctrl-C (context managers, plus
`slimserve.processes.stop_all` at exit).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from rich.console import Console
from rich.table import Table

from slimserve.api.choice import choose_candidate, no_candidate_reason
from slimserve.api.paths import check_files, data_files
from slimserve.api.report import (
    ROLLOUT_REPORT,
    CompressionReport,
    Decision,
    LoadWindow,
    RolloutReport,
    ServedQuality,
    StepResult,
    TargetLoad,
    VariantRecord,
    Window,
)
from slimserve.api.resource import CompressedModel
from slimserve.errors import EXIT_INCONCLUSIVE, EXIT_OK, EXIT_ROLLED_BACK, InvalidInput
from slimserve.evaluator.canary import Measurement, Roles, Timing
from slimserve.evaluator.load import Target
from slimserve.evaluator.prometheus import SCRAPE_INTERVAL_S
from slimserve.local import registry, reuse

if TYPE_CHECKING:
    from slimserve.evaluator.rollout import Outcome

log = logging.getLogger(__name__)

EXIT_CODES: Final[dict[str, int]] = {
    "Promoted": EXIT_OK,
    "RolledBack": EXIT_ROLLED_BACK,
    "Inconclusive": EXIT_INCONCLUSIVE,
}
BASELINE: Final = "baseline"
STABLE: Final = "stable_current"  # Triton model names with '_' never collide with a variant (a DNS label)
CONTROL: Final = "stable_control"

Compress = Callable[..., CompressionReport]


@dataclass(frozen=True)
class RunResult:
    decision: Decision
    reason: str
    candidate: str | None
    report_path: Path

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.decision]


class Stages:
    """One line per stage with its duration; a spinner while it runs."""

    def __init__(self, console: Console) -> None:
        self.console = console

    @contextlib.contextmanager
    def stage(self, title: str, spinner: bool = True) -> Iterator[None]:
        """`spinner=False` for a stage that shows its own rich progress (one live display at a time)."""
        started = time.monotonic()
        status = self.console.status(f"[bold]{title}[/] ...") if spinner else contextlib.nullcontext()
        with status:
            try:
                yield
            except BaseException:
                self.console.print(f"[red]✗[/] {title} ({time.monotonic() - started:.1f} s)")
                raise
        self.console.print(f"[green]✓[/] {title} ({time.monotonic() - started:.1f} s)")


def _load_window(m: Measurement) -> LoadWindow:
    return LoadWindow(
        weight=m.weight,
        windows=[Window(start=round(a, 3), end=round(b, 3)) for a, b in m.windows],
        generator_cpu=max((x.generator_cpu for x in m.loads), default=None),
        generator_bound=m.generator_bound,
        per_target={name: TargetLoad.model_validate(t) for name, t in m.summary.items()},
        locust=[{k: v for k, v in x.to_dict().items() if k not in ("per_model", "total")} for x in m.loads],
    )


def run_local(
    model: CompressedModel,
    base_dir: Path,
    out_dir: Path,
    console: Console | None = None,
    compress: Compress | None = None,
    recompress: bool = False,
) -> RunResult:
    """Run the whole pipeline; return the decision (exceptions for invalid input and failures).

    The out folder is locked for the whole run: a second run on it is refused (exit 2). A finished
    compression in it is reused when its inputs are unchanged (`slimserve.local.reuse`), unless
    `recompress`.
    """
    console = console or Console()
    check_files(model, base_dir)
    Timing.of(model.spec.rollout, SCRAPE_INTERVAL_S)  # a step too short to judge is invalid input, before any work
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidInput(f"--out = '{out_dir}': exists and is not a folder; choose a folder")
    with registry.exclusive(out_dir):
        return _run(model, base_dir, out_dir, console, compress, recompress)


def _run(
    model: CompressedModel,
    base_dir: Path,
    out_dir: Path,
    console: Console,
    compress: Compress | None,
    recompress: bool = False,
) -> RunResult:
    stages = Stages(console)
    spec = model.spec
    evaluation = data_files(model, base_dir)["evaluation"]
    state = registry.load_state(out_dir, model.metadata.name)
    stable_sha = state.stable.sha256 if state.stable else None
    stable_size = (out_dir / state.stable.path).stat().st_size if state.stable else None

    compression_dir = out_dir / "compression"
    key = reuse.input_key(model, base_dir)
    report = None if recompress else reuse.reusable(compression_dir, key)
    if report is not None:
        console.print(f"[green]✓[/] compress: reused {compression_dir} (same spec.source, spec.data, spec.quality, "
                      f"spec.compression and input files; key {key[:12]}; --recompress to run it again)")  # fmt: skip
    else:
        with stages.stage("compress", spinner=False):
            if compress is None:
                from slimserve.compression import run_compression

                compress = run_compression
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            reuse.forget(compression_dir)
            with Progress(
                SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), console=console, transient=True,
            ) as progress:  # fmt: skip
                report = compress(model, base_dir, compression_dir, progress=progress)
            reuse.remember(compression_dir, key)
    candidate = choose_candidate(model, report, stable_sha, stable_size)
    if candidate is None:
        reason = no_candidate_reason(model, report, state.stable.variant if state.stable else None)
        return _finish(console, out_dir, model, report, state, None, None, "Inconclusive", reason)
    console.print(f"candidate: [bold]{candidate.name}[/] ({candidate.recipe})")

    # The stable model: the previous promotion (from the registry) or, on a first run, the baseline.
    # The control is a second copy of it that gets the candidate's share of the load. Triton model
    # names with '_' can never collide with a variant's name (DNS labels have none).
    stable_record = report.baseline
    stable_name = BASELINE
    if state.stable is not None:
        stable_name = STABLE
        stable_record = report.baseline.model_copy(
            update={"name": STABLE, "path": str(Path("..") / state.stable.path), "sha256": state.stable.sha256}
        )
    served = [candidate, stable_record.model_copy(update={"name": CONTROL})]
    if stable_name != BASELINE:
        served.append(stable_record)
    packaged = report.model_copy(update={"variants": served})
    repo_dir = out_dir / "repository"
    with stages.stage("package (Triton model repository, python backend)"):
        from slimserve.triton.repository import build_repository

        shutil.rmtree(repo_dir, ignore_errors=True)
        build_repository(packaged, compression_dir, repo_dir, "python", None, spec.serving)

    from slimserve.evaluator.canary import ProcessCpuCapacity
    from slimserve.evaluator.prometheus import PrometheusServer
    from slimserve.evaluator.rollout import Judge, run_rollout
    from slimserve.triton.server import TritonServer

    logs = out_dir / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    with contextlib.ExitStack() as stack:
        with stages.stage("start Triton and Prometheus"):
            # Ports are chosen up front, so Prometheus starts first: its target discovery settles
            # (~5 s) while Triton loads the models.
            triton = TritonServer(repo_dir, logs)
            prom_server = stack.enter_context(PrometheusServer([triton.metrics_target], logs / "prometheus"))
            stack.enter_context(triton)
            prom_server.wait_for_targets()
        console.print(f"Triton {triton.url} (metrics {triton.metrics_target}), Prometheus {prom_server.url}")

        def target(name: str, role: str) -> Target:
            return Target(triton.url, name, 0, role, (("model", name),))

        def healthy() -> None:
            triton.check_alive()
            prom_server.check_alive()

        judge = Judge(
            spec=spec,
            roles=Roles(
                stable=target(stable_name, "stable"),
                candidate=target(candidate.name, "candidate"),
                control=target(CONTROL, "control"),
            ),
            capacity=ProcessCpuCapacity(triton.model_processes),
            data=evaluation,
            work_dir=logs / "load",
            reference=target(BASELINE, "reference"),
            base_dir=base_dir,
            timing=Timing.of(spec.rollout, SCRAPE_INTERVAL_S),
            health=healthy,
        )
        timing = judge.timing
        assert timing is not None

        def stage_title(weight: int) -> str:
            if weight == 0:
                return f"served quality: {candidate.name} vs baseline ({spec.quality.metric})"
            return f"canary {weight}% → {candidate.name} (and {weight}% → control), ≥{timing.step_s:g} s"

        def judged(step: StepResult, _: Measurement | None) -> None:
            _print_step(console, step)

        from slimserve.local.controls import RunControls
        from slimserve.local.webhooks import LocalWebhooks

        hooks = None
        if spec.rollout.webhooks:
            stable_variant = state.stable.variant if state.stable else BASELINE
            hooks = LocalWebhooks(model, candidate.name, stable_variant, lambda text: console.print(text))
            hooks.tell("Progressing", f"rolling out candidate {candidate.name} (stable: {stable_variant})")

        def say(text: str) -> None:  # what the run waits for is an event, as in a cluster
            console.print(text)
            if hooks is not None:
                hooks.tell("Progressing", text)

        control = RunControls(out_dir, spec.rollout.approval == "manual", say, webhooks=hooks)
        outcome = run_rollout(judge, on_step=judged, stage=lambda weight: stages.stage(stage_title(weight)),
                              control=control)  # fmt: skip
    # Every child is stopped here (ExitStack), before anything is written as final.
    result = _finish(
        console, out_dir, model, report, state, candidate, outcome, outcome.decision, outcome.reason, compression_dir
    )
    if hooks is not None:  # after the promotion (or rollback) is recorded, as Flagger's post-rollout
        hooks.tell(outcome.decision, outcome.reason, ended=outcome.decision in ("Promoted", "RolledBack"))
    return result


def _print_step(console: Console, step: StepResult) -> None:
    colour = {"Pass": "green", "Fail": "red", "Inconclusive": "yellow"}[step.verdict]
    failing = [c.name for c in step.checks if c.verdict != "Pass"]
    console.print(f"  step {step.weight}%: [{colour}]{step.verdict}[/] {', '.join(failing)}")


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def decision_table(steps: list[StepResult], decision: str, reason: str) -> Table:
    table = Table(title="Gate evidence (details in rollout-report.md)", header_style="bold", title_justify="left")
    for col in ("step", "check", "verdict", "value", "90% interval", "threshold"):
        table.add_column(col, justify="left" if col in ("check", "verdict") else "right")
    colours = {"Pass": "green", "Fail": "red", "Inconclusive": "yellow"}
    for step in steps:
        for c in step.checks:
            interval = "—" if c.low is None or c.high is None else f"[{c.low:.4g}, {c.high:.4g}]"
            table.add_row(
                "quality" if step.weight == 0 else f"{step.weight}%", c.name, f"[{colours[c.verdict]}]{c.verdict}[/]",
                _num(c.value), interval, _num(c.threshold),
            )  # fmt: skip
    return table


def _finish(
    console: Console,
    out_dir: Path,
    model: CompressedModel,
    report: CompressionReport,
    state: registry.State,
    candidate: VariantRecord | None,
    outcome: Outcome | None,
    decision: Decision,
    reason: str,
    compression_dir: Path | None = None,
) -> RunResult:
    """Write the evidence, then the decision: rollout-report.json (atomic), rollout-report.md and plots, then state.json.

    The report comes first, so a crash in between leaves a report without a promotion, never a
    promotion without its report.
    """
    from slimserve.local.report import plot_accuracy_vs_size, plot_throughput_vs_p99, write_markdown

    steps = outcome.steps if outcome else []
    measurements = outcome.measurements if outcome else []
    quality = outcome.quality if outcome else None
    stable_before = state.stable.model_dump(mode="json", by_alias=True) if state.stable else None
    promoted = decision == "Promoted" and candidate is not None and compression_dir is not None
    stable_after = candidate.name if promoted and candidate else (state.stable.variant if state.stable else BASELINE)
    doc = RolloutReport(
        model=model.metadata.name,
        stable=state.stable.variant if state.stable else BASELINE,
        candidate=candidate.name if candidate else None,
        decision=decision,
        reason=reason,
        exit_code=EXIT_CODES[decision],
        metric=report.baseline.metric,
        metric_detail=report.baseline.metric_detail,
        served_quality=ServedQuality.model_validate(dataclasses.asdict(quality)) if quality else None,
        quality_reference=BASELINE,
        steps=steps,
        load=[_load_window(m) for m in measurements],
        variants=[report.baseline, *report.variants],
        stable_before=stable_before,
        stable_after=stable_after,
        generator_bound=any(m.generator_bound for m in measurements),
    )
    path = out_dir / ROLLOUT_REPORT
    registry.write_atomic(path, json.dumps(doc.to_json_dict(), indent=2, default=str) + "\n")
    write_markdown(out_dir / ROLLOUT_REPORT.replace(".json", ".md"), doc)
    points = [
        (name, m.weight, float(t["rps"] or 0.0), float(t["p99Ms"] or 0.0))
        for m in measurements
        for name, t in m.summary.items()
        if t["requests"] and t["p99Ms"] is not None
    ]
    if points:
        plot_throughput_vs_p99(out_dir / "throughput_vs_p99.png", points)
    plot_accuracy_vs_size(out_dir / "quality_vs_size.png", report)
    new_state = registry.record(
        out_dir, state, candidate.name if candidate else None, decision, reason,
        compression_dir / candidate.path if promoted and candidate and compression_dir else None,
        candidate.sha256 if candidate else "", candidate.recipe if candidate else "",
    )  # fmt: skip
    if steps:
        console.print(decision_table(steps, decision, reason))
    colour = {"Promoted": "green", "RolledBack": "red", "Inconclusive": "yellow"}[decision]
    stable_now = new_state.stable.variant if new_state.stable else BASELINE
    console.print(f"[bold {colour}]{decision}[/]: {reason}\nstable: {stable_now}; report: {path}")
    return RunResult(
        decision=decision, reason=reason, candidate=candidate.name if candidate else None, report_path=path
    )
