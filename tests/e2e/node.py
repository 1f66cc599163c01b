"""A small test double of one Kubernetes node, so the operator's objects run for real.

kmock's emulator stores objects and runs no controllers; this node plays the ones a rollout needs,
by polling the emulator's API like a controller would:
- the Job controller and the kubelet: each Job's container (command, args, env, envFrom Secrets,
  ConfigMap, Secret, PVC and emptyDir mounts mapped to folders, the termination message) runs as a
  process of the worker image (a venv installed as docker/worker.Dockerfile installs it), with the
  Job's backoffLimit, podFailurePolicy and activeDeadlineSeconds;
- the Deployment controller and the kubelet: each replica of a Triton Deployment runs its container's
  args (or, with an s3:// model repository, its shell command, which finds `tritonserver` on PATH, and
  the envFrom Secret's variables) with the local `tritonserver` (the pytriton wheel's Python backend and
  its native S3 client), its readiness probe
  decides when it is ready, its preStop hook runs before it stops, a new pod template rolls (surge
  first), and the Deployment's status says what `kubectl rollout status` reads;
- kube-proxy and cluster DNS: `<service>.<namespace>.svc:<port>` in a container's command resolves to
  a ready pod's port when it starts (iptables picks one endpoint per connection; with one endpoint per
  Service, as here, that is the same);
- a Gateway controller and its data plane: an HTTP proxy that routes `/v2/models/...` by the
  HTTPRoutes' weights, picks up route changes after a propagation delay, and accepts the routes whose
  Gateway exists;
- Prometheus with the chart's PodMonitor: a real Prometheus scraping every ready Triton pod with the
  pod labels the PodMonitor adds;
- the scheduler, as two one-CPU nodes when the machine has two CPUs or more: the canary and its
  control share one CPU (the same neighbours, the comparison the gate is built on), the stable, the
  evaluator's load generator and everything else the other; compression and packaging use every CPU.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import http.server
import itertools
import json
import logging
import os
import random
import re
import shutil
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from slimserve.processes import ManagedProcess, free_port
from slimserve.triton.server import find_triton, prepare_backend_dir
from tests.e2e.worker_image import clean_env

Json = dict[str, Any]
log = logging.getLogger(__name__)
TICK_S: Final = 0.5
TERMINATION_LIMIT: Final = 4096
_SERVICE_URL = re.compile(r"\b([a-z0-9]([-a-z0-9]*[a-z0-9])?)\.([a-z0-9-]+)\.svc(?:\.cluster\.local)?:([0-9]+)")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Api:
    """Plain HTTP against the emulator, from the node's own thread."""

    def __init__(self, base: str, namespace: str) -> None:
        self.base = base.rstrip("/")
        self.ns = namespace

    def _call(self, method: str, path: str, body: Json | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/merge-patch+json" if method == "PATCH" else "application/json"}
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
                raw = response.read()
        except urllib.error.HTTPError as exc:
            if exc.code in (404, 409):
                return None
            raise
        return json.loads(raw) if raw else None

    def path(self, api_version: str, plural: str, name: str = "", sub: str = "") -> str:
        base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        out = f"{base}/namespaces/{self.ns}/{plural}"
        return out + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")

    def list(self, api_version: str, plural: str) -> list[Json]:
        found = self._call("GET", self.path(api_version, plural)) or {}
        return [o for o in found.get("items") or [] if o]

    def get(self, api_version: str, plural: str, name: str) -> Json | None:
        return self._call("GET", self.path(api_version, plural, name))  # type: ignore[no-any-return]

    def create(self, api_version: str, plural: str, body: Json) -> None:
        self._call("POST", self.path(api_version, plural), body)

    def patch(self, api_version: str, plural: str, name: str, body: Json) -> None:
        self._call("PATCH", self.path(api_version, plural, name), body)

    def delete(self, api_version: str, plural: str, name: str) -> None:
        self._call("DELETE", self.path(api_version, plural, name))


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _map_paths(text: str, mounts: list[tuple[str, Path]]) -> str:
    """Every absolute container path under a mount, as the folder that plays that mount (one pass, so a
    mapped folder is never mapped again)."""
    if not mounts:
        return text
    folders = dict(mounts)
    alternatives = "|".join(re.escape(m) for m, _ in sorted(mounts, key=lambda m: -len(m[0])))
    pattern = r"(?<![\w.-])(" + alternatives + r")(?=/|$|[\s'\";:=,])"
    return re.sub(pattern, lambda m: str(folders[m.group(1)]), text)


@dataclass
class Pod:
    """One pod's process and what the node knows about it."""

    name: str
    labels: dict[str, str]
    process: ManagedProcess | None = None
    ports: dict[str, int] = field(default_factory=dict)
    ready: bool = False
    terminating: bool = False
    template_hash: str = ""
    role: str = ""
    started: float = field(default_factory=time.monotonic)
    restarts: int = 0


@dataclass
class JobRun:
    job: Json
    pod: Pod
    failures: int = 0
    started: float = field(default_factory=time.monotonic)
    done: bool = False


class Node:
    """The node: Jobs, Deployments, Services and the Gateway of one namespace."""

    def __init__(self, api: Api, root: Path, worker_venv: Path, dns: dict[str, int], pod_target_labels: list[str],
                 scrape_components: list[str], gateway_delay_s: float = 1.0) -> None:  # fmt: skip
        self.api = api
        self.root = root
        self.worker_venv = worker_venv
        self.dns = dns  # "<service>.<namespace>" → a local port (services outside the namespace, e.g. Prometheus)
        self.pod_target_labels = pod_target_labels
        self.scrape_components = scrape_components
        self.jobs: dict[str, JobRun] = {}
        self.deployments: dict[str, list[Pod]] = {}
        self.pods: list[Pod] = []  # every Triton pod as of the last tick
        self.services: dict[str, Json] = {}
        self.lock = threading.RLock()
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="node", daemon=True)
        self.names = itertools.count()
        self.triton = find_triton()
        self.backends = prepare_backend_dir(self.triton, root / "triton-image")
        self.image_bin = root / "triton-image" / "bin"  # the image's PATH: `tritonserver` is the wheel's binary
        self.image_bin.mkdir(parents=True, exist_ok=True)
        (self.image_bin / "tritonserver").symlink_to(self.triton.binary)
        self.gateway = Gateway(self, gateway_delay_s)
        self.targets_file = root / "prometheus" / "targets.json"
        self.targets_file.parent.mkdir(parents=True, exist_ok=True)
        self.targets_file.write_text("[]")
        self.errors: list[str] = []
        cpus = sorted(os.sched_getaffinity(0))
        self.compared_cpus, self.other_cpus = (cpus[-1:], cpus[:-1]) if len(cpus) > 1 else (cpus, cpus)

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> Node:
        self.gateway.start()
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_flag.set()
        self.thread.join(10)
        self.gateway.stop()
        with self.lock:
            for run in self.jobs.values():
                if run.pod.process:
                    run.pod.process.stop(5)
            for pods in self.deployments.values():
                for pod in pods:
                    if pod.process:
                        pod.process.stop(5)

    def _loop(self) -> None:
        while not self.stop_flag.is_set():
            try:
                self.tick()
            except (TimeoutError, urllib.error.URLError) as exc:  # a starved emulator answers next tick
                log.info("node: the API did not answer (%s); next tick", exc)
            except Exception as exc:  # noqa: BLE001 - a test double keeps going; the test sees the errors
                self.errors.append(f"{type(exc).__name__}: {exc}")
                log.warning("node: %s", self.errors[-1], exc_info=True)
            self.stop_flag.wait(TICK_S)

    def tick(self) -> None:
        with self.lock:
            self.services = {s["metadata"]["name"]: s for s in self.api.list("v1", "services")}
            self._jobs()
            self._deployments()
            self.pods = [p for pods in self.deployments.values() for p in pods]
            self._publish_targets()
        self.gateway.observe(
            self.api.list("gateway.networking.k8s.io/v1", "httproutes"),
            {g["metadata"]["name"] for g in self.api.list("gateway.networking.k8s.io/v1", "gateways")},
        )

    # -- DNS and kube-proxy ------------------------------------------------------------------------
    def endpoints(self, service: str, port: int) -> list[int]:
        """Local ports of the ready pods behind `service:port` (never waits for the node's tick: the pods
        list is the last tick's, each pod's readiness and termination live)."""
        svc = self.services.get(service)
        if svc is None:
            return []
        spec = svc.get("spec") or {}
        target = next((p.get("targetPort") for p in spec.get("ports") or [] if p.get("port") == port), None)
        pods = self.pods
        return [p.ports[str(target)] for p in pods if p.ready and not p.terminating and str(target) in p.ports
                and _matches(spec.get("selector") or {}, p.labels)]  # fmt: skip

    def resolve(self, text: str) -> str:
        """`<svc>.<ns>.svc:<port>` → `127.0.0.1:<a ready pod's port>` (or the static names in `dns`)."""

        def one(match: re.Match[str]) -> str:
            service, namespace, port = match.group(1), match.group(3), int(match.group(4))
            static = self.dns.get(f"{service}.{namespace}")
            if static is not None:
                return f"127.0.0.1:{static}"
            ports = self.endpoints(service, port) if namespace == self.api.ns else []
            return f"127.0.0.1:{random.choice(ports)}" if ports else match.group(0)

        return _SERVICE_URL.sub(one, text)

    # -- Jobs ----------------------------------------------------------------------------------------
    def _jobs(self) -> None:
        live = {}
        for job in self.api.list("batch/v1", "jobs"):
            uid = job["metadata"]["uid"]
            live[uid] = job
            conditions = {c["type"] for c in (job.get("status") or {}).get("conditions") or []}
            if uid not in self.jobs and not conditions & {"Complete", "Failed"}:
                self.jobs[uid] = JobRun(job, self._start_job_pod(job))
                self.api.patch("batch/v1", "jobs", job["metadata"]["name"],
                               {"status": {"startTime": _now(), "active": 1}})  # fmt: skip
        for uid, run in list(self.jobs.items()):
            if uid not in live:  # deleted (propagation Background): its pod goes too
                if run.pod.process:
                    run.pod.process.stop(5)
                self.api.delete("v1", "pods", run.pod.name)
                del self.jobs[uid]
                continue
            if run.done:
                continue
            spec = run.job["spec"]
            deadline = spec.get("activeDeadlineSeconds")
            process = run.pod.process
            assert process is not None
            if process.alive():
                if deadline and time.monotonic() - run.started > deadline:
                    process.stop(5)
                    self._pod_terminated(run.pod, 137, "DeadlineExceeded", "")
                    self._job_failed(run, "DeadlineExceeded", "Job was active longer than specified deadline")
                continue
            code = process.wait()
            message = self._termination_message(run.pod, code, run.job["spec"]["template"]["spec"]["containers"][0])
            self._pod_terminated(run.pod, code, "Completed" if code == 0 else "Error", message)
            if code == 0:
                run.done = True
                self.api.patch("batch/v1", "jobs", run.job["metadata"]["name"], {"status": {
                    "active": 0, "succeeded": 1, "completionTime": _now(),
                    "conditions": [{"type": "Complete", "status": "True", "reason": "Completed",
                                    "lastTransitionTime": _now()}]}})  # fmt: skip
                continue
            run.failures += 1
            rules = (spec.get("podFailurePolicy") or {}).get("rules") or []
            if any(r.get("action") == "FailJob" and code in (r.get("onExitCodes") or {}).get("values", [])
                   for r in rules):  # fmt: skip
                self._job_failed(run, "PodFailurePolicy",
                                 f"Container worker for pod {self.api.ns}/{run.pod.name} failed with exit code "
                                 f"{code} matching FailJob rule at index 0")  # fmt: skip
            elif run.failures > int(spec.get("backoffLimit", 6)):
                self._job_failed(run, "BackoffLimitExceeded", "Job has reached the specified backoff limit")
            else:
                run.pod = self._start_job_pod(run.job)

    def _job_failed(self, run: JobRun, reason: str, message: str) -> None:
        run.done = True
        self.api.patch("batch/v1", "jobs", run.job["metadata"]["name"], {"status": {
            "active": 0, "failed": run.failures or 1,
            "conditions": [{"type": "Failed", "status": "True", "reason": reason, "message": message,
                            "lastTransitionTime": _now()}]}})  # fmt: skip

    def _termination_message(self, pod: Pod, code: int, container: Json) -> str:
        path = self.root / "pods" / pod.name / "termination-log"
        text = path.read_text(errors="replace") if path.exists() else ""
        if not text.strip() and code != 0 and container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            assert pod.process is not None
            text = "\n".join(pod.process.log_tail(80).splitlines())[-2048:]
        return text[:TERMINATION_LIMIT]

    def _pod_terminated(self, pod: Pod, code: int, reason: str, message: str) -> None:
        self.api.patch("v1", "pods", pod.name, {"status": {
            "phase": "Succeeded" if code == 0 else "Failed",
            "containerStatuses": [{"name": "worker", "ready": False, "restartCount": 0, "state": {"terminated": {
                "exitCode": code, "reason": reason, "message": message, "finishedAt": _now()}}}]}})  # fmt: skip

    def _volumes(self, pod_name: str, spec: Json, container: Json) -> list[tuple[str, Path]]:
        """Each mount as a folder: PVCs shared on the node, ConfigMaps and Secrets written out, emptyDirs."""
        pod_dir = self.root / "pods" / pod_name
        folders: dict[str, Path] = {}
        for volume in spec.get("volumes") or []:
            name = volume["name"]
            if "persistentVolumeClaim" in volume:
                folders[name] = self.root / "pvc" / volume["persistentVolumeClaim"]["claimName"]
            elif "configMap" in volume or "secret" in volume:
                folders[name] = pod_dir / "volumes" / name
                folders[name].mkdir(parents=True, exist_ok=True)
                if "configMap" in volume:
                    cm = self.api.get("v1", "configmaps", volume["configMap"]["name"]) or {}
                    files = {k: v.encode() for k, v in (cm.get("data") or {}).items()}
                else:
                    secret = self.api.get("v1", "secrets", volume["secret"]["secretName"]) or {}
                    files = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
                for key, data in files.items():
                    (folders[name] / key).write_bytes(data)
            else:  # emptyDir
                folders[name] = pod_dir / "volumes" / name
            folders[name].mkdir(parents=True, exist_ok=True)
        mounts = [(m["mountPath"], folders[m["name"]]) for m in container.get("volumeMounts") or []]
        log = pod_dir / "termination-log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("")
        mounts.append((container.get("terminationMessagePath") or "/dev/termination-log", log))
        return sorted(mounts, key=lambda m: -len(m[0]))

    def _env(self, container: Json, mounts: list[tuple[str, Path]]) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            if "secretRef" in source:
                secret = self.api.get("v1", "secrets", source["secretRef"]["name"]) or {}
                env.update({k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()})
        for var in container.get("env") or []:
            env[var["name"]] = _map_paths(str(var.get("value", "")), mounts)
        return env

    def _start_job_pod(self, job: Json) -> Pod:
        template = job["spec"]["template"]
        name = f"{job['metadata']['name']}-{next(self.names):05d}"
        labels = {**(template.get("metadata") or {}).get("labels", {}), "job-name": job["metadata"]["name"],
                  "batch.kubernetes.io/job-name": job["metadata"]["name"],
                  "controller-uid": job["metadata"]["uid"]}  # fmt: skip
        container = template["spec"]["containers"][0]
        mounts = self._volumes(name, template["spec"], container)
        argv = [self.resolve(_map_paths(a, mounts)) for a in [*container.get("command", []), *container["args"]]]
        if labels.get("app.kubernetes.io/component") == "evaluator":
            argv = ["taskset", "-c", ",".join(map(str, self.other_cpus)), *argv]
        cwd = self.root / "pods" / name
        env = clean_env(self.worker_venv, **self._env(container, mounts))
        self.api.create("v1", "pods", {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels, "ownerReferences": [{
                "apiVersion": "batch/v1", "kind": "Job", "name": job["metadata"]["name"],
                "uid": job["metadata"]["uid"], "controller": True}]},
            "spec": template["spec"],
            "status": {"phase": "Running", "containerStatuses": [{"name": "worker", "ready": True, "restartCount": 0,
                                                                   "state": {"running": {"startedAt": _now()}}}]},
        })  # fmt: skip
        process = ManagedProcess(name, argv, cwd / "log.txt", env=env, cwd=cwd)
        return Pod(name, labels, process)

    # -- Deployments -------------------------------------------------------------------------------
    def _deployments(self) -> None:
        live = {d["metadata"]["name"]: d for d in self.api.list("apps/v1", "deployments")}
        for name in list(self.deployments):
            if name not in live:
                for pod in self.deployments.pop(name):
                    self._terminate(pod, name)
        for name, deployment in live.items():
            self._deployment(name, deployment)

    def _deployment(self, name: str, deployment: Json) -> None:
        spec = deployment["spec"]
        desired = 1 if spec.get("replicas") is None else int(spec["replicas"])
        template = spec["template"]
        template_hash = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        pods = self.deployments.setdefault(name, [])
        for pod in pods:
            self._probe(pod, template)
        current = [p for p in pods if p.template_hash == template_hash and not p.terminating]
        old = [p for p in pods if p.template_hash != template_hash and not p.terminating]
        role = deployment["metadata"].get("labels", {}).get("slimserve.dev/role", "")
        for _ in range(desired - len(current)):
            pod = self._start_triton_pod(name, template, template_hash, role)
            pods.append(pod)
            current.append(pod)
        for pod in sorted(current, key=lambda p: p.ready)[: max(0, len(current) - desired)]:
            self._terminate(pod, name)
            current.remove(pod)
        if sum(p.ready for p in current) >= desired:
            for pod in old:
                self._terminate(pod, name)
            old = []
        status = {
            "observedGeneration": deployment["metadata"].get("generation", 1),
            "replicas": len(current) + len(old), "updatedReplicas": len(current),
            "readyReplicas": sum(p.ready for p in current + old), "availableReplicas": sum(p.ready for p in current + old),
        }  # fmt: skip
        if {k: (deployment.get("status") or {}).get(k) for k in status} != status:
            self.api.patch("apps/v1", "deployments", name, {"status": status})

    def _start_triton_pod(self, deployment: str, template: Json, template_hash: str, role: str) -> Pod:
        name = f"{deployment}-{template_hash[:6]}-{next(self.names):05d}"
        labels = {**template["metadata"]["labels"], "pod-template-hash": template_hash}
        pod = Pod(name, labels, template_hash=template_hash, role=role)
        self.api.create("v1", "pods", {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
            "spec": template["spec"],
            "status": {"phase": "Pending", "containerStatuses": [{"name": "triton", "ready": False, "restartCount": 0,
                                                                   "state": {"waiting": {"reason": "ContainerCreating"}}}]},
        })  # fmt: skip
        self._run_triton(pod, template)
        return pod

    def _run_triton(self, pod: Pod, template: Json) -> None:
        """The container's args with the local tritonserver: loopback ports, the wheel's Python backend."""
        container = template["spec"]["containers"][0]
        mounts = self._volumes(pod.name, template["spec"], container)
        pod.ports = {p["name"]: free_port() for p in container.get("ports") or []}
        flags = {"--http-port": "http", "--grpc-port": "grpc", "--metrics-port": "metrics"}
        cpus = self.compared_cpus if pod.role in ("canary", "control") else self.other_cpus
        command = container.get("command") or [str(self.triton.binary)]  # else the image's entrypoint runs args
        argv = ["taskset", "-c", ",".join(map(str, cpus)), *command]
        for arg in container["args"] if container.get("command") else container["args"][1:]:
            key = arg.split("=", 1)[0]
            argv.append(f"{key}={pod.ports[flags[key]]}" if key in flags else _map_paths(arg, mounts))
        argv += [f"--backend-directory={self.backends}", "--http-address=127.0.0.1", "--grpc-address=127.0.0.1",
                 "--metrics-address=127.0.0.1", "--allow-gpu-metrics=false", "--exit-on-error=true",
                 "--backend-config=python,shm-default-byte-size=4194304",
                 "--backend-config=python,shm-growth-byte-size=4194304"]  # fmt: skip
        env = dict(os.environ)  # the Triton image: the wheel's libraries, the stub on this interpreter's packages
        env.pop("PYTHONPATH", None)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(self.triton.libs), env.get("LD_LIBRARY_PATH")) if p)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p.endswith("site-packages"))
        env["PATH"] = os.pathsep.join([str(self.image_bin), str(Path(sys.executable).parent), env.get("PATH", "")])
        env.update(self._env(container, mounts))  # envFrom: the storage Secret's AWS variables
        env["OMP_NUM_THREADS"] = "1"
        cwd = self.root / "pods" / pod.name
        pod.process = ManagedProcess(pod.name, argv, cwd / "log.txt", env=env, cwd=cwd)
        pod.started = time.monotonic()

    def _probe(self, pod: Pod, template: Json) -> None:
        """The readiness probe; a container that died restarts (CrashLoopBackOff, with its log's tail)."""
        if pod.terminating or pod.process is None:
            return
        if not pod.process.alive():
            tail = pod.process.log_tail(20)
            pod.ready = False
            self.api.patch("v1", "pods", pod.name, {"status": {"phase": "Running", "containerStatuses": [{
                "name": "triton", "ready": False, "restartCount": pod.restarts + 1,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off restarting failed container"}},
                "lastState": {"terminated": {"exitCode": pod.process.popen.returncode, "reason": "Error",
                                             "message": tail[-1024:]}}}]}})  # fmt: skip
            if time.monotonic() - pod.started > 3 * (pod.restarts + 1):
                pod.restarts += 1
                self._run_triton(pod, template)
            return
        if pod.ready:
            return
        probe = template["spec"]["containers"][0]["readinessProbe"]["httpGet"]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{pod.ports[probe['port']]}{probe['path']}",  # noqa: S310
                                        timeout=0.5) as response:  # fmt: skip
                pod.ready = response.status == 200
        except (urllib.error.URLError, OSError):
            return
        if pod.ready:
            self.api.patch("v1", "pods", pod.name, {"status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True"}], "containerStatuses": [{"name": "triton", "ready": True,
                "restartCount": pod.restarts, "state": {"running": {"startedAt": _now()}}}]}})  # fmt: skip

    def _terminate(self, pod: Pod, deployment: str) -> None:
        """Out of the endpoints at once; the preStop hook runs, then SIGTERM (in the background)."""
        pod.terminating = True
        pod.ready = False
        self.api.delete("v1", "pods", pod.name)
        pods = self.deployments.get(deployment, [])
        container = {}
        with contextlib.suppress(Exception):
            container = (self.api.get("apps/v1", "deployments", deployment) or {})["spec"]["template"]["spec"][
                "containers"
            ][0]
        command = (((container.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command") or []
        delay = float(command[1]) if command[:1] == ["sleep"] else 0.0

        def stop() -> None:
            time.sleep(delay)
            if pod.process:
                pod.process.stop(10)
            with self.lock:
                if pod in pods:
                    pods.remove(pod)

        threading.Thread(target=stop, name=f"stop {pod.name}", daemon=True).start()

    # -- Prometheus's PodMonitor -------------------------------------------------------------------
    def _publish_targets(self) -> None:
        groups = []
        for pods in self.deployments.values():
            for pod in pods:
                if not pod.ready or pod.terminating or pod.labels.get("app.kubernetes.io/component") not in (
                        self.scrape_components):  # fmt: skip
                    continue
                labels = {"namespace": self.api.ns, "pod": pod.name, "job": "triton"}
                labels |= {re.sub(r"[^a-zA-Z0-9_]", "_", k): pod.labels[k] for k in self.pod_target_labels
                           if k in pod.labels}  # fmt: skip
                groups.append({"targets": [f"127.0.0.1:{pod.ports['metrics']}"], "labels": labels})
        text = json.dumps(sorted(groups, key=lambda g: g["targets"]), indent=1)
        if self.targets_file.read_text() != text:
            tmp = self.targets_file.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(self.targets_file)


class Gateway:
    """A Gateway controller and data plane: routes by HTTPRoute weights, a route change lands after a delay."""

    def __init__(self, node: Node, delay_s: float) -> None:
        self.node = node
        self.delay_s = delay_s
        self.history: list[tuple[float, list[Json]]] = [(0.0, [])]
        self.port = free_port()
        gateway = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                port = gateway.pick(self.path)
                if port is None:
                    self._answer(503, b"no healthy upstream")
                    return
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                    conn.request(
                        self.command,
                        self.path,
                        body=body,
                        headers={k: v for k, v in self.headers.items() if k.lower() != "host"},
                    )
                    response = conn.getresponse()
                    self._answer(response.status, response.read(), response.getheader("Content-Type"))
                    conn.close()
                except OSError:
                    self._answer(502, b"upstream connect error")

            def _answer(self, status: int, data: bytes, content_type: str | None = None) -> None:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(data)))
                    if content_type:
                        self.send_header("Content-Type", content_type)
                    self.end_headers()
                    self.wfile.write(data)

            do_GET = do_POST = _forward  # noqa: N815

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="gateway", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def observe(self, routes: list[Json], gateways: set[str]) -> None:
        """Accept the routes whose Gateway exists; remember their rules as of now."""
        mine = [r for r in routes if any(p.get("name") in gateways for p in r["spec"].get("parentRefs") or [])]
        for route in mine:
            if not (route.get("status") or {}).get("parents"):
                parent = route["spec"]["parentRefs"][0]
                self.node.api.patch("gateway.networking.k8s.io/v1", "httproutes", route["metadata"]["name"], {
                    "status": {"parents": [{"parentRef": parent, "controllerName": "e2e.slimserve.dev/gateway",
                                            "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                                                            "lastTransitionTime": _now()}]}]}})  # fmt: skip
        rules = [rule for r in mine for rule in r["spec"].get("rules") or []]
        if rules != self.history[-1][1]:
            self.history.append((time.monotonic(), rules))

    def rules(self) -> list[Json]:
        """The routes the data plane has picked up: the latest at least `delay_s` old."""
        now = time.monotonic()
        return next(rules for seen, rules in reversed(self.history) if now - seen >= self.delay_s or seen == 0.0)

    def pick(self, path: str) -> int | None:
        for rule in self.rules():
            prefixes = [m["path"]["value"] for m in rule.get("matches") or [] if "path" in m]
            if not any(path == p or path.startswith(p.rstrip("/") + "/") for p in prefixes):
                continue
            backends = [b for b in rule.get("backendRefs") or [] if b.get("weight", 1) > 0]
            if not backends:
                return None
            chosen = random.choices(backends, weights=[b.get("weight", 1) for b in backends])[0]
            ports = self.node.endpoints(chosen["name"], chosen["port"])
            return random.choice(ports) if ports else None
        return None


def write_prometheus_config(folder: Path, scrape_interval: str, targets: Path) -> Path:
    config = folder / "prometheus.yml"
    config.write_text(json.dumps({
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [{"job_name": "triton", "scrape_interval": scrape_interval,
                            "file_sd_configs": [{"files": [str(targets)], "refresh_interval": "1s"}]}],
    }))  # fmt: skip
    return config


def copy_inputs(example: Path, pvc: Path, name: str) -> Path:
    """What the README's `kubectl cp` does: the files next to the YAML onto the model volume."""
    inputs = pvc / name / "inputs"
    shutil.copytree(example, inputs, ignore=shutil.ignore_patterns("__pycache__", "out"))
    return inputs
