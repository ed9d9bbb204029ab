"""The image and deploy tests skip on a machine that cannot run them, and fail instead under CI
(CI=true), so a CI run cannot pass having built and played nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import containerkit

ROOT = Path(__file__).resolve().parent.parent


def test_nothing_missing_lets_the_tests_run(monkeypatch):
    monkeypatch.setenv("CI", "true")
    assert containerkit.cannot_run(None) is None


def test_a_missing_prerequisite_skips_outside_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="needs root"):
        containerkit.cannot_run("needs root")


def test_a_missing_prerequisite_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"needs root \(CI=true"):
        containerkit.cannot_run("needs root")


@pytest.mark.integration
def test_both_modules_fail_under_ci_without_their_tools(tmp_path: Path):
    """The modules' fixtures go through the guard: with no container tool on PATH, each of
    their tests errors under CI=true, and none skips."""
    env = {**os.environ, "CI": "true", "PATH": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-m", "container or deploy", "--basetemp", str(tmp_path / "run"),
         "tests/test_container.py", "tests/test_deploy.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "skipped" not in out and " passed" not in out, out
    for target in ("test-container", "test-deploy"):
        assert f"`make {target}` installs them with apt-get (CI=true: these tests must run, " \
            "not skip)" in out, out
