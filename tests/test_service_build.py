"""Packaging and startup: `bentoml build` offline, and `bentoml serve` failing fast, clearly."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import bentoml
import pytest
import requests

from flows.servers.local import TELEMETRY_OFF, free_port, stop_group, wait_ready
from tests.servicekit import publish_tiny_model, register_tiny_model

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent


def run(args: list[str], cwd: Path = ROOT, timeout: float = 300, **env: str
        ) -> subprocess.CompletedProcess:
    """Run a command with telemetry off and no OPENIMAGER_* or PYTHONPATH from outside."""
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("OPENIMAGER_") and k != "PYTHONPATH"}
    return subprocess.run(args, cwd=cwd, env={**clean, **TELEMETRY_OFF, **env}, text=True,
                          capture_output=True, timeout=timeout, check=False)


def lineage_of_bento(bento_tag: str, **env: str) -> dict:
    """`bentoml serve` a built Bento and return its GET /model answer."""
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OPENIMAGER_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", bento_tag, "--host", "127.0.0.1", "--port",
         str(port)], env={**clean, **TELEMETRY_OFF, **env}, stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", 120, process)
        return requests.get(f"http://127.0.0.1:{port}/model", timeout=30).json()
    finally:
        stop_group(process)


def test_build_packs_the_promoted_model_and_the_bento_serves_it(tmp_path):
    from flows.promotion.bentoml_store import promote

    # Its own model name, so no other test sees this promotion record.
    name = "buildtest-classifier"
    promoted = register_tiny_model(tmp_path / "promoted", name=name)
    promote(promoted)
    newer = register_tiny_model(tmp_path / "newer", name=name)  # :latest, but not promoted
    built = run([sys.executable, "-m", "bentoml", "build", "--output", "tag"],
                OPENIMAGER_MODEL_NAME=name)
    assert built.returncode == 0, built.stdout + built.stderr
    bento = bentoml.bentos.get(re.search(r"__tag__:(\S+)", built.stdout).group(1))
    packed = [m for service in bento.info.services for m in service.models]
    assert [str(m.tag) for m in packed] == [promoted] and newer != promoted
    # Served, the Bento uses its packed model, with the promotion record packed beside it.
    info = lineage_of_bento(str(bento.tag), OPENIMAGER_MODEL_NAME=name)
    assert info["tag"] == promoted and info["source"] == "bento" and info["promoted_at"]
    src = Path(bento.path) / "src"
    assert (src / "service" / "static" / "ui.html").is_file()
    requirements = (Path(bento.path) / "env" / "python" / "requirements.txt").read_text()
    assert "tensorflow-cpu==" in requirements and "bentoml==1.4.40" in requirements
    # The packed source is complete: the service imports from it alone (no model work).
    imported = run([sys.executable, "-c", "import service.service as s; "
                    "print(s.Classifier.name, *s.Classifier.dependencies)"], cwd=src,
                   OPENIMAGER_MODEL_NAME=name)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.split() == ["openimager"]  # one service: each worker holds the model


def test_build_packs_a_chosen_registry_revision(registry_env, tmp_path):
    package, tag = "build/revision", "buildreg-classifier:rev1"
    chosen = publish_tiny_model(tmp_path / "chosen", package, registry_env, tag)
    publish_tiny_model(tmp_path / "newer", package, registry_env, "buildreg-classifier:rev2")
    built = run([sys.executable, "-m", "bentoml", "build", "--output", "tag"],
                OPENIMAGER_REGISTRY=registry_env, OPENIMAGER_PACKAGE=package,
                OPENIMAGER_TOP_HASH=chosen)
    assert built.returncode == 0, built.stdout + built.stderr
    bento = bentoml.bentos.get(re.search(r"__tag__:(\S+)", built.stdout).group(1))
    assert [str(m.tag) for s in bento.info.services for m in s.models] == [tag]
    stored = bentoml.models.get(tag).info.metadata  # imported under its own tag
    assert (stored["top_hash"], stored["package"]) == (chosen, package)
    # The Bento serves its packed revision with no registry in reach, and names it.
    info = lineage_of_bento(str(bento.tag), AWS_ENDPOINT_URL="http://127.0.0.1:9")
    assert (info["tag"], info["source"], info["top_hash"]) == (tag, "bento", chosen)
    assert (info["package"], info["registry"]) == (package, registry_env)


@pytest.mark.parametrize("env, message", [
    ({}, "no model openimager-classifier:latest"),
    ({"OPENIMAGER_MODEL_TAG": "openimager-classifier:nosuchversion"},
     "no model openimager-classifier:nosuchversion (set by OPENIMAGER_MODEL_TAG)"),
    ({"OPENIMAGER_MODEL_PATH": "/nonexistent/served"},
     "OPENIMAGER_MODEL_PATH=/nonexistent/served has no model.keras"),
])
def test_serve_fails_fast_with_the_reason_when_there_is_no_model(tmp_path, env, message):
    # The run's timeout is the bound on "fast": a server waiting for a model would hit it.
    served = run([sys.executable, "-m", "bentoml", "serve", "service.service:Classifier",
                  "--host", "127.0.0.1", "--port", str(free_port())], timeout=120,
                 BENTOML_HOME=str(tmp_path / "empty-store"), **env)
    assert served.returncode != 0
    assert message in served.stdout + served.stderr
