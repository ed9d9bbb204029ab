"""The worker image, built offline (debootstrap base, buildah) and run with podman.

Runs only when selected: `make test-container`, i.e. `pytest -m container`; a plain `pytest`
deselects it (pyproject.toml), as the first build installs a 2.7 GB venv. The retrain runs
inside the container against the local S3 endpoint and sample mirror.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.run.preflight import EX_CONFIG
from flows.servers.local import LOCAL_CREDENTIALS, LocalS3, free_port
from flows.servers.mirror import StaticHTTP
from tests import containerkit
from tests.conftest import REGISTRY_BUCKET

pytestmark = [pytest.mark.container, pytest.mark.slow]

PACKAGE = "openimager/classifier"
# Markers of a kernel or sandbox that cannot run containers at all, as opposed to a broken image.
FREE_GB = 12  # two 2.9 GB venv layers, the build cache and the base
REFUSALS = ("namespace", "unshare", "clone", "newuidmap", "pivot_root")


def skip_reason() -> str | None:
    if missing := containerkit.missing_tools():
        return f"needs {', '.join(missing)}: `make test-container` installs them with apt-get"
    if os.geteuid() != 0:
        return "needs root: debootstrap and rootful podman (rootless needs subuid ranges)"
    free = shutil.disk_usage(containerkit.STORAGE).free / 2**30
    if free < FREE_GB:
        return (f"needs {FREE_GB} GB free for the image layers, {containerkit.STORAGE} has "
                f"{free:.1f} GB")
    return None


@pytest.fixture(scope="module")
def timings(request: pytest.FixtureRequest) -> Iterator[dict[str, float]]:
    """Seconds per step; shown in the run's output (they decide whether CI can afford this)
    and kept beside the cache."""
    times: dict[str, float] = {}
    yield times
    if not times:
        return
    line = "container timings (s): " + json.dumps({k: round(v, 1) for k, v in times.items()})
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():  # past the fd capture, as capsys.disabled()
        print("\n" + line)
    containerkit.CACHE.mkdir(parents=True, exist_ok=True)
    (containerkit.CACHE / "timings.json").write_text(json.dumps(times, indent=2) + "\n")


@pytest.fixture(scope="module")
def worker_image(request: pytest.FixtureRequest, timings: dict[str, float],
                 tmp_path_factory: pytest.TempPathFactory) -> str:
    """The worker image built from the project's Dockerfile on a local bookworm base."""
    containerkit.cannot_run(skip_reason())
    base, base_times = containerkit.base_image()
    timings.update(base_times)
    probe = containerkit.podman_run(base, ["true"], timeout=120)
    if probe.returncode != 0 and any(word in probe.stderr for word in REFUSALS):
        containerkit.cannot_run(f"this kernel or sandbox refuses containers: "
                                f"{probe.stderr.strip()}")
    assert probe.returncode == 0, probe.stderr
    context = checkout_with_secrets(tmp_path_factory.mktemp("context"))
    timings["build"] = containerkit.build_worker(base, context=context)
    timings["image_mb"] = int(containerkit.inspect(containerkit.WORKER, "{{.Size}}")) / 1e6
    return containerkit.WORKER


# Planted in the build context: what .dockerignore must keep out of the image.
PLANTED = (".env", "deploy/prod.env", "tls/server.pem", ".aws/credentials",
           "workspace/registry/secret.txt")


def checkout_with_secrets(dest: Path) -> Path:
    """A copy of this checkout, as a developer's would be, with local secrets and state in it."""
    ignore = shutil.ignore_patterns(".git", ".venv", "workspace", "__pycache__",
                                    ".pytest_cache", ".ruff_cache")
    context = dest / "checkout"
    shutil.copytree(containerkit.ROOT, context, ignore=ignore, symlinks=True)
    for name in PLANTED:
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        (context / name).write_text("AWS_SECRET_ACCESS_KEY=planted-by-the-test\n")
    return context


def test_image_runs_as_a_user_with_a_healthcheck(worker_image: str) -> None:
    assert containerkit.inspect(worker_image, "{{.Config.User}}") == "openimager"
    health = containerkit.inspect(worker_image, "{{json .HealthCheck}}")
    assert "flows.run.preflight" in health and "--reach" in health
    done = containerkit.podman_run(worker_image, ["python", "-c", "import os; print(os.getuid())"])
    assert (done.returncode, done.stdout.strip()) == (0, "10001"), done.stderr


def test_healthcheck_asks_the_prefect_api(worker_image: str) -> None:
    assert containerkit.health(worker_image).returncode == 0  # no API set: settings only
    closed = f"http://127.0.0.1:{free_port()}/api"
    done = containerkit.health(worker_image, {"PREFECT_API_URL": closed})
    assert done.returncode != 0 and "unhealthy" in done.stdout + done.stderr


def test_check_passes_with_the_image_defaults(worker_image: str) -> None:
    done = containerkit.podman_run(worker_image, ["check"])
    assert done.returncode == 0, done.stderr
    assert "ok: the settings are complete" in done.stdout


def test_broken_settings_stop_the_start(worker_image: str, timings: dict[str, float]) -> None:
    start = time.monotonic()
    done = containerkit.podman_run(
        worker_image, ["retrain", "--registry", f"s3://{REGISTRY_BUCKET}"],
        env={"OPENIMAGER_EPOCHS": "many"})
    timings["fail_fast"] = time.monotonic() - start
    assert done.returncode == EX_CONFIG, done.stdout + done.stderr
    assert "OPENIMAGER_EPOCHS" in done.stderr
    assert done.stdout == "" and "Traceback" not in done.stderr


def test_s3_registry_without_credentials_stops_the_start(worker_image: str) -> None:
    done = containerkit.podman_run(worker_image, ["retrain", "--registry", "s3://test-registry"])
    assert done.returncode == EX_CONFIG
    assert "no AWS credentials for registry s3://test-registry" in done.stderr


def test_worker_without_api_stops_the_start(worker_image: str) -> None:
    done = containerkit.podman_run(worker_image, ["prefect", "worker", "start", "--pool", "x"])
    assert done.returncode == EX_CONFIG
    assert "PREFECT_API_URL is not set" in done.stderr


def test_retrain_in_the_container_publishes_to_local_s3(
        worker_image: str, local_s3: LocalS3, mirror: StaticHTTP,
        timings: dict[str, float]) -> None:
    env = {**LOCAL_CREDENTIALS, "AWS_ENDPOINT_URL": local_s3.endpoint_url,
           "OPENIMAGER_IMAGE_SIZE": "64"}
    argv = ["retrain", "--classes", "Hamburger", "Sandwich", "--metadata-url", mirror.url,
            "--image-endpoint-url", local_s3.endpoint_url, "--registry",
            f"s3://{REGISTRY_BUCKET}", "--package-name", PACKAGE, "--architecture", "seed-cnn",
            "--epochs", "1", "--max-images-per-class", "20"]
    start = time.monotonic()
    done = containerkit.podman_run(worker_image, argv, env=env)
    timings["retrain_run"] = time.monotonic() - start
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]

    prefix = f".quilt/named_packages/{PACKAGE}/"
    listing = local_s3.client().list_objects_v2(Bucket=REGISTRY_BUCKET, Prefix=prefix)
    names = {item["Key"].removeprefix(prefix) for item in listing.get("Contents", [])}
    assert "latest" in names
    latest = local_s3.client().get_object(Bucket=REGISTRY_BUCKET, Key=prefix + "latest")
    top_hash = latest["Body"].read().decode().strip()
    assert f'"top_hash": "{top_hash}"' in done.stdout  # the run's own summary names it


def test_secrets_and_local_state_stay_out_of_the_image(worker_image: str) -> None:
    script = ("import os, sys; found = [p for p in sys.argv[1:] if os.path.lexists(p)]; "
              "print(found); sys.exit(1 if found else 0)")
    done = containerkit.podman_run(worker_image, ["python", "-c", script,
                                                  *(f"/app/{name}" for name in PLANTED)])
    assert done.returncode == 0, done.stdout + done.stderr
    # the build context did have them: the same copy built the code that is there
    done = containerkit.podman_run(worker_image, ["python", "-c",
                                                  "import os; print(os.listdir('/app'))"])
    assert "flows" in done.stdout and "deploy" in done.stdout
    assert ".env" not in done.stdout and "workspace" not in done.stdout


def test_the_image_has_no_test_or_lint_packages(worker_image: str) -> None:
    script = ("import importlib.util as u; "
              "print([m for m in ('pytest', 'selenium', 'ruff', 'xdist') if u.find_spec(m)])")
    done = containerkit.podman_run(worker_image, ["python", "-c", script])
    assert (done.returncode, done.stdout.strip()) == (0, "[]"), done.stderr
