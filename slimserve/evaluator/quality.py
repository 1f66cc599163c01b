"""Quality by task: one metric, chosen once, scored the same way offline, served, in the gate and in reports.

`resolve` turns `spec.quality` plus the baseline's outputs and the labels into a `Metric` (for `auto`
it infers the task from the output's shape and the labels' dtype, and says why; an ambiguous case is
an `InvalidInput` naming `spec.quality.metric`). `compare` scores the baseline and a candidate on the
same samples and returns `QualityEvidence`: both scores, the drop in the budgets' unit and a *paired*
interval of that drop (90% two-sided, so each end is the one-sided 95% bound the gate tests) —
Newcombe's hybrid score interval (method 10) for 0/1 outcomes, so it is never zero-width just because
few samples disagree, and a paired bootstrap for everything else.

Units (what `gates.maxAccuracyDrop` and `search.maxAccuracyDrop` are measured in):
- accuracy, topk, agreement: points of % correct; cosine and r2: points of the value x 100;
- mse, mae: percent relative increase of the error over the baseline's error (without labels, where
  the baseline's error is 0 by definition, the error as a percent of the baseline outputs' spread).
"""

from __future__ import annotations

import importlib
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

from slimserve.api.spec import Quality
from slimserve.errors import InvalidInput
from slimserve.evaluator.gate import CONFIDENCE, QualityEvidence, wilson

FIELD: Final = "spec.quality.metric"
BINARY_METRICS: Final = frozenset({"accuracy", "topk", "agreement"})
ERROR_METRICS: Final = frozenset({"mse", "mae"})
IGNORE_LABEL: Final = -100  # token-classification convention: positions labelled -100 are not scored
BOOTSTRAP_RESAMPLES: Final = 2000
_EMBEDDING_HINTS: Final = ("embed", "hidden", "pool", "feature", "vector", "sentence", "encod")
_CLASS_HINTS: Final = ("logit", "prob", "class", "score", "softmax", "pred")


@dataclass(frozen=True)
class Metric:
    """A resolved metric: what is scored, on which output, and why this one."""

    name: str
    output: str | None = None
    k: int = 5
    threshold: float | None = None  # binary classifier with one output column
    function: str | None = None
    labelled: bool = True  # False: the baseline's outputs are the reference
    why: str = ""

    @property
    def unit(self) -> str:
        """The unit of the drop (the budgets' unit)."""
        if self.name in ERROR_METRICS:
            return "% error increase" if self.labelled else "% of baseline output spread"
        if self.name == "custom":
            return "score points"
        return "points"

    @property
    def score_unit(self) -> str:
        """The unit of a model's own score."""
        return {
            "accuracy": "% correct",
            "topk": f"% top-{self.k}",
            "agreement": "% agreement with baseline",
            "cosine": "cosine x 100",
            "r2": "R² x 100",
            "mse": "MSE",
            "mae": "MAE",
            "custom": "score",
        }[self.name]

    def describe(self) -> str:
        parts = [self.name]
        if self.name == "topk":
            parts.append(f"k={self.k}")
        if self.threshold is not None:
            parts.append(f"threshold {self.threshold:g}")
        if self.output:
            parts.append(f"output '{self.output}'")
        parts.append("vs labels" if self.labelled else "vs the baseline's outputs")
        text = ", ".join(parts)
        return f"{text} ({self.why})" if self.why else text


def _is_integer(labels: np.ndarray) -> bool:
    return labels.dtype.kind in "iub"


def _binary_threshold(baseline: np.ndarray, quality: Quality) -> tuple[float, str]:
    if quality.threshold is not None:
        return quality.threshold, f"threshold {quality.threshold:g} from spec.quality.threshold"
    if baseline.size and float(baseline.min()) >= 0.0 and float(baseline.max()) <= 1.0:
        return 0.5, "every baseline output lies in [0, 1]: probabilities, threshold 0.5"
    return 0.0, "baseline outputs leave [0, 1]: logits, threshold 0"


def _name_says(name: str | None, hints: tuple[str, ...]) -> bool:
    return bool(name) and any(h in name.lower() for h in hints)  # type: ignore[union-attr]


def _looks_like_probabilities(out: np.ndarray) -> bool:
    if out.ndim != 2 or not out.size or float(out.min()) < 0 or float(out.max()) > 1:
        return False
    return bool(np.allclose(out.sum(axis=1), 1.0, atol=1e-3))


def _one_column(out: np.ndarray) -> bool:
    return out.ndim == 1 or (out.ndim == 2 and out.shape[1] == 1)


def resolve(
    quality: Quality, baseline: np.ndarray, labels: np.ndarray | None, output: str | None, read: str | None = None
) -> Metric:
    """The metric to use: `spec.quality` as written, or (auto) inferred, with the reason stated.

    `output` is spec.quality.output; `read` is the name of the output that was read when that is unset
    (the graph's first output), so that auto's name hints ('logits', 'embeddings', ...) still apply.
    """
    name = str(getattr(quality.metric, "value", quality.metric))
    shape = list(baseline.shape)
    labelled = labels is not None
    common = {"output": output, "k": quality.top_k, "function": quality.function, "labelled": labelled}
    if name == "auto":
        name, why = _infer(baseline, labels, output or read)
    else:
        why = "set in spec.quality.metric"
    if name in ("accuracy", "topk") and labels is None:
        raise InvalidInput(
            f"{FIELD} = {name!r}: needs labels, but spec.data.evaluation has no array 'y'; add class-id labels "
            "y, or use metric agreement (top-1 agreement with the baseline)"
        )
    if name in ("accuracy", "topk") and not _is_integer(labels):  # type: ignore[arg-type]
        raise InvalidInput(
            f"{FIELD} = {name!r}: labels 'y' are {labels.dtype} (not class ids); give int64 class ids, or use "  # type: ignore[union-attr]
            "metric r2, mse or mae for regression labels"
        )
    if name == "topk":
        classes = shape[-1] if len(shape) >= 2 else 1
        if classes <= quality.top_k:
            raise InvalidInput(
                f"spec.quality.topK = {quality.top_k}: output '{output}' has {classes} columns, so top-{quality.top_k} "
                "is always right; lower topK or use metric accuracy"
            )
    threshold = None
    if name in ("accuracy", "agreement") and _one_column(baseline):
        threshold, reason = _binary_threshold(baseline, quality)
        why = f"{why}; binary classifier, {reason}"
    per_sample = int(np.prod(shape[1:], dtype=np.int64))
    if (
        name in ("mse", "mae", "r2")
        and labels is not None
        and (labels.dtype.kind not in "iubf" or labels.reshape(len(labels), -1).shape[1] != per_sample)
    ):
        raise InvalidInput(
            f"spec.data.evaluation 'y' has shape {list(labels.shape)} but output '{output}' has shape {shape}: "
            f"metric {name} compares them value by value; give one label per output value"
        )
    return Metric(name=name, threshold=threshold, why=why, **common)  # type: ignore[arg-type]


def _infer(out: np.ndarray, labels: np.ndarray | None, output: str | None) -> tuple[str, str]:
    shape = list(out.shape)
    ambiguous = f"auto cannot tell the task of output '{output}' with shape {shape}"
    if labels is not None:
        if _is_integer(labels):
            values = set(np.unique(labels).tolist()) - {IGNORE_LABEL}
            if _one_column(out):
                if values <= {0, 1}:
                    return "accuracy", "auto: class-id labels in {0, 1} and one output column"
                raise InvalidInput(
                    f"{FIELD} = 'auto': {ambiguous} and labels with values {sorted(values)[:6]}: one column cannot "
                    "hold more than two classes; set spec.quality.metric (r2, mse or mae for regression)"
                )
            if out.ndim == 2:
                return "accuracy", f"auto: class-id labels and {shape[1]} output columns (argmax)"
            if list(labels.shape) == shape[:-1]:
                return "accuracy", "auto: class-id labels per position (token classification, argmax)"
            raise InvalidInput(
                f"{FIELD} = 'auto': labels 'y' have shape {list(labels.shape)} and output '{output}' {shape}; "
                "labels must be [N] class ids (or one per position); set spec.quality.metric or fix the labels"
            )
        return "r2", "auto: float labels (regression), R² x 100"
    if out.ndim >= 3:
        return "cosine", "auto: no labels and per-position vectors (embeddings): per-sample cosine"
    if out.ndim == 2 and shape[1] >= 2:
        if _looks_like_probabilities(out):
            return "agreement", "auto: no labels and rows that sum to 1 (class probabilities)"
        if _name_says(output, _CLASS_HINTS):
            return "agreement", f"auto: no labels and output named '{output}' (class scores)"
        if _name_says(output, _EMBEDDING_HINTS):
            return "cosine", f"auto: no labels and output named '{output}' (embeddings)"
        raise InvalidInput(
            f"{FIELD} = 'auto': {ambiguous} and no labels: class scores and embeddings look alike; set "
            "spec.quality.metric to agreement (classification) or cosine (embeddings)"
        )
    raise InvalidInput(
        f"{FIELD} = 'auto': {ambiguous} and no labels: one column may be a binary logit or a regression value; "
        "set spec.quality.metric to agreement (binary classifier) or r2, mse or mae (regression)"
    )


# ---------------------------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------------------------


def _flat(a: np.ndarray) -> np.ndarray:
    return a.reshape(len(a), -1).astype(np.float64)


def _classes(out: np.ndarray, metric: Metric) -> np.ndarray:
    if metric.threshold is not None:
        return (out.reshape(len(out)) > metric.threshold).astype(np.int64)
    return out.argmax(axis=-1)


def _per_position_mean(hits: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    hits = hits.reshape(len(hits), -1).astype(np.float64)
    if valid is None:
        return hits.mean(axis=1)
    valid = valid.reshape(len(valid), -1).astype(np.float64)
    return (hits * valid).sum(axis=1) / np.maximum(valid.sum(axis=1), 1.0)


def per_sample_scores(
    metric: Metric, out: np.ndarray, baseline: np.ndarray, labels: np.ndarray | None, mask: np.ndarray | None = None
) -> np.ndarray:
    """One score per sample, higher is better, on the 0-100 scale (mean-type metrics only)."""
    if metric.name == "accuracy":
        assert labels is not None
        pred = _classes(out, metric)
        valid = None if labels.ndim == 1 else labels != IGNORE_LABEL
        return 100.0 * _per_position_mean(pred == labels.reshape(pred.shape), valid)
    if metric.name == "topk":
        assert labels is not None
        top = np.argsort(-out, axis=-1)[..., : metric.k]
        return 100.0 * (top == labels.reshape(*labels.shape, 1)).any(axis=-1).astype(np.float64)
    if metric.name == "agreement":
        return 100.0 * _per_position_mean(_classes(out, metric) == _classes(baseline, metric), None)
    if metric.name == "cosine":
        a, b = out.astype(np.float64), baseline.astype(np.float64)
        if a.ndim == 1:
            a, b = a[:, None], b[:, None]
        dot = (a * b).sum(axis=-1)
        norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
        cos = np.where(norms > 0, dot / np.maximum(norms, 1e-300), np.where(dot == 0, 1.0, 0.0))
        positions = cos.reshape(len(cos), -1)
        valid = None
        if mask is not None and positions.shape[1] > 1 and mask.reshape(len(mask), -1).shape == positions.shape:
            valid = mask != 0
        return 100.0 * _per_position_mean(positions, valid)
    raise ValueError(f"{metric.name} is not a per-sample mean metric")


def load_function(ref: str, base_dir: Path | None) -> Callable[..., np.ndarray]:
    """Import 'module:function' with `base_dir` first on sys.path (as source.factory is)."""
    module_name, _, attr = ref.partition(":")
    where = "spec.quality.function"
    added = base_dir is not None and str(base_dir) not in sys.path
    if added:
        sys.path.insert(0, str(base_dir))
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - the user's module: any error is theirs to fix
        raise InvalidInput(
            f"{where} = {ref!r}: cannot import {module_name} ({type(exc).__name__}: {exc}); put {module_name}.py "
            "next to the YAML file"
        ) from None
    finally:
        if added:
            sys.path.remove(str(base_dir))
    func = getattr(module, attr, None)
    if not callable(func):
        raise InvalidInput(f"{where} = {ref!r}: {module_name} has no function {attr!r}")
    return func  # type: ignore[no-any-return]


def _custom_scores(
    func: Callable[..., np.ndarray], out: np.ndarray, baseline: np.ndarray, labels: np.ndarray | None
) -> np.ndarray:
    scores = np.asarray(func(out, labels, baseline), dtype=np.float64).reshape(-1)
    if len(scores) != len(out) or not np.all(np.isfinite(scores)):
        raise InvalidInput(
            f"spec.quality.function returned {len(scores)} scores (finite: {bool(np.all(np.isfinite(scores)))}) "
            f"for {len(out)} samples; return one finite score per sample"
        )
    return scores


# ---------------------------------------------------------------------------------------------
# intervals
# ---------------------------------------------------------------------------------------------


def newcombe_paired(both: int, first_only: int, second_only: int, neither: int) -> tuple[float, float]:
    """Interval of p1 - p2 for paired proportions (Newcombe 1998, method 10; 0-1 scale; 90% two-sided).

    p1 = (both + first_only)/n, p2 = (both + second_only)/n. Wilson limits for each margin combined
    with the phi correlation (continuity-corrected when positive). With no discordant pairs at all it
    still has a width of about the rule of three, never zero.
    """
    n = both + first_only + second_only + neither
    if n == 0:
        return (math.nan, math.nan)
    p1, p2 = (both + first_only) / n, (both + second_only) / n
    l1, u1 = wilson(both + first_only, n)
    l2, u2 = wilson(both + second_only, n)
    margins = (both + first_only) * (second_only + neither) * (both + second_only) * (first_only + neither)
    phi = 0.0
    if margins > 0:
        cross = float(both * neither - first_only * second_only)
        cross = max(cross - n / 2, 0.0) if cross > 0 else cross
        phi = cross / math.sqrt(margins)
    delta = p1 - p2
    low = delta - math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    high = delta + math.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    return (max(low, -1.0), min(high, 1.0))


def bootstrap(
    statistic: Callable[[np.ndarray], np.ndarray], n: int, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES
) -> tuple[float, float]:
    """Percentile interval (90%) of `statistic(indices)`, vectorised over a [resamples, n] index matrix."""
    if n < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    values = []
    for start in range(0, resamples, 250):  # chunks keep memory flat for large evaluation sets
        idx = rng.integers(0, n, size=(min(250, resamples - start), n))
        values.append(statistic(idx))
    stats = np.concatenate(values)
    stats = stats[np.isfinite(stats)]
    if not len(stats):
        return (math.nan, math.nan)
    low, high = np.percentile(stats, [100 * (1 - CONFIDENCE) / 2, 100 * (1 + CONFIDENCE) / 2])
    return (float(low), float(high))


# ---------------------------------------------------------------------------------------------
# the comparison
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scored:
    """One model's score with its own 90% interval (for reports; decisions use the paired drop)."""

    value: float
    low: float
    high: float


def _mean_interval(values: np.ndarray, seed: int) -> Scored:
    return Scored(float(values.mean()), *bootstrap(lambda idx: values[idx].mean(axis=1), len(values), seed))


def _error_terms(metric: Metric, out: np.ndarray, reference: np.ndarray) -> np.ndarray:
    diff = _flat(out) - _flat(reference)
    return (diff**2).mean(axis=1) if metric.name in ("mse", "r2") else np.abs(diff).mean(axis=1)


def _spread(metric: Metric, reference: np.ndarray) -> float:
    flat = _flat(reference)
    if metric.name == "mae":
        return float(np.abs(flat - np.median(flat, axis=0)).mean())
    return float(((flat - flat.mean(axis=0)) ** 2).mean())


def compare(
    metric: Metric,
    baseline: np.ndarray,
    candidate: np.ndarray,
    labels: np.ndarray | None,
    mask: np.ndarray | None = None,
    custom: Callable[..., np.ndarray] | None = None,
    seed: int = 0,
) -> tuple[QualityEvidence, Scored, Scored]:
    """Baseline and candidate on the same samples: the evidence for the gate, and both scores."""
    if baseline.shape != candidate.shape:
        raise InvalidInput(
            f"output '{metric.output}': the candidate answers with shape {list(candidate.shape)} but the baseline "
            f"with {list(baseline.shape)}; a variant must keep the model's output shape"
        )
    n = len(baseline)
    if metric.name in ("mse", "mae", "r2"):
        return _compare_errors(metric, baseline, candidate, labels, seed)
    if metric.name == "custom":
        func = custom or load_function(metric.function or "", None)
        sb, sc = _custom_scores(func, baseline, baseline, labels), _custom_scores(func, candidate, baseline, labels)
    else:
        sb = per_sample_scores(metric, baseline, baseline, labels, mask)
        sc = per_sample_scores(metric, candidate, baseline, labels, mask)
    drop = float(sb.mean() - sc.mean()) if n else math.nan
    binary = metric.name in BINARY_METRICS and np.isin(sb, (0.0, 100.0)).all() and np.isin(sc, (0.0, 100.0)).all()
    if binary:
        b_ok, c_ok = sb > 0, sc > 0
        low, high = newcombe_paired(
            int((b_ok & c_ok).sum()), int((b_ok & ~c_ok).sum()), int((~b_ok & c_ok).sum()), int((~b_ok & ~c_ok).sum())
        )
        ci, method = (100 * low, 100 * high), "Newcombe paired score interval"
        own = [Scored(float(s.mean()), *(100 * x for x in wilson(int((s > 0).sum()), n))) for s in (sb, sc)]
    else:
        diff = sb - sc
        ci = bootstrap(lambda idx: diff[idx].mean(axis=1), n, seed)
        method = "paired bootstrap"
        own = [_mean_interval(sb, seed), _mean_interval(sc, seed)]
    evidence = QualityEvidence(
        metric=metric.name,
        unit=metric.unit,
        n=n,
        baseline=own[0].value,
        candidate=own[1].value,
        drop=drop,
        drop_low=ci[0],
        drop_high=ci[1],
        method=method,
        detail=metric.describe(),
    )
    return evidence, own[0], own[1]


def _compare_errors(
    metric: Metric, baseline: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None, seed: int
) -> tuple[QualityEvidence, Scored, Scored]:
    reference = labels if labels is not None else baseline
    reference = np.asarray(reference).reshape(baseline.shape)
    eb, ec = _error_terms(metric, baseline, reference), _error_terms(metric, candidate, reference)
    n = len(eb)
    if metric.name == "r2":
        flat = _flat(reference)
        centred = ((flat - flat.mean(axis=0)) ** 2).mean(axis=1)  # per-sample share of the total variance

        def r2(e: np.ndarray, idx: np.ndarray) -> np.ndarray:
            return 100.0 * (1 - e[idx].sum(axis=1) / np.maximum(centred[idx].sum(axis=1), 1e-300))

        everything = np.arange(n)[None]
        value_b, value_c = float(r2(eb, everything)[0]), float(r2(ec, everything)[0])
        drop = value_b - value_c
        ci = bootstrap(lambda idx: r2(eb, idx) - r2(ec, idx), n, seed)
        own = [
            Scored(value_b, *bootstrap(lambda idx: r2(eb, idx), n, seed)),
            Scored(value_c, *bootstrap(lambda idx: r2(ec, idx), n, seed)),
        ]
    else:
        scale = float(eb.mean()) if labels is not None and eb.mean() > 0 else _spread(metric, reference)
        relative = labels is not None and eb.mean() > 0
        denominator = max(scale, 1e-300)

        def increase(idx: np.ndarray) -> np.ndarray:
            base = eb[idx].mean(axis=1) if relative else np.full(len(idx), denominator)
            return 100.0 * (ec[idx].mean(axis=1) - eb[idx].mean(axis=1)) / np.maximum(base, 1e-300)

        drop = 100.0 * float(ec.mean() - eb.mean()) / denominator
        ci = bootstrap(increase, n, seed)
        own = [_mean_interval(eb, seed), _mean_interval(ec, seed)]
        if not relative:
            metric = Metric(**{**metric.__dict__, "labelled": False})
    evidence = QualityEvidence(
        metric=metric.name,
        unit=metric.unit,
        n=n,
        baseline=own[0].value,
        candidate=own[1].value,
        drop=drop,
        drop_low=ci[0],
        drop_high=ci[1],
        method="paired bootstrap",
        detail=metric.describe(),
    )
    return evidence, own[0], own[1]
