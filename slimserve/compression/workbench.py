"""The workbench a compression run builds variants on: the baseline, its data and measurements, one
variant's steps applied and measured (`Workbench`), and the record each variant leaves in the report.

The search (`slimserve.compression.search`) and the pipeline both use it; it uses neither.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from slimserve.api.paths import data_files
from slimserve.api.report import VariantFailure, VariantRecord
from slimserve.api.resource import CompressedModel
from slimserve.api.spec import Step
from slimserve.compression import measure
from slimserve.compression.export import call, copy_onnx, export_onnx, sha256, size_bytes
from slimserve.compression.loading import (
    LABELS,
    DataSet,
    InputSpec,
    LoadedSource,
    load_npz,
    load_source,
    onnx_input_specs,
    specs_from_data,
)
from slimserve.compression.recipes import REGISTRY, ModelState, RecipeContext
from slimserve.compression.recipes.base import clone, progress_task
from slimserve.errors import InvalidInput
from slimserve.evaluator import quality
from slimserve.evaluator.gate import QualityEvidence

if TYPE_CHECKING:
    from rich.progress import Progress

log = logging.getLogger(__name__)

BASELINE = "baseline"


class StepFailed(Exception):
    """A variant that could not be built at `step`: recorded in the report, and the run goes on."""

    def __init__(self, step: str, reason: str, invalid: bool = False) -> None:
        super().__init__(reason)
        self.step = step
        self.reason = reason
        self.invalid = invalid


@dataclass
class Built:
    """A variant's ONNX file before measurement, with what made it."""

    name: str
    path: Path
    float_path: Path  # the float graph a quantized variant came from (counts); else `path`
    recipe: str
    seconds: float
    notes: list[str] = field(default_factory=list)


@dataclass
class Measured:
    """A built variant's counts and quality; `evidence` compares it with the baseline (None for the baseline)."""

    built: Built
    counts: measure.Counts
    score: quality.Scored
    evidence: QualityEvidence | None = None

    @property
    def drop(self) -> float:
        return self.evidence.drop if self.evidence else 0.0

    @property
    def drop_ci(self) -> tuple[float, float]:
        return (self.evidence.drop_low, self.evidence.drop_high) if self.evidence else (0.0, 0.0)

    def within(self, budget: float) -> bool:
        """The drop's whole 90% interval is within `budget` (how the gate passes it too)."""
        return self.evidence is not None and self.evidence.drop_high <= budget


def describe(steps: Sequence[Step]) -> str:
    """'prune(ratio=0.5, roundTo=4) → fineTune(epochs=8) → quantize(mode=static)'."""
    parts = []
    for step in steps:
        shown = step.params.model_dump(by_alias=True, exclude_unset=True, mode="json")
        if step.recipe == "quantize":
            shown = {"mode": step.params.model_dump(mode="json")["mode"], **shown}
        args = ", ".join(f"{k}={v}" for k, v in shown.items())
        parts.append(f"{step.recipe}({args})")
    return " → ".join(parts)


def select_device(setting: str) -> torch.device:
    """CUDA for training when asked or available ('auto'); CPU otherwise."""
    if setting == "cuda" and not torch.cuda.is_available():
        raise InvalidInput("spec.compression.device = 'cuda': no CUDA device is visible here; use auto or cpu")
    if setting in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def _npz_keys(path: Path, field_name: str) -> set[str]:
    try:
        with np.load(str(path), allow_pickle=False) as npz:
            return set(npz.files) - {LABELS}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InvalidInput(
            f"{field_name} = {str(path)!r}: not a readable .npz ({type(exc).__name__}); write it with numpy.savez"
        ) from None


def probe_module(module: torch.nn.Module, data: DataSet, path: str, names: list[str], by_name: bool) -> None:
    """Run the PyTorch model on two evaluation samples, so a shape mismatch is an input error."""
    sample = data.torch_inputs(slice(0, 2), names)
    shapes = ", ".join(f"'{n}' {list(a.shape)} {a.dtype}" for n, a in data.inputs.items())
    probe = clone(module)  # a forward pass in training mode would move BatchNorm statistics
    with contextlib.suppress(NotImplementedError):  # torch.export modules run in inference form already
        probe.eval()
    try:
        with torch.inference_mode():
            call(probe, sample, names, by_name)
    except Exception as exc:  # the model's own error says what it expected
        raise InvalidInput(
            f"spec.data.evaluation = {path!r}: the model cannot run on its samples ({shapes}): "
            f"{type(exc).__name__}: {str(exc).splitlines()[0]}; save the arrays in the shape the model takes"
        ) from None


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Workbench:
    """The loaded source, data and settings; builds and measures variants into one folder.

    The search uses the same workbench, so a trial is built and measured exactly like a
    variant the user listed.
    """

    def __init__(self, model: CompressedModel, base_dir: Path, out: Path, progress: Progress | None) -> None:
        spec = model.spec
        self.model = model
        self.base_dir = base_dir
        self.out = out
        self.work = out / ".work"
        self.work.mkdir(parents=True, exist_ok=True)
        self.progress = progress
        self.seed = spec.compression.seed
        self.device = select_device(spec.compression.device)
        files = data_files(model, base_dir)
        self.source: LoadedSource = load_source(
            spec.source, base_dir, _npz_keys(files["evaluation"], "spec.data.evaluation")
        )
        names = self.source.input_names
        declared = onnx_input_specs(self.source.onnx_path) if self.source.onnx_path else None
        self.evaluation = load_npz(files["evaluation"], "spec.data.evaluation", names, declared)
        self.specs: list[InputSpec] = declared or specs_from_data(self.evaluation)
        self.count_specs = specs_from_data(self.evaluation)  # MACs at the shapes the data really has
        if self.source.module is not None:
            probe_module(self.source.module, self.evaluation, str(files["evaluation"]), names, self.source.by_name)
        self.train: DataSet | None = None
        self.calibration: DataSet | None = None
        if "train" in files:
            self.train = load_npz(files["train"], "spec.data.train", names, self.specs)
        if "calibration" in files:
            self.calibration = load_npz(files["calibration"], "spec.data.calibration", names, self.specs)
        fixed = {s.batch for s in self.specs if s.batch}
        if fixed:
            self.source.notes.append(
                f"the source graph has a fixed batch of {fixed.pop()}: every measurement runs at that batch; "
                "export with a dynamic dim 0 to measure batch 1 and throughput separately"
            )
        self.baseline_path = out / f"{BASELINE}.onnx"
        self.baseline_outputs: np.ndarray | None = None
        self.metric: quality.Metric | None = None
        self.custom_metric = quality.load_function(spec.quality.function, base_dir) if spec.quality.function else None

    # -- building -------------------------------------------------------------------------

    def build_baseline(self) -> Built:
        t0 = time.perf_counter()
        if self.source.module is not None:
            others = [d for d in (self.train, self.calibration) if d is not None]
            export_onnx(
                clone(self.source.module),
                self.evaluation,
                self.source.input_names,
                self.baseline_path,
                self.source.by_name,
                others,
            )
            recipe = f"export({self.model.spec.source.format} → onnx, fp32)"
        else:
            assert self.source.onnx_path is not None
            copy_onnx(self.source.onnx_path, self.baseline_path)
            recipe = "source (onnx)"
        return Built(
            BASELINE, self.baseline_path, self.baseline_path, recipe, time.perf_counter() - t0, list(self.source.notes)
        )

    def context(self, name: str) -> RecipeContext:
        src = self.model.spec.source
        return RecipeContext(
            variant=name,
            input_names=self.source.input_names,
            evaluation=self.evaluation,
            work_dir=self.work,
            base_dir=self.base_dir,
            device=self.device,
            seed=self.seed,
            train=self.train,
            calibration=self.calibration,
            factory=self.source.factory,
            factory_ref=src.factory,
            progress=self.progress,
            by_name=self.source.by_name,
            teacher=self.source.module,
            metric=self.metric,
        )

    def build(self, name: str, steps: Sequence[Step], where: str, keep: bool = True) -> Built:
        """Apply `steps` to a fresh copy of the source; the result is `<name>.onnx` in the output.

        `keep=False` (search trials) writes it under the work folder instead.
        """
        t0 = time.perf_counter()
        _seed(self.seed)
        ctx = self.context(name)
        if self.source.module is not None:
            state = ModelState(module=clone(self.source.module))
        else:
            state = ModelState(onnx_path=self.baseline_path, float_onnx=self.baseline_path)
        with progress_task(self.progress, f"{name}: {len(steps)} step(s)", len(steps) + 1) as advance:
            for j, step in enumerate(steps):
                try:
                    state = REGISTRY[step.recipe](state, step.params, ctx)
                except InvalidInput as exc:
                    raise StepFailed(
                        f"steps[{j}] ({step.recipe})",
                        "; ".join(
                            f"{where}.steps[{j}].{p}" if p.startswith(step.recipe) else f"{where}: {p}"
                            for p in exc.problems
                        ),
                        invalid=True,
                    ) from None
                except Exception as exc:  # noqa: BLE001 - a recipe that breaks on this model is this variant's result
                    log.debug("variant %s failed at step %d", name, j, exc_info=True)
                    first = str(exc).strip().splitlines()[0][:400] if str(exc).strip() else ""
                    raise StepFailed(
                        f"steps[{j}] ({step.recipe})",
                        f"{where}.steps[{j}] ({step.recipe}) failed: {type(exc).__name__}: {first}",
                    ) from exc
                advance()
            try:
                state = ctx.onnx(state)
            except Exception as exc:  # noqa: BLE001
                raise StepFailed("export", f"{where}: export to ONNX failed: {type(exc).__name__}: {exc}") from exc
            advance()
        assert state.onnx_path is not None and state.float_onnx is not None
        final = (self.out if keep else self.work) / f"{name}.onnx"
        copy_onnx(state.onnx_path, final)
        quantized = state.float_onnx != state.onnx_path
        if quantized:
            ctx.notes.append("params and MACs counted on the float graph before quantization")
        float_path = state.float_onnx if quantized else final
        return Built(name, final, float_path, describe(steps), time.perf_counter() - t0, ctx.notes)

    # -- measuring ------------------------------------------------------------------------

    def measure_quality(self, built: Built) -> Measured:
        """Counts and quality; the first call must be the baseline (it resolves the metric)."""
        spec = self.model.spec
        outputs = measure.predict(
            built.path, self.evaluation, threads=spec.compression.measure.threads, output=spec.quality.output
        )
        labels, mask = self.evaluation.labels, self.evaluation.inputs.get("attention_mask")
        if self.baseline_outputs is None:
            self.baseline_outputs = outputs
            read = spec.quality.output or measure.first_output_name(built.path)
            self.metric = quality.resolve(spec.quality, outputs, labels, spec.quality.output, read)
        assert self.metric is not None
        evidence, base_score, score = quality.compare(
            self.metric, self.baseline_outputs, outputs, labels, mask, self.custom_metric, seed=self.seed
        )
        counts = measure.count(built.float_path, self.count_specs, self.evaluation)
        if built.name == BASELINE:
            return Measured(built, counts, base_score)
        return Measured(built, counts, score, evidence)

    def attempt(
        self, name: str, steps: Sequence[Step], where: str, stage: str = "variant", keep: bool = True
    ) -> Measured | VariantFailure:
        """Build and score one variant; a failure is returned as a record (and logged), never raised."""
        try:
            built = self.build(name, steps, where, keep=keep)
        except StepFailed as exc:
            failure = VariantFailure(name=name, stage=stage, step=exc.step, recipe=describe(steps), reason=exc.reason)
        else:
            try:
                return self.measure_quality(built)
            except Exception as exc:  # noqa: BLE001 - e.g. a graph onnxruntime cannot load, a changed output shape
                log.debug("variant %s failed to measure", name, exc_info=True)
                reason = exc.render() if isinstance(exc, InvalidInput) else f"{type(exc).__name__}: {exc}"
                failure = VariantFailure(
                    name=name,
                    stage=stage,
                    step="measure",
                    recipe=describe(steps),
                    reason=f"{where}: measuring failed: {reason.splitlines()[0][:400]}",
                )
        log.info("%s %s failed at %s: %s", stage, name, failure.step, failure.reason)  # the CLI prints one line
        return failure

    def speed(self, items: Sequence[Built], runs: int | None = None) -> dict[str, measure.Speed]:
        cfg = self.model.spec.compression.measure
        runs = runs or cfg.latency_runs
        blocks = 10
        with progress_task(self.progress, "measuring latency (interleaved)", blocks) as advance:
            return measure.measure_speed(
                {b.name: b.path for b in items},
                self.evaluation,
                runs,
                cfg.throughput_batch,
                threads=cfg.threads,
                blocks=blocks,
                on_block=advance,
            )


def make_record(
    m: Measured,
    speed: measure.Speed,
    base: Measured | None,
    base_speed: measure.Speed | None,
    out: Path,
    metric: quality.Metric,
    passed: bool | None = None,
) -> VariantRecord:
    size = size_bytes(m.built.path)
    base_size = size_bytes(base.built.path) if base else size
    base_p50 = base_speed.latency_ms_p50 if base_speed else speed.latency_ms_p50
    return VariantRecord(
        name=m.built.name,
        recipe=m.built.recipe,
        path=str(m.built.path.relative_to(out)),
        sha256=sha256(m.built.path),
        size_bytes=size,
        compression_ratio=round(base_size / size, 3),
        params=m.counts.params,
        macs=m.counts.macs,
        metric=metric.name,
        metric_detail=metric.describe(),
        quality=round(m.score.value, 4),
        quality_ci=(round(m.score.low, 4), round(m.score.high, 4)),
        quality_unit=metric.score_unit,
        drop=round(m.drop, 4),
        drop_ci=(round(m.drop_ci[0], 4), round(m.drop_ci[1], 4)),
        drop_unit=metric.unit,
        latency_ms_p50=speed.latency_ms_p50,
        latency_ms_p99=speed.latency_ms_p99,
        throughput_rps=speed.throughput_rps,
        speedup=round(base_p50 / speed.latency_ms_p50, 3),
        speedup_range=speed.speedup_range(base_speed) if base_speed else None,
        throughput_speedup=round(speed.throughput_rps / base_speed.throughput_rps, 3) if base_speed else None,
        compress_seconds=round(m.built.seconds, 3),
        notes=m.built.notes,
        passed=passed,
    )
