"""The commands of docs/metadata.md run as written, against the sample on a local mirror."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flows.servers.mirror import StaticHTTP
from tests.conftest import ROOT, SAMPLE

DOC = ROOT / "docs" / "metadata.md"
CLASSES = "v5/class-descriptions-boxable.csv"


def blocks() -> dict[str, str]:
    """The sh blocks of the page, by the tag of the `<!-- run: TAG -->` line before each."""
    found = re.findall(r"<!-- run: (\S+) -->\n```sh\n(.*?)```", DOC.read_text(), re.S)
    return dict(found)


def run(script: str, cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


@pytest.fixture
def mirror_copy(tmp_path):
    root = tmp_path / "upstream"
    shutil.copytree(SAMPLE / "openimages", root)
    with StaticHTTP(root) as server:
        yield server


def test_the_pages_commands(mirror_copy, tmp_path):
    assert set(blocks()) == {"fresh", "broken"}
    # A new shell in a folder with the project's .venv (not on its PATH).
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    env = {**os.environ, "OPENIMAGER_METADATA_URL": mirror_copy.url,
           "OPENIMAGER_WORKSPACE": "workspace", "PYTHONPATH": str(ROOT)}
    fresh = run(blocks()["fresh"], tmp_path, env)
    assert re.search(r"^metadata: downloaded class-descriptions-boxable\.csv \(11\.\d kB\) in "
                     r"\d+\.\d s$", fresh, re.M)
    assert "class-descriptions-boxable.csv.stamp.json" in fresh
    good = (tmp_path / "workspace" / "metadata" / CLASSES).read_bytes()

    served = mirror_copy.root / CLASSES
    served.write_bytes(served.read_bytes()[:-10])  # cut mid-line
    broken = run(blocks()["broken"], tmp_path, env)
    assert broken.count("still using the verified copy") == 1  # the third does not ask
    assert '"reason": ' in broken  # the rejected version, as cat shows it
    assert "the last line has no newline (truncated file?)" in broken
    assert "Hamburger" in broken and "Traceback" not in broken
    assert (tmp_path / "workspace" / "metadata" / CLASSES).read_bytes() == good
