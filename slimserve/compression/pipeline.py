"""`run_compression`: spec in, measured variants out — the contract in docs/architecture.md.

Load the source and data sets, export the baseline, build every variant (a chain of recipe
steps), optionally search, measure all of them the same way (speed interleaved), and write
`compression-report.json`, `compression-report.md` and one ONNX file per variant. Variants are built on
the `Workbench` (slimserve.compression.workbench), which the search uses too. Work happens in a temp folder next to
`out_dir` that is renamed into place only when complete, so an interrupted or failed run never
leaves a partial variant looking finished.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import onnx
import onnxruntime as ort
import torch

from slimserve.api.paths import check_files
from slimserve.api.report import COMPRESSION_REPORT, CompressionReport, VariantFailure
from slimserve.api.resource import CompressedModel
from slimserve.api.spec import Measure
from slimserve.compression import measure
from slimserve.compression.recipes.base import progress_task
from slimserve.compression.report import write_reports
from slimserve.compression.search import run_search
from slimserve.compression.workbench import (
    BASELINE,
    Measured,
    Workbench,
    make_record,
)
from slimserve.errors import InvalidInput

if TYPE_CHECKING:
    from rich.progress import Progress

log = logging.getLogger(__name__)


def environment(device: torch.device, cfg: Measure) -> dict[str, str]:
    """Where and how the numbers were measured: they mean little without it."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": measure.cpu_model() or platform.processor() or platform.machine(),
        "cpuInstructionSets": measure.instruction_sets(),
        "cores": str(os.cpu_count()),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "trainingDevice": str(device),
        "measureProvider": "CPUExecutionProvider",
        "measureThreads": str(cfg.threads or "all"),
        "latencyRuns": str(cfg.latency_runs),
        "throughputBatch": str(cfg.throughput_batch),
    }


def _check_out_dir(out_dir: Path) -> None:
    foreign = (
        out_dir.is_dir()
        and any(out_dir.iterdir())
        and not any((out_dir / name).exists() for name in (COMPRESSION_REPORT, "report.json"))
    )
    if out_dir.exists() and (not out_dir.is_dir() or foreign):
        raise InvalidInput(
            f"--out = '{out_dir}': exists and is not a slimserve output (no compression-report.json); "
            "choose a new or empty folder (a previous output is replaced)"
        )


def _publish(tmp: Path, out_dir: Path) -> None:
    """Swap the finished folder into place; a previous output is removed only after the swap."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(old)
    tmp.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def run_compression(
    model: CompressedModel, base_dir: Path, out_dir: Path, progress: Progress | None = None
) -> CompressionReport:
    """Build, measure and write every variant of `model`; see the module docstring."""
    base_dir, out_dir = Path(base_dir), Path(out_dir)
    check_files(model, base_dir)
    _check_out_dir(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the output is an ordinary folder
    try:
        report = _run(model, base_dir, tmp, progress)
        shutil.rmtree(tmp / ".work", ignore_errors=True)
        _publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def _run(model: CompressedModel, base_dir: Path, out: Path, progress: Progress | None) -> CompressionReport:
    spec = model.spec.compression
    with capture_logs(out / LOG_FILE):
        bench = Workbench(model, base_dir, out, progress)
        variants = spec.variants
        baseline = bench.measure_quality(bench.build_baseline())
        results: list[Measured | VariantFailure] = []
        with progress_task(progress, "variants", len(variants)) as advance:
            for i, variant in enumerate(variants):
                results.append(bench.attempt(variant.name, variant.steps, f"spec.compression.variants[{i}]"))
                advance()
        measured = [r for r in results if isinstance(r, Measured)]
        failures = [r for r in results if isinstance(r, VariantFailure)]
        search_report = None
        chosen: Measured | None = None
        if spec.search is not None:
            search_report, chosen, failed_trials = run_search(bench, baseline, spec.search)
            failures += failed_trials
        if variants and not measured and chosen is None and not (search_report and search_report.trials):
            _all_failed(failures)
        everything = [baseline, *measured, *([chosen] if chosen else [])]
        speeds = bench.speed([m.built for m in everything])
    base_speed = speeds[BASELINE]
    metric = bench.metric
    assert metric is not None
    records = [make_record(m, speeds[m.built.name], baseline, base_speed, out, metric) for m in measured]
    if chosen is not None:
        records.append(make_record(chosen, speeds[chosen.built.name], baseline, base_speed, out, metric, passed=True))
    report = CompressionReport(
        model=model.metadata.name,
        device=str(bench.device),
        baseline=make_record(baseline, base_speed, None, None, out, metric),
        variants=records,
        search=search_report,
        failures=failures,
        environment=environment(bench.device, spec.measure),
    )
    write_reports(report, out)
    return report


def _all_failed(failures: list[VariantFailure]) -> None:
    """No variant could be built: the run has nothing to show, so it fails with every reason."""
    reasons = [f"variant {f.name} ({f.step}): {f.reason}" for f in failures]
    raise InvalidInput(reasons or ["no variant could be built"])


LOG_FILE = "compress.log"


@contextlib.contextmanager
def capture_logs(path: Path) -> Iterator[None]:
    """Every warning (Python's and libraries' logging, e.g. onnxruntime quantization's ~2,000 lines on a
    BERT graph) goes to `path` beside the report instead of the console; slimserve's own warnings
    (one line per failed variant) and errors still reach the console.
    """
    root = logging.getLogger()
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    quiet = _QuietLibraries()
    consoles = [
        h for h in root.handlers if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
    ]
    for h in consoles:
        h.addFilter(quiet)
    level = root.level
    console_levels = [h.level for h in consoles]
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    for h in consoles:  # INFO records now reach the root; the console keeps its old threshold
        h.setLevel(max(h.level, level if level != logging.NOTSET else logging.WARNING))
    ort_level = 2
    ort.set_default_logger_severity(3)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            logging.captureWarnings(True)
            try:
                yield
            finally:
                logging.captureWarnings(False)
    finally:
        ort.set_default_logger_severity(ort_level)
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()
        for h, old in zip(consoles, console_levels, strict=True):
            h.removeFilter(quiet)
            h.setLevel(old)


class _QuietLibraries(logging.Filter):
    """Console filter: slimserve's records and any error pass; other libraries' warnings go to the log only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith("slimserve") or record.levelno >= logging.ERROR
