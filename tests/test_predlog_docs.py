"""docs/watching.md and docs/watching-pipeline.md as written, after the demo: the feedback
commands, the reader example and the drift command run in a project folder as `make demo`
leaves it (its workspace and promoted model), against `bentoml serve` as the README runs it."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess

import pandas as pd
import pytest
import requests

from flows.openimages.shards import read_images
from tests.conftest import ROOT
from tests.servicekit import DEMO_CLASSES, demo_like_project, served_as_documented

pytestmark = pytest.mark.integration

WATCHING = ROOT / "docs" / "watching.md"
PIPELINE = ROOT / "docs" / "watching-pipeline.md"
EXAMPLE_HOST = "http://127.0.0.1:3000"


def blocks(page, language: str = "") -> list[str]:
    """The fenced blocks of page in language ("" for plain ones), fences paired in order."""
    return [m[2] for m in re.finditer(r"^```(\w*)\n(.*?)^```", page.read_text(),
                                      re.MULTILINE | re.DOTALL) if m[1] == language]


def drift_lines() -> list[str]:
    """The drift command lines of docs/watching-pipeline.md."""
    return [line for block in blocks(PIPELINE) for line in block.splitlines()
            if " -m flows drift" in line]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_feedback_reader_and_drift_examples_run_after_the_demo(sample_workspace, tmp_path):
    project = tmp_path / "project"
    tag, env = demo_like_project(sample_workspace, project, "docs-watching-classifier")
    table = pd.read_parquet(project / "workspace" / "dataset" / "crops.parquet")
    crops = table[table.Split == "test"].sort_values("CropPath").head(3)
    commands = next(block for block in blocks(WATCHING) if "/feedback" in block)
    labels = re.findall(r'label[=": ]+(\w+)', commands)
    assert len(labels) == 2 and set(labels) <= set(DEMO_CLASSES)
    with served_as_documented(project, env, tmp_path / "serve.log") as url:
        answers = []
        shards = project / "workspace" / "dataset" / "shards"
        for image in read_images(shards, crops.Shard.tolist(), crops.Row.tolist()):
            answers.append(requests.post(f"{url}/classify", timeout=60, files={
                "image": ("crop.jpg", image, "image/jpeg")}).json())
        for line, answer in zip(commands.splitlines(), answers, strict=False):
            line = line.replace(EXAMPLE_HOST, url).replace("REQUEST_ID", answer["request_id"])
            done = subprocess.run([*shlex.split(line), "--silent", "--show-error", "--fail"],
                                  cwd=project, env=env, text=True, capture_output=True,
                                  timeout=60, check=False)
            assert done.returncode == 0, f"{line}: {done.stderr}"
            assert '"stored":true' in done.stdout.replace(" ", "")
    (code,) = blocks(WATCHING, "python")
    done = subprocess.run([".venv/bin/python", "-c", code], cwd=project, env=env, text=True,
                          capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    logged, feedback, _ = map(int, done.stdout.split())
    assert logged == len(crops) and feedback == 2

    (line,) = drift_lines()
    done = subprocess.run(shlex.split(line), cwd=project, env=env, text=True,
                          capture_output=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert out.startswith(f"{len(crops)} requests to {tag} since "), out
    assert "feedback: 2 labelled requests" in out and "no reference" not in out
