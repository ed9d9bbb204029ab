"""One workspace: the demo, `bentoml serve` as the README runs it and `python -m flows drift`
with no arguments, in the same folder, meet in the same ./workspace: the requests served
after the demo are the requests the drift report counts."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import requests

from tests.servicekit import register_tiny_model

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
CLASSES = ["Car", "Hamburger", "Sandwich"]


def readme_serve_command() -> list[str]:
    """The README's `bentoml serve` line, as written."""
    line = next(line for line in (ROOT / "README.md").read_text().splitlines()
                if line.startswith(".venv/bin/bentoml serve "))
    return shlex.split(line.split("   #")[0])


def test_after_the_demo_served_requests_reach_the_drift_command_without_arguments(
        sample_workspace, local_s3, tmp_path, monkeypatch):
    import flows.demo
    import flows.retrain
    from flows.promotion.bentoml_store import promote
    from flows.servers.local import TELEMETRY_OFF, free_port, stop_group, wait_ready

    project = tmp_path / "project"  # stands for the checkout: every command runs here
    dataset = project / "workspace" / "dataset"
    dataset.mkdir(parents=True)
    shutil.copy(sample_workspace / "dataset" / "crops.parquet", dataset)
    (dataset / "crops").symlink_to(sample_workspace / "dataset" / "crops")
    # The demo, its training left out: it leaves its dataset in the workspace and its model
    # promoted in the BentoML store (its own name here, so that other tests' promotions in
    # this store do not matter), then serves it one request.
    name = "one-workspace-classifier"
    tag = register_tiny_model(tmp_path / "model", CLASSES, name=name)
    promote(tag)
    monkeypatch.chdir(project)
    monkeypatch.setattr(flows.demo, "prepare_run", lambda: None)  # no watchdog for pytest
    monkeypatch.setattr(flows.retrain, "retrain", lambda **params: {
        "train": {"model_tag": tag}, "publish": None})
    demo = flows.demo.run_demo(None, s3=local_s3)
    assert demo["serve"]["answer"]["model"] == tag
    assert (project / "workspace" / "logs" / "bentoml.log").exists()

    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENIMAGER_")}
    env.update(TELEMETRY_OFF, PYTHONPATH=str(ROOT), OPENIMAGER_MODEL_NAME=name)

    program, *args = readme_serve_command()
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("ab") as out:
        server = subprocess.Popen([str(ROOT / program), *args, "--host", "127.0.0.1",
                                   "--port", str(port)], cwd=project, env=env, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    table = pd.read_parquet(project / "workspace" / "dataset" / "crops.parquet")
    crops = table[table.Split == "test"].sort_values("CropPath").head(2)
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", 300, server)
        for path in crops.CropPath:
            with (sample_workspace / "dataset" / "crops" / path).open("rb") as image:
                answer = requests.post(f"http://127.0.0.1:{port}/classify", timeout=60,
                                       files={"image": image})
            assert answer.status_code == 200, answer.text
            assert answer.json()["model"] == tag
    except (RuntimeError, TimeoutError) as error:
        raise RuntimeError(f"{error}; log:\n{log.read_text()[-3000:]}") from error
    finally:
        stop_group(server)  # SIGTERM: the open log part is written
    assert list((project / "workspace" / "predictions" / "log").glob("part-*.parquet"))

    done = subprocess.run([sys.executable, "-m", "flows", "drift"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # The demo's request and the two since.
    assert done.stdout.startswith(f"3 requests to {tag} since "), done.stdout
