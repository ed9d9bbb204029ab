"""Shared fixtures: real local servers on 127.0.0.1 and isolated stores."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.servers.local import LOCAL_CREDENTIALS, TELEMETRY_OFF, LocalS3
from flows.servers.mirror import StaticHTTP
from flows.settings import CVDF_BUCKET

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample"
REGISTRY_BUCKET = "test-registry"


def pytest_configure(config: pytest.Config) -> None:
    """Keep every store the tests touch out of the user's home."""
    os.environ.update(TELEMETRY_OFF)
    os.environ.update(LOCAL_CREDENTIALS)
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="openimager-test-bentoml-")
    # quilt3 caches manifests by top hash under the user data folder: keep tests apart.
    os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="openimager-test-data-")
    for name in list(os.environ):
        if name.startswith("OPENIMAGER_") or name.startswith("AWS_ENDPOINT_URL"):
            del os.environ[name]


@pytest.fixture(scope="session")
def local_s3() -> Iterator[LocalS3]:
    """A moto S3 server with the sample images in a CVDF-like bucket and an empty registry."""
    with LocalS3() as s3:
        s3.create_bucket(CVDF_BUCKET, versioned=False, public=True)
        s3.upload_tree(CVDF_BUCKET, SAMPLE / "images", public=True)
        s3.create_bucket(REGISTRY_BUCKET)
        yield s3


@pytest.fixture
def registry_env(local_s3: LocalS3, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the standard AWS configuration (as quilt3 reads it) at the local server."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", local_s3.endpoint_url)
    return f"s3://{REGISTRY_BUCKET}"


@pytest.fixture(scope="session")
def mirror() -> Iterator[StaticHTTP]:
    """The sample metadata served over HTTP, like storage.googleapis.com/openimages."""
    with StaticHTTP(SAMPLE / "openimages") as server:
        yield server


@pytest.fixture(scope="session")
def sample_workspace(tmp_path_factory: pytest.TempPathFactory, local_s3: LocalS3,
                     mirror: StaticHTTP) -> Path:
    """A workspace with the sample's crops built once (refresh + build), for training tests."""
    from flows import stages
    from flows.settings import Settings

    settings = Settings(workspace=tmp_path_factory.mktemp("sample-workspace"),
                        metadata_url=mirror.url, image_endpoint_url=local_s3.endpoint_url,
                        classes=["Hamburger", "Sandwich", "Car"])
    stages.refresh(settings)
    stages.build(settings)
    return settings.workspace


@pytest.fixture(scope="session")
def classifier_server(tmp_path_factory: pytest.TempPathFactory):
    """One real `bentoml serve` of a tiny untrained model, shared by the service tests."""
    from tests.servicekit import serve_tiny_model

    with serve_tiny_model(tmp_path_factory.mktemp("served")) as served:
        yield served
