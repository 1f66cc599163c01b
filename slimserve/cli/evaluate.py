"""`slimserve evaluate ...`: judge one weight of a rollout against running servers (the evaluator Job).

Weight 0 is the served quality check: the candidate's answers on the evaluation set against the
uncompressed baseline's (served, or its ONNX run in-process with `--reference-onnx`). A canary weight
sends that share of the load to the candidate and the same share to the control (a fresh copy of the
stable model), the rest to the stable model, and compares candidate with control over the same
seconds. The step's verdict goes into an EvaluationReport (`--out`, and on one line to `--summary-file`:
the evaluator Job's termination message); the operator feeds it into the rollout policy, as `slimserve
run` does.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from slimserve.api import load_compressed_model
from slimserve.cli.common import BASE_DIR_HELP, base_dir_for, err_console, handle_errors
from slimserve.errors import EXIT_INCONCLUSIVE, EXIT_OK, EXIT_ROLLED_BACK, InvalidInput

if TYPE_CHECKING:
    from slimserve.api.report import EvaluationReport

STEP_EXIT_CODES = {"Pass": EXIT_OK, "Fail": EXIT_ROLLED_BACK, "Inconclusive": EXIT_INCONCLUSIVE}


# Kubernetes keeps at most 4096 bytes of a termination message.
SUMMARY_LIMIT = 4000


def summary_json(report: EvaluationReport) -> str:
    """The step on one line for `--summary-file` (an evaluator Job's termination message): every check's
    name, verdict, value and threshold, the candidate's and the control's load, the quality drop."""
    doc = report.to_json_dict()
    for check in doc["step"]["checks"]:  # type: ignore[index]
        check.pop("detail", None)
    quality = doc.get("quality")
    if isinstance(quality, dict):
        doc["quality"] = {k: v for k, v in quality.items() if k not in ("detail", "method")}
    text = json.dumps(doc, separators=(",", ":"))
    if len(text) > SUMMARY_LIMIT:  # the verdicts first; the numbers stay in --out and the log
        doc.update(quality=None, load=None)
        text = json.dumps(doc, separators=(",", ":"))
    return text


def parse_labels(text: str | None, option: str) -> tuple[tuple[str, str], ...]:
    """'namespace=ns,slimserve_dev_variant=int8' → (("namespace", "ns"), ...)."""
    if not text:
        return ()
    pairs = []
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"{option} = {text!r}: use label=value pairs separated by commas")
        pairs.append((key.strip(), value.strip()))
    return tuple(pairs)


@handle_errors
def evaluate(
    file: Path = typer.Argument(..., help="The CompressedModel YAML file (gates, rollout and data come from it)."),
    weight: int = typer.Option(
        ..., "--weight", min=0, max=100, help="Canary weight to judge, in percent; 0 judges served quality."
    ),
    candidate_url: str = typer.Option(..., "--candidate-url", help="KServe v2 HTTP endpoint of the candidate."),
    control_url: str = typer.Option(
        None, "--control-url", help="Endpoint of the control: a fresh copy of the stable model (canary steps)."
    ),
    stable_url: str = typer.Option(None, "--stable-url", help="Endpoint of the stable model (the rest of the load)."),
    model_name: str = typer.Option(
        None, "--model", help="Model name served at every endpoint (one client-facing name)."
    ),
    candidate_model: str = typer.Option(None, "--candidate-model", help="Candidate's model name, if it differs."),
    control_model: str = typer.Option(None, "--control-model", help="Control's model name, if it differs."),
    stable_model: str = typer.Option(None, "--stable-model", help="Stable model name, if it differs."),
    candidate_labels: str = typer.Option(
        None,
        "--candidate-labels",
        help="Prometheus label matchers of the candidate's series, e.g. namespace=ns,slimserve_dev_variant=int8.",
    ),
    control_labels: str = typer.Option(None, "--control-labels", help="Prometheus label matchers of the control."),
    reference_onnx: Path = typer.Option(
        None, "--reference-onnx", help="Uncompressed baseline ONNX, run in-process for the quality check."
    ),
    reference_url: str = typer.Option(None, "--reference-url", help="Or: endpoint serving the baseline."),
    reference_model: str = typer.Option(
        "baseline", "--reference-model", help="Baseline model name at --reference-url."
    ),
    prometheus_url: str = typer.Option(None, "--prometheus-url", help="Prometheus scraping the Triton servers."),
    scrape_interval: str = typer.Option(
        "1s", "--scrape-interval", help="Prometheus' scrape interval of Triton (windows are sized from it)."
    ),
    out: Path = typer.Option(..., "--out", help="Where to write the EvaluationReport JSON."),
    summary_file: Path = typer.Option(
        None,
        "--summary-file",
        help="Also write the step on one line (under 4 KiB) here: the operator's evaluator Jobs pass "
        "/dev/termination-log, so the verdict reaches the operator without any API access.",
    ),
    base_dir: Path = typer.Option(None, "--base-dir", help=BASE_DIR_HELP),
) -> None:
    """Judge one weight. Exit codes: 0 the step passed, 3 it failed, 4 inconclusive, 2 invalid input,
    1 internal failure."""
    from slimserve.api.paths import RELATIVE_HINT, data_files
    from slimserve.api.report import EvaluationReport, ServedQuality, TargetLoad
    from slimserve.evaluator.canary import PrometheusCapacity, Roles, Timing, parse_duration
    from slimserve.evaluator.load import Target
    from slimserve.evaluator.prometheus import PromClient
    from slimserve.evaluator.rollout import Judge
    from slimserve.evaluator.served import load_npz, predict_onnx
    from slimserve.processes import install_signal_handlers, stop_all
    from slimserve.storage import localize

    install_signal_handlers()
    model, folder = localize(loaded := load_compressed_model(file), base_dir_for(file, base_dir, loaded))
    spec = model.spec
    evaluation = data_files(model, folder)["evaluation"]
    if not evaluation.is_file():
        raise InvalidInput(f"spec.data.evaluation = '{evaluation}': file not found; fix the path ({RELATIVE_HINT})")
    names = {
        "candidate": candidate_model or model_name,
        "control": control_model or model_name,
        "stable": stable_model or model_name,
    }
    if not names["candidate"]:
        raise InvalidInput("--model (or --candidate-model) is missing: name the model the endpoints serve")
    if weight > 0:
        missing = [
            o
            for o, v in (
                ("--control-url", control_url),
                ("--prometheus-url", prometheus_url),
                ("--model or --control-model", names["control"]),
            )
            if not v
        ]
        if missing:
            raise InvalidInput(f"--weight {weight}: a canary step needs {', '.join(missing)}")
    if weight == 0 and not (reference_onnx or reference_url):
        raise InvalidInput("--weight 0 judges served quality: give --reference-onnx or --reference-url")
    interval = parse_duration(scrape_interval, "--scrape-interval")
    timing = Timing.of(spec.rollout, interval)
    candidate = Target(
        candidate_url,
        names["candidate"],
        0,
        "candidate",
        parse_labels(candidate_labels, "--candidate-labels") or (("model", names["candidate"]),),
    )
    control = Target(
        control_url or candidate_url,
        names["control"] or names["candidate"],
        0,
        "control",
        parse_labels(control_labels, "--control-labels") or (("model", names["control"] or ""),),
    )
    stable = Target(stable_url or control.url, names["stable"] or control.model, 0, "stable")
    reference: Target | object
    if weight == 0 and reference_onnx is not None:
        arrays, _ = load_npz(evaluation)
        reference = predict_onnx(reference_onnx, arrays, spec.quality.output)
    else:
        reference = Target(reference_url or "", reference_model, 0, "reference")
    work = out.parent / f".{out.stem}-work"
    judge = Judge(
        spec=spec, roles=Roles(stable, candidate, control), data=evaluation,
        capacity=PrometheusCapacity(PromClient(prometheus_url or ""), interval),
        work_dir=work, reference=reference, base_dir=folder, timing=timing,  # type: ignore[arg-type]
    )  # fmt: skip
    try:
        step, measurement = judge.step(weight)
    finally:
        stop_all()
    report = EvaluationReport(
        candidate=candidate.model, control=control.model, weight=weight, step=step,
        quality=ServedQuality.model_validate(dataclasses.asdict(judge.quality)) if judge.quality else None,
        load={k: TargetLoad.model_validate(v) for k, v in measurement.summary.items()} if measurement else None,
    )  # fmt: skip
    text = json.dumps(report.to_json_dict(), indent=2)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    if summary_file is not None:
        summary_file.write_text(summary_json(report) + "\n")
    failing = ", ".join(c.name for c in step.checks if c.verdict != "Pass")
    err_console.print(
        f"{'quality' if weight == 0 else f'{weight}%'}: {step.verdict}{' (' + failing + ')' if failing else ''} → {out}"
    )
    raise typer.Exit(STEP_EXIT_CODES[step.verdict])
