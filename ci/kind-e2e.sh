#!/usr/bin/env bash
# The README's "In a cluster" steps on a throw-away kind cluster: both images built and `kind load`ed,
# the Gateway API CRDs with Envoy Gateway and a Gateway, kube-prometheus-stack scraping the chart's
# PodMonitor, the chart, the bundled digits example applied, and a client call through the Gateway
# once the CompressedModel is Promoted.
#
# NOT RUN HERE: the machines this project is developed and tested on have no Docker (and no kind), so
# this script has never run in this repository's CI; `make e2e` (tests/e2e) is the tier that runs the
# same objects against an emulated API server on every `make test`. It needs: docker, kind >= 0.23,
# kubectl, helm >= 3.14, curl, about 25 GB of disk (the official Triton image is ~15 GB) and network.
#
#   ci/kind-e2e.sh            # create, run, keep the cluster for a look (kind delete cluster --name slimserve)
#   KEEP=0 ci/kind-e2e.sh     # delete the cluster at the end
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${CLUSTER:-slimserve}
TAG=${TAG:-e2e}
NS=models
TRITON_IMAGE=${TRITON_IMAGE:-nvcr.io/nvidia/tritonserver:24.08-py3}
GATEWAY_API=${GATEWAY_API:-v1.1.0}
ENVOY_GATEWAY=${ENVOY_GATEWAY:-v1.1.0}
TIMEOUT=${TIMEOUT:-45m}

for tool in docker kind kubectl helm curl; do
  command -v "$tool" >/dev/null || { echo "kind-e2e: $tool is missing" >&2; exit 2; }
done

dump() {  # what a person needs when it did not get there
  kubectl -n "$NS" get compressedmodels,jobs,deployments,pods,httproutes -o wide || true
  kubectl -n "$NS" describe compressedmodel digits-cnn || true
  kubectl -n slimserve-system logs deploy/slimserve --tail=200 || true
  for job in $(kubectl -n "$NS" get jobs -o name 2>/dev/null); do kubectl -n "$NS" logs "$job" --tail=50 || true; done
}
cleanup() { if [ "${KEEP:-1}" = 0 ]; then kind delete cluster --name "$CLUSTER"; fi; }
trap 'dump; cleanup' ERR
trap cleanup EXIT

echo "== images"
docker build -f docker/operator.Dockerfile -t "slimserve-operator:$TAG" .
docker build -f docker/worker.Dockerfile -t "slimserve-worker:$TAG" .
docker pull "$TRITON_IMAGE"

echo "== cluster"
kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --wait 120s
kind load docker-image --name "$CLUSTER" "slimserve-operator:$TAG" "slimserve-worker:$TAG" "$TRITON_IMAGE"

echo "== Gateway API CRDs, Envoy Gateway and a Gateway"
kubectl apply -f "https://github.com/kubernetes-sigs/gateway-api/releases/download/$GATEWAY_API/standard-install.yaml"
helm upgrade --install eg oci://docker.io/envoyproxy/gateway-helm --version "$ENVOY_GATEWAY" \
  --namespace envoy-gateway-system --create-namespace --wait
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -f - <<YAML
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: eg}
spec: {controllerName: gateway.envoyproxy.io/gatewayclass-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: slimserve-gateway, namespace: $NS}
spec:
  gatewayClassName: eg
  listeners: [{name: http, protocol: HTTP, port: 80}]
YAML

echo "== Prometheus (kube-prometheus-stack) selecting every PodMonitor"
helm repo add prometheus-community https://prometheus-community.github.io/helm-charts >/dev/null
helm upgrade --install kps prometheus-community/kube-prometheus-stack --namespace monitoring --create-namespace \
  --set prometheus.prometheusSpec.podMonitorSelectorNilUsesHelmValues=false \
  --set grafana.enabled=false --set alertmanager.enabled=false --wait

echo "== slimserve"
helm upgrade --install slimserve charts/slimserve --namespace slimserve-system --create-namespace \
  --set image.repository=slimserve-operator --set image.tag="$TAG" \
  --set worker.image.repository=slimserve-worker --set worker.image.tag="$TAG" \
  --set triton.image="$TRITON_IMAGE" \
  --set storage.accessMode=ReadWriteOnce \
  --set prometheusUrl=http://prometheus-operated.monitoring.svc:9090 \
  --set gateway.name=slimserve-gateway --wait

echo "== the example's files on its model volume (README: In a cluster)"
kubectl -n "$NS" apply -f - <<'YAML'
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: digits-cnn-models}
spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 5Gi}}}
---
apiVersion: v1
kind: Pod
metadata: {name: digits-cnn-inputs}
spec:
  securityContext: {runAsUser: 1000, runAsGroup: 1000, fsGroup: 1000}
  containers:
    - {name: shell, image: busybox, command: [sleep, "3600"], volumeMounts: [{name: models, mountPath: /models}]}
  volumes: [{name: models, persistentVolumeClaim: {claimName: digits-cnn-models}}]
YAML
kubectl -n "$NS" wait --for=condition=Ready pod/digits-cnn-inputs --timeout=180s
kubectl -n "$NS" exec digits-cnn-inputs -- mkdir -p /models/digits-cnn/inputs
kubectl -n "$NS" cp examples/digits/. digits-cnn-inputs:/models/digits-cnn/inputs/
kubectl -n "$NS" delete pod digits-cnn-inputs --wait

echo "== apply and wait for the decision"
kubectl -n "$NS" apply -f examples/digits/compressedmodel.yaml
kubectl -n "$NS" wait compressedmodel/digits-cnn --for=jsonpath='{.status.phase}'=Promoted --timeout="$TIMEOUT"
kubectl -n "$NS" get compressedmodel digits-cnn

echo "== a client call through the Gateway"
service=$(kubectl -n envoy-gateway-system get svc -l gateway.envoyproxy.io/owning-gateway-name=slimserve-gateway \
  -o jsonpath='{.items[0].metadata.name}')
kubectl -n envoy-gateway-system port-forward "svc/$service" 18080:80 >/dev/null 2>&1 &
forward=$!
sleep 3
input=$(python3 -c 'import json; print(json.dumps({"inputs": [{"name": "x", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}]}))')
curl -fsS -H 'Content-Type: application/json' -d "$input" http://127.0.0.1:18080/v2/models/digits-cnn/infer
echo
kill "$forward"
echo "kind-e2e: digits-cnn promoted and answering at /v2/models/digits-cnn through the Gateway"
