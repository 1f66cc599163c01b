"""`slimserve run`: compress → package → Triton + Prometheus → served accuracy → canary → gate → report.

Everything runs on this machine with the real components. The candidate is compared with the
*stable* model (what users get now: the baseline on a first run, the promoted variant after that)
under the same load, and its accuracy with the uncompressed baseline, so accuracy cannot drift
down one promotion at a time. Every process started here is stopped on success, failure and Ctrl-C
(context managers, plus `slimserve.triton.process.stop_all` at exit).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from rich.console import Console
from rich.table import Table

from slimserve.api.paths import check_files, data_files
from slimserve.api.report import CompressionReport, Decision, ServedRecord, StepResult, VariantRecord
from slimserve.api.resource import CompressedModel
from slimserve.errors import EXIT_INCONCLUSIVE, EXIT_OK, EXIT_ROLLED_BACK, InvalidInput
from slimserve.evaluator import gate
from slimserve.evaluator.canary import Measurement, measure_window, parse_duration
from slimserve.evaluator.load import Target
from slimserve.local import registry

log = logging.getLogger(__name__)

EXIT_CODES: Final[dict[str, int]] = {
    "Promoted": EXIT_OK,
    "RolledBack": EXIT_ROLLED_BACK,
    "Inconclusive": EXIT_INCONCLUSIVE,
}
BASELINE: Final = "baseline"
STABLE: Final = "stable"

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


def choose_candidate(
    model: CompressedModel, report: CompressionReport, stable_sha: str | None, stable_size: int | None = None
) -> VariantRecord | None:
    """The variant to roll out: the named one, or (auto) the best one within the accuracy budget.

    'Best' follows the search objective when the spec has a search (else the smallest file). After a
    promotion, auto only offers a variant that beats the stable model on that objective (judged on
    this run's record of the same file, or on its size): rolling out something worse than what users
    already get is not progress. A variant identical to the stable model is never offered.
    """
    wanted = model.spec.rollout.candidate
    by_name = {v.name: v for v in report.variants}
    if wanted != "auto":
        if wanted not in by_name:
            raise InvalidInput(
                f"spec.rollout.candidate = {wanted!r}: not in the compression report; use one of {sorted(by_name)}"
            )
        return by_name[wanted]
    search = model.spec.compression.search
    objective = str(getattr(search.objective, "value", search.objective)) if search else "size"
    keys: dict[str, Callable[[VariantRecord], float]] = {
        "size": lambda v: v.size_bytes,
        "latency": lambda v: v.latency_ms_p50,
        "throughput": lambda v: -v.throughput_rps,
    }
    key = keys[objective]
    stable = next((v for v in [report.baseline, *report.variants] if v.sha256 == stable_sha), None)

    def improves(v: VariantRecord) -> bool:
        if stable_sha is None:
            return True
        if v.sha256 == stable_sha:
            return False
        if stable is not None:
            return key(v) < key(stable)
        return objective != "size" or stable_size is None or v.size_bytes < stable_size

    if report.search and report.search.chosen in by_name and improves(by_name[report.search.chosen]):
        return by_name[report.search.chosen]
    budget = model.spec.gates.max_accuracy_drop
    eligible = [v for v in report.variants if v.accuracy_drop <= budget and improves(v)]
    return min(eligible, key=key) if eligible else None


def _served(window: gate.Window | None, accuracy: float | None) -> ServedRecord:
    w = window or gate.Window()
    return ServedRecord(
        throughput_rps=w.throughput_rps,
        p50_ms=w.p50_ms,
        p99_ms=w.p99_ms,
        error_rate=w.error_rate,
        accuracy=accuracy,
        samples=int(w.requests or 0),
    )


def _load_doc(m: Measurement) -> dict[str, Any]:
    return {
        "weight": m.weight,
        "durationS": m.load.duration_s,
        "generatorCpu": m.load.generator_cpu,
        "generatorBound": m.load.generator_bound,
        "perModel": {k: vars(v) for k, v in m.load.per_model.items()},
        "windows": {k: vars(v) for k, v in m.windows.items()},
    }


def run_local(
    model: CompressedModel,
    base_dir: Path,
    out_dir: Path,
    console: Console | None = None,
    compress: Compress | None = None,
) -> RunResult:
    """Run the whole pipeline; return the decision (exceptions for invalid input and failures)."""
    console = console or Console()
    stages = Stages(console)
    spec = model.spec
    check_files(model, base_dir)
    evaluation = data_files(model, base_dir)["evaluation"]
    step_s = parse_duration(spec.rollout.step_duration)
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidInput(f"--out = '{out_dir}': exists and is not a folder; choose a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    state = registry.load_state(out_dir, model.metadata.name)
    stable_sha = state.stable.sha256 if state.stable else None
    stable_size = (out_dir / state.stable.path).stat().st_size if state.stable else None

    compression_dir = out_dir / "compression"
    with stages.stage("compress", spinner=False):
        if compress is None:
            from slimserve.compression import run_compression

            compress = run_compression
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        with Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, transient=True,
        ) as progress:  # fmt: skip
            report = compress(model, base_dir, compression_dir, progress=progress)
    candidate = choose_candidate(model, report, stable_sha, stable_size)
    if candidate is None:
        within = [v.name for v in report.variants if v.accuracy_drop <= spec.gates.max_accuracy_drop]
        reason = (
            f"no variant within maxAccuracyDrop ({', '.join(within)}) beats the stable model "
            f"{state.stable.variant if state.stable else ''}; nothing new to roll out"
            if within
            else f"no variant is within maxAccuracyDrop {spec.gates.max_accuracy_drop} offline; nothing to roll out"
        )
        return _finish(console, out_dir, model, report, state, None, [], "Inconclusive", reason, {}, [], None)
    console.print(f"candidate: [bold]{candidate.name}[/] ({candidate.recipe})")

    # The stable model: the previous promotion (from the registry) or, on a first run, the baseline.
    stable_name = BASELINE
    served_records = [report.baseline, candidate]
    if state.stable is not None:
        stable_name = STABLE if STABLE not in {v.name for v in report.variants} else "stable-current"
        stable_path = Path("..") / state.stable.path  # relative to compression_dir
        served_records.append(
            report.baseline.model_copy(
                update={"name": stable_name, "path": str(stable_path), "sha256": state.stable.sha256}
            )
        )
    packaged = report.model_copy(update={"variants": served_records[1:]})
    repo_dir = out_dir / "repository"
    with stages.stage("package (Triton model repository, python backend)"):
        from slimserve.triton.repository import build_repository

        shutil.rmtree(repo_dir, ignore_errors=True)
        build_repository(packaged, compression_dir, repo_dir, "python", None, spec.serving)

    from slimserve.evaluator.accuracy import evidence, load_npz, predict
    from slimserve.evaluator.prometheus import PromClient, PrometheusServer
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
        prom = PromClient(prom_server.url)
        console.print(f"Triton {triton.url} (metrics {triton.metrics_target}), Prometheus {prom_server.url}")

        with stages.stage("served accuracy"):
            arrays, labels = load_npz(evaluation)
            outputs = {
                name: predict(triton.url, name, arrays)
                for name in dict.fromkeys([BASELINE, stable_name, candidate.name])
            }
            acc = evidence(outputs[BASELINE], outputs[candidate.name], labels)
            served_acc = {
                name: 100.0 * evidence(outputs[BASELINE], out, labels).candidate_correct / max(acc.n, 1)
                for name, out in outputs.items()
            }
        steps = [gate.judge_step_accuracy(spec.gates, acc)]
        decision, reason = gate.decide(
            steps, planned=len(spec.rollout.steps) + 1, failure_budget=spec.rollout.failure_budget
        )
        measurements: list[Measurement] = []
        reference: Measurement | None = None
        stable_target = Target(triton.url, stable_name, 100)
        cand_target = Target(triton.url, candidate.name, 0)
        if decision is None:
            with stages.stage(f"reference window: {stable_name} alone, {step_s:g} s"):
                reference = measure_window(prom, stable_target, None, 0, evaluation, spec.rollout, logs / "load")
                triton.check_alive()
                prom_server.check_alive()
        ref_window = reference.windows[stable_name] if reference else None
        for weight in spec.rollout.steps:
            if decision is not None:
                break
            with stages.stage(f"canary {weight}% → {candidate.name}, {step_s:g} s"):
                m = measure_window(prom, stable_target, cand_target, weight, evaluation, spec.rollout, logs / "load")
                triton.check_alive()
                prom_server.check_alive()
            measurements.append(m)
            bound = m.load.generator_bound or (reference is not None and reference.load.generator_bound)
            steps.append(
                gate.judge_step(
                    spec.gates,
                    weight,
                    m.windows[stable_name],
                    m.windows[candidate.name],
                    ref_window,
                    generator_bound=bound,
                )  # fmt: skip
            )
            decision, reason = gate.decide(steps, len(spec.rollout.steps) + 1, spec.rollout.failure_budget)
            _print_step(console, steps[-1])
        assert decision is not None
    # Every child is stopped here (ExitStack), before anything is written as final.
    last = measurements[-1].windows[candidate.name] if measurements else None
    served = {
        candidate.name: _served(last, served_acc.get(candidate.name)),
        stable_name: _served(ref_window, served_acc.get(stable_name)),
    }
    if stable_name != BASELINE:
        served[BASELINE] = _served(None, served_acc.get(BASELINE))
    extra = {"served": served, "reference": reference, "measurements": measurements, "stableName": stable_name}
    return _finish(
        console, out_dir, model, report, state, candidate, steps, decision, reason, extra, measurements, compression_dir
    )


def _print_step(console: Console, step: StepResult) -> None:
    colour = {"Pass": "green", "Fail": "red", "Inconclusive": "yellow"}[step.verdict]
    failing = [c.name for c in step.checks if c.verdict != "Pass"]
    console.print(f"  step {step.weight}%: [{colour}]{step.verdict}[/] {', '.join(failing)}")


def decision_table(steps: list[StepResult], decision: str, reason: str) -> Table:
    table = Table(title="Gate evidence (details in report.md)", header_style="bold", title_justify="left")
    for col in ("step", "check", "verdict", "value", "threshold", "baseline"):
        table.add_column(col, justify="right" if col in ("step", "value", "threshold", "baseline") else "left")
    colours = {"Pass": "green", "Fail": "red", "Inconclusive": "yellow"}
    for step in steps:
        for c in step.checks:
            table.add_row(
                f"{step.weight}%", c.name, f"[{colours[c.verdict]}]{c.verdict}[/]",
                "—" if c.value is None else f"{c.value:.3f}", "—" if c.threshold is None else f"{c.threshold:.3f}",
                "—" if c.baseline is None else f"{c.baseline:.3f}",
            )  # fmt: skip
    return table


def _finish(
    console: Console,
    out_dir: Path,
    model: CompressedModel,
    report: CompressionReport,
    state: registry.State,
    candidate: VariantRecord | None,
    steps: list[StepResult],
    decision: Decision,
    reason: str,
    extra: dict[str, Any],
    measurements: list[Measurement],
    compression_dir: Path | None,
) -> RunResult:
    from slimserve.local.report import plot_accuracy_vs_size, plot_throughput_vs_p99, write_markdown

    served: dict[str, ServedRecord] = extra.get("served", {})
    stable_name = extra.get("stableName", BASELINE)
    variants = [r.model_copy(update={"served": served.get(r.name)}) for r in [report.baseline, *report.variants]]
    reference: Measurement | None = extra.get("reference")
    stable_before = state.stable.model_dump(mode="json", by_alias=True) if state.stable else None
    doc: dict[str, Any] = {
        "model": model.metadata.name,
        "baseline": stable_name,
        "candidate": candidate.name if candidate else None,
        "decision": decision,
        "reason": reason,
        "exitCode": EXIT_CODES[decision],
        "steps": [s.to_json_dict() for s in steps],
        "variants": [v.to_json_dict() for v in variants],
        "stable": {
            "before": stable_before,
            "served": served[stable_name].to_json_dict() if stable_name in served else None,
        },
        "accuracyReference": BASELINE,
        "reference": _load_doc(reference) if reference else None,
        "load": [_load_doc(m) for m in measurements],
        "generatorBound": any(m.load.generator_bound for m in measurements),
    }
    promoted_file = None
    if decision == "Promoted" and candidate is not None and compression_dir is not None:
        promoted_file = compression_dir / candidate.path
    new_state = registry.record(
        out_dir, state, candidate.name if candidate else None, decision, reason, promoted_file,
        candidate.sha256 if candidate else "", candidate.recipe if candidate else "",
    )  # fmt: skip
    doc["stable"]["after"] = new_state.stable.model_dump(mode="json", by_alias=True) if new_state.stable else None
    path = out_dir / "report.json"
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    write_markdown(out_dir / "report.md", doc, steps)
    points = []
    if reference is not None:
        w = reference.windows[stable_name]
        points.append((stable_name, 0, w.throughput_rps or 0.0, w.p99_ms or 0.0))
    for m in measurements:
        for name, w in m.windows.items():
            if w.requests and w.p99_ms is not None and w.throughput_rps:  # a model with no traffic has no point
                points.append((name, m.weight, w.throughput_rps, w.p99_ms))
    if points:
        plot_throughput_vs_p99(out_dir / "throughput_vs_p99.png", points)
    plot_accuracy_vs_size(out_dir / "accuracy_vs_size.png", report)
    if steps:
        console.print(decision_table(steps, decision, reason))
    colour = {"Promoted": "green", "RolledBack": "red", "Inconclusive": "yellow"}[decision]
    stable_now = new_state.stable.variant if new_state.stable else BASELINE
    console.print(f"[bold {colour}]{decision}[/]: {reason}\nstable: {stable_now}; report: {path}")
    return RunResult(
        decision=decision, reason=reason, candidate=candidate.name if candidate else None, report_path=path
    )
