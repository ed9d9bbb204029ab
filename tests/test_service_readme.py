"""The README's curl examples, run as written against the real server."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.servicekit import encoded, picture

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parent.parent / "README.md"
EXAMPLE_HOST = "http://127.0.0.1:3000"


def curl_examples() -> list[str]:
    """The curl lines of the README's Serving section."""
    text = README.read_text()
    serving = text[text.index("## Serving"):]
    serving = serving[: serving.index("\n## ", 3)]
    return re.findall(r"^curl .*$", serving, flags=re.MULTILINE)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_readme_curl_examples_work(classifier_server, tmp_path):
    examples = curl_examples()
    assert len(examples) >= 4
    # The files the examples name, in the folder they run in.
    (tmp_path / "photo.jpg").write_bytes(encoded(picture(21, (320, 240))))
    (tmp_path / "other.png").write_bytes(encoded(picture(22, (200, 300)), "PNG"))
    answers = {}
    for line in examples:
        assert EXAMPLE_HOST in line
        args = shlex.split(line.replace(EXAMPLE_HOST, classifier_server.url))
        done = subprocess.run([*args, "--silent", "--show-error"], cwd=tmp_path, text=True,
                              capture_output=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        answers[line] = json.loads(done.stdout)
    for line, answer in answers.items():
        if line.endswith("/classify"):
            expected = 1 if "top=1" in line else 3
            assert len(answer["labels"]) == expected and answer["model"] == classifier_server.tag
        elif line.endswith("/classify_batch"):
            assert [r["filename"] for r in answer["results"]] == ["photo.jpg", "other.png"]
        elif line.endswith("/model"):
            assert answer["tag"] == classifier_server.tag
        else:
            pytest.fail(f"no check for {line}")
