"""One workspace: the demo, `bentoml serve` as the README runs it and `python -m flows drift`
with no arguments, in the same folder, meet in the same ./workspace: the requests served
after the demo are the requests the drift report counts."""

from __future__ import annotations

import re
import shlex
import subprocess

import pandas as pd
import pytest
import requests

from flows.openimages.shards import read_images
from tests.conftest import ROOT
from tests.servicekit import demo_like_project, served_as_documented

pytestmark = pytest.mark.integration


def test_after_the_demo_served_requests_reach_the_drift_command_without_arguments(
        sample_workspace, local_s3, tmp_path, monkeypatch):
    import flows.demo
    import flows.retrain

    project = tmp_path / "project"  # stands for the checkout: every command runs here
    # The demo, its training left out: it leaves its dataset in the workspace and its model
    # promoted in the BentoML store, then serves it one request.
    tag, env = demo_like_project(sample_workspace, project, "one-workspace-classifier")
    monkeypatch.chdir(project)
    monkeypatch.setattr(flows.demo, "prepare_run", lambda: None)  # no watchdog for pytest
    monkeypatch.setattr(flows.retrain, "retrain", lambda **params: {
        "train": {"model_tag": tag}, "publish": None})
    demo = flows.demo.run_demo(None, s3=local_s3)
    assert demo["serve"]["answer"]["model"] == tag
    assert (project / "workspace" / "logs" / "bentoml.log").exists()
    # It says what to run next, as a new shell in the project runs it.
    (said,) = demo["serve"]["next"]
    serve, drift = re.findall(r"`([^`]+)`", said)
    assert said.startswith(f"`{serve}` now serves this model; ")
    assert serve.endswith(" serve service.service:Classifier") and drift.endswith(" drift")
    readme = (ROOT / "README.md").read_text()
    assert " serve service.service:Classifier` now serves this model; `" in readme

    table = pd.read_parquet(project / "workspace" / "dataset" / "crops.parquet")
    crops = table[table.Split == "test"].sort_values("CropPath").head(2)
    with served_as_documented(project, env, tmp_path / "serve.log", serve) as url:
        shards = project / "workspace" / "dataset" / "shards"
        for image in read_images(shards, crops.Shard.tolist(), crops.Row.tolist()):
            answer = requests.post(f"{url}/classify", timeout=60,
                                   files={"image": ("crop.jpg", image, "image/jpeg")})
            assert answer.status_code == 200, answer.text
            assert answer.json()["model"] == tag
    assert list((project / "workspace" / "predictions" / "log").glob("part-*.parquet"))

    done = subprocess.run(shlex.split(drift), cwd=project, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # The demo's request and the two since.
    assert done.stdout.startswith(f"3 requests to {tag} since "), done.stdout
