"""`slimserve evaluate ...`: one canary step against running servers, written as an EvaluationReport.

The operator's evaluator Job runs this once per canary step: served accuracy (baseline vs
candidate, through their services), a reference window with the baseline alone, a Locust window
with `--weight` percent of the requests on the candidate, PromQL over the same seconds, the gate.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from slimserve.api import load_compressed_model
from slimserve.cli.main import BASE_DIR_HELP, app, base_dir_for, err_console, handle_errors
from slimserve.errors import InvalidInput


def patch_configmap(ref: str, report_json: str) -> None:
    """Put the report into `data["report.json"]` of ConfigMap NS/NAME (in-cluster, else kubeconfig)."""
    namespace, _, name = ref.partition("/")
    if not namespace or not name:
        raise InvalidInput(f"--configmap = {ref!r}: use NAMESPACE/NAME")
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    client.CoreV1Api().patch_namespaced_config_map(name, namespace, {"data": {"report.json": report_json}})


@app.command()
@handle_errors
def evaluate(
    file: Path = typer.Argument(..., help="The CompressedModel YAML file (gates, rollout and data come from it)."),
    baseline_url: str = typer.Option(..., "--baseline-url", help="KServe v2 HTTP endpoint serving the baseline."),
    candidate_url: str = typer.Option(..., "--candidate-url", help="KServe v2 HTTP endpoint serving the candidate."),
    baseline_model: str = typer.Option(..., "--baseline-model", help="Baseline model name in Triton."),
    candidate_model: str = typer.Option(..., "--candidate-model", help="Candidate model name in Triton."),
    weight: int = typer.Option(..., "--weight", min=1, max=100, help="Percent of the requests sent to the candidate."),
    prometheus_url: str = typer.Option(..., "--prometheus-url", help="Prometheus scraping both Tritons."),
    out: Path = typer.Option(..., "--out", help="Where to write the EvaluationReport JSON."),
    configmap: str = typer.Option(None, "--configmap", help="NAMESPACE/NAME of a ConfigMap to patch with the report."),
    base_dir: Path = typer.Option(None, "--base-dir", help=BASE_DIR_HELP),
) -> None:
    """Judge one canary step. Exit codes: 0 the step passed (Promoted), 3 failed (RolledBack),
    4 inconclusive, 2 invalid input, 1 internal failure."""
    from slimserve.api.paths import RELATIVE_HINT, data_files
    from slimserve.api.report import EvaluationReport
    from slimserve.evaluator import gate
    from slimserve.evaluator.accuracy import served_accuracy
    from slimserve.evaluator.canary import measure_window
    from slimserve.evaluator.load import Target
    from slimserve.evaluator.prometheus import PromClient
    from slimserve.local.runtime import EXIT_CODES
    from slimserve.triton.process import install_signal_handlers, stop_all

    install_signal_handlers()
    model = load_compressed_model(file)
    spec = model.spec
    evaluation = data_files(model, base_dir_for(file, base_dir))["evaluation"]
    if not evaluation.is_file():
        raise InvalidInput(f"spec.data.evaluation = '{evaluation}': file not found; fix the path ({RELATIVE_HINT})")
    work = out.parent / f".{out.stem}-work"
    try:
        accuracy = served_accuracy(baseline_url, baseline_model, candidate_model, evaluation, candidate_url)
        prom = PromClient(prometheus_url)
        base = Target(baseline_url, baseline_model, 100)
        cand = Target(candidate_url, candidate_model, 0)
        reference = measure_window(prom, base, None, 0, evaluation, spec.rollout, work)
        step_m = measure_window(prom, base, cand, weight, evaluation, spec.rollout, work)
    finally:
        stop_all()
    step = gate.judge_step(
        spec.gates, weight, step_m.windows[baseline_model], step_m.windows[candidate_model],
        reference.windows[baseline_model], accuracy,
        generator_bound=step_m.load.generator_bound or reference.load.generator_bound,
    )  # fmt: skip
    decision, reason = gate.decide([step], planned=1, failure_budget=0)
    assert decision is not None
    report = EvaluationReport(
        baseline=baseline_model, candidate=candidate_model, decision=decision, reason=reason, steps=[step]
    )
    text = json.dumps(report.to_json_dict(), indent=2)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    if configmap:
        patch_configmap(configmap, text)
    err_console.print(f"{decision}: {reason} → {out}")
    raise typer.Exit(EXIT_CODES[decision])
