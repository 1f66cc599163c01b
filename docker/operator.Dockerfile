# syntax=docker/dockerfile:1.7
# The operator image: kopf + the CompressedModel API, no torch/onnxruntime/tritonclient/locust.
#   docker build -f docker/operator.Dockerfile -t ghcr.io/slimserve/slimserve-operator:0.1.0 .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY slimserve ./slimserve
RUN pip install --no-cache-dir --prefix=/install ".[operator]"

FROM python:3.11-slim
COPY --from=build /install /usr/local
# Fail the build if the heavy stack sneaked in, or if the handlers do not import.
RUN python -c "import slimserve.operator" \
    && ! python -c "import torch" 2>/dev/null \
    && ! python -c "import onnxruntime" 2>/dev/null
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# Non-root; the chart also sets runAsNonRoot and a read-only root filesystem (/tmp is an emptyDir).
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["kopf"]
CMD ["run", "--standalone", "--all-namespaces", "--liveness=http://0.0.0.0:8081/healthz", "-m", "slimserve.operator"]
