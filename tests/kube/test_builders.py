"""Pure builders: golden manifests, upstream schema validation, secure defaults, worker commands."""

from __future__ import annotations

import dataclasses
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
from slimserve.errors import InvalidInput
from slimserve.operator import builders as b
from slimserve.operator.builders import Served
from slimserve.operator.reconcile import parse_choice
from slimserve.operator.settings import OperatorSettings
from tests.kube.emulator import example_model
from tests.kube.schemas import validate_custom

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("SLIMSERVE_UPDATE_GOLDEN") == "1"
SETTINGS = OperatorSettings(
    worker_image="worker:test", triton_image="triton:test", prometheus_url="http://prom:9090", scrape_interval="3s"
)


def gpu_body() -> dict[str, Any]:
    body = example_model()
    body["spec"]["compression"]["job"] = {
        "gpus": 1,
        "cpu": "4",
        "memory": "16Gi",
        "nodeSelector": {"nvidia.com/gpu.present": "true"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    }
    body["spec"]["serving"] = {
        "instanceKind": "gpu",
        "gpus": 1,
        "startupTimeout": "15m",
        "autoscaling": {
            "kedaQuery": 'sum(rate(nv_inference_queue_duration_us{namespace="{{namespace}}",'
            'slimserve_dev_model="{{model}}",slimserve_dev_variant="{{variant}}"}[1m]))',
            "kedaThreshold": 5000,
        },
        "nodeSelector": {"nvidia.com/gpu.present": "true"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "runtimeClassName": "nvidia",
        "imagePullSecrets": ["nvcr-io"],
    }
    body["spec"]["storage"] = {"secretName": "model-storage"}
    body["spec"]["data"]["evaluation"] = "pvc://datasets/digits/test.npz"
    return body


MODEL = parse_compressed_model(example_model())
GPU_MODEL = parse_compressed_model(gpu_body())
S3_MODEL = parse_compressed_model(example_model(
    serving={"modelRepository": {"uri": "s3://models/digits/repository"}}, storage={"secretName": "model-storage"}
))  # fmt: skip
OWNER = b.Owner.from_body(example_model())


REUSING = dataclasses.replace(OWNER, generation=3, compressed_generation=1)  # generation 3 reuses 1's output
BASELINE_G1 = Served("baseline", 1)
INT8_G1 = Served("int8", 1)


def all_manifests() -> dict[str, dict[str, Any]]:
    """One of each child, named for its golden file."""
    return {
        "spec-configmap": b.build_spec_config_map(MODEL, OWNER),
        "pvc": b.build_model_repository_pvc(MODEL, OWNER, SETTINGS),
        "compression-job-cpu": b.build_compression_job(MODEL, OWNER, SETTINGS),
        "compression-job-gpu": b.build_compression_job(GPU_MODEL, OWNER, SETTINGS, INT8_G1, "int8"),
        "choice-job": b.build_choice_job(MODEL, REUSING, SETTINGS, INT8_G1, "int8"),
        "packaging-job": b.build_packaging_job(MODEL, OWNER, SETTINGS, "int8", "int8", with_baseline=True),
        "packaging-job-s3": b.build_packaging_job(S3_MODEL, OWNER, SETTINGS, "int8", "int8", with_baseline=True),
        "deployment-s3": b.build_triton_deployment(S3_MODEL, OWNER, INT8_G1, "canary", SETTINGS),
        "deployment-stable": b.build_triton_deployment(MODEL, OWNER, BASELINE_G1, "stable", SETTINGS),
        "deployment-canary-replicas": b.build_triton_deployment(MODEL, OWNER, INT8_G1, "canary", SETTINGS, replicas=1),
        "deployment-gpu": b.build_triton_deployment(GPU_MODEL, OWNER, INT8_G1, "canary", SETTINGS),
        "deployment-control": b.build_triton_deployment(MODEL, OWNER, BASELINE_G1, "control", SETTINGS, replicas=1),
        "service": b.build_triton_service(OWNER, "int8"),
        "service-control": b.build_control_service(OWNER),
        "service-shared": b.build_shared_service(OWNER),
        "hpa": b.build_hpa(MODEL, OWNER, "int8"),
        "scaledobject": b.build_keda_scaledobject(GPU_MODEL, OWNER, "int8", SETTINGS),
        "httproute": b.build_httproute(MODEL, OWNER, "baseline", "int8", 10, SETTINGS),
        "evaluator-job-quality": b.build_evaluator_job(MODEL, OWNER, 0, 0, "baseline", "int8", SETTINGS),
        "evaluator-job": b.build_evaluator_job(MODEL, OWNER, 2, 50, "baseline", "int8", SETTINGS),
        "evaluator-job-storage": b.build_evaluator_job(GPU_MODEL, OWNER, 1, 10, "baseline", "int8", SETTINGS),
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
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "slimserve.dev/v1alpha1",
                "kind": "CompressedModel",
                "name": "digits",
                "uid": "uid-digits",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ], name
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
    assert (
        "slimserve compress /spec/compressedmodel.yaml --base-dir /models/digits/inputs "
        "--out /models/digits/gen-1/compressed; python -m slimserve.api.choice /spec/compressedmodel.yaml "
        "--report /models/digits/gen-1/compressed/compression-report.json > /dev/termination-log"
    ) in script("compression-job-cpu")
    assert "--stable-onnx /models/digits/gen-1/repository/int8/digits/1/model.onnx --stable int8" in script(
        "compression-job-gpu"
    )
    # Each variant of each generation gets a repository of its own, serving the one client-facing name.
    assert script("packaging-job") == (
        "set -e; slimserve package /spec/compressedmodel.yaml --report /models/digits/gen-1/compressed/compression-report.json "
        "--repository /models/digits/gen-1/repository/baseline --backend onnxruntime --variants baseline=digits; "
        "slimserve package /spec/compressedmodel.yaml --report /models/digits/gen-1/compressed/compression-report.json "
        "--repository /models/digits/gen-1/repository/int8 --backend onnxruntime --variants int8=digits"
    )
    assert script("evaluator-job-quality") == (
        "slimserve evaluate /spec/compressedmodel.yaml --base-dir /models/digits/inputs --weight 0 --model digits "
        "--candidate-url http://digits-int8.models.svc:8000 "
        "--reference-onnx /models/digits/gen-1/compressed/baseline.onnx "
        "--out /tmp/evaluation-report.json --summary-file /dev/termination-log"
    )
    assert script("evaluator-job") == (
        "slimserve evaluate /spec/compressedmodel.yaml --base-dir /models/digits/inputs --weight 50 --model digits "
        "--candidate-url http://digits-int8.models.svc:8000 --control-url http://digits--control.models.svc:8000 "
        "--stable-url http://digits-baseline.models.svc:8000 "
        "--candidate-labels namespace=models,slimserve_dev_model=digits,model=digits,slimserve_dev_variant=int8,"
        "app_kubernetes_io_component=triton "
        "--control-labels namespace=models,slimserve_dev_model=digits,model=digits,"
        "app_kubernetes_io_component=triton-control "
        "--prometheus-url http://prom:9090 --scrape-interval 3s --out /tmp/evaluation-report.json "
        "--summary-file /dev/termination-log"
    )
    for name in ("compression-job-cpu", "packaging-job", "evaluator-job"):
        spec = MANIFESTS[name]["spec"]
        assert spec["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [2, 3, 4]  # no retry changes them
        assert spec["activeDeadlineSeconds"] > 0 and spec["ttlSecondsAfterFinished"] > 0
        pod = spec["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False and "serviceAccountName" not in pod  # no API access
    assert MANIFESTS["compression-job-cpu"]["spec"]["activeDeadlineSeconds"] == 6 * 3600
    assert MANIFESTS["evaluator-job"]["spec"]["activeDeadlineSeconds"] == 15 * 60


def test_a_generation_reusing_compression_chooses_packages_and_judges_from_that_output() -> None:
    """No compression in the choice Job; packaging and the quality check read the reused generation's files."""
    choice = MANIFESTS["choice-job"]
    assert choice["metadata"]["name"] == "digits-choose-g3" and b.compressing_job_name(REUSING) == "digits-choose-g3"
    script = choice["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert script == (
        "set -e; python -m slimserve.api.choice /spec/compressedmodel.yaml --report "
        "/models/digits/gen-1/compressed/compression-report.json --stable-onnx /models/digits/gen-1/repository/int8/digits/1/"
        "model.onnx --stable int8 > /dev/termination-log"
    )
    assert "nvidia.com/gpu" not in str(choice)
    packaging = b.build_packaging_job(MODEL, REUSING, SETTINGS, "int8", "int8-g3", with_baseline=False)
    assert packaging["spec"]["template"]["spec"]["containers"][0]["args"][0] == (
        "set -e; slimserve package /spec/compressedmodel.yaml --report /models/digits/gen-1/compressed/compression-report.json "
        "--repository /models/digits/gen-3/repository/int8-g3 --backend onnxruntime --variants int8=digits"
    )
    quality = b.build_evaluator_job(MODEL, REUSING, 0, 0, "int8", "int8-g3", SETTINGS)
    assert "--reference-onnx /models/digits/gen-1/compressed/baseline.onnx" in str(quality)
    assert b.compressing_job_name(OWNER) == "digits-compress-g1"


def test_one_client_facing_model_name_whichever_variant_serves() -> None:
    names = set()
    for name in ("deployment-stable", "deployment-canary-replicas", "deployment-control"):
        container = MANIFESTS[name]["spec"]["template"]["spec"]["containers"][0]
        names |= {a.split("=", 1)[1] for a in container["args"] if a.startswith("--load-model=")}
        assert container["readinessProbe"]["httpGet"]["path"] == "/v2/models/digits/ready"
    assert names == {"digits"}
    rule = MANIFESTS["httproute"]["spec"]["rules"][0]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/v2/models/digits"}}]


def test_the_control_is_behind_no_client_or_stable_service() -> None:
    control_pods = MANIFESTS["deployment-control"]["spec"]["template"]["metadata"]["labels"]
    for name in ("service", "service-shared"):
        selector = MANIFESTS[name]["spec"]["selector"]
        assert not all(control_pods.get(k) == v for k, v in selector.items()), name
    stable_selector = b.build_triton_service(OWNER, "baseline")["spec"]["selector"]
    assert not all(control_pods.get(k) == v for k, v in stable_selector.items())
    selector = MANIFESTS["service-control"]["spec"]["selector"]
    assert all(control_pods.get(k) == v for k, v in selector.items())


def test_triton_pods_start_slowly_and_land_where_the_spec_says() -> None:
    pod = MANIFESTS["deployment-gpu"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["startupProbe"]["periodSeconds"] * container["startupProbe"]["failureThreshold"] == 15 * 60
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["runtimeClassName"] == "nvidia" and pod["imagePullSecrets"] == [{"name": "nvcr-io"}]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert MANIFESTS["deployment-gpu"]["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 1, "maxSurge": 0}
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    assert MANIFESTS["deployment-stable"]["spec"]["progressDeadlineSeconds"] == 20 * 60


def test_storage_secret_and_pvc_uris_reach_the_worker_jobs() -> None:
    pod = MANIFESTS["evaluator-job-storage"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": "model-storage"}}]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/mnt/pvc/datasets"]["readOnly"] is True and mounts["/models"]["readOnly"] is True
    assert "/var/run/secrets/slimserve/storage" in mounts
    assert {"name": "pvc-0", "persistentVolumeClaim": {"claimName": "datasets", "readOnly": True}} in pod["volumes"]
    assert pod["imagePullSecrets"] == [{"name": "nvcr-io"}]


def test_keda_queries_select_each_variants_own_pods() -> None:
    query = MANIFESTS["scaledobject"]["spec"]["triggers"][0]["metadata"]["query"]
    assert 'namespace="models",slimserve_dev_model="digits",slimserve_dev_variant="int8"' in query
    with pytest.raises(InvalidInput, match="kedaQuery"):
        body = gpu_body()
        body["spec"]["serving"]["autoscaling"]["kedaQuery"] = "sum(rate(nv_inference_queue_duration_us[1m]))"
        parse_compressed_model(body)


def test_spec_configmap_holds_a_file_the_worker_can_load(tmp_path: Path) -> None:
    from slimserve.api import load_compressed_model

    path = tmp_path / "compressedmodel.yaml"
    path.write_text(MANIFESTS["spec-configmap"]["data"]["compressedmodel.yaml"])
    assert load_compressed_model(path).spec == MODEL.spec


def _variant(name: str, size: int, drop: float) -> dict[str, Any]:
    return {"name": name, "recipe": name, "path": f"{name}.onnx", "sha256": name * 8, "sizeBytes": size,
            "compressionRatio": 4000 / size, "params": 1, "macs": 1, "metric": "accuracy", "quality": 98.0,
            "qualityCI": [97.0, 99.0], "qualityUnit": "% correct", "drop": drop, "dropCI": [drop - 0.3, drop + 0.3],
            "dropUnit": "points", "latencyMsP50": 1.0, "latencyMsP99": 2.0, "throughputRps": 100.0, "speedup": 1.0,
            "compressSeconds": 1.0, "notes": ["long"] * 50}  # fmt: skip


def test_the_choice_script_fits_the_termination_message_whatever_the_report(tmp_path: Path) -> None:
    """32 variants with 40-character names: the Job prints only the chosen one (Kubernetes keeps 4096 bytes)."""
    variants = [_variant(f"v{i:02d}-" + "x" * 36, 1000 + i, 0.1) for i in range(32)]
    report = {"model": "m", "device": "cpu", "baseline": _variant("baseline", 4000, 0.0), "variants": variants}
    (tmp_path / "compression-report.json").write_text(json.dumps(report))
    spec = tmp_path / "cm.yaml"
    spec.write_text(MANIFESTS["spec-configmap"]["data"]["compressedmodel.yaml"])
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "slimserve.api.choice",
            str(spec),
            "--report",
            str(tmp_path / "compression-report.json"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert len(out) < 1024
    choice = parse_choice(out)
    assert choice is not None and choice["candidate"]["name"] == "v00-" + "x" * 36  # the smallest within budget
    # The stable's own file is never offered again, and auto must beat it.
    (tmp_path / "stable.onnx").write_bytes(b"s" * 900)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "slimserve.api.choice",
            str(spec),
            "--report",
            str(tmp_path / "compression-report.json"),
            "--stable-onnx",
            str(tmp_path / "stable.onnx"),
            "--stable",
            "tiny",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert parse_choice(out) == {
        "candidate": None,
        "reason": (
            "no variant within maxAccuracyDrop (" + ", ".join(v["name"] for v in variants) + ") beats the stable "
            "model tiny; nothing new to roll out"
        ),
    }


def test_httproute_weights_and_replica_split() -> None:
    backends = MANIFESTS["httproute"]["spec"]["rules"][0]["backendRefs"]
    assert [(x["name"], x["weight"]) for x in backends] == [("digits-baseline", 90), ("digits-int8", 10)]
    assert b.split_replicas(4, 0) == (4, 0)
    assert b.split_replicas(4, 10) == (3, 1)
    assert b.split_replicas(4, 50) == (2, 2)
    assert b.split_replicas(4, 100) == (1, 3)  # the stable keeps a pod until the promotion (never 0 ready)


def test_a_candidate_named_like_a_deployed_variant_serves_under_a_generation_suffix() -> None:
    status = {"stableVariant": "int8", "previousStableVariant": "baseline", "candidateVariant": "int8"}
    assert b.canary_variant(status, 2) == "int8-g2"
    assert b.canary_variant({**status, "candidateVariant": "fp16"}, 2) == "fp16"
    # The stable parked at the last promotion keeps its name (and files) too.
    assert b.canary_variant({**status, "stableVariant": "int8-g2", "previousStableVariant": "int8"}, 3) == "int8-g3"
    assert b.canary_variant({"stableVariant": "int8"}, 2) is None
    assert b.control_name(OWNER) == "digits--control"  # never `<cr>-<variant>`: variants start with a letter or digit


def test_the_operator_mounts_what_the_storage_layer_reads() -> None:
    import slimserve.storage as storage

    assert b.SECRET_MOUNT_PATH == storage.SECRET_MOUNT_PATH
    assert b.pvc_claims(GPU_MODEL) == storage.pvc_claims(GPU_MODEL) == ["datasets"]
    assert b.pvc_claims(MODEL) == storage.pvc_claims(MODEL) == []


def test_an_s3_model_repository_is_uploaded_per_generation_and_variant_and_read_by_triton() -> None:
    """The packaging Job keeps the volume's copy (a later choice reads the stable's model file there) and
    uploads each repository under `gen-<g>/<variant>`; Triton reads that prefix with the Secret's variables
    and mounts no model volume."""
    script = MANIFESTS["packaging-job-s3"]["spec"]["template"]["spec"]["containers"][0]["args"][0]
    package = (
        "slimserve package /spec/compressedmodel.yaml --report /models/digits/gen-1/compressed/compression-report.json "
    )
    assert script == "set -e; " + "; ".join([
        package + "--repository /models/digits/gen-1/repository/baseline --backend onnxruntime --variants baseline=digits",
        package + "--repository s3://models/digits/repository --backend onnxruntime --variants baseline=digits "
        "--repository-version gen-1/baseline",
        package + "--repository /models/digits/gen-1/repository/int8 --backend onnxruntime --variants int8=digits",
        package + "--repository s3://models/digits/repository --backend onnxruntime --variants int8=digits "
        "--repository-version gen-1/int8",
    ])  # fmt: skip
    assert MANIFESTS["packaging-job-s3"]["spec"]["template"]["spec"]["containers"][0]["envFrom"] == [
        {"secretRef": {"name": "model-storage"}}
    ]
    pod = MANIFESTS["deployment-s3"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["envFrom"] == [{"secretRef": {"name": "model-storage"}}]
    assert [v["name"] for v in pod["volumes"]] == ["tmp"] and container["volumeMounts"] == [
        {"name": "tmp", "mountPath": "/tmp"}
    ]
    assert container["command"][:2] == ["/bin/sh", "-c"] and "$(" not in container["command"][2]  # no kubelet expansion
    assert container["args"][0] == "--model-control-mode=explicit" and "--load-model=digits" in container["args"]
    assert b.repository_uri(S3_MODEL, INT8_G1) == "s3://models/digits/repository/gen-1/int8"
    assert b.repository_uri(MODEL, INT8_G1) is None


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"AWS_ENDPOINT_URL": "http://minio.minio:9000"},
        {"AWS_ENDPOINT_URL": "http://minio.minio:9000/"},
        {"AWS_ENDPOINT_URL": "https://objects.example.com"},
        {"AWS_ENDPOINT_URL": "http://objects.example.com"},
        {"AWS_ENDPOINT_URL": "http://ignored:1", "AWS_ENDPOINT_URL_S3": "http://s3.local:9000"},
    ],
)
def test_triton_gets_the_s3_endpoint_in_the_form_its_client_reads(env: dict[str, str], tmp_path: Path) -> None:
    """The Triton container's shell line, run by sh with a stand-in tritonserver, renders what
    `slimserve.storage.triton_repository_uri` (what `slimserve package` prints) renders for the same variables."""
    from slimserve.storage import triton_repository_uri

    (tmp_path / "tritonserver").write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    (tmp_path / "tritonserver").chmod(0o755)
    container = MANIFESTS["deployment-s3"]["spec"]["template"]["spec"]["containers"][0]
    done = subprocess.run([*container["command"], *container["args"]], capture_output=True, text=True, check=True,
                          env={"PATH": f"{tmp_path}:/usr/bin:/bin", **env})  # fmt: skip
    argv = done.stdout.splitlines()
    uri = "s3://models/digits/repository/gen-1/int8"
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or ""
    assert argv[0] == f"--model-repository={triton_repository_uri(uri, endpoint.rstrip('/'))}"
    assert argv[1:] == container["args"]
