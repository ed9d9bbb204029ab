# The openimager worker image: runs `python -m flows ...` and Prefect workers.
# BASE_IMAGE lets the same file build from a local base where no image registry is reachable:
# any Debian-like image with python3 3.11, python3-venv and useradd (the official slim image has
# them; so does a debootstrapped bookworm with python3-venv, see tests/test_container.py).
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
# The runtime lock: the pins of requirements.lock without the tests' and linters' packages.
COPY requirements-runtime.lock /tmp/requirements.lock
# `python3`, not `python`: Debian's own interpreter has no `python` name. One layer for the venv.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
        -r /tmp/requirements.lock

FROM ${BASE_IMAGE}
# The user owns /app too: `python -m flows demo` writes its workspace under the working dir.
# /data and /cache are where deploy/ mounts volumes: a new named volume takes the owner of
# its mount point (Docker, podman), as fsGroup gives it on Kubernetes.
RUN useradd --create-home --uid 10001 --user-group openimager \
    && mkdir -p /app /home/openimager/workspace /data /cache \
    && chown openimager:openimager /app /home/openimager/workspace /data /cache
# The venv links to the base's interpreter, which is why both stages share BASE_IMAGE.
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# PYTHONPATH: the entrypoint and healthcheck import flows whatever the working folder.
# PATH in full: an imported base (debootstrap, `podman import`) has none, and `podman kube play`
# and Kubernetes add none, so `sh` and the like must be found through the image's own.
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    QUILT_DISABLE_USAGE_METRICS=true \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    BENTOML_DO_NOT_TRACK=true \
    DO_NOT_TRACK=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120 \
    OPENIMAGER_PROJECT_DIR=/app \
    OPENIMAGER_WORKSPACE=/home/openimager/workspace
USER openimager
# Refuse to start, with every reason at once, when the settings would fail mid-run (exit 78);
# then exec the command: a `python -m flows` subcommand, or `prefect ...` (e.g. a worker).
ENTRYPOINT ["python", "-m", "flows.run.preflight", "--exec", "--"]
CMD ["--help"]
# Needs --format docker with buildah/podman (OCI images have no healthcheck). Re-checks the
# settings and the workspace, and that PREFECT_API_URL answers when one is set.
HEALTHCHECK --interval=60s --timeout=15s --start-period=30s --retries=3 \
    CMD ["python", "-m", "flows.run.preflight", "--reach"]
# Last, so a change of the code rebuilds one small layer and nothing after it.
COPY --chown=openimager:openimager . /app
