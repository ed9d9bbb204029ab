# openimager: `make demo` runs the whole job offline on the bundled sample; `make test` runs the tests.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9

export QUILT_DISABLE_USAGE_METRICS := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export BENTOML_DO_NOT_TRACK := true
export DO_NOT_TRACK := 1
export TF_CPP_MIN_LOG_LEVEL := 2
export PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT := false

# The Prefect server of `make prefect-server`, which `make deploy` and `make worker` talk to.
PREFECT_PORT ?= 4200
PREFECT_POOL ?= openimager
PREFECT_API := http://127.0.0.1:$(PREFECT_PORT)/api

.PHONY: help venv demo test test-fast lint lock sample clean browser prefect-server deploy worker \
	container-tools test-container test-deploy

help:
	@echo "make demo    whole job offline on the bundled sample (refresh, crop, train, publish, serve)"
	@echo "make test    run the test suite on $(TEST_WORKERS) workers (TEST_WORKERS=0: in this process)"
	@echo "make test-fast  unit tests only (no servers, no training), for the edit loop"
	@echo "make lint    ruff"
	@echo "make lock    regenerate requirements.lock (dev) and requirements-runtime.lock (images)"
	@echo "make sample  regenerate the synthetic sample in data/sample"
	@echo "make browser install Debian's chromium and chromium-driver (the page's browser test)"
	@echo "make prefect-server  Prefect server and UI on 127.0.0.1:$(PREFECT_PORT)"
	@echo "make deploy  the work pool and the deployments of prefect.yaml, on that server"
	@echo "make worker  a process worker running the deployments' flow runs"
	@echo "make test-container  build the worker image offline (debootstrap, buildah), run it (podman)"
	@echo "make test-deploy  play deploy/'s manifests as pods (podman kube play) and run the system"

$(VENV)/.installed: requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11) and "openimager needs Python 3.11, found " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock 2>&1 \
		| { grep -v "^WARNING: Location" || true; }
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(BIN)/python -m flows demo

# pytest-xdist workers; whole modules go to a worker, slow ones first (pyproject.toml addopts).
# 2 suits a 2-core machine: TensorFlow and the servers' children keep both cores busy already.
TEST_WORKERS ?= 2
# What `make test-fast` leaves out: tests that start servers, train or build images.
FAST_MARKERS := not slow and not integration and not container

test: venv
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --durations=15

test-fast: venv
	$(BIN)/python -m pytest -m '$(FAST_MARKERS)'

lint: venv
	$(BIN)/ruff check .

# Two locks with the same pins: requirements.lock (everything, the dev venv and CI) and
# requirements-runtime.lock (without the dev extra: the images), constrained by the first.
LOCK_FLAGS := --python-version 3.11 --python-platform x86_64-manylinux_2_28 --no-header \
	--annotation-style line
lock: venv
	$(BIN)/python -m pip install --quiet uv==$(UV_VERSION)
	$(BIN)/uv pip compile pyproject.toml --extra dev $(LOCK_FLAGS) -o requirements.lock
	$(BIN)/uv pip compile pyproject.toml -c requirements.lock $(LOCK_FLAGS) \
		-o requirements-runtime.lock

sample: venv
	$(BIN)/python data/sample/generate.py

# Idempotent: installs only what is missing. Needs root (or sudo) and Debian's package index.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then \
		echo "chromium and chromedriver are installed"; \
	else \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			chromium chromium-driver; \
	fi

prefect-server: venv
	PREFECT_SERVER_API_HOST=127.0.0.1 $(BIN)/prefect server start --host 127.0.0.1 \
		--port $(PREFECT_PORT)

deploy: venv
	PREFECT_API_URL=$(PREFECT_API) $(BIN)/prefect work-pool create $(PREFECT_POOL) \
		--type process --overwrite
	PREFECT_API_URL=$(PREFECT_API) $(BIN)/prefect --no-prompt deploy --all

worker: venv
	PREFECT_API_URL=$(PREFECT_API) OPENIMAGER_PROJECT_DIR=$(CURDIR) \
		PREFECT_WORKER_WEBSERVER_HOST=127.0.0.1 \
		$(BIN)/prefect worker start --pool $(PREFECT_POOL) --type process

# The worker image's test: a debootstrapped bookworm base, `buildah bud`, a retrain under
# `podman run` (tests/test_container.py). Installs only the missing tools; as root or with sudo.
CONTAINER_TOOLS := buildah podman runc debootstrap catatonit
container-tools:
	@missing=$$(for tool in $(CONTAINER_TOOLS); do command -v $$tool >/dev/null || echo $$tool; \
		done); \
	if [ -z "$$missing" ]; then \
		echo "$(CONTAINER_TOOLS) are installed"; \
	else \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			$(CONTAINER_TOOLS); \
	fi

test-container: venv container-tools
	$(BIN)/python -m pytest -m container

# deploy/'s test overlay as pods (tests/test_deploy.py): the same image and build cache as
# test-container, haproxy in front of the API, `podman kube play` and `podman kube down`.
test-deploy: venv container-tools
	$(BIN)/python -m pytest -m deploy

clean:
	rm -rf $(VENV) workspace .pytest_cache .ruff_cache
