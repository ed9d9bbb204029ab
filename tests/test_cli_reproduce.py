"""`python -m flows reproduce` with relative paths, run again, and its exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from flows.publishing.reproduce import fresh_dest
from tests.test_cli_errors import ROOT, failed, flows

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NAME = "test/reproduce-cli"
# Tiny and quick: the test is about the command, not the model.
CONFIG = {"architecture": "seed-cnn", "weights": None, "image_size": 32, "epochs": 1,
          "batch_size": 64, "tensorboard": False}


@pytest.fixture
def published(registry_env: str, sample_workspace: Path, tmp_path: Path) -> str:
    """A package laid out as publish lays it out, whose recorded accuracy (2.0) no model can
    reach: every reproduction of it is a mismatch."""
    import quilt3

    staging = tmp_path / "staging"
    shutil.copytree(sample_workspace / "dataset", staging / "data")
    for part in ("flows", "model"):
        shutil.copytree(ROOT / part, staging / "code" / part,
                        ignore=shutil.ignore_patterns("__pycache__"))
    (staging / "model").mkdir()
    metrics = {"accuracy": 2.0, "macro_f1": 2.0, "config": CONFIG}
    (staging / "model" / "metrics.json").write_text(json.dumps(metrics))
    (staging / "env").mkdir()
    shutil.copy2(ROOT / "requirements.lock", staging / "env" / "requirements.lock")
    quilt3.Package().set_dir("/", str(staging)).push(NAME, registry=registry_env, force=True)
    return registry_env


def test_reproduce_with_relative_paths_twice_and_a_mismatch_exits_1(published, tmp_path):
    args = ("reproduce", NAME, "--registry", published, "--workspace", "ws")
    first = flows(*args, cwd=tmp_path)
    assert first.returncode == 1, first.stdout[-2000:] + first.stderr[-3000:]
    assert "\nNOT REPRODUCED: test accuracy" in f"\n{first.stdout}"
    (dest,) = (tmp_path / "ws" / "reproduce").iterdir()
    assert (dest / "reproduced" / "metrics.json").exists()  # the child found the data

    relative = str(dest.relative_to(tmp_path))
    err = failed(flows(*args, "--dest", relative, cwd=tmp_path), 2)
    assert "is not empty" in err and "--force" in err

    again = flows(*args, "--dest", relative, "--force", cwd=tmp_path)
    assert again.returncode == 1, again.stderr[-3000:]
    assert "NOT REPRODUCED" in again.stdout and "Traceback" not in again.stderr


def test_each_default_destination_is_new(tmp_path):
    assert fresh_dest(tmp_path, NAME) != fresh_dest(tmp_path, NAME)
    assert fresh_dest(tmp_path, NAME).parent == tmp_path
