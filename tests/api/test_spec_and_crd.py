"""The pydantic models and the generated CRD accept the same CompressedModels and reject the same bad ones."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from slimserve.api import compression_hash, parse_compressed_model
from slimserve.api.crd import render_crd
from slimserve.errors import InvalidInput
from tests.crd_schema import crd_errors

ROOT = Path(__file__).resolve().parents[2]


def good() -> dict[str, Any]:
    return {
        "apiVersion": "slimserve.dev/v1alpha1",
        "kind": "CompressedModel",
        "metadata": {"name": "m"},
        "spec": {
            "source": {"uri": "model.pt", "format": "factory", "factory": "model:build"},
            "data": {"train": "d/train.npz", "calibration": "d/cal.npz", "evaluation": "d/test.npz"},
            "compression": {
                "variants": [
                    {"name": "int8", "steps": [{"quantize": {"mode": "static"}}]},
                    {"name": "pq", "steps": [{"prune": {"ratio": 0.5}}, {"fineTune": {}}, {"quantize": {}}]},
                ]
            },
        },
    }


def edit(path: str, value: Any, delete: bool = False) -> dict[str, Any]:
    body = good()
    node: Any = body
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node[part]
    last = parts[-1]
    if delete:
        del node[last]
    elif last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return body


def step(recipe: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"name": "v", "steps": [recipe]}]


# (case id, body, a fragment the pydantic error must contain: the field and the fix)
BAD: list[tuple[str, dict[str, Any], str]] = [
    ("unknown recipe", edit("spec.compression.variants", step({"qunatize": {}})), "did you mean 'quantize'"),
    ("prune ratio 1.5", edit("spec.compression.variants", step({"prune": {"ratio": 1.5}})), "ratio = 1.5"),
    ("prune ratio 0", edit("spec.compression.variants", step({"prune": {"ratio": 0}})), "ratio = 0"),
    ("negative rank", edit("spec.compression.variants", step({"lowRank": {"rank": -4}})), "rank = -4"),
    (
        "rank and energy",
        edit("spec.compression.variants", step({"lowRank": {"rank": 4, "energy": 0.9}})),
        "exactly one of 'rank'",
    ),
    ("neither rank nor energy", edit("spec.compression.variants", step({"lowRank": {}})), "exactly one of 'rank'"),
    (
        "static quantize without calibration",
        edit("spec.data.calibration", None, delete=True),
        "data.calibration is missing",
    ),
    ("fineTune without train", edit("spec.data.train", None, delete=True), "data.train is missing"),
    ("unknown top field", edit("spec.compresion", {}), "did you mean 'compression'"),
    (
        "unknown quantize field",
        edit("spec.compression.variants", step({"quantize": {"perchannel": True}})),
        "did you mean 'perChannel'",
    ),
    ("wrong type epochs", edit("spec.compression.variants", step({"fineTune": {"epochs": "ten"}})), "epochs = 'ten'"),
    ("unknown mode", edit("spec.compression.variants", step({"quantize": {"mode": "int4"}})), "use one of"),
    ("source uri escapes root", edit("spec.source.uri", "../../etc/passwd"), "'..'"),
    ("data uri escapes root", edit("spec.data.evaluation", "data/../../x.npz"), "'..'"),
    ("factory missing", edit("spec.source.factory", None, delete=True), "source.factory is missing"),
    ("bad factory", edit("spec.source.factory", "not a factory"), "source.factory = 'not a factory'"),
    ("torch recipe on onnx source", edit("spec.source", {"uri": "m.onnx", "format": "onnx"}), "needs a PyTorch model"),
    (
        "two recipes in one step",
        edit("spec.compression.variants", step({"prune": {"ratio": 0.5}, "fineTune": {}})),
        "exactly one recipe",
    ),
    ("empty step", edit("spec.compression.variants", step({})), "exactly one recipe"),
    (
        "quantize before prune",
        edit("spec.compression.variants", [{"name": "v", "steps": [{"quantize": {}}, {"prune": {"ratio": 0.3}}]}]),
        "must be the last step",
    ),
    (
        "duplicate variant names",
        edit("spec.compression.variants", [{"name": "a", "steps": [{"quantize": {}}]}] * 2),
        "unique",
    ),
    (
        "reserved name baseline",
        edit("spec.compression.variants", [{"name": "baseline", "steps": [{"quantize": {}}]}]),
        "reserved",
    ),
    (
        "bad variant name",
        edit("spec.compression.variants", [{"name": "Int8_Static", "steps": [{"quantize": {}}]}]),
        "name = 'Int8_Static'",
    ),
    ("no variants, no search", edit("spec.compression.variants", []), "at least one variant"),
    ("missing evaluation", edit("spec.data.evaluation", None, delete=True), "data.evaluation: is required"),
    ("missing source", edit("spec.source", None, delete=True), "spec.source: is required"),
    ("canary steps not increasing", edit("spec.rollout", {"steps": [50, 10, 100]}), "must increase"),
    ("canary steps not ending at 100", edit("spec.rollout", {"steps": [10, 50]}), "end at 100"),
    ("candidate not a variant", edit("spec.rollout", {"candidate": "nope"}), "rollout.candidate 'nope'"),
    (
        "duplicate webhook names",
        edit("spec.rollout", {"webhooks": [{"name": "qa", "type": "event", "url": "http://h/x"}] * 2}),
        "webhook names must be unique; 'qa'",
    ),
    (
        "webhook url not http",
        edit("spec.rollout", {"webhooks": [{"name": "qa", "type": "event", "url": "slack.com/hook"}]}),
        "webhooks[0].url = 'slack.com/hook': use an http:// or https:// URL",
    ),
    (
        "unknown webhook type",
        edit("spec.rollout", {"webhooks": [{"name": "qa", "type": "confirm", "url": "http://h/x"}]}),
        "webhooks[0].type = 'confirm': use one of: 'confirm-rollout'",
    ),
    (
        "slack format on a rollback webhook",
        edit("spec.rollout", {"webhooks": [{"name": "a", "type": "rollback", "url": "http://h/x", "format": "slack"}]}),
        "format slack with type rollback",
    ),
    (
        "webhook timeout without unit",
        edit("spec.rollout", {"webhooks": [{"name": "qa", "type": "rollback", "url": "http://h/x", "timeout": "10"}]}),
        "webhooks[0].timeout = '10': use a duration",
    ),
    (
        "absurd max replicas",
        edit("spec.serving", {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}),
        "maxReplicas (2)",
    ),
    ("negative error rate", edit("spec.gates", {"maxErrorRate": -0.1}), "maxErrorRate = -0.1"),
    (
        "temperature zero",
        edit("spec.compression.variants", step({"distill": {"student": {"widthMultiplier": 0.5}, "temperature": 0}})),
        "temperature = 0",
    ),
    (
        "global pruning unstructured",
        edit("spec.compression.variants", step({"prune": {"ratio": 0.2, "scope": "global", "method": "unstructured"}})),
        "needs method structured",
    ),
    (
        "qat with gptq rounding",
        edit("spec.compression.variants", step({"quantize": {"qat": {}, "weightRounding": "gptq"}})),
        "weightRounding 'gptq'",
    ),
    (
        "student with both",
        edit("spec.compression.variants", step({"distill": {"student": {"widthMultiplier": 0.5, "factory": "a:b"}}})),
        "exactly one of 'widthMultiplier'",
    ),
]


def test_there_are_at_least_twenty_bad_inputs() -> None:
    assert len(BAD) >= 20


def test_good_example_is_accepted_by_both() -> None:
    assert crd_errors(good()) == []
    parse_compressed_model(good())


@pytest.mark.parametrize("case, body, fragment", BAD, ids=[c[0] for c in BAD])
def test_bad_input_is_rejected_by_both_with_an_actionable_message(
    case: str, body: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_compressed_model(body)
    message = info.value.render()
    assert fragment in message, message
    assert crd_errors(body), f"the CRD accepts what pydantic rejects: {case}"


def test_bundled_and_shipped_examples_are_accepted_by_both() -> None:
    files = sorted((ROOT / "examples").glob("**/*.yaml")) + sorted((ROOT / "manifests").glob("examples/*.yaml"))
    assert files, "no example CompressedModel found"
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "CompressedModel":
                assert crd_errors(doc) == [], path
                parse_compressed_model(doc, str(path))


def test_crd_file_is_generated_from_the_models() -> None:
    on_disk = (ROOT / "manifests" / "crds" / "compressedmodels.yaml").read_text()
    assert on_disk == render_crd(), "manifests/crds is stale: run `make manifests`"


def _undescribed(node: dict[str, Any], path: str) -> list[str]:
    """Paths of the properties under `node` (array items and map values included) without a description."""
    missing: list[str] = []
    for name, prop in node.get("properties", {}).items():
        where = f"{path}.{name}"
        if not str(prop.get("description", "")).strip():
            missing.append(where)
        missing += _undescribed(prop, where)
    if isinstance(node.get("items"), dict):
        missing += _undescribed(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        missing += _undescribed(node["additionalProperties"], f"{path}{{}}")
    return missing


def test_every_crd_property_has_a_description_for_kubectl_explain() -> None:
    crd = yaml.safe_load(render_crd())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert _undescribed(schema, "") == []


def test_defaults_are_the_fast_x86_quantization_settings() -> None:
    model = parse_compressed_model(good())
    q = model.spec.compression.variants[0].steps[0].quantize
    assert q is not None
    assert (q.format, q.activation_type, q.weight_type, q.per_channel) == ("QOperator", "uint8", "int8", True)


def test_spec_is_frozen() -> None:
    model = parse_compressed_model(good())
    with pytest.raises(ValidationError):
        model.spec.source.uri = "other"  # type: ignore[misc]


def test_step_exposes_recipe_and_params() -> None:
    variant = parse_compressed_model(good()).spec.compression.variants[1]
    assert [s.recipe for s in variant.steps] == ["prune", "fineTune", "quantize"]
    assert variant.steps[0].params.ratio == 0.5  # type: ignore[union-attr]


def test_every_problem_is_reported_at_once() -> None:
    body = copy.deepcopy(good())
    body["spec"]["gates"] = {"maxErrorRate": 2, "minSamples": 0}
    with pytest.raises(InvalidInput) as info:
        parse_compressed_model(body)
    assert len(info.value.problems) == 2


def test_remote_uris_must_be_localized_first(tmp_path: Path) -> None:
    from slimserve.api.paths import resolve_uri

    with pytest.raises(InvalidInput, match=r"spec.source.uri = 's3://bucket/m.onnx': s3:// is fetched by slimserve"):
        resolve_uri("s3://bucket/m.onnx", tmp_path, "spec.source.uri")
    assert resolve_uri("file:///abs/m.onnx", tmp_path, "f") == Path("/abs/m.onnx")
    assert resolve_uri("m.onnx", tmp_path, "f") == tmp_path / "m.onnx"


def _hash(body: dict[str, Any]) -> str:
    return compression_hash(parse_compressed_model(body).spec)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("spec.gates", {"maxAccuracyDrop": 2.0, "p99Tolerance": 0.5}),
        ("spec.serving", {"maxBatchSize": 8}),
        ("spec.rollout", {"steps": [25, 100], "stepDuration": "30s", "candidate": "int8"}),
        ("spec.storage", {"secretName": "creds"}),
        ("spec.compression.job", {"gpus": 1, "memory": "16Gi"}),  # where it runs, not what it writes
        ("spec.quality", {"metric": "auto"}),  # the default, spelled out
    ],
)
def test_changes_outside_compression_keep_the_compression_hash(path: str, value: Any) -> None:
    assert _hash(edit(path, value)) == _hash(good())


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("spec.source.uri", "model-v2.pt"),
        ("spec.data.calibration", "d/cal-v2.npz"),
        ("spec.quality", {"metric": "agreement"}),
        ("spec.compression.variants.0.steps.0.quantize.mode", "dynamic"),
        ("spec.compression.seed", 7),
        ("spec.compression.search", {"maxAccuracyDrop": 0.5, "maxTrials": 4}),
        ("spec.compression.measure", {"latencyRuns": 50}),
    ],
)
def test_changes_to_what_compression_reads_change_the_compression_hash(path: str, value: Any) -> None:
    changed = _hash(edit(path, value))
    assert changed != _hash(good()) and len(changed) == 64


def test_every_webhook_type_is_accepted_by_both() -> None:
    hooks = [
        {"name": t, "type": t, "url": f"https://hooks.example.com/{t}?x=1", "timeout": "500ms"}
        for t in ("confirm-rollout", "pre-rollout", "confirm-promotion", "post-rollout", "rollback")
    ]
    hooks.append({"name": "chat", "type": "event", "url": "https://hooks.slack.com/services/T0/B0/x",
                  "format": "slack", "metadata": {"env": "staging"}})  # fmt: skip
    body = edit("spec.rollout", {"webhooks": hooks})
    assert crd_errors(body) == []
    assert [h.type for h in parse_compressed_model(body).spec.rollout.webhooks][-1] == "event"
