"""The test targets and markers as docs/testing.md describes them: every command on the page
is valid, `make test-fast` leaves out what starts servers, and slow modules come first."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # collects the whole suite in a child pytest
ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "testing.md"
FAST = "not slow and not integration and not container"


def commands() -> list[str]:
    """The commands of the page's sh blocks, without `time` and trailing comments."""
    found = []
    for block in re.findall(r"```sh\n(.*?)```", DOC.read_text(), re.S):
        for line in block.splitlines():
            command = line.split(" #")[0].strip().removeprefix("time ")
            if command:
                found.append(command)
    return found


@functools.cache  # each collection of the whole suite costs seconds of imports
def collected(args: tuple[str, ...]) -> tuple[str, ...]:
    """The test ids a pytest command line selects, collected in a child (no workers)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PY_COLORS"))}
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                           "-p", "no:cacheprovider", "-n", "0", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{args}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return tuple(line for line in done.stdout.splitlines() if "::" in line)


def collect(args: list[str]) -> list[str]:
    return list(collected(tuple(args)))


@pytest.fixture(scope="module")
def everything() -> list[str]:
    return collect([])


def test_every_command_on_the_page_is_valid():
    import shlex

    found = commands()
    assert {"make test", "make test-fast", "make test TEST_WORKERS=0"} <= set(found)
    for command in found:
        words = shlex.split(command)
        if words[0] == "make":
            done = subprocess.run(["make", "-n", *words[1:]], cwd=ROOT, capture_output=True,
                                  text=True, timeout=60)
            assert done.returncode == 0, f"{command}: {done.stderr}"
            continue
        assert words[:3] == [".venv/bin/python", "-m", "pytest"], command
        args = [word for word in words[3:] if word != "-q"]  # -qq would list files only
        if "-n" in args:  # collecting needs no workers
            del args[args.index("-n"):args.index("-n") + 2]
        assert collect(args), f"{command} selects no test"


def test_make_test_fast_selects_no_server_benchmark_or_slow_test(everything):
    done = subprocess.run(["make", "-n", "test-fast"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert f"-m '{FAST}'" in done.stdout
    fast = collect(["-m", FAST])
    assert fast and set(fast) < set(everything)
    # Unmarked modules: the test using the S3 fixture is out, its neighbour stays.
    assert "tests/test_select_download.py::test_each_image_downloads_once_and_reruns_skip" \
        not in fast
    assert "tests/test_select_download.py::test_selection_labels_each_box_once_with_image_info" \
        in fast
    for module in ("test_benchmarks_crop", "test_bundle", "test_download_resume",
                   "test_registry"):
        assert not [test for test in fast if test.startswith(f"tests/{module}.py::")], module
    assert "tests/test_crop.py" in {test.split("::")[0] for test in fast}


def test_modules_with_slow_tests_come_first_each_in_one_piece(everything):
    slow = {test.split("::")[0] for test in collect(["-m", "slow", "--durations=30"])}
    modules = [test.split("::")[0] for test in everything]
    order = list(dict.fromkeys(modules))
    assert sorted(modules, key=order.index) == modules  # each module's tests together
    has_slow = [module in slow for module in order]
    assert has_slow == sorted(has_slow, reverse=True), order
    assert "tests/test_promotion_loop.py" in slow


def test_each_process_has_its_own_stores_outside_home():
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    home = Path.home()
    for name in ("BENTOML_HOME", "XDG_DATA_HOME", "PREFECT_HOME"):
        path = Path(os.environ[name])
        assert f"openimager-test-{worker}-" in path.parent.name, (name, path)
        assert home not in path.parents
    assert os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] == "180"
