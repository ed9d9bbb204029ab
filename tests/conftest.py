"""Shared fixtures: real local servers on 127.0.0.1 and isolated stores.

Under pytest-xdist every worker is its own process: it gets its own stores (below) and its own
session servers, each on a free port; what is expensive and read-only (the sample's crops) is
built once per run and shared through a file lock.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.servers.local import LOCAL_CREDENTIALS, TELEMETRY_OFF, LocalS3, free_port
from flows.servers.mirror import StaticHTTP
from flows.settings import CVDF_BUCKET

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample"
REGISTRY_BUCKET = "test-registry"
# Tests that use these start a server in a child process or build data: integration tests,
# whatever their module says, so `make test-fast` leaves them out.
SERVER_FIXTURES = {"local_s3", "registry_env", "sample_workspace", "classifier_server",
                   "harness", "prefect_api"}
# Modules whose tests start servers or child runs in their own bodies, where no fixture tells;
# and every benchmark's quick run (test_benchmarks_*.py), a child process doing real work.
INTEGRATION_MODULES = {"test_bundle.py", "test_download_resume.py"}
_STORES: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    """Keep every store the tests touch out of the user's home, one set per process (the
    controller and each xdist worker): the model store, quilt3's cache and Prefect's home."""
    os.environ.update(TELEMETRY_OFF)
    os.environ.update(LOCAL_CREDENTIALS)
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    remove_stores_of_dead_processes()
    stores = tempfile.mkdtemp(prefix=f"openimager-test-{worker}-{os.getpid()}-")
    _STORES.append(stores)
    os.environ["BENTOML_HOME"] = f"{stores}/bentoml"
    # quilt3 caches manifests by top hash under the user data folder: keep tests apart.
    os.environ["XDG_DATA_HOME"] = f"{stores}/data"
    # A command run in a child starts an ephemeral Prefect server on this home's database; a
    # shared one (~/.prefect) would be written by several workers at once.
    os.environ["PREFECT_HOME"] = f"{stores}/prefect"
    # Parallel workers slow each other down: give an ephemeral server time to start.
    os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"
    for name in list(os.environ):
        if name.startswith("OPENIMAGER_") or name.startswith("AWS_ENDPOINT_URL"):
            del os.environ[name]


def remove_stores_of_dead_processes() -> None:
    """Remove the stores of test processes that were killed before their unconfigure ran."""
    for folder in Path(tempfile.gettempdir()).glob("openimager-test-*-*-*"):
        pid = folder.name.split("-")[3]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:  # another user's live process
            continue


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove this process's stores (models, caches, Prefect database)."""
    for stores in _STORES:
        shutil.rmtree(stores, ignore_errors=True)


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests that start servers or benchmarks as integration, and put the modules with
    slow tests first, then those with integration tests: xdist hands out whole modules in this
    order (--dist loadfile --no-loadscope-reorder), so the longest start early and no worker
    is left alone with one at the end."""
    weight: dict[Path, int] = {}
    for item in items:
        if (SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))
                or item.path.name in INTEGRATION_MODULES
                or item.path.name.startswith("test_benchmarks_")):
            item.add_marker(pytest.mark.integration)
        kind = 0 if item.get_closest_marker("slow") else \
            1 if item.get_closest_marker("integration") else 2
        weight[item.path] = min(weight.get(item.path, 2), kind)
    items.sort(key=lambda item: weight[item.path])  # stable: each module keeps its order


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
def harness() -> Iterator[None]:
    """Prefect's test harness (a temporary database, its server on a free port) for the flows
    this process runs: one per worker, started by the first test that asks, as every start
    pays for a database migration and a server's imports."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def prefect_api(harness: None) -> str:
    """The API URL of the harness's server, for `python -m flows` runs in child processes:
    given it as PREFECT_API_URL, a run skips starting a server of its own (a database
    migration and a server's imports each)."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


@pytest.fixture
def no_internet(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """An empty Keras cache, and HTTPS only through a proxy on 127.0.0.1 that refuses every
    connection: nothing leaves the machine, as on a host without internet. Set in this process
    and returned for child processes."""
    proxy = f"http://127.0.0.1:{free_port()}"
    env = {"KERAS_HOME": str(tmp_path / "keras"), "HTTPS_PROXY": proxy, "https_proxy": proxy,
           "NO_PROXY": "", "no_proxy": ""}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture(scope="session")
def mirror() -> Iterator[StaticHTTP]:
    """The sample metadata served over HTTP, like storage.googleapis.com/openimages."""
    with StaticHTTP(SAMPLE / "openimages") as server:
        yield server


def build_sample_workspace(workspace: Path, request: pytest.FixtureRequest) -> Path:
    """Refresh and build the sample's crops of three classes into workspace."""
    from flows.pipeline import stages
    from flows.settings import Settings

    local_s3, mirror = request.getfixturevalue("local_s3"), request.getfixturevalue("mirror")
    settings = Settings(workspace=workspace, metadata_url=mirror.url,
                        image_endpoint_url=local_s3.endpoint_url,
                        classes=["Hamburger", "Sandwich", "Car"])
    stages.refresh(settings)
    stages.build(settings)
    return workspace


@pytest.fixture(scope="session")
def sample_workspace(tmp_path_factory: pytest.TempPathFactory,
                     request: pytest.FixtureRequest) -> Path:
    """A workspace with the sample's crops (refresh + build), built once per test run and only
    read by the tests: under xdist the first worker to need it builds it under a lock in the
    run's shared temporary folder, the others wait and reuse it."""
    from filelock import FileLock

    if "PYTEST_XDIST_WORKER" not in os.environ:
        return build_sample_workspace(tmp_path_factory.mktemp("sample-workspace"), request)
    shared = tmp_path_factory.getbasetemp().parent  # one per run, shared by its workers
    workspace = shared / "sample-workspace"
    with FileLock(shared / "sample-workspace.lock"):
        if not (shared / "sample-workspace.done").exists():
            shutil.rmtree(workspace, ignore_errors=True)  # a half build of a crashed worker
            build_sample_workspace(workspace, request)
            (shared / "sample-workspace.done").touch()
    return workspace


@pytest.fixture(scope="session")
def classifier_server(tmp_path_factory: pytest.TempPathFactory):
    """One real `bentoml serve` of a tiny untrained model, shared by the service tests."""
    from tests.servicekit import serve_tiny_model

    with serve_tiny_model(tmp_path_factory.mktemp("served")) as served:
        yield served
