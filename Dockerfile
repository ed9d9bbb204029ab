# The openimager worker image: runs `python -m flows ...` and Prefect flow runs.
# BASE_IMAGE lets the same file build from a local base where no registry is reachable.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
RUN python -m venv /opt/venv
COPY requirements.lock /tmp/requirements.lock
RUN /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check -r /tmp/requirements.lock

FROM ${BASE_IMAGE}
RUN useradd --create-home --uid 10001 openimager
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --chown=openimager:openimager . /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    QUILT_DISABLE_USAGE_METRICS=true \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    BENTOML_DO_NOT_TRACK=true \
    DO_NOT_TRACK=1 \
    OPENIMAGER_WORKSPACE=/home/openimager/workspace
USER openimager
ENTRYPOINT ["python", "-m", "flows"]
CMD ["--help"]
