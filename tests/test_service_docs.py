"""docs/serving.md as written: its serve command, curl examples and Python client example run
against a real server of a tiny model; and /docs.json lists every route."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servicekit import encoded, picture, register_tiny_model

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "serving.md"
EXAMPLE_HOST = "http://127.0.0.1:3000"


def blocks(language: str = "") -> list[str]:
    """The fenced code blocks of the page in a language ('' for plain ones)."""
    found, current, kind = [], None, ""
    # Fences pair in order: a closing fence is never the opening of the next block.
    for line in DOC.read_text().splitlines(keepends=True):
        if not line.startswith("```"):
            if current is not None:
                current.append(line)
        elif current is None:
            current, kind = [], line[3:].strip()
        else:
            if kind == language:
                found.append("".join(current))
            current = None
    return found


def lines(prefix: str) -> list[str]:
    """The command lines of plain blocks that start with prefix."""
    return [line for block in blocks() for line in block.splitlines() if line.startswith(prefix)]


@pytest.fixture(scope="module")
def docs_server(tmp_path_factory):
    """The page's serve command, run as written (on a free port), on a tiny model."""
    from flows.servers.local import TELEMETRY_OFF, free_port, stop_group, wait_ready

    work = tmp_path_factory.mktemp("docs-serve")
    tag = register_tiny_model(work / "model")
    command = lines(".venv/bin/bentoml serve ")[0]
    port = free_port()
    args = [str(ROOT / shlex.split(command)[0]), *shlex.split(command)[1:],
            "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, **TELEMETRY_OFF, "OPENIMAGER_MODEL_TAG": tag}
    log = work / "serve.log"
    with log.open("ab") as out:
        process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", 180, process)
        yield f"http://127.0.0.1:{port}", tag
    except (RuntimeError, TimeoutError) as error:
        raise RuntimeError(f"{error}; log:\n{log.read_text()[-3000:]}") from error
    finally:
        stop_group(process)


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """The files the examples name, in the folder they run in."""
    (tmp_path / "photo.jpg").write_bytes(encoded(picture(21, (320, 240))))
    (tmp_path / "other.png").write_bytes(encoded(picture(22, (200, 300)), "PNG"))
    return tmp_path


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_curl_examples_work(docs_server, files):
    url, tag = docs_server
    from urllib.parse import urlsplit

    examples = lines("curl ")
    assert len(examples) == 7
    assert sum("--data-binary" in line for line in examples) == 2  # the raw body, both ways
    for line in examples:
        args = shlex.split(line.replace(EXAMPLE_HOST, url))
        done = subprocess.run([*args, "--silent", "--show-error", "--fail"], cwd=files,
                              text=True, capture_output=True, timeout=60, check=False)
        assert done.returncode == 0, f"{line}: {done.stderr}"
        answer = json.loads(done.stdout)
        path = urlsplit(args[-1]).path
        if path == "/classify":
            assert len(answer["labels"]) == (1 if "top=1" in line else 3)
            assert answer["model"] == tag
        elif path == "/classify_batch":
            assert [r["filename"] for r in answer["results"]] == ["photo.jpg", "other.png"]
        elif path == "/model":
            assert answer["tag"] == tag
        elif path == "/readyz":
            assert answer["code"] == "ready"
        else:
            pytest.fail(f"no check for {line}")


def test_the_python_client_example_works(docs_server, files):
    url, tag = docs_server
    (code,) = blocks("python")
    done = subprocess.run([sys.executable, "-c", code.replace(EXAMPLE_HOST, url)], cwd=files,
                          text=True, capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    first, second, raw = done.stdout.strip().splitlines()
    assert first.startswith(tag) and first.count("(") == 2  # two labels
    assert second == "['photo.jpg', 'other.png']"
    assert raw == first  # the raw body, sent with requests: the same answer


def test_the_openapi_document_lists_every_route(docs_server):
    import requests

    url, _ = docs_server
    paths = requests.get(f"{url}/docs.json", timeout=30).json()["paths"]
    for route in ("/classify", "/classify_batch", "/model", "/ui", "/feedback", "/readyz",
                  "/livez"):
        assert route in paths, sorted(paths)
    assert "get" in paths["/model"] and "get" in paths["/ui"]
    assert "application/json" in paths["/model"]["get"]["responses"]["200"]["content"]
    assert "text/html" in paths["/ui"]["get"]["responses"]["200"]["content"]
    assert "/ui/" not in paths  # the redirect is not an endpoint


def test_every_command_is_run_here_or_marked():
    """Every command of the page runs in these tests, or says what it needs."""
    run_here = ("curl ", ".venv/bin/bentoml serve ")
    # The benchmarks' quick runs, each run by a test of its own.
    elsewhere = {".venv/bin/python benchmarks/serve.py --quick": "test_benchmarks_serve.py"}
    for block in blocks():
        commands = [line for line in block.splitlines()
                    if line.strip() and not line.startswith(("#", " "))]
        marked = block.lstrip().startswith("# needs ")
        for command in commands:
            if command in elsewhere:
                script = command.split()[1].split("/")[-1]
                test = (ROOT / "tests" / elsewhere[command]).read_text()
                assert script in test and '"--quick"' in test, command
                continue
            assert marked or command.startswith(run_here), command
