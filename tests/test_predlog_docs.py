"""docs/watching.md as written: its feedback commands and reader example run."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.servicekit import encoded, picture

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "watching.md"
EXAMPLE_HOST = "http://127.0.0.1:3000"


def blocks(language: str = "") -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", DOC.read_text(), re.MULTILINE | re.DOTALL)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_feedback_commands_and_the_reader_work(classifier_server):
    answer = requests.post(f"{classifier_server.url}/classify", timeout=30,
                           files={"image": ("x.jpg", encoded(picture(30)))}).json()
    (commands,) = blocks()
    for line in commands.splitlines():
        line = line.replace(EXAMPLE_HOST, classifier_server.url)
        args = shlex.split(line.replace("REQUEST_ID", answer["request_id"]))
        done = subprocess.run([*args, "--silent", "--show-error", "--fail"], text=True,
                              capture_output=True, timeout=60, check=False)
        assert done.returncode == 0, f"{line}: {done.stderr}"
        assert '"stored":true' in done.stdout.replace(" ", "")
    folder = classifier_server.log.parent / "predictions"
    (code,) = blocks("python")
    done = subprocess.run([sys.executable, "-c", code.replace("workspace/predictions",
                                                              str(folder))],
                          cwd=ROOT, text=True, capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    logged, feedback, _ = map(int, done.stdout.split())
    assert feedback >= 2 and logged >= 0  # the log part may still be open
