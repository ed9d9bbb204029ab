"""Scheduled retraining for real: `make prefect-server`, `make deploy`, `make worker`, then the
README's `prefect deployment run` commands on the sample, checked through the Prefect API."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import boto3
import pytest
import requests

from flows.servers.local import TELEMETRY_OFF, free_port, stop_group, wait_http
from tests.conftest import REGISTRY_BUCKET

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "schedule/classifier"
MODEL = "schedule-classifier"
STAGES = ("check_inputs", "refresh_task", "build_task", "train_task", "publish_task")
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@dataclass
class Stack:
    api: str
    env: dict[str, str]
    logs: Path

    def post(self, path: str, body: dict) -> list[dict]:
        answer = requests.post(f"{self.api}{path}", json=body, timeout=30)
        answer.raise_for_status()
        return answer.json()

    def run(self, deployment: str, **params: str) -> str:
        """The README's command, returning the new flow run's id."""
        words = [str(ROOT / ".venv/bin/prefect"), "deployment", "run", deployment]
        for key, value in params.items():
            words += ["--param", f"{key}={value}"]
        done = subprocess.run(words, cwd=ROOT, env=self.env, capture_output=True, text=True,
                              timeout=120, check=True)
        return re.search(r"UUID: ([0-9a-f-]{36})", done.stdout).group(1)

    def wait(self, run_id: str, timeout: float = 900) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = requests.get(f"{self.api}/flow_runs/{run_id}", timeout=30).json()
            if run["state_type"] in TERMINAL:
                return run
            time.sleep(2)
        raise TimeoutError(f"flow run {run_id} not finished in {timeout:.0f}s; see {self.logs}")

    def task_seconds(self, run_id: str) -> dict[str, float]:
        """Seconds of each stage task of a flow run."""
        runs = self.post("/task_runs/filter",
                         {"task_runs": {"flow_run_id": {"any_": [run_id]}}})
        return {r["name"].rsplit("-", 1)[0]: round(r["total_run_time"], 2) for r in runs
                if r["name"].rsplit("-", 1)[0] in STAGES}

    def log_text(self) -> str:
        logs = self.post("/logs/filter", {"limit": 200, "sort": "TIMESTAMP_DESC"})
        return "\n".join(entry["message"] for entry in logs)


def start(words: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen(words, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, local_s3, mirror) -> Iterator[Stack]:
    """A Prefect server with a fresh PREFECT_HOME, prefect.yaml deployed, a process worker."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(TELEMETRY_OFF, PREFECT_HOME=str(home), PREFECT_SERVER_UI_ENABLED="false",
               PREFECT_API_URL=f"http://127.0.0.1:{port}/api", PREFECT_WORKER_QUERY_SECONDS="2")
    make = ["make", "--no-print-directory", f"PREFECT_PORT={port}"]
    server = start([*make, "prefect-server"], env, home / "server.log")
    worker = None
    try:
        wait_http(f"http://127.0.0.1:{port}/api/health", timeout=120, process=server)
        subprocess.run([*make, "deploy"], cwd=ROOT, env=env, check=True, capture_output=True,
                       timeout=300)
        # What the sample needs: the mirror, the local S3 endpoint, a small CPU-only model.
        worker_env = {**env, "AWS_ENDPOINT_URL": local_s3.endpoint_url,
                      "OPENIMAGER_METADATA_URL": mirror.url,
                      "OPENIMAGER_IMAGE_ENDPOINT_URL": local_s3.endpoint_url,
                      "OPENIMAGER_REGISTRY": f"s3://{REGISTRY_BUCKET}",
                      "OPENIMAGER_PACKAGE_NAME": PACKAGE, "OPENIMAGER_MODEL_NAME": MODEL,
                      "OPENIMAGER_ARCHITECTURE": "seed-cnn", "OPENIMAGER_IMAGE_SIZE": "32",
                      "OPENIMAGER_EPOCHS": "2", "OPENIMAGER_DASK_WORKERS": "2",
                      # Several chunks even on the sample, to see them fan out.
                      "OPENIMAGER_DOWNLOAD_CHUNK_IMAGES": "20",
                      "OPENIMAGER_CROP_CHUNK_IMAGES": "20"}
        worker = start([*make, "worker"], worker_env, home / "worker.log")
        yield Stack(f"http://127.0.0.1:{port}/api", env, home)
    finally:
        for process in (worker, server):
            if process is not None:
                stop_group(process)


@pytest.fixture(scope="module")
def retrained(stack, tmp_path_factory) -> dict:
    workspace = tmp_path_factory.mktemp("scheduled-workspace")
    started = time.monotonic()
    run_id = stack.run("retrain/weekly-retrain", workspace=str(workspace),
                       max_images_per_class="25")
    run = stack.wait(run_id)
    print(f"\nretrain on threads: {time.monotonic() - started:.1f} s from trigger to "
          f"{run['state_type']}; tasks {stack.task_seconds(run_id)}")
    return {"id": run_id, "run": run, "workspace": workspace}


def test_the_retrain_deployment_runs_to_completion(stack, retrained):
    assert retrained["run"]["state_type"] == "COMPLETED", stack.log_text()


def test_the_package_is_in_the_registry_and_the_model_in_the_store(retrained, local_s3):
    import bentoml

    from flows.promotion.bentoml_store import promoted

    s3 = boto3.client("s3", endpoint_url=local_s3.endpoint_url)
    listed = s3.list_objects_v2(Bucket=REGISTRY_BUCKET,
                                Prefix=f".quilt/named_packages/{PACKAGE}/")
    assert listed.get("KeyCount", 0) >= 1
    models = bentoml.models.list(MODEL)
    assert len(models) == 1 and promoted(MODEL)["tag"] == str(models[0].tag)
    assert promoted(MODEL)["package"] == PACKAGE  # the service can name its bundle
    # prefect.yaml turns OPENIMAGER_BUILD_BENTO on: the Bento of the promoted model was built.
    assert promoted(MODEL)["bento"].startswith("openimager:")


def test_the_run_left_its_report_and_classification_table(stack, retrained):
    artifacts = stack.post("/artifacts/filter",
                           {"artifacts": {"flow_run_id": {"any_": [retrained["id"]]}}})
    by_key = {a["key"]: a for a in artifacts}
    report = by_key["openimager-retrain-report"]
    assert report["type"] == "markdown"
    for words in ("## Selection", "## Dataset", "**promoted**", "top hash",
                  "data:image/png;base64,"):
        assert words in report["data"]
    table = by_key["openimager-retrain-classification"]
    assert table["type"] == "table" and "Hamburger" in table["data"]


def test_the_schedules_created_future_runs(stack, retrained):
    deployments = {d["id"]: d["name"] for d in stack.post("/deployments/filter", {})}
    assert set(deployments.values()) == {"weekly-retrain", "daily-refresh"}
    scheduled = stack.post("/flow_runs/filter", {"flow_runs": {
        "state": {"type": {"any_": ["SCHEDULED"]}}}})
    assert {deployments[r["deployment_id"]] for r in scheduled} == set(deployments.values())
    began = datetime.fromisoformat(retrained["run"]["start_time"])
    assert all(datetime.fromisoformat(r["expected_start_time"]) > began for r in scheduled)


def test_a_retrain_on_a_dask_cluster_completes_and_used_it(stack, retrained, tmp_path):
    started = time.monotonic()
    run_id = stack.run("retrain/weekly-retrain", workspace=str(tmp_path / "dask"),
                       max_images_per_class="25", task_runner="dask")
    run = stack.wait(run_id)
    print(f"\nretrain on Dask: {time.monotonic() - started:.1f} s from trigger to "
          f"{run['state_type']}; tasks {stack.task_seconds(run_id)}")
    assert run["state_type"] == "COMPLETED", stack.log_text()
    logs = stack.log_text()
    assert re.search(r"images handled on \d Dask worker\(s\) \(tcp://127\.0\.0\.1:", logs)
    assert re.search(r"images cropped on \d Dask worker\(s\) \(tcp://127\.0\.0\.1:", logs)


def test_docs_scheduling_shows_the_commands_run_here() -> None:
    """docs/scheduling.md's blocks are the commands the tests above run."""
    text = (ROOT / "docs" / "scheduling.md").read_text()
    for command in ("make prefect-server", "make deploy", "make worker",
                    ".venv/bin/prefect deployment run retrain/weekly-retrain --param "
                    "max_images_per_class=25",
                    ".venv/bin/prefect deployment run retrain/weekly-retrain --param "
                    "task_runner=dask"):
        assert command in text, command
