"""deploy/kubernetes-pool/base-job-template.json as a real Prefect server takes it: a work pool
of type kubernetes made with it (what `prefect work-pool create --base-job-template` sends), and
the job variables of docs/scheduling.md's Kubernetes example checked against it.

The server needs no prefect-kubernetes for this: it keeps any pool type as a name, and checks
the template itself (every placeholder declared, every default valid); only the worker that
runs the Jobs needs the package.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import requests
import yaml

from tests.deploykit import POOL

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = POOL / "base-job-template.json"
POOL_NAME = "openimager-k8s"  # the docs' name


def post(api: str, path: str, body: dict) -> requests.Response:
    return requests.post(f"{api}{path}", json=body, timeout=60)


def documented_work_pool() -> dict:
    """The `work_pool:` of docs/scheduling.md's Kubernetes example."""
    text = (ROOT / "docs" / "scheduling.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if POOL_NAME in b)
    return yaml.safe_load(block)["work_pool"]


@pytest.fixture(scope="module")
def pool(prefect_api: str) -> dict:
    template = json.loads(TEMPLATE.read_text())
    reply = post(prefect_api, "/work_pools/", {"name": POOL_NAME, "type": "kubernetes",
                                               "base_job_template": template})
    assert reply.status_code == 201, reply.text[:600]
    return reply.json()


def test_the_server_keeps_the_template_and_its_variables(prefect_api: str, pool: dict):
    template = json.loads(TEMPLATE.read_text())
    stored = requests.get(f"{prefect_api}/work_pools/{POOL_NAME}", timeout=30).json()
    assert stored["type"] == pool["type"] == "kubernetes"
    assert stored["base_job_template"] == template
    variables = stored["base_job_template"]["variables"]["properties"]
    assert {"image", "namespace", "workspace_claim", "cpu_request", "memory_request",
            "memory_limit", "service_account_name"} <= set(variables)
    assert variables["workspace_claim"]["default"] == "openimager-workspace"


def test_the_documented_job_variables_fit_the_pool(prefect_api: str, pool: dict):
    documented = documented_work_pool()
    assert documented["name"] == POOL_NAME
    flow = post(prefect_api, "/flows/", {"name": "retrain"}).json()
    body = {"name": "weekly-retrain-k8s", "flow_id": flow["id"], "work_pool_name": POOL_NAME}
    reply = post(prefect_api, "/deployments/",
                 {**body, "job_variables": documented["job_variables"]})
    assert reply.status_code == 201, reply.text[:600]
    # the server does check them: a value the template's schema refuses is refused
    reply = post(prefect_api, "/deployments/",
                 {**body, "job_variables": {"image_pull_policy": "Sometimes"}})
    assert reply.status_code == 422 and "image_pull_policy" in reply.text, reply.text[:600]


def test_a_template_with_an_undeclared_variable_is_refused(prefect_api: str):
    template = json.loads(TEMPLATE.read_text())
    broken = copy.deepcopy(template)
    del broken["variables"]["properties"]["workspace_claim"]
    reply = post(prefect_api, "/work_pools/", {"name": "openimager-k8s-broken",
                                               "type": "kubernetes",
                                               "base_job_template": broken})
    assert reply.status_code == 422 and "workspace_claim" in reply.text, reply.text[:600]
