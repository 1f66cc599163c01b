"""Pure builders: golden manifests, upstream schema validation, secure defaults, worker commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from slimserve.api import parse_compressed_model
from slimserve.operator import builders as b
from slimserve.operator.reconcile import parse_summary
from slimserve.operator.settings import OperatorSettings
from tests.kube.emulator import example_model
from tests.kube.schemas import validate_custom

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("SLIMSERVE_UPDATE_GOLDEN") == "1"
SETTINGS = OperatorSettings(worker_image="worker:test", triton_image="triton:test", prometheus_url="http://prom:9090")


def gpu_body() -> dict[str, Any]:
    body = example_model()
    body["spec"]["compression"]["job"] = {
        "gpus": 1, "cpu": "4", "memory": "16Gi",
        "nodeSelector": {"nvidia.com/gpu.present": "true"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    }
    body["spec"]["serving"] = {"autoscaling": {"kedaQuery": "sum(rate(nv_inference_queue_duration_us[1m]))",
                                               "kedaThreshold": 5000}}
    return body


MODEL = parse_compressed_model(example_model())
GPU_MODEL = parse_compressed_model(gpu_body())
OWNER = b.Owner.from_body(example_model())


def all_manifests() -> dict[str, dict[str, Any]]:
    """One of each child, named for its golden file."""
    return {
        "spec-configmap": b.build_spec_config_map(MODEL, OWNER),
        "pvc": b.build_model_repository_pvc(MODEL, OWNER, SETTINGS),
        "compression-job-cpu": b.build_compression_job(MODEL, OWNER, SETTINGS),
        "compression-job-gpu": b.build_compression_job(GPU_MODEL, OWNER, SETTINGS),
        "packaging-job": b.build_packaging_job(MODEL, OWNER, SETTINGS, "int8"),
        "deployment-stable": b.build_triton_deployment(MODEL, OWNER, "baseline", "stable", SETTINGS),
        "deployment-canary-replicas": b.build_triton_deployment(MODEL, OWNER, "int8", "canary", SETTINGS, replicas=1),
        "service": b.build_triton_service(OWNER, "int8"),
        "service-shared": b.build_shared_service(OWNER),
        "hpa": b.build_hpa(MODEL, OWNER, "int8"),
        "scaledobject": b.build_keda_scaledobject(GPU_MODEL, OWNER, "int8", SETTINGS),
        "httproute": b.build_httproute(MODEL, OWNER, "baseline", "int8", 10, SETTINGS),
        "report-configmap": b.build_report_config_map(OWNER, 1),
        "evaluator-job": b.build_evaluator_job(MODEL, OWNER, 1, "baseline", "int8", SETTINGS),
    }


MANIFESTS = all_manifests()
CUSTOM_KINDS = {"HTTPRoute", "ScaledObject"}


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_manifest_matches_golden_file(name: str) -> None:
    path = GOLDEN / f"{name}.yaml"
    rendered = yaml.safe_dump(MANIFESTS[name], sort_keys=True, width=120)
    if UPDATE or not path.exists():
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(rendered)
    assert rendered == path.read_text(), f"{name} drifted; rerun with SLIMSERVE_UPDATE_GOLDEN=1 if intended"


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_manifest_is_valid_against_upstream_schemas(name: str) -> None:
    manifest = MANIFESTS[name]
    if manifest["kind"] in CUSTOM_KINDS:
        validate_custom(manifest)
    else:
        kubernetes_validate.validate(manifest, "1.30", strict=True)


def test_a_broken_manifest_is_caught_by_the_validators() -> None:
    broken = json.loads(json.dumps(MANIFESTS["deployment-stable"]))
    broken["spec"]["template"]["spec"]["containers"][0]["port"] = 8000  # typo of `ports`
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.30", strict=True)
    route = json.loads(json.dumps(MANIFESTS["httproute"]))
    route["spec"]["rules"][0]["backendRefs"][0]["weight"] = -1
    with pytest.raises(Exception, match="weight|minimum"):
        validate_custom(route)


def _pods(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    return [manifest["spec"]["template"]["spec"]] if manifest["kind"] in ("Job", "Deployment") else []


@pytest.mark.parametrize("name", sorted(n for n, m in MANIFESTS.items() if m["kind"] in ("Job", "Deployment")))
def test_pods_run_non_root_read_only_without_capabilities(name: str) -> None:
    for pod in _pods(MANIFESTS[name]):
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]


def test_every_child_is_owned_labelled_and_deterministically_named() -> None:
    again = all_manifests()
    for name, manifest in MANIFESTS.items():
        meta = manifest["metadata"]
        assert meta["ownerReferences"] == [{
            "apiVersion": "slimserve.dev/v1alpha1", "kind": "CompressedModel", "name": "digits",
            "uid": "uid-digits", "controller": True, "blockOwnerDeletion": True}], name
        assert meta["labels"]["slimserve.dev/model"] == "digits"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "slimserve-operator"
        assert again[name] == manifest, "builders are pure: same input, same output"


def test_long_names_stay_valid_and_distinct() -> None:
    long = b.Owner(name="m" * 60, namespace="ns", uid="u", generation=12)
    names = {b.evaluator_job_name(long, s, a) for s in range(3) for a in range(2)}
    assert len(names) == 6 and all(len(n) <= 63 for n in names)


def test_compression_job_places_gpu_work_only_when_asked() -> None:
    cpu = MANIFESTS["compression-job-cpu"]["spec"]["template"]["spec"]
    gpu = MANIFESTS["compression-job-gpu"]["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in cpu["containers"][0]["resources"]["limits"]
    assert "nodeSelector" not in cpu and "tolerations" not in cpu
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["containers"][0]["resources"]["requests"] == {"cpu": "4", "memory": "16Gi"}
    assert gpu["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert gpu["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_worker_commands_use_the_cli_contract() -> None:
    def script(name: str) -> str:
        return MANIFESTS[name]["spec"]["template"]["spec"]["containers"][0]["args"][0]

    # Relative URIs in the spec resolve where the user put the files next to their YAML.
    assert ("slimserve compress /spec/compressedmodel.yaml --base-dir /models/digits/inputs "
            "--out /models/digits/gen-1/compressed;") in script("compression-job-cpu")
    assert script("packaging-job") == (
        "slimserve package /spec/compressedmodel.yaml --report /models/digits/gen-1/compressed/report.json "
        "--repository /models/digits/repository --backend onnxruntime --variants int8")
    assert script("evaluator-job") == (
        "slimserve evaluate /spec/compressedmodel.yaml --base-dir /models/digits/inputs --baseline-url http://digits-baseline.models.svc:8000 "
        "--candidate-url http://digits-int8.models.svc:8000 --baseline-model baseline --candidate-model int8 "
        "--weight 50 --prometheus-url http://prom:9090 --out /tmp/report.json "
        "--configmap models/digits-report-g1-s1")
    policy = MANIFESTS["evaluator-job"]["spec"]["podFailurePolicy"]["rules"][0]
    assert policy["action"] == "FailJob" and policy["onExitCodes"]["values"] == [3, 4]


def test_spec_configmap_holds_a_file_the_worker_can_load(tmp_path: Path) -> None:
    from slimserve.api import load_compressed_model

    path = tmp_path / "compressedmodel.yaml"
    path.write_text(MANIFESTS["spec-configmap"]["data"]["compressedmodel.yaml"])
    assert load_compressed_model(path).spec == MODEL.spec


def test_summary_script_turns_a_report_into_the_termination_message(tmp_path: Path) -> None:
    variant = {"name": "int8", "compressionRatio": 3.91234567, "accuracyDrop": 0.2, "speedup": 2.5,
               "throughputRps": 900.0, "latencyMsP99": 1.5, "sha256": "x" * 64, "notes": ["long"] * 50}
    (tmp_path / "report.json").write_text(json.dumps({"variants": [variant] * 32, "search": None}))
    out = subprocess.run([sys.executable, "-c", b.SUMMARY_SCRIPT, str(tmp_path / "report.json")],
                         capture_output=True, text=True, check=True).stdout
    assert len(out) < 4096, "Kubernetes keeps at most 4096 bytes of a termination message"
    summary = parse_summary(out)
    assert summary is not None and summary["variants"][0]["compressionRatio"] == 3.9123


def test_httproute_weights_and_replica_split() -> None:
    backends = MANIFESTS["httproute"]["spec"]["rules"][0]["backendRefs"]
    assert [(x["name"], x["weight"]) for x in backends] == [("digits-baseline", 90), ("digits-int8", 10)]
    assert b.split_replicas(4, 0) == (4, 0)
    assert b.split_replicas(4, 10) == (3, 1)
    assert b.split_replicas(4, 50) == (2, 2)
    assert b.split_replicas(4, 100) == (0, 4)


def test_a_candidate_named_like_a_deployed_variant_serves_under_a_generation_suffix() -> None:
    status = {"stableVariant": "int8", "previousStableVariant": "baseline", "candidateVariant": "int8"}
    assert b.canary_variant(status, 2) == "int8-g2"
    assert b.canary_variant({**status, "candidateVariant": "fp16"}, 2) == "fp16"
    # The stable parked at the last promotion keeps its name (and files) too.
    assert b.canary_variant({**status, "stableVariant": "int8-g2", "previousStableVariant": "int8"}, 3) == "int8-g3"
    assert b.canary_variant({"stableVariant": "int8"}, 2) is None
    owner = b.Owner("digits", "models", "uid-digits", 2)
    script = b.build_packaging_job(MODEL, owner, SETTINGS, "int8", "int8-g2")["spec"]["template"]["spec"][
        "containers"][0]["args"][0]
    assert script.endswith("--backend onnxruntime --variants int8=int8-g2")
