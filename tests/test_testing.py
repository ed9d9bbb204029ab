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

from tests.listmarks import PREFIX, markers

pytestmark = pytest.mark.integration  # collects tests in child pytest runs
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


# What every test of the suite carries, in the order a run gives them: (test id, markers).
Collection = tuple[tuple[str, frozenset[str]], ...]
# Arguments of `make test` (and of its TEST_WORKERS variants) that change neither what a run
# collects nor its order.
SAME_COLLECTION = re.compile(r"-n|-n\d+|--numprocesses|\d+|auto|--durations(=\d+)?|-q+|-v+")


@functools.cache  # each collection costs seconds of imports
def collected(args: tuple[str, ...]) -> Collection:
    """The tests a pytest command line selects, with their markers, collected in a child (no
    workers)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PY_COLORS"))}
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                           "-p", "no:cacheprovider", "-p", "tests.listmarks", "-n", "0", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{args}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    found = [line.split("\t")[1:] for line in done.stdout.splitlines()
             if line.startswith(PREFIX)]
    return tuple((test, frozenset(filter(None, marks.split(",")))) for test, marks in found)


def collect(args: list[str]) -> list[str]:
    return [test for test, _ in collected(tuple(args))]


def selected(tests: Collection, expression: str) -> list[str]:
    """The tests `-m expression` keeps, evaluated as pytest's -m does."""
    from _pytest.mark.expression import Expression

    def carries(marks: frozenset[str]):
        return lambda name, /, **kwargs: not kwargs and name in marks

    compiled = Expression.compile(expression)
    return [test for test, marks in tests if compiled.evaluate(carries(marks))]


def collected_everything(config: pytest.Config) -> bool:
    """Whether this run collected and ordered the whole suite as a plain `pytest` would."""
    return (config.args_source is pytest.Config.ArgsSource.TESTPATHS
            and not os.environ.get("PYTEST_ADDOPTS")
            and all(SAME_COLLECTION.fullmatch(arg) for arg in config.invocation_params.args))


@pytest.fixture(scope="module")
def everything(request: pytest.FixtureRequest) -> Collection:
    """The whole suite: this run's own collection when it is one (`make test`), else a child's.
    Every worker has collected the whole suite already; collecting it again in a child costs
    a worker's imports of every test module."""
    if collected_everything(request.config):
        return tuple((item.nodeid, frozenset(markers(item))) for item in request.session.items)
    return collected(())


def test_every_command_on_the_page_is_valid(everything):
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
        if not any(arg.startswith("tests/") for arg in args):
            # The whole suite: what its -m keeps comes from the one collection; pytest checks
            # the command's options and expression on the first module it selects from.
            chosen = selected(everything, args[args.index("-m") + 1]) if "-m" in args \
                else [test for test, _ in everything]
            assert chosen, f"{command} selects no test"
            args.append(chosen[0].split("::")[0])
        assert collect(args), f"{command} selects no test"


def test_make_test_fast_selects_no_server_benchmark_or_slow_test(everything):
    done = subprocess.run(["make", "-n", "test-fast"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert f"-m '{FAST}'" in done.stdout
    fast = selected(everything, FAST)
    assert fast and set(fast) < {test for test, _ in everything}
    # Unmarked modules: the test using the S3 fixture is out, its neighbour stays.
    assert "tests/test_select_download.py::test_each_image_downloads_once_and_reruns_skip" \
        not in fast
    assert "tests/test_select_download.py::test_selection_labels_each_box_once_with_image_info" \
        in fast
    # pytest's own -m on that module keeps the same tests.
    module = "tests/test_select_download.py"
    assert collect(["-m", FAST, module]) == [test for test in fast if test.startswith(module)]
    for module in ("test_benchmarks_crop", "test_bundle", "test_download_resume",
                   "test_registry"):
        assert not [test for test in fast if test.startswith(f"tests/{module}.py::")], module
    assert "tests/test_crop.py" in {test.split("::")[0] for test in fast}


def test_modules_with_slow_tests_come_first_each_in_one_piece(everything):
    slow = {test.split("::")[0] for test in selected(everything, "slow")}
    modules = [test.split("::")[0] for test, _ in everything]
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
