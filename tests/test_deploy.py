"""The whole system from deploy/'s manifests, as pods: `make test-deploy` (root, podman).

The test overlay (deploy/test) is rendered as `kubectl apply -k` would and played with
`podman kube play`, each workload a pod with its own filesystem. What podman does not do the
way Kubernetes does is translated, in tests/deploykit.py: Services become loopback ports (the
pods share the host's network, so every server here listens on 127.0.0.1 only), a Deployment
of 2 replicas becomes 2 pods, ConfigMap and Secret values become plain environment values, and
haproxy checks the API pods' ports. Then: the scheduled retrain deployment runs once through
the Prefect API, both API pods serve the promoted revision, a rollback reaches both, the API is
restarted pod by pod under load through haproxy with no failed request, and `podman kube down`
leaves no container or pod, and no volume but the claims'.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from flows.servers.local import LocalS3, free_port
from flows.servers.mirror import StaticHTTP
from flows.settings import CVDF_BUCKET
from tests import containerkit, deploykit
from tests.servicekit import IMAGE_SIZE, Load, encoded, picture, wait_for

pytestmark = [pytest.mark.deploy, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample"
REGISTRY_BUCKET = "test-registry"
PACKAGE = "openimager/classifier"
FREE_GB = 12
IMAGE = encoded(picture(5, (IMAGE_SIZE * 4, IMAGE_SIZE * 3)))


def skip_reason() -> str | None:
    # catatonit: the pods' pause process, which podman builds its infra image around
    if missing := [t for t in (*containerkit.TOOLS, "catatonit") if shutil.which(t) is None]:
        return f"needs {', '.join(missing)}: `make test-deploy` installs them with apt-get"
    if os.geteuid() != 0:
        return "needs root: rootful podman"
    free = shutil.disk_usage(containerkit.STORAGE).free / 2**30
    if free < FREE_GB:
        return f"needs {FREE_GB} GB free, {containerkit.STORAGE} has {free:.1f} GB"
    return None


@pytest.fixture(scope="module")
def timings(request: pytest.FixtureRequest) -> Iterator[dict[str, float]]:
    times: dict[str, float] = {}
    yield times
    if not times:  # nothing ran: keep the last run's figures
        return
    line = "deploy timings (s): " + json.dumps({k: round(v, 1) for k, v in times.items()})
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\n" + line)
    containerkit.CACHE.mkdir(parents=True, exist_ok=True)
    (containerkit.CACHE / "deploy-timings.json").write_text(json.dumps(times, indent=2) + "\n")


@pytest.fixture(scope="module")
def images(timings: dict[str, float]) -> dict[str, str]:
    """The worker image (the same build and cache as `make test-container`) and haproxy's,
    both on the local debootstrapped base."""
    containerkit.cannot_run(skip_reason())
    base, base_times = containerkit.base_image()
    timings.update(base_times)
    timings["build"] = containerkit.build_worker(base)
    start = time.monotonic()
    containerkit.run(["buildah", *containerkit.CONTAINERS, "bud", *containerkit.RUNTIME,
                      "--layers", "--network", "host", *containerkit.ulimits(),
                      "--build-arg", f"BASE_IMAGE={base}", "-t", deploykit.HAPROXY_IMAGE,
                      "-f", str(deploykit.OVERLAY / "haproxy.Containerfile"),
                      str(deploykit.OVERLAY)], timeout=1200)
    timings["build_haproxy"] = time.monotonic() - start
    return {"worker": containerkit.WORKER, "haproxy": deploykit.HAPROXY_IMAGE}


@pytest.fixture(scope="module")
def mirror() -> Iterator[StaticHTTP]:
    """The sample's metadata on 127.0.0.1, which the worker pod reaches on the host network."""
    with StaticHTTP(SAMPLE / "openimages") as server:
        yield server


@pytest.fixture(scope="module")
def system(images: dict[str, str], mirror: StaticHTTP, tmp_path_factory: pytest.TempPathFactory,
           timings: dict[str, float]) -> Iterator[deploykit.Played]:
    """The test overlay played: S3 and the Prefect server first, then the worker (the API
    pods and haproxy once a revision is promoted); all taken down at the end, whatever
    happened."""
    played = deploykit.Played(tmp_path_factory.mktemp("deploy"), deploykit.render(
        deploykit.OVERLAY))
    played.down()  # what a killed earlier run left
    try:
        start = time.monotonic()
        played.play("storage", played.claims())
        played.play("s3", [played.pod("s3")])
        played.play("prefect", [played.pod("prefect-server")])
        wait_for(lambda: played.answers(f"{played.s3_url}/moto-api/"), "the S3 pod", 300)
        s3 = LocalS3(port=played.ports["s3"])  # the pod's endpoint, with the same helpers
        s3.create_bucket(CVDF_BUCKET, versioned=False, public=True)
        s3.upload_tree(CVDF_BUCKET, SAMPLE / "images", public=True)
        s3.create_bucket(REGISTRY_BUCKET)
        wait_for(lambda: played.answers(f"{played.prefect_url}/health"), "the Prefect server",
                 300)
        worker_env = {"OPENIMAGER_METADATA_URL": mirror.url,
                      "OPENIMAGER_IMAGE_ENDPOINT_URL": played.s3_url,
                      "OPENIMAGER_ARCHITECTURE": "seed-cnn", "OPENIMAGER_EPOCHS": "1",
                      "OPENIMAGER_IMAGE_SIZE": "64", "OPENIMAGER_MAX_IMAGES_PER_CLASS": "20"}
        played.run_init("retrain-worker", extra_env=worker_env)  # the pool, the deployments
        played.play("worker", [played.pod("retrain-worker", extra_env=worker_env)])
        wait_for(lambda: played.answers(f"{played.worker_health_url}/health"),
                 "the worker's health server", 600)
        timings["play_to_ready"] = time.monotonic() - start
        yield played
    finally:
        played.down()


def prefect(system: deploykit.Played, method: str, path: str, **body) -> dict:
    """One call to the Prefect API, retried as Prefect's own client retries it: the server
    answers 503 for what a retry can fix (SQLite busy on a loaded machine), 429 and 502 too."""
    for attempt in range(6):
        reply = requests.request(method, f"{system.prefect_url}{path}",
                                 json=body if method == "POST" else None, timeout=30)
        if reply.status_code not in (429, 502, 503) or attempt == 5:
            break
        time.sleep(2 ** attempt)
    reply.raise_for_status()
    return reply.json()


def run_deployment(system: deploykit.Played, parameters: dict) -> dict:
    """A flow run of the scheduled retrain deployment, now, through the Prefect API; its end."""
    deployment = prefect(system, "GET", "/deployments/name/retrain/weekly-retrain")
    run = prefect(system, "POST", f"/deployments/{deployment['id']}/create_flow_run",
                  parameters=parameters)

    def final() -> dict | None:
        state = prefect(system, "GET", f"/flow_runs/{run['id']}")["state"]
        return state if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") \
            else None

    state = wait_for(final, "the retrain flow run to end", 900, every=2)
    assert state["type"] == "COMPLETED", (state, system.logs("retrain-worker"))
    return state


def promoted(system: deploykit.Played) -> dict:
    """The registry's promotion state, read from the S3 pod."""
    body = LocalS3(port=system.ports["s3"]).client().get_object(
        Bucket=REGISTRY_BUCKET, Key=f".openimager/promotion/{PACKAGE}.json")["Body"].read()
    return json.loads(body)["promoted"]


def serving(url: str) -> str | None:
    """The model tag a pod serves, once ready."""
    try:
        reply = requests.get(f"{url}/readyz", timeout=5)
    except requests.RequestException:
        return None
    return reply.json().get("model") if reply.status_code == 200 else None


def haproxy_check(image: str, config: str) -> tuple[int, str]:
    """`haproxy -c` of config, byte for byte, in the haproxy image: its exit code and output."""
    script = 'printf %s "$HAPROXY_CFG" > /tmp/haproxy.cfg && haproxy -c -f /tmp/haproxy.cfg'
    done = containerkit.podman_run(image, ["sh", "-c", script], env={"HAPROXY_CFG": config},
                                   timeout=120)
    return done.returncode, done.stdout + done.stderr


def test_the_manifests_haproxy_config_is_valid(images: dict[str, str]):
    """The ConfigMap's own config, which the played pod does not run (it checks the API pods'
    loopback ports instead of resolving the headless Service): its server-template and
    resolvers pass haproxy's own check; a broken one would not."""
    config = deploykit.find(deploykit.render(deploykit.OVERLAY), "ConfigMap", "haproxy")[
        "data"]["haproxy.cfg"]
    assert "server-template api" in config and "resolvers cluster" in config
    code, out = haproxy_check(images["haproxy"], config)
    assert code == 0 and "Configuration file is valid" in out, out
    code, out = haproxy_check(images["haproxy"], config.replace("resolvers cluster",
                                                                "resolvers elsewhere", 1))
    assert code != 0 and "elsewhere" in out, out


def test_pods_become_ready(system: deploykit.Played, timings: dict[str, float]):
    assert system.answers(f"{system.prefect_url}/health")
    assert system.answers(f"{system.worker_health_url}/health")  # its liveness probe's URL
    # the image's HEALTHCHECK, run in the worker's container (kube play gives it no timer):
    # settings, the Prefect API, and the worker's own health server
    check = json.loads(containerkit.inspect(containerkit.WORKER, "{{json .HealthCheck}}"))
    assert check["Test"][0] == "CMD"
    container = f"{deploykit.PREFIX}retrain-worker-worker"
    done = system.podman("exec", container, *check["Test"][1:], check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    # asked on a port where no worker answers, it says the worker is not alive
    done = system.podman("exec", "--env", f"PREFECT_WORKER_WEBSERVER_PORT={free_port()}",
                         container, *check["Test"][1:], check=False)
    assert done.returncode != 0 and "the Prefect worker is not alive" in done.stderr
    pools = prefect(system, "POST", "/work_pools/filter")
    assert "openimager" in {pool["name"] for pool in pools}  # the init container's work
    names = {d["name"] for d in prefect(system, "POST", "/deployments/filter")}
    assert {"weekly-retrain", "daily-refresh"} <= names
    assert timings["play_to_ready"] > 0


def test_the_scheduled_retrain_runs_once_through_the_prefect_api(system, timings):
    start = time.monotonic()
    run_deployment(system, {"classes": ["Hamburger", "Sandwich"], "build_bento": False})
    timings["retrain"] = time.monotonic() - start
    first = promoted(system)
    assert first["tag"] and first["top_hash"]
    system.first = first


def test_both_api_pods_serve_the_promoted_revision(system, timings):
    """The API pods start once something is promoted (before, `bentoml serve` exits naming
    the reason, and Kubernetes restarts it until then)."""
    start = time.monotonic()
    system.play("api", [system.api_pod(0), system.api_pod(1)])
    system.play("haproxy", system.haproxy())
    tag = system.first["tag"]
    for url in system.api_urls[:2]:
        wait_for(lambda url=url: serving(url) == tag, f"{url} serving {tag}", 600)
        info = requests.get(f"{url}/model", timeout=30).json()
        assert info["top_hash"] == system.first["top_hash"]
    timings["api_play_to_ready"] = time.monotonic() - start


def test_a_rollback_reaches_both_pods(system, timings):
    run_deployment(system, {"classes": ["Hamburger", "Sandwich"], "build_bento": False,
                            "max_images_per_class": 15, "force_promote": True})
    second = promoted(system)
    assert second["top_hash"] != system.first["top_hash"]
    for url in system.api_urls[:2]:
        wait_for(lambda url=url: serving(url) == second["tag"], f"{url} on the second", 300)
    done = system.exec("retrain-worker", ["python", "-m", "flows", "rollback"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert promoted(system)["top_hash"] == system.first["top_hash"]
    start = time.monotonic()
    for url in system.api_urls[:2]:
        wait_for(lambda url=url: serving(url) == system.first["tag"], f"{url} rolled back", 300)
    timings["rollback_to_both"] = time.monotonic() - start


def test_restarting_the_api_under_load_fails_no_request(system, timings):
    """A rolling restart as Kubernetes does it (maxSurge 1, maxUnavailable 0): a new pod, ready;
    then SIGTERM to an old one, which drains; through haproxy, which checks /readyz."""
    wait_for(lambda: system.haproxy_up() >= {"api0", "api1"}, "haproxy seeing both pods", 120)
    with Load(system.haproxy_url, 4, IMAGE) as load:
        wait_for(lambda: sum(a.status == 200 for a in load.answers) > 20, "answers", 300)
        for old, new in ((0, 2), (1, 3)):
            system.play(f"api-{new}", [system.api_pod(new)])
            wait_for(lambda new=new: serving(system.api_urls[new]), f"pod {new} ready", 600)
            wait_for(lambda new=new: f"api{new}" in system.haproxy_up(), f"api{new} up", 60)
            stopped = system.stop_pod(system.api_name(old))
            assert stopped == 0  # drained and exited by itself, not killed at the deadline
            assert f"api{old}" not in system.haproxy_up()
        settled = len(load.answers)
        wait_for(lambda: len(load.answers) > settled + 20, "answers from the new pods", 300)
    answers = load.answers
    timings["restart_requests"] = len(answers)
    failed = [(a.status, a.code, a.error) for a in answers if a.status != 200]
    timings["restart_failed"] = len(failed)
    # haproxy retries nothing here (deploy/test/haproxy.yaml), as a Service does not: no
    # request reached a client only because haproxy tried it again
    counts = system.haproxy_counts("wretr", "wredis", "econ", "eresp")
    timings.update({f"haproxy_{name}": value for name, value in counts.items()})
    assert failed == []
    assert counts["wretr"] == counts["wredis"] == 0, counts


def test_down_leaves_no_container_pod_or_volume(system: deploykit.Played):
    """What `podman kube down` leaves, looked at before any forced removal: no pod and no
    container. The volumes of the claims and the ConfigMap stay, and only those: claims and
    ConfigMaps outlive their pods on Kubernetes too, and podman 4.3's kube down has no flag to
    remove volumes, so the test removes exactly those."""
    left = system.kube_down(check=True)
    assert left["volumes"], "no claim was played"
    assert left == {"pods": [], "containers": [], "volumes": system.volume_names()}
    system.down()
    assert system.leftovers() == {"pods": [], "containers": [], "volumes": []}
