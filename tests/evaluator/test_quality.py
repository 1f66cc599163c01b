"""Quality by task: each model reports its true metric, and the paired interval of the drop is honest.

Baselines are checked against values computed independently here (scikit-learn or plain numpy), so a
metric that quietly measured something else (the class-0 share, a per-token argmax) would fail.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, mean_absolute_error, mean_squared_error, r2_score

from slimserve.api.spec import Quality
from slimserve.errors import InvalidInput
from slimserve.evaluator import quality as q


def _resolve(out: np.ndarray, labels: np.ndarray | None, name: str | None = "output", **spec: object) -> q.Metric:
    return q.resolve(Quality(**spec), out, labels, name)  # type: ignore[arg-type]


def test_one_logit_binary_classifier_reports_its_real_accuracy_not_the_class_zero_share() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.37).astype(np.int64)  # 37% positives: the old argmax bug reported 63% ... or 37%
    logit = np.where(y == 1, 2.0, -2.0) + rng.normal(0, 1.2, 400)
    out = logit.astype(np.float32).reshape(-1, 1)
    metric = _resolve(out, y)
    assert metric.name == "accuracy" and metric.threshold == 0.0 and "logits" in metric.why
    evidence, base, _ = q.compare(metric, out, out, y)
    expected = 100 * accuracy_score(y, (logit > 0).astype(int))
    assert base.value == pytest.approx(expected)
    assert expected > 90 and abs(expected - 100 * (1 - y.mean())) > 20  # really not the class share
    probabilities = 1 / (1 + np.exp(-out))
    prob_metric = _resolve(probabilities, y)
    assert prob_metric.threshold == 0.5 and "probabilities" in prob_metric.why
    assert q.compare(prob_metric, probabilities, probabilities, y)[1].value == pytest.approx(expected)
    wrecked = -out  # every answer flipped
    drop = q.compare(metric, out, wrecked, y)[0]
    assert drop.drop > 80 and drop.drop_low > 70


def test_regression_model_reports_r2_and_error_metrics_as_relative_increases() -> None:
    rng = np.random.default_rng(1)
    y = rng.normal(0, 3, 500).astype(np.float32)
    base = y + rng.normal(0, 1, 500).astype(np.float32)
    cand = y + rng.normal(0, 1.5, 500).astype(np.float32)
    metric = _resolve(base.reshape(-1, 1), y)
    assert metric.name == "r2" and metric.unit == "points"
    evidence, b, c = q.compare(metric, base.reshape(-1, 1), cand.reshape(-1, 1), y)
    assert b.value == pytest.approx(100 * r2_score(y, base), abs=1e-4)
    assert c.value == pytest.approx(100 * r2_score(y, cand), abs=1e-4)
    assert evidence.drop == pytest.approx(100 * (r2_score(y, base) - r2_score(y, cand)), abs=1e-4)
    assert evidence.drop_low < evidence.drop < evidence.drop_high
    mse = q.compare(_resolve(base, y, metric="mse"), base.reshape(-1, 1), cand.reshape(-1, 1), y)[0]
    relative = 100 * (mean_squared_error(y, cand) / mean_squared_error(y, base) - 1)
    assert mse.drop == pytest.approx(relative, rel=1e-6) and mse.unit == "% error increase"
    mae = q.compare(_resolve(base, y, metric="mae"), base.reshape(-1, 1), cand.reshape(-1, 1), y)[0]
    assert mae.drop == pytest.approx(100 * (mean_absolute_error(y, cand) / mean_absolute_error(y, base) - 1), rel=1e-6)


def test_embedding_model_reports_per_sample_cosine_with_padding_masked() -> None:
    rng = np.random.default_rng(2)
    hidden = rng.normal(size=(64, 12, 32)).astype(np.float32)
    noisy = hidden + rng.normal(scale=0.15, size=hidden.shape).astype(np.float32)
    mask = np.ones((64, 12), dtype=np.int64)
    mask[:, 8:] = 0
    noisy[:, 8:] = -hidden[:, 8:]  # padding positions are garbage: they must not count
    metric = _resolve(hidden, None, "last_hidden_state")
    assert metric.name == "cosine" and not metric.labelled
    evidence, base, cand = q.compare(metric, hidden, noisy, None, mask)
    a, b = hidden[:, :8].reshape(-1, 32), noisy[:, :8].reshape(-1, 32)
    per_token = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert base.value == pytest.approx(100.0)
    assert cand.value == pytest.approx(100 * per_token.mean(), abs=1e-4)
    assert evidence.drop == pytest.approx(100 - 100 * per_token.mean(), abs=1e-4)
    assert 0 < evidence.drop_low <= evidence.drop <= evidence.drop_high < 3  # cosine ~0.99: about one point
    pooled = hidden.mean(axis=1)
    assert _resolve(pooled, None, "sentence_embedding").name == "cosine"


def test_auto_names_the_field_to_set_when_the_task_is_ambiguous() -> None:
    with pytest.raises(InvalidInput, match=r"spec\.quality\.metric.*agreement.*cosine"):
        _resolve(np.random.default_rng(0).normal(size=(10, 16)), None, "output")
    with pytest.raises(InvalidInput, match=r"spec\.quality\.metric.*agreement.*r2"):
        _resolve(np.zeros((10, 1)), None, "output")
    with pytest.raises(InvalidInput, match=r"labels 'y'.*class ids"):
        _resolve(np.zeros((10, 3)), np.linspace(0, 1, 10), metric="accuracy")
    with pytest.raises(InvalidInput, match="needs labels"):
        _resolve(np.zeros((10, 3)), None, metric="topk")
    softmax = np.full((10, 4), 0.25)
    assert _resolve(softmax, None).name == "agreement"


def test_topk_and_agreement() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(300, 20))
    y = rng.integers(0, 20, 300)
    metric = _resolve(logits, y, metric="topk", top_k=5)
    top5 = np.argsort(-logits, axis=1)[:, :5]
    expected = 100 * np.mean([y[i] in top5[i] for i in range(300)])
    assert q.compare(metric, logits, logits, y)[1].value == pytest.approx(expected)
    agreement = _resolve(logits, None, metric="agreement")
    shuffled = logits[:, ::-1]
    evidence = q.compare(agreement, logits, shuffled, None)[0]
    assert evidence.baseline == 100.0
    assert evidence.candidate == pytest.approx(100 * np.mean(logits.argmax(1) == shuffled.argmax(1)))


def test_custom_metric_reads_per_sample_scores() -> None:
    out = np.arange(10, dtype=np.float64).reshape(-1, 1)

    def closeness(outputs: np.ndarray, labels: np.ndarray | None, baseline: np.ndarray) -> np.ndarray:
        return 100 - np.abs(outputs - baseline).reshape(-1)

    metric = _resolve(out, None, metric="custom", function="m:f")
    evidence = q.compare(metric, out, out + 2, None, custom=closeness)[0]
    assert evidence.drop == pytest.approx(2.0) and evidence.drop_low == pytest.approx(2.0)

    def wrong_length(outputs: np.ndarray, labels: object, baseline: object) -> np.ndarray:
        return np.zeros(3)

    with pytest.raises(InvalidInput, match="one finite score per sample"):
        q.compare(metric, out, out, None, custom=wrong_length)


def test_paired_interval_is_never_zero_width_when_no_sample_disagrees() -> None:
    low, high = q.newcombe_paired(95, 0, 0, 5)
    assert low < 0 < high and high > 0.02  # about the rule of three: 3/100
    low, high = q.newcombe_paired(540, 0, 0, 0)
    assert 0.003 < high < 0.01
    labels = np.zeros(100, dtype=np.int64)
    logits = np.tile([[5.0, 0.0]], (100, 1))
    evidence = q.compare(_resolve(logits, labels), logits, logits, labels)[0]
    assert evidence.drop == 0 and evidence.drop_high > 1.5 and evidence.method.startswith("Newcombe")


@pytest.mark.parametrize(("n", "base", "cand"), [(540, 0.985, 0.985), (300, 0.95, 0.94), (1000, 0.9, 0.92)])
def test_paired_interval_covers_the_true_drop(n: int, base: float, cand: float) -> None:
    """Simulated paired outcomes (correlated models): each end misses the true drop at most ~5% of the time."""
    rng = np.random.default_rng(n)
    true_drop = base - cand
    above = below = 0
    trials = 1500
    for _ in range(trials):
        shared = rng.random(n)
        own = rng.random(n)
        b_ok = shared < base
        c_ok = np.where(rng.random(n) < 0.8, shared < cand, own < cand)  # 80% of answers shared
        a = int((b_ok & c_ok).sum())
        low, high = q.newcombe_paired(
            a, int((b_ok & ~c_ok).sum()), int((~b_ok & c_ok).sum()), int((~b_ok & ~c_ok).sum())
        )
        above += true_drop > high
        below += true_drop < low
    assert above / trials <= 0.065 and below / trials <= 0.065


def test_gate_rule_on_the_review_cases() -> None:
    """serving review 1.2: a zero-drop candidate at n=540 must essentially never Fail (lower bound > budget)."""
    rng = np.random.default_rng(5)
    fails = 0
    for _ in range(2000):
        b = rng.binomial(540, 0.015)
        c = rng.binomial(540, 0.015)
        low, _ = q.newcombe_paired(540 - b - c - 5, b, c, 5)
        fails += 100 * low > 1.0
    assert fails / 2000 <= 0.005  # the old Wald rule on the point estimate: 8.5%
    assert math.isnan(q.newcombe_paired(0, 0, 0, 0)[0])
