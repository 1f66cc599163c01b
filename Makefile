# The two set-up commands: `make demo` and `make test`. Each installs what it needs first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= out/digits

.PHONY: demo test e2e kube install system-deps manifests bench lint clean

# A rollback (3) or an inconclusive gate (4) is an honest outcome of the demo, not a failure of it.
demo: install examples/digits/data/train.npz
	$(VENV)/bin/slimserve run examples/digits/compressedmodel.yaml --out $(OUT); rc=$$?; \
	  case $$rc in 0|3|4) echo "demo finished (exit $$rc: 0 promoted, 3 rolled back, 4 inconclusive); see $(OUT)/rollout-report.md";; \
	  *) exit $$rc;; esac

# Every tier, the e2e one included (its worker-image venv is built once under .e2e/, ~2 min).
test: install examples/digits/data/train.npz
	$(PY) -m pytest -q

# The operator's objects run for real: Jobs in a venv installed as docker/worker.Dockerfile installs the
# image, Triton Deployments with the local tritonserver, against kmock's API server (tests/e2e).
e2e: install examples/digits/data/train.npz
	$(PY) -m pytest -q -m e2e

# The real kopf reactor against kmock (tests/kube, seconds).
kube: install
	$(PY) -m pytest -q -m kube

install: $(STAMP) system-deps

# torch is pinned to the CPU wheel the machines carry (any other version downloads gigabytes).
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Prometheus from Debian for the serving tests and `slimserve run` (root installs it, others are told).
system-deps:
	@command -v prometheus >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; \
	  else echo "prometheus is missing: run 'sudo apt-get install -y prometheus'"; exit 1; fi; }

# The example's model and data are made deterministically from scikit-learn's bundled digits.
examples/digits/data/train.npz: examples/digits/train.py examples/digits/model.py $(STAMP)
	$(PY) examples/digits/train.py

# The CRD from the API models, then the chart's CRD, dashboard and manifests/ from the chart.
manifests: install
	$(PY) -m slimserve.api.crd > manifests/crds/compressedmodels.yaml
	$(PY) -m slimserve.chart.manifests

bench: install
	$(PY) -m benchmarks.compression --json .bench/compression.json
	$(PY) -m benchmarks.serving --json .bench/serving.json
	$(PY) -m benchmarks.operator --json .bench/operator.json

lint: install
	$(VENV)/bin/ruff check slimserve tests benchmarks examples
	$(VENV)/bin/ruff format --check slimserve tests benchmarks examples
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy slimserve

clean:
	rm -rf out .bench .pytest_cache .e2e
