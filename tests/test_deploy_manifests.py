"""deploy/: the Kubernetes manifests validate against the Kubernetes schemas (kubernetes-validate,
pinned in the lock, ships them: nothing is downloaded), and they agree with the service's
settings: probes, drain times, replicas, where settings and credentials come from."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml

# Pinned in requirements.lock; a venv made before it was (`make venv` installs it) skips this
# module instead of failing the whole run's collection. CI's fresh venv always has it.
if os.environ.get("CI"):
    import kubernetes_validate
else:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="`make venv` installs kubernetes-validate")

from tests import deploykit
from tests.deploykit import BASE, OVERLAY, POOL, containers, documents, env_of, find, render

# The oldest Kubernetes the manifests promise to run on, and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
MANIFESTS = sorted(p for folder in (BASE, OVERLAY, POOL) for p in folder.glob("*.yaml")
                   if p.name != "kustomization.yaml")
SECRET_WORDS = re.compile(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY|CONNECTION_URL")


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(deploykit.DEPLOY)))
def test_manifests_validate_against_the_schemas(path: Path, version: str):
    docs = documents(path)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)  # raises naming the field


def test_a_broken_manifest_is_caught():
    deployment = find(render(BASE), "Deployment", "openimager-api")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"][
        "prot"] = 3000
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


def test_the_kubernetes_pool_job_validates_with_the_template_defaults():
    template = json.loads((POOL / "base-job-template.json").read_text())
    defaults = {name: spec.get("default") for name, spec in
                template["variables"]["properties"].items()}
    values = {**defaults, "name": "retrain-run", "command": "prefect flow-run execute",
              "env": {"PREFECT__FLOW_RUN_ID": "x"}, "labels": {"app": "openimager"}}

    def fill(node):
        if isinstance(node, dict):
            return {k: fill(v) for k, v in node.items()}
        if isinstance(node, list):
            return [fill(v) for v in node]
        if isinstance(node, str) and (m := re.fullmatch(r"\{\{ (\w+) \}\}", node)):
            value = values[m.group(1)]
            if m.group(1) == "command":
                return value.split()
            if m.group(1) == "env":
                return [{"name": k, "value": v} for k, v in value.items()]
            return value
        return node

    job = fill(template["job_configuration"]["job_manifest"])
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(job, version, strict=True)
    spec = job["spec"]["template"]["spec"]
    assert spec["volumes"][0]["persistentVolumeClaim"]["claimName"] == "openimager-workspace"
    sources = spec["containers"][0]["envFrom"]
    assert {"configMapRef": {"name": "openimager-settings"}} in sources


@pytest.mark.parametrize("folder", [BASE, OVERLAY], ids=["base", "test overlay"])
def test_kustomizations_name_every_file_and_render(folder: Path):
    listed = yaml.safe_load((folder / "kustomization.yaml").read_text())["resources"]
    files = {p.name for p in folder.glob("*.yaml")} - {"kustomization.yaml"}
    patches = {p["path"] for p in yaml.safe_load(
        (folder / "kustomization.yaml").read_text()).get("patches", [])}
    assert files - set(listed) - patches <= {"secret.example.yaml"}
    objects = render(folder)
    keys = [deploykit.key(obj) for obj in objects]
    assert len(keys) == len(set(keys))
    assert {obj["metadata"].get("namespace") for obj in objects
            if obj["kind"] != "Namespace"} == {"openimager"}


@pytest.mark.parametrize("folder", [BASE, OVERLAY], ids=["base", "test overlay"])
def test_references_resolve(folder: Path):
    """Every ConfigMap, Secret and claim a pod names exists (or is optional), every Service
    selects a workload and targets a named port of it."""
    objects = render(folder)
    claims = {obj["metadata"]["name"] for obj in objects
              if obj["kind"] == "PersistentVolumeClaim"}
    workloads = [obj for obj in objects if obj["kind"] == "Deployment"]
    for workload in workloads:
        pod = workload["spec"]["template"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= \
            pod["metadata"]["labels"].items()
        for volume in pod["spec"].get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
            if "configMap" in volume:
                find(objects, "ConfigMap", volume["configMap"]["name"])
        for container in containers(workload):
            env_of(objects, container)  # raises on a missing ConfigMap or required Secret
    for service in (obj for obj in objects if obj["kind"] == "Service"):
        selected = [w for w in workloads if service["spec"]["selector"].items()
                    <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert selected, service["metadata"]["name"]
        ports = {p["name"] for w in selected for c in containers(w) for p in c.get("ports", [])}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports


def test_no_credentials_in_the_config_map():
    settings = find(render(BASE), "ConfigMap", "openimager-settings")["data"]
    assert [name for name in settings if SECRET_WORDS.search(name)] == []
    assert {"OPENIMAGER_REGISTRY", "OPENIMAGER_PACKAGE", "AWS_DEFAULT_REGION"} <= set(settings)


def test_the_api_follows_the_registry_and_drains_within_the_pods_grace():
    objects = render(BASE)
    api = find(objects, "Deployment", "openimager-api")
    spec = api["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    env = env_of(objects, container)
    assert container["args"][:3] == ["bentoml", "serve", "service.service:Classifier"]
    assert env["OPENIMAGER_REGISTRY"].startswith("s3://") and env["OPENIMAGER_PACKAGE"]
    assert "OPENIMAGER_MODEL_TAG" not in env  # pinned models never follow promotions
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    grace = float(env["OPENIMAGER_GRACE_SECONDS"])
    delay = float(env["OPENIMAGER_DRAIN_DELAY_SECONDS"])
    # the server's own cap, then uvicorn's forced exit (service.lifecycle), within the pod's
    from service.lifecycle import FORCE_AFTER_SECONDS
    assert pod["terminationGracePeriodSeconds"] > grace + FORCE_AFTER_SECONDS
    # readiness fails at once; the delay outlasts a probe period and endpoint propagation
    probe = container["readinessProbe"]
    assert delay >= probe["periodSeconds"] * probe["failureThreshold"] + 5
    assert delay < grace
    requests = container["resources"]["requests"]
    assert requests["memory"] and requests["cpu"]
    assert not any(m["mountPath"].startswith("/data") for m in container.get("volumeMounts", []))


def test_the_worker_owns_the_workspace_and_says_whether_it_is_alive():
    objects = render(BASE)
    worker = find(objects, "Deployment", "retrain-worker")
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    assert container["args"][:3] == ["prefect", "worker", "start"]
    assert "--with-healthcheck" in container["args"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    env = env_of(objects, container)
    assert env["OPENIMAGER_WORKSPACE"].startswith("/data/")
    assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert worker["spec"]["strategy"]["type"] == "Recreate"


def test_the_test_overlay_alone_has_the_local_s3_endpoint():
    base, overlay = render(BASE), render(OVERLAY)
    images = {c["image"] for w in base for c in containers(w)}
    assert "s3" not in {obj["metadata"]["name"] for obj in base}
    assert "AWS_ENDPOINT_URL" not in find(base, "ConfigMap", "openimager-settings")["data"]
    assert images == {"registry.example.com/openimager-worker:0.1.0"}
    assert {c["image"] for w in overlay for c in containers(w)} == {
        "localhost/openimager-worker:test", "localhost/openimager-haproxy:test"}
    s3 = find(overlay, "Deployment", "s3")
    assert "flows.servers.s3server" in s3["spec"]["template"]["spec"]["containers"][0]["args"]
    settings = find(overlay, "ConfigMap", "openimager-settings")["data"]
    assert settings["AWS_ENDPOINT_URL"] == "http://s3:9000"
    assert settings["OPENIMAGER_PACKAGE"] == "openimager/classifier"  # the base's, merged


def test_the_test_load_balancer_retries_nothing_as_a_service():
    """haproxy stands in for a Service or a cloud load balancer, neither of which tries a
    request again: with retries, a drain that failed requests would pass the restart test."""
    config = find(render(OVERLAY), "ConfigMap", "haproxy")["data"]["haproxy.cfg"]
    lines = [line.strip() for line in config.splitlines()]
    assert "retries 0" in lines  # haproxy's default is 3
    assert not [line for line in lines if "redispatch" in line or line.startswith("retry-on")]
    assert "option httpchk GET /readyz" in lines
