"""Every expected failure of `python -m flows` is one or two lines and an exit code, run as a
user runs it: a subprocess against local servers, from a folder other than the project's."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from flows.servers.mirror import StaticHTTP

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_META = ROOT / "data" / "sample" / "openimages"
BOXES_TRAIN = Path("metadata") / "v6" / "oidv6-train-annotations-bbox.csv"

pytestmark = pytest.mark.integration


def flows(*args: str, cwd: Path, env: dict[str, str] | None = None,
          timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m flows ARGS` in cwd (the project importable, not the current folder)."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "flows", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=timeout)


def failed(done: subprocess.CompletedProcess, code: int) -> str:
    """Check the exit code, the absence of a traceback and that the error is the last one or
    two lines of stderr (progress and log lines may come before it); return those lines."""
    assert done.returncode == code, done.stdout[-2000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr + done.stdout, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("error: "))
    assert len(lines) - start <= 2, done.stderr[-3000:]
    return "\n".join(lines[start:])


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def broken_mirror(tmp_path: Path):
    """A copy of the sample mirror to break, served over HTTP."""
    root = tmp_path / "mirror"
    shutil.copytree(SAMPLE_META, root)
    with StaticHTTP(root) as server:
        yield root, server.url


@pytest.mark.parametrize("command", ["select", "refresh", "download", "retrain"])
def test_an_unknown_class_fails_before_the_box_files_are_fetched(command, mirror, tmp_path):
    # retrain checks the ImageNet weights first (test_imagenet_weights_that_cannot_be_had_...):
    # the seed CNN needs none, and nothing is asked of the internet.
    model = ["--architecture", "seed-cnn"] if command == "retrain" else []
    err = failed(flows(command, "--classes", "Hamburgr", "--workspace", "ws", *model,
                       "--metadata-url", mirror.url, cwd=tmp_path), 2)
    assert "unknown Open Images class 'Hamburgr'; closest: Hamburger" in err
    assert (tmp_path / "ws" / "metadata").exists()  # the class files were read ...
    assert not (tmp_path / "ws" / BOXES_TRAIN).exists()  # ... the box files never


def test_a_bad_setting_names_the_variable(mirror, tmp_path):
    err = failed(flows("select", "--workspace", "ws", "--metadata-url", mirror.url,
                       cwd=tmp_path, env={"OPENIMAGER_MIN_BOX_FRACTION": "lots"}), 2)
    assert err.startswith("error: bad setting: OPENIMAGER_MIN_BOX_FRACTION")
    assert "'lots'" in err


@pytest.mark.parametrize("where", ["flag", "environment"])
def test_a_bad_split_fails_in_one_line(where, mirror, tmp_path):
    args = ["select", "--workspace", "ws", "--metadata-url", mirror.url]
    if where == "flag":
        err = failed(flows(*args, "--splits", "train,tests", cwd=tmp_path), 2)
        assert "'train,tests': splits are among train, validation, test" in err
    else:
        err = failed(flows(*args, cwd=tmp_path, env={"OPENIMAGER_SPLITS": "train,tests"}), 2)
        assert "OPENIMAGER_SPLITS / --splits" in err and "'tests'" in err


def test_an_unreachable_metadata_url_exits_3(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/openimages"
    err = failed(flows("select", "--workspace", "ws", "--metadata-url", url, cwd=tmp_path), 3)
    assert err.startswith(f"error: cannot reach {url}/")
    assert "--metadata-url" in err


def test_a_split_the_mirror_lacks_is_a_404_and_splits_leave_it_out(broken_mirror, tmp_path):
    root, url = broken_mirror
    (root / "v5" / "test-annotations-bbox.csv").unlink()
    args = ("select", "--classes", "Hamburger", "--workspace", "ws", "--metadata-url", url)
    err = failed(flows(*args, cwd=tmp_path), 3)
    assert "404" in err and "test-annotations-bbox.csv" in err and "--splits" in err
    # The fix the message names, as a flag and as the comma-separated variable.
    done = flows(*args, "--splits", "train,validation", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Hamburger" in done.stdout
    assert "select: " in done.stderr and " boxes on " in done.stderr  # the step's line
    done = flows(*args, cwd=tmp_path, env={"OPENIMAGER_SPLITS": "train,validation"})
    assert done.returncode == 0, done.stderr[-3000:]


def test_a_malformed_metadata_file_exits_3(broken_mirror, tmp_path):
    root, url = broken_mirror
    boxes = root / "v5" / "validation-annotations-bbox.csv"
    boxes.write_text(boxes.read_text() + "0001eeaf4aed83f9,xclick,/m/0cdn1,1\n")
    err = failed(flows("select", "--workspace", "ws", "--metadata-url", url, cwd=tmp_path), 3)
    assert "validation-annotations-bbox.csv" in err and "columns" in err


def test_an_unreachable_registry_exits_3(tmp_path):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    err = failed(flows("install", "openimager/classifier", "--registry", "s3://some-registry",
                       "--dest", "bundle", cwd=tmp_path,
                       env={"AWS_ENDPOINT_URL": endpoint}), 3)
    assert "s3://some-registry" in err and endpoint in err


def test_an_empty_embedded_registry_says_which_workspace_to_pass(tmp_path):
    err = failed(flows("reproduce", "openimager/classifier", "--registry", "embedded",
                       cwd=tmp_path), 3)
    assert err.startswith(f"error: the embedded registry in {tmp_path / 'workspace'}")
    assert "has no package openimager/classifier" in err
    assert "--workspace" in err and "--registry s3://" in err


def test_a_missing_earlier_stage_says_which_to_run(tmp_path):
    err = failed(flows("build-dataset", "--workspace", "ws", cwd=tmp_path), 2)
    # This python by its path: the line runs in a shell without the venv.
    assert f"selection.parquet is missing: run `{sys.executable} -m flows refresh`" in err


def test_debug_shows_the_traceback(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/openimages"
    done = flows("--debug", "select", "--workspace", "ws", "--metadata-url", url, cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" in done.stderr


def test_refused_uncommitted_changes_are_bad_input_without_a_traceback(capsys) -> None:
    from flows.commands.errors import BAD_INPUT, guarded
    from flows.publishing.lineage import UncommittedChanges

    def refuse() -> int:
        raise UncommittedChanges("uncommitted changes in /src (a.py): commit them")

    assert guarded(refuse, debug=False) == BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: uncommitted changes") and "Traceback" not in err


@pytest.mark.parametrize("command", ["train", "retrain"])
def test_imagenet_weights_that_cannot_be_had_fail_before_any_work(command, no_internet,
                                                                  tmp_path):
    err = failed(flows(command, "--workspace", "ws", cwd=tmp_path, env=no_internet), 3)
    first, hint = err.splitlines()
    assert "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5" in first
    assert "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v3/" in first
    assert "OPENIMAGER_WEIGHTS" in hint and "--architecture seed-cnn" in hint
    assert not (tmp_path / "ws" / "metadata").exists()  # before anything was fetched


def test_a_missing_local_weights_file_is_bad_input(tmp_path):
    err = failed(flows("train", "--workspace", "ws", cwd=tmp_path,
                       env={"OPENIMAGER_WEIGHTS": str(tmp_path / "mine.weights.h5")}), 2)
    assert f"the weights file {tmp_path / 'mine.weights.h5'} does not exist" in err


def test_a_metadata_url_without_a_scheme_is_a_local_folder(tmp_path):
    shutil.copytree(SAMPLE_META, tmp_path / "mirror")
    done = flows("classes", "Hamburger", "--workspace", "ws", "--metadata-url", "mirror",
                 cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Hamburger" in done.stdout
    err = failed(flows("select", "--workspace", "ws", "--metadata-url", "no/such/mirror",
                       cwd=tmp_path), 2)
    assert err.startswith("error: bad setting: OPENIMAGER_METADATA_URL / --metadata-url: "
                          "'no/such/mirror' is neither a URL nor a local folder")


def test_a_registry_port_held_by_another_server_is_named_not_taken_over(tmp_path):
    from flows.servers.local import LocalS3

    # Another registry (a moto S3 with its own state), then a plain HTTP server.
    with LocalS3(state_dir=tmp_path / "other" / "registry") as other, \
            StaticHTTP(tmp_path) as web:
        for port in (other.port, int(web.url.rsplit(":", 1)[1])):
            done = flows("registry", "--workspace", "ws", "--port", str(port), cwd=tmp_path,
                         timeout=60)
            err = failed(done, 2)
            assert f"port {port} of 127.0.0.1 is taken by another program" in err
            assert "--port" in err and "serving" not in done.stdout
        assert not (tmp_path / "ws" / "registry" / "endpoint").exists()


def test_comma_separated_class_names_are_told_to_use_spaces(mirror, tmp_path):
    err = failed(flows("select", "--classes", "Hamburger,Sandwich", "--workspace", "ws",
                       "--metadata-url", mirror.url, cwd=tmp_path), 2)
    first, hint = err.splitlines()
    assert "unknown Open Images class 'Hamburger,Sandwich'" in first
    assert hint.strip().startswith("class names are separated by spaces, not commas: "
                                   "--classes Hamburger Sandwich")


def test_a_python_without_the_dependencies_says_how_to_get_them(tmp_path):
    # -S: no site-packages at all, so pydantic is missing before the parser is built.
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    bare = subprocess.run([sys.executable, "-S", "-m", "flows", "classes"], cwd=tmp_path,
                          env=environment, capture_output=True, text=True, timeout=120)
    err = failed(bare, 2)
    assert err.startswith("error: the module 'pydantic' is missing from this Python")
    assert "make venv" in err and ".venv/bin/python -m flows" in err
    # One dependency missing while the command runs (shadowed by a module that cannot load).
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "pyarrow.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'pyarrow'\", name='pyarrow')\n")
    err = failed(flows("classes", "Hamburger", cwd=tmp_path,
                       env={"PYTHONPATH": f"{ROOT}{os.pathsep}{shadow}"}), 2)
    assert err.startswith("error: the module 'pyarrow' is missing from this Python")
    assert "source .venv/bin/activate" in err
