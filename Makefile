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
# The KServe Python SDK (its clients, tested against Switchyard; a peer in benchmarks).
KSERVE_VENV := .cache/bench/kserve
export ORT_DYLIB_PATH ?= $(CURDIR)/.cache/onnxruntime/lib/libonnxruntime.so
# The `torch` feature: lean libtorch 2.11.0 (scripts/fetch-libtorch.sh) to build
# and run on CPU; a venv that imports PyTorch 2.11.0 from that same unpack (plus
# the CUDA libraries `import torch` needs) to make the TorchScript samples and to
# check values against.
export LIBTORCH ?= $(CURDIR)/.cache/libtorch/torch
export LIBTORCH_CXX11_ABI ?= 1
TORCH_VENV := .venv-torch
TORCH_PY := $(TORCH_VENV)/bin/python
TORCH_CRATES := -p switchyard -p switchyard-runtimes
# Only the targets holding torch tests (and the binary): the other integration
# test binaries would be rebuilt with the feature just to be filtered out.
TORCH_TARGETS := --lib --bins --test torch
ARGS ?=

BENCH_ARGS ?=

.PHONY: image bench run test setup onnxruntime venv models build build-release lint rust-test python-test clean \
	libtorch torch-models torch-test run-torch bench-gpu-build

## Fetch what is needed, build, and serve the bundled models on :8000 (HTTP), :8001 (gRPC), :8002 (metrics).
run: setup build-release
	./target/release/switchyard --model-repository models $(ARGS)

## Run the whole test suite: Rust unit and integration tests, then real-client Python tests.
test: setup $(SERVICES_VENV)/.installed $(MLSERVER_VENV)/.installed $(KSERVE_VENV)/.installed
	scripts/ensure-chromium.sh
	scripts/ensure-prometheus.sh
	scripts/ensure-podman.sh
	$(CARGO) build --locked --workspace --all-targets
	ln -sf $(ORT_DYLIB_PATH) target/debug/libonnxruntime.so
	$(MAKE) rust-test python-test
	$(MAKE) torch-test

## The container image, with podman, from a release build here on a base made from Debian packages.
image: setup
	scripts/ensure-podman.sh
	scripts/build-image.sh --profile release

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

$(KSERVE_VENV)/.installed: bench/peers/kserve-requirements.txt
	$(PYTHON) -m venv $(KSERVE_VENV)
	$(KSERVE_VENV)/bin/pip install --quiet --disable-pip-version-check -r bench/peers/kserve-requirements.txt
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
	cd tests/python && SWITCHYARD_BIN=$(CURDIR)/target/debug/switchyard ../../$(PY) -m pytest -q -p no:cacheprovider --ignore=torchscript

## The TorchScript pass (part of `make test`): build with `--features torch`
## against the lean libtorch, then its Rust tests and the Python tests that
## compare values with PyTorch. The default build above never needs libtorch.
torch-test: libtorch torch-models $(SERVICES_VENV)/.installed
	$(CARGO) build --locked $(TORCH_CRATES) $(TORCH_TARGETS) --features torch
	ln -sf $(ORT_DYLIB_PATH) target/debug/libonnxruntime.so
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --locked $(TORCH_CRATES) $(TORCH_TARGETS) --features torch --no-fail-fast -E 'binary(torch) | test(torch)'; \
	else \
		$(CARGO) test --locked $(TORCH_CRATES) --features torch --test torch && \
		$(CARGO) test --locked $(TORCH_CRATES) --lib --bins --features torch torch; \
	fi
	cd tests/python && SWITCHYARD_BIN=$(CURDIR)/target/debug/switchyard ../../$(TORCH_PY) -m pytest -q -p no:cacheprovider torchscript

libtorch:
	scripts/fetch-libtorch.sh >/dev/null

# One package per pip run: pip keeps every downloaded wheel until all are
# installed, ~1 GiB more disk at CI's peak.
$(TORCH_VENV)/.installed: tests/python/torch-requirements.txt scripts/stack-torch-venv.py $(VENV)/.installed | libtorch
	rm -rf $(TORCH_VENV)
	$(PYTHON) -m venv $(TORCH_VENV)
	sed -e '/^#/d' -e '/^$$/d' tests/python/torch-requirements.txt | \
		xargs -n1 $(TORCH_VENV)/bin/pip install --quiet --disable-pip-version-check --no-cache-dir --no-deps
	$(TORCH_PY) scripts/stack-torch-venv.py .cache/libtorch $(VENV)
	touch $@

torch-models: $(TORCH_VENV)/.installed
	$(TORCH_PY) models/make_models.py --torch --check

## Serve the TorchScript samples (models/torch) with a `--features torch` build, on CPU.
run-torch: setup libtorch torch-models
	$(CARGO) build --locked --release -p switchyard --features torch
	ln -sf $(ORT_DYLIB_PATH) target/release/libonnxruntime.so
	./target/release/switchyard --model-repository models/torch $(ARGS)

## What bench/gpu/run.py needs on a CUDA machine: release binaries (the server
## with the `torch` feature), stripped into target/gpu-bundle; see bench/gpu/README.md.
bench-gpu-build: setup libtorch
	$(CARGO) build --locked --release -p switchyard --features torch
	$(CARGO) build --locked --release -p switchyard-load
	mkdir -p target/gpu-bundle
	strip -o target/gpu-bundle/switchyard target/release/switchyard
	strip -o target/gpu-bundle/switchyard-load target/release/switchyard-load

## Formatting, lints (both builds, and a stable check of the fuzz crate), no
## unused dependency (cargo-machete), the dependency rules (runtimes never
## pulls in a web server; the server's layers, scripts/check-layers.py), and
## the Kubernetes manifests (yamllint, kustomize, kubernetes-validate 1.29).
lint: venv
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings
	scripts/fetch-libtorch.sh >/dev/null
	$(CARGO) clippy --locked $(TORCH_CRATES) --all-targets --features torch -- -D warnings
	$(CARGO) check --locked --manifest-path fuzz/Cargo.toml --target-dir target
	$(CARGO) machete --version >/dev/null 2>&1 || $(CARGO) install --locked cargo-machete@0.9.2
	$(CARGO) machete
	scripts/check-dependency-direction.sh
	PY=$(PY) scripts/check-k8s.sh

clean:
	$(CARGO) clean
	rm -rf .cache $(VENV) $(SERVICES_VENV) $(TORCH_VENV)
