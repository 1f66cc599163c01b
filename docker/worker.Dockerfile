# syntax=docker/dockerfile:1.7
# The worker image the operator's Jobs run: `slimserve compress | package | evaluate` (the `worker` extra:
# torch, onnxruntime, onnx tooling, storage clients, tritonclient, locust; no Kubernetes client: results
# leave through the termination message). The e2e tests (tests/e2e) install the same extra the same way,
# non-editable, and run every Job's command in it. CPU by default; for CUDA:
#   docker build -f docker/worker.Dockerfile --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 \
#     -t ghcr.io/slimserve/slimserve-worker:0.1.0-cuda .
FROM python:3.11-slim
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# torch first, from the index that matches the hardware (the pin is the one in pyproject.toml).
RUN pip install --no-cache-dir torch==2.13.0 --index-url "${TORCH_INDEX}"
COPY pyproject.toml README.md ./
COPY slimserve ./slimserve
RUN pip install --no-cache-dir ".[worker]" \
    && cd / && slimserve --help >/dev/null \
    && python -c "import slimserve.evaluator.load as l; assert l.LOCUSTFILE.is_file(), l.LOCUSTFILE" \
    && python -c "import slimserve.triton.repository" \
    && python -m slimserve.api.choice --help >/dev/null && locust --version >/dev/null
# The Jobs run as uid 1000 with a read-only root filesystem: HOME and caches live on /tmp.
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp XDG_CACHE_HOME=/tmp/.cache
RUN useradd --uid 1000 --no-create-home --home-dir /tmp slimserve
USER 1000:1000
WORKDIR /tmp
