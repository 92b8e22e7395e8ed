# Switchyard: the two set-up commands are `make run` and `make test`.
# Everything they need (ONNX Runtime's library, the Python venv, the sample
# models) is fetched into ignored folders of this checkout and reused.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Real services the tests start (MLflow, moto), kept apart from the client venv.
SERVICES_VENV := .venv-services
# MLServer (the remote runtime's real upstream in tests; a peer in benchmarks).
MLSERVER_VENV := .cache/bench/mlserver
export ORT_DYLIB_PATH ?= $(CURDIR)/.cache/onnxruntime/lib/libonnxruntime.so
ARGS ?=

BENCH_ARGS ?=

.PHONY: bench run test setup onnxruntime venv models build build-release lint rust-test python-test clean

## Fetch what is needed, build, and serve the bundled models on :8000 (HTTP), :8001 (gRPC), :8002 (metrics).
run: setup build-release
	./target/release/switchyard --model-repository models $(ARGS)

## Run the whole test suite: Rust unit and integration tests, then real-client Python tests.
test: setup $(SERVICES_VENV)/.installed $(MLSERVER_VENV)/.installed
	$(CARGO) build --locked --workspace --all-targets
	ln -sf $(ORT_DYLIB_PATH) target/debug/libonnxruntime.so
	$(MAKE) rust-test python-test

## Side-by-side benchmark (raw runtime, Switchyard, MLServer, KServe); see docs/BENCHMARKS.md.
bench: setup build-release
	$(PYTHON) bench/run.py $(BENCH_ARGS)

setup: onnxruntime models

onnxruntime:
	scripts/fetch-onnxruntime.sh

$(VENV)/.installed: tests/python/requirements.txt models/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
	touch $@

$(MLSERVER_VENV)/.installed: bench/peers/mlserver-requirements.txt
	$(PYTHON) -m venv $(MLSERVER_VENV)
	$(MLSERVER_VENV)/bin/pip install --quiet --disable-pip-version-check -r bench/peers/mlserver-requirements.txt
	touch $@

$(SERVICES_VENV)/.installed: tests/python/services-requirements.txt
	$(PYTHON) -m venv $(SERVICES_VENV)
	$(SERVICES_VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/python/services-requirements.txt
	touch $@

venv: $(VENV)/.installed

models: venv
	$(PY) models/make_models.py --check

build:
	$(CARGO) build --locked --workspace
	ln -sf $(ORT_DYLIB_PATH) target/debug/libonnxruntime.so

# The binaries also find ONNX Runtime beside themselves, without ORT_DYLIB_PATH.
build-release:
	$(CARGO) build --locked --release -p switchyard -p switchyard-load
	ln -sf $(ORT_DYLIB_PATH) target/release/libonnxruntime.so

rust-test:
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --locked --workspace --no-fail-fast; \
	else \
		$(CARGO) test --locked --workspace; \
	fi

python-test:
	cd tests/python && SWITCHYARD_BIN=$(CURDIR)/target/debug/switchyard ../../$(PY) -m pytest -q -p no:cacheprovider

## Formatting, lints, the dependency rule (runtimes never pulls in a web server),
## and the Kubernetes manifests (yamllint, kustomize, kubernetes-validate 1.29).
lint: venv
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings
	scripts/check-dependency-direction.sh
	PY=$(PY) scripts/check-k8s.sh

clean:
	$(CARGO) clean
	rm -rf .cache $(VENV) $(SERVICES_VENV)
